defmodule Worker.Test.KubernetesAPI do
  @moduledoc """
  The part of the Kubernetes API that pod discovery reads, on loopback,
  over TLS: `GET /api/v1/namespaces/NS/pods?labelSelector=SEL`, answered
  with a PodList when the bearer token is right, 401 otherwise. Each
  request is reported to the process that started it as
  `{:k8s_request, path_and_query, authorization}`.

  `start!/2` also writes a service account directory as Kubernetes mounts
  one in a pod (`token`, `ca.crt`, `namespace`), with certificates as a
  cluster has them (`Worker.Test.Certs`): a CA, and the API's certificate,
  signed by it, for the address 127.0.0.1 (as an IP address only, as a
  cluster's API certificate names its service's address).
  """

  @doc """
  Starts the server, answering with `pods` (a list of maps, as the API's
  items). Returns `%{api: "https://127.0.0.1:PORT", account_dir: dir, token: token}`.
  """
  def start!(dir, pods) do
    account = Path.join(dir, "serviceaccount")
    File.mkdir_p!(account)

    certs = Worker.Test.Certs.make!(dir, ["api"], ip_only: true)
    %{"api" => {cert, key}, ca: ca} = certs

    token = Base.encode16(:crypto.strong_rand_bytes(16))
    File.write!(Path.join(account, "token"), token <> "\n")
    File.write!(Path.join(account, "namespace"), "fl")
    File.cp!(ca, Path.join(account, "ca.crt"))

    {:ok, _} = Application.ensure_all_started(:ssl)

    {:ok, listen} =
      :ssl.listen(0,
        certfile: String.to_charlist(cert),
        keyfile: String.to_charlist(key),
        ip: {127, 0, 0, 1},
        reuseaddr: true,
        active: false,
        mode: :binary,
        packet: :http_bin
      )

    {:ok, {_, port}} = :ssl.sockname(listen)
    owner = self()
    body = pod_list(pods)
    pid = spawn_link(fn -> accept(listen, owner, token, body) end)
    :ok = :ssl.controlling_process(listen, pid)
    %{api: "https://127.0.0.1:#{port}", account_dir: account, token: token}
  end

  defp pod_list(pods) do
    {:ok, json} =
      Worker.JSON.encode(%{"kind" => "PodList", "apiVersion" => "v1", "items" => pods})

    json
  end

  defp accept(listen, owner, token, body) do
    with {:ok, socket} <- :ssl.transport_accept(listen),
         {:ok, socket} <- :ssl.handshake(socket, 5_000) do
      serve(socket, owner, token, body)
    end

    accept(listen, owner, token, body)
  end

  defp serve(socket, owner, token, body) do
    {:ok, {:http_request, :GET, {:abs_path, path}, _}} = :ssl.recv(socket, 0, 5_000)
    authorization = headers(socket, nil)
    send(owner, {:k8s_request, path, authorization})

    {status, body} =
      if authorization == "Bearer " <> token,
        do: {"200 OK", body},
        else: {"401 Unauthorized", ~s({"kind":"Status","message":"Unauthorized"})}

    :ssl.send(socket, [
      "HTTP/1.1 #{status}\r\ncontent-type: application/json\r\n",
      "content-length: #{byte_size(body)}\r\nconnection: close\r\n\r\n",
      body
    ])

    :ssl.close(socket)
  catch
    _, _ -> :ssl.close(socket)
  end

  defp headers(socket, authorization) do
    case :ssl.recv(socket, 0, 5_000) do
      {:ok, {:http_header, _, :Authorization, _, value}} -> headers(socket, value)
      {:ok, {:http_header, _, _, _, _}} -> headers(socket, authorization)
      {:ok, :http_eoh} -> authorization
    end
  end
end
