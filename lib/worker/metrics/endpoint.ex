defmodule Worker.Metrics.Endpoint do
  @moduledoc """
  The worker's HTTP endpoint, on `:inets` httpd (`FL_METRICS_PORT`, default
  4021 as in FunLess; 0 disables it):

    * `GET /metrics` - `Worker.Metrics.render/0`, Prometheus text 0.0.4;
    * `GET /healthz` - 200 while the node is up;
    * `GET /readyz` - 200 once the native runtime is loaded and `:worker`
      is registered, 503 before.
  """
  use GenServer

  require Record
  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc "The port it listens on, or `nil` when disabled."
  @spec port() :: :inet.port_number() | nil
  def port, do: GenServer.call(:persistent_term.get({__MODULE__, :server}), :port)

  @impl true
  def init(_opts) do
    :persistent_term.put({__MODULE__, :server}, self())

    case Application.fetch_env!(:worker, :metrics_port) do
      0 ->
        {:ok, nil}

      port ->
        # CPU and memory figures for the page
        {:ok, _} = Application.ensure_all_started(:os_mon)
        root = Path.join(System.tmp_dir!(), "fl-worker-httpd")
        File.mkdir_p!(root)

        {:ok, pid} =
          :inets.start(
            :httpd,
            [
              port: port,
              server_name: ~c"fl-worker",
              server_root: String.to_charlist(root),
              document_root: String.to_charlist(root),
              bind_address: :any,
              ipfamily: :inet,
              modules: [__MODULE__],
              keep_alive: true,
              max_clients: 64
            ],
            :stand_alone
          )

        {:ok, pid}
    end
  end

  @impl true
  def handle_call(:port, _from, nil), do: {:reply, nil, nil}

  def handle_call(:port, _from, pid) do
    {:reply, :proplists.get_value(:port, :httpd.info(pid)), pid}
  end

  def handle_call(request, _from, state) do
    Worker.Stray.drop("Worker.Metrics.Endpoint", request)
    {:reply, {:error, {:bad_request, "unknown request"}}, state}
  end

  @impl true
  def handle_cast(request, state) do
    Worker.Stray.drop("Worker.Metrics.Endpoint", request)
    {:noreply, state}
  end

  @impl true
  def handle_info(message, state) do
    Worker.Stray.drop("Worker.Metrics.Endpoint", message)
    {:noreply, state}
  end

  @impl true
  def terminate(_reason, nil), do: :ok
  def terminate(_reason, pid), do: :inets.stop(:stand_alone, pid)

  @doc false
  # The httpd module callback: one request in, one response out.
  def unquote(:do)(request) do
    {status, type, body} = respond(mod(request, :method), path(mod(request, :request_uri)))
    body = IO.iodata_to_binary(body)

    head = [
      code: status,
      content_type: String.to_charlist(type),
      content_length: Integer.to_charlist(byte_size(body))
    ]

    {:proceed, [response: {:response, head, body}]}
  end

  defp path(uri), do: uri |> List.to_string() |> String.split("?") |> hd()

  defp respond(~c"GET", "/metrics"),
    do: {200, "text/plain; version=0.0.4; charset=utf-8", Worker.Metrics.render()}

  defp respond(~c"GET", "/healthz"), do: {200, "text/plain", "ok\n"}

  defp respond(~c"GET", "/readyz") do
    if ready?(), do: {200, "text/plain", "ready\n"}, else: {503, "text/plain", "not ready\n"}
  end

  defp respond(_method, _path), do: {404, "text/plain", "not found\n"}

  # :worker starts after Worker.Functions, whose start has already loaded
  # the runtime (it reads the engine fingerprint): registered means ready.
  defp ready?, do: Process.whereis(:worker) != nil
end
