defmodule Worker.Test.HttpServer do
  @moduledoc """
  A small HTTP/1.1 server on loopback for tests of `__http_request`.

  Every request is reported to the process that started the server as
  `{:http_request, %{method:, path:, headers:, body:}}`. Routes:

    * `GET /text/BODY` - 200 with BODY;
    * `GET /conn` - 200 with the client's port, the connection kept open
      for the next request;
    * `ANY /echo` - 200 with a JSON object of the method, headers and body;
    * `GET /status/N` - status N, empty body;
    * `GET /bytes/N` - 200 with N bytes of `"x"`;
    * `GET /unicode` - 200 with a multi-byte UTF-8 body;
    * `GET /lying` - claims `Content-Length: 100` and sends 10 bytes;
    * `GET /endless` - a chunked body that never ends;
    * `GET /sleep/MS` - waits MS milliseconds, then 200 "late";
    * `GET /redirect` - 302 to `/text/redirected`;
    * `GET /goto/URL` - 302 to URL (percent-encoded);
    * `GET /hops/N` - a chain of N redirects, then 200 "arrived".
  """

  @doc """
  Spellings of loopback and other non-public addresses, each as `{label,
  url}`, `PORT` standing for the server's port: the outbound policy must
  refuse every one before connecting.
  """
  def non_public_urls do
    [
      {"localhost, a name that resolves to loopback", "http://localhost:PORT/text/x"},
      {"127.0.0.1", "http://127.0.0.1:PORT/text/x"},
      {"127.1", "http://127.1:PORT/text/x"},
      {"2130706433 (127.0.0.1 as one number)", "http://2130706433:PORT/text/x"},
      {"0x7f000001 (hex)", "http://0x7f000001:PORT/text/x"},
      {"[::1]", "http://[::1]:PORT/text/x"},
      {"[::ffff:127.0.0.1] (IPv4-mapped)", "http://[::ffff:127.0.0.1]:PORT/text/x"},
      {"0.0.0.0", "http://0.0.0.0:PORT/text/x"},
      {"169.254.169.254 (cloud metadata)", "http://169.254.169.254/latest/meta-data/"},
      {"10.0.0.1 (private)", "http://10.0.0.1:PORT/text/x"},
      {"192.168.1.1 (private)", "http://192.168.1.1:PORT/text/x"},
      {"[fd00::1] (unique local)", "http://[fd00::1]:PORT/text/x"}
    ]
  end

  @doc "Starts the server; returns its base URL, e.g. `http://127.0.0.1:40123`."
  def start! do
    owner = self()

    {:ok, listen} =
      :gen_tcp.listen(0, [
        :binary,
        active: false,
        reuseaddr: true,
        backlog: 1024,
        ip: {127, 0, 0, 1}
      ])

    {:ok, port} = :inet.port(listen)
    pid = spawn_link(fn -> accept_loop(listen, owner) end)
    :ok = :gen_tcp.controlling_process(listen, pid)
    "http://127.0.0.1:#{port}"
  end

  defp accept_loop(listen, owner) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        handler = spawn(fn -> serve(socket, owner) end)
        :gen_tcp.controlling_process(socket, handler)
        send(handler, :go)
        accept_loop(listen, owner)

      {:error, _} ->
        :ok
    end
  end

  defp serve(socket, owner) do
    receive do
      :go -> :ok
    end

    serve_requests(socket, owner)
    :gen_tcp.close(socket)
  end

  # One request, or, on a connection kept alive (`/conn`), one after another.
  defp serve_requests(socket, owner) do
    with {:ok, request} <- read_request(socket, "") do
      send(owner, {:http_request, request})
      if respond(socket, request) == :keep_alive, do: serve_requests(socket, owner)
    end
  end

  defp read_request(socket, buffer) do
    case :binary.split(buffer, "\r\n\r\n") do
      [head, rest] ->
        [request_line | header_lines] = String.split(head, "\r\n")
        [method, path, _version] = String.split(request_line, " ", parts: 3)

        headers =
          Map.new(header_lines, fn line ->
            [k, v] = String.split(line, ":", parts: 2)
            {String.downcase(k), String.trim(v)}
          end)

        body =
          if headers["transfer-encoding"] == "chunked" do
            read_chunked(socket, rest, [])
          else
            read_body(socket, rest, String.to_integer(Map.get(headers, "content-length", "0")))
          end

        with {:ok, body} <- body do
          {:ok, %{method: method, path: path, headers: headers, body: body}}
        end

      [_] ->
        case :gen_tcp.recv(socket, 0, 5_000) do
          {:ok, data} -> read_request(socket, buffer <> data)
          error -> error
        end
    end
  end

  # A chunked body (wasi:http sends one when the guest gives no length):
  # size lines in hex, each chunk, and a last chunk of size 0.
  defp read_chunked(socket, data, chunks) do
    with [size_line, rest] <- :binary.split(data, "\r\n"),
         {size, _} <- Integer.parse(size_line, 16),
         true <- byte_size(rest) >= size + 2 do
      if size == 0 do
        {:ok, IO.iodata_to_binary(Enum.reverse(chunks))}
      else
        <<chunk::binary-size(size), "\r\n", rest::binary>> = rest
        read_chunked(socket, rest, [chunk | chunks])
      end
    else
      _ ->
        case :gen_tcp.recv(socket, 0, 5_000) do
          {:ok, more} -> read_chunked(socket, data <> more, chunks)
          error -> error
        end
    end
  end

  defp read_body(_socket, data, length) when byte_size(data) >= length,
    do: {:ok, binary_part(data, 0, length)}

  defp read_body(socket, data, length) do
    case :gen_tcp.recv(socket, 0, 5_000) do
      {:ok, more} -> read_body(socket, data <> more, length)
      error -> error
    end
  end

  defp respond(socket, %{path: "/text/" <> body}), do: reply(socket, 200, URI.decode(body))

  defp respond(socket, %{path: "/conn"}) do
    {:ok, {_, port}} = :inet.peername(socket)
    body = Integer.to_string(port)
    :gen_tcp.send(socket, "HTTP/1.1 200 OK\r\ncontent-length: #{byte_size(body)}\r\n\r\n" <> body)
    :keep_alive
  end

  defp respond(socket, %{path: "/echo"} = request) do
    headers = Enum.map_join(request.headers, ",", fn {k, v} -> ~s("#{k}":"#{v}") end)

    body =
      ~s({"method":"#{request.method}","headers":{#{headers}},"body":#{inspect(request.body)}})

    reply(socket, 200, body)
  end

  defp respond(socket, %{path: "/status/" <> code}),
    do: reply(socket, String.to_integer(code), "")

  defp respond(socket, %{path: "/bytes/" <> n}),
    do: reply(socket, 200, :binary.copy("x", String.to_integer(n)))

  defp respond(socket, %{path: "/unicode"}), do: reply(socket, 200, "héllo wörld ✓")

  defp respond(socket, %{path: "/lying"}) do
    :gen_tcp.send(
      socket,
      "HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\n0123456789"
    )
  end

  defp respond(socket, %{path: "/endless"}) do
    :gen_tcp.send(socket, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = :binary.copy("y", 65_536)
    endless(socket, "10000\r\n" <> chunk <> "\r\n")
  end

  defp respond(socket, %{path: "/sleep/" <> ms}) do
    Process.sleep(String.to_integer(ms))
    reply(socket, 200, "late")
  end

  defp respond(socket, %{path: "/redirect"}) do
    :gen_tcp.send(
      socket,
      "HTTP/1.1 302 Found\r\nlocation: /text/redirected\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
  end

  defp respond(socket, %{path: "/goto/" <> target}) do
    :gen_tcp.send(
      socket,
      "HTTP/1.1 302 Found\r\nlocation: #{URI.decode(target)}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
  end

  defp respond(socket, %{path: "/hops/0"}), do: reply(socket, 200, "arrived")

  defp respond(socket, %{path: "/hops/" <> n}) do
    location = "/hops/#{String.to_integer(n) - 1}"
    respond(socket, %{path: "/goto/" <> URI.encode_www_form(location)})
  end

  defp respond(socket, _request), do: reply(socket, 404, "not found")

  defp endless(socket, chunk) do
    case :gen_tcp.send(socket, chunk) do
      :ok -> endless(socket, chunk)
      {:error, _} -> :ok
    end
  end

  defp reply(socket, status, body) do
    :gen_tcp.send(socket, [
      "HTTP/1.1 #{status} X\r\ncontent-length: #{byte_size(body)}\r\nconnection: close\r\n\r\n",
      body
    ])
  end
end
