defmodule Worker.Cluster do
  @moduledoc """
  Joins the FunLess cluster with OTP alone (libcluster is a hex package).

  * `FL_CORE_NODES` - comma-separated nodes to connect to, e.g.
    `core@10.0.0.5,core@10.0.0.6`;
  * `FL_CORE_DNS` - a DNS name whose A records (through the system
    resolver) are the Core hosts (a Kubernetes headless service, say),
    looked up every `FL_CORE_DNS_INTERVAL_MS`; each address becomes the
    node `FL_CORE_BASENAME@ADDRESS` (basename default `core`).

  A node that cannot be reached, or goes down, is retried with exponential
  backoff (0.5 s up to 30 s). Every join and loss is logged. Nothing
  happens unless this node is distributed.

  Connecting happens in a process of its own, one at a time per node, so
  a host that drops packets (a connect can take `net_setuptime`) never
  blocks this server. Node names are atoms, which are never freed: at
  most #{256} names are ever made from DNS answers; past that, new
  addresses are logged and skipped.
  """
  use GenServer

  alias Worker.Stray

  require Logger

  @min_backoff 500
  @max_backoff 30_000
  @max_dns_names 256

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc false
  def server, do: :persistent_term.get({__MODULE__, :server})

  @doc "The target nodes and whether each is connected."
  @spec status() :: %{node() => boolean()}
  def status, do: GenServer.call(server(), :status)

  @impl true
  def init(_opts) do
    :persistent_term.put({__MODULE__, :server}, self())
    static = MapSet.new(Application.fetch_env!(:worker, :core_nodes))

    state = %{
      static: static,
      targets: static,
      backoff: %{},
      connecting: MapSet.new(),
      dns_names: MapSet.new(),
      dns: Application.get_env(:worker, :core_dns),
      # {module, function}, called with the name as a charlist; a test can
      # put its own in the state
      resolver: {__MODULE__, :getaddrs},
      basename: Application.fetch_env!(:worker, :core_basename),
      dns_interval: Application.fetch_env!(:worker, :core_dns_interval_ms)
    }

    if Node.alive?() do
      :ok = :net_kernel.monitor_nodes(true)
      Enum.each(state.targets, &send(self(), {:connect, &1}))
      if state.dns, do: send(self(), :resolve)
    end

    {:ok, state}
  end

  @impl true
  def handle_call(:status, _from, state) do
    {:reply, Map.new(state.targets, &{&1, &1 in Node.list()}), state}
  end

  def handle_call(request, _from, state), do: Stray.call(__MODULE__, request, state)

  @impl true
  def handle_cast(request, state), do: Stray.cast(__MODULE__, request, state)

  @impl true
  def handle_info({:connect, node}, state) when is_atom(node) do
    cond do
      node not in state.targets ->
        {:noreply, %{state | backoff: Map.delete(state.backoff, node)}}

      node in Node.list() or node in state.connecting ->
        {:noreply, state}

      true ->
        server = self()
        spawn(fn -> send(server, {:"$fl_connected", node, Node.connect(node) == true}) end)
        {:noreply, %{state | connecting: MapSet.put(state.connecting, node)}}
    end
  end

  def handle_info({:"$fl_connected", node, connected?}, state) do
    state = %{state | connecting: MapSet.delete(state.connecting, node)}

    cond do
      connected? ->
        {:noreply, %{state | backoff: Map.delete(state.backoff, node)}}

      node in state.targets ->
        delay = Map.get(state.backoff, node, @min_backoff)
        Logger.debug("Worker.Cluster: #{node} unreachable; retrying in #{delay} ms")
        Process.send_after(self(), {:connect, node}, delay)
        {:noreply, put_in(state.backoff[node], min(delay * 2, @max_backoff))}

      true ->
        {:noreply, state}
    end
  end

  def handle_info(:resolve, state) when is_binary(state.dns) do
    {module, function} = state.resolver

    {found, state} =
      case apply(module, function, [String.to_charlist(state.dns)]) do
        {:ok, ips} -> names(ips, state)
        {:error, reason} -> {log_dns_failure(state, reason), state}
      end

    # The latest answer replaces the previous one: hosts gone from DNS are
    # no longer retried. A failed lookup keeps the previous answer.
    new = MapSet.difference(found, state.targets)
    Enum.each(new, &send(self(), {:connect, &1}))
    Process.send_after(self(), :resolve, state.dns_interval)
    {:noreply, %{state | targets: MapSet.union(state.static, found)}}
  end

  def handle_info({:nodeup, node}, state) do
    Logger.info("Worker.Cluster: joined #{node}")
    {:noreply, state}
  end

  def handle_info({:nodedown, node}, state) do
    Logger.warning("Worker.Cluster: lost #{node}")

    if node in state.targets do
      Process.send_after(self(), {:connect, node}, @min_backoff)
    end

    {:noreply, state}
  end

  def handle_info(message, state), do: Stray.info(__MODULE__, message, state)

  @doc false
  def getaddrs(name), do: :inet.getaddrs(name, :inet)

  # Node names for the addresses, making new atoms only under the cap.
  defp names(ips, state) do
    Enum.reduce(ips, {MapSet.new(), state}, fn ip, {found, state} ->
      text = "#{state.basename}@#{:inet.ntoa(ip)}"

      name =
        try do
          String.to_existing_atom(text)
        rescue
          ArgumentError -> nil
        end

      cond do
        name ->
          {MapSet.put(found, name), state}

        MapSet.size(state.dns_names) < @max_dns_names ->
          name = String.to_atom(text)
          {MapSet.put(found, name), %{state | dns_names: MapSet.put(state.dns_names, name)}}

        true ->
          Logger.warning(
            "Worker.Cluster: #{@max_dns_names} node names made from DNS already; skipping #{text}"
          )

          {found, state}
      end
    end)
  end

  defp log_dns_failure(state, reason) do
    Logger.warning("Worker.Cluster: cannot resolve #{state.dns}: #{inspect(reason)}")
    MapSet.difference(state.targets, state.static)
  end
end
