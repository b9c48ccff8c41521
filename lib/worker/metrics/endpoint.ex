defmodule Worker.Metrics.Endpoint do
  @moduledoc """
  The worker's HTTP endpoint, on `:inets` httpd (`FL_METRICS_PORT`, default
  4021 as in FunLess; 0 disables it), on the interface of `FL_METRICS_ADDR`
  (an IPv4 or IPv6 address; by default every IPv4 interface, since the
  Core's Prometheus scrapes the worker from another host):

    * `GET /metrics` - `Worker.Metrics.Prometheus.render/1`, Prometheus text 0.0.4;
    * `GET /healthz` - 200 while the node is up;
    * `GET /readyz` - 200 once the native runtime is loaded and `:worker`
      is registered, 503 before.

  One page is rendered at a time, in a process of its own (its garbage
  goes with it), as one binary, which then serves every scrape for 1 s
  after the render ends: scrapes that arrive while it renders wait for it,
  and all get that same binary. So however many scrapes come at once, the
  node holds one page, and renders at most once per second plus the time
  a render takes. The CPU figure is measured since its reader's last call
  (`Worker.Metrics.OS`), so this long-lived server reads it for each
  render.
  """
  use GenServer

  alias Worker.Stray

  require Record
  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  # the longest a render may take
  @render_deadline_ms 10_000
  # how long a rendered page is served, from the end of its render
  @page_ms 1_000
  # how long a scrape waits for its page
  @scrape_timeout_ms 60_000

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc "The port it listens on, or `nil` when disabled."
  @spec port() :: :inet.port_number() | nil
  def port, do: GenServer.call(server(), :port)

  defp server, do: :persistent_term.get({__MODULE__, :server})

  # The page, rendered or reused (see the moduledoc).
  defp page do
    GenServer.call(server(), :page, @scrape_timeout_ms)
  catch
    :exit, reason -> {:error, {:exit, reason}}
  end

  @impl true
  def init(_opts) do
    :persistent_term.put({__MODULE__, :server}, self())

    state = %{httpd: nil, page: nil, page_ref: nil, render: nil, waiters: []}

    case Application.fetch_env!(:worker, :metrics_port) do
      0 ->
        {:ok, state}

      port ->
        # :any (every IPv4 interface), or an IPv4 or IPv6 address
        address = Application.fetch_env!(:worker, :metrics_addr)
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
              bind_address: address,
              ipfamily: family(address),
              modules: [__MODULE__],
              keep_alive: true,
              max_clients: 64
            ],
            :stand_alone
          )

        {:ok, %{state | httpd: pid}}
    end
  end

  defp family(address) when tuple_size(address) == 8, do: :inet6
  defp family(_address), do: :inet

  @impl true
  def handle_call(:port, _from, %{httpd: nil} = state), do: {:reply, nil, state}

  def handle_call(:port, _from, state) do
    {:reply, :proplists.get_value(:port, :httpd.info(state.httpd)), state}
  end

  def handle_call(:page, _from, %{page: page} = state) when is_binary(page),
    do: {:reply, {:ok, page}, state}

  def handle_call(:page, from, %{render: nil} = state) do
    # read here, in this long-lived process (see the moduledoc)
    cpu = Worker.Metrics.Prometheus.cpu_utilization()

    {pid, ref} =
      spawn_monitor(fn ->
        exit(
          {:"$fl_page",
           IO.iodata_to_binary(Worker.Metrics.Prometheus.render(cpu_utilization: cpu))}
        )
      end)

    # a render that hangs (a server stuck, say) is killed, and answered
    Process.send_after(self(), {:"$fl_render_deadline", ref, pid}, @render_deadline_ms)
    {:noreply, %{state | render: ref, waiters: [from]}}
  end

  def handle_call(:page, from, state), do: {:noreply, %{state | waiters: [from | state.waiters]}}

  def handle_call(request, _from, state), do: Stray.call(__MODULE__, request, state)

  @impl true
  def handle_cast(request, state), do: Stray.cast(__MODULE__, request, state)

  # The render is done: its page (one binary, shared by the replies) serves
  # every waiter, then the scrapes of the next @page_ms.
  @impl true
  def handle_info({:DOWN, ref, :process, _pid, reason}, %{render: ref} = state) do
    {reply, page} =
      case reason do
        {:"$fl_page", page} -> {{:ok, page}, page}
        other -> {{:error, other}, nil}
      end

    Enum.each(state.waiters, &GenServer.reply(&1, reply))
    if page, do: Process.send_after(self(), {:"$fl_page_expired", ref}, @page_ms)
    {:noreply, %{state | page: page, page_ref: ref, render: nil, waiters: []}}
  end

  # Dropped, and garbage collected (hibernation) so that this process
  # holds no reference to it.
  def handle_info({:"$fl_page_expired", ref}, %{page_ref: ref} = state),
    do: {:noreply, %{state | page: nil, page_ref: nil}, :hibernate}

  def handle_info({:"$fl_render_deadline", ref, pid}, %{render: ref} = state) do
    # its :DOWN (:killed) answers the waiters
    Process.exit(pid, :kill)
    {:noreply, state}
  end

  def handle_info({:"$fl_render_deadline", _ref, _pid}, state), do: {:noreply, state}

  def handle_info(message, state), do: Stray.info(__MODULE__, message, state)

  @impl true
  def terminate(_reason, %{httpd: nil}), do: :ok
  def terminate(_reason, %{httpd: pid}), do: :inets.stop(:stand_alone, pid)

  @doc false
  # The httpd module callback: one request in, one response out.
  def unquote(:do)(request) do
    {status, type, body} = respond(mod(request, :method), path(mod(request, :request_uri)))

    head = [
      code: status,
      content_type: String.to_charlist(type),
      content_length: Integer.to_charlist(byte_size(body))
    ]

    {:proceed, [response: {:response, head, body}]}
  end

  defp path(uri), do: uri |> List.to_string() |> String.split("?") |> hd()

  defp respond(~c"GET", "/metrics") do
    case page() do
      {:ok, page} -> {200, "text/plain; version=0.0.4; charset=utf-8", page}
      {:error, _} -> {503, "text/plain", "metrics unavailable\n"}
    end
  end

  defp respond(~c"GET", "/healthz"), do: {200, "text/plain", "ok\n"}

  defp respond(~c"GET", "/readyz") do
    if ready?(), do: {200, "text/plain", "ready\n"}, else: {503, "text/plain", "not ready\n"}
  end

  defp respond(_method, _path), do: {404, "text/plain", "not found\n"}

  # The runtime is configured before the supervision tree starts, and
  # :worker starts after Worker.Cache: registered, with a runtime that
  # answers, means ready.
  defp ready?,
    do: Process.whereis(:worker) != nil and match?({:ok, _}, Worker.Runtime.fingerprint())
end
