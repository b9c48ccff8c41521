defmodule Worker.Cluster do
  @moduledoc """
  Joins the FunLess cluster with OTP alone (libcluster is a hex package).

  * `FL_CORE_NODES` - comma-separated nodes to connect to, e.g.
    `core@10.0.0.5,core@10.0.0.6`;
  * `FL_CORE_DNS` - a DNS name whose A records (through the system resolver) are the Core hosts (a
    Kubernetes headless service, say), looked up every
    `FL_CORE_DNS_INTERVAL_MS`; each address becomes the node
    `FL_CORE_BASENAME@ADDRESS` (basename default `core`).

  A node that cannot be reached, or goes down, is retried with exponential
  backoff (0.5 s up to 30 s). Every join and loss is logged. Nothing
  happens unless this node is distributed.
  """
  use GenServer

  require Logger

  @min_backoff 500
  @max_backoff 30_000

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "The target nodes and whether each is connected."
  @spec status() :: %{node() => boolean()}
  def status, do: GenServer.call(__MODULE__, :status)

  @impl true
  def init(_opts) do
    static = MapSet.new(Application.get_env(:worker, :core_nodes, []))

    state = %{
      static: static,
      targets: static,
      backoff: %{},
      dns: Application.get_env(:worker, :core_dns),
      basename: Application.get_env(:worker, :core_basename, "core"),
      dns_interval: Application.get_env(:worker, :core_dns_interval_ms, 10_000)
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

  @impl true
  def handle_info({:connect, node}, state) do
    cond do
      node not in state.targets ->
        {:noreply, %{state | backoff: Map.delete(state.backoff, node)}}

      node in Node.list() ->
        {:noreply, state}

      Node.connect(node) == true ->
        {:noreply, %{state | backoff: Map.delete(state.backoff, node)}}

      true ->
        delay = Map.get(state.backoff, node, @min_backoff)
        Logger.debug("Worker.Cluster: #{node} unreachable; retrying in #{delay} ms")
        Process.send_after(self(), {:connect, node}, delay)
        {:noreply, put_in(state.backoff[node], min(delay * 2, @max_backoff))}
    end
  end

  def handle_info(:resolve, state) do
    found =
      case :inet.getaddrs(String.to_charlist(state.dns), :inet) do
        {:ok, ips} -> MapSet.new(ips, fn ip -> :"#{state.basename}@#{:inet.ntoa(ip)}" end)
        {:error, reason} -> log_dns_failure(state, reason)
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

  defp log_dns_failure(state, reason) do
    Logger.warning("Worker.Cluster: cannot resolve #{state.dns}: #{inspect(reason)}")
    MapSet.difference(state.targets, state.static)
  end
end
