defmodule Worker.Cluster do
  @moduledoc """
  Joins the FunLess cluster with OTP alone (libcluster is a hex package),
  finding Core nodes the ways FunLess's own nodes find each other, and a
  few more:

  * `FL_CORE_NODES` - comma-separated nodes to connect to, e.g.
    `core@10.0.0.5,core@10.0.0.6`;
  * `FL_CORE_DNS` - a DNS name whose A records (through the system
    resolver) are the Core hosts (a Kubernetes headless service, say),
    looked up every `FL_CORE_DNS_INTERVAL_MS`; each address becomes the
    node `FL_CORE_BASENAME@ADDRESS` (basename default `core`);
  * `FL_DISCOVERY=gossip` (the default, as FunLess outside Kubernetes,
    unless `FL_CORE_NODES` or `FL_CORE_DNS` names the Core) - libcluster's
    Gossip heartbeats (`Worker.Cluster.Gossip`): this node sends its own to
    `FL_GOSSIP_ADDR` (the multicast group 233.252.1.32) on
    `FL_GOSSIP_PORT` (45892, or FunLess's `LIBCLUSTER_PORT`) every few
    seconds, listens there (on `FL_GOSSIP_IF`, every interface), and
    connects to each node a heartbeat names, as long as heartbeats keep
    naming it. A heartbeat is taken only from the host it names (its
    node's host is the address it came from): a host on the network can
    make this node connect to itself, never elsewhere. Gossip trusts the
    local network as libcluster does: what keeps a stranger out is the
    cookie (or TLS distribution);
  * `FL_DISCOVERY=kubernetes` (the default when `DEPLOY_ENV=kubernetes`,
    as FunLess sets it in its manifests) - the pods of the Kubernetes API
    matching `FL_K8S_SELECTOR` (`app=fl-core`) in `FL_K8S_NAMESPACE` (the
    pod's own), every `FL_K8S_INTERVAL_MS`, each pod's address the node
    `FL_CORE_BASENAME@IP` (`Worker.Cluster.Kubernetes`);
  * `FL_DISCOVERY=none` - only the first two.

  A node that cannot be reached, or goes down, is retried with exponential
  backoff (0.5 s up to 30 s) while some source still names it. Every join
  and loss is logged. Nothing happens unless this node is distributed.

  Connecting happens in a process of its own, one at a time per node, so
  a host that drops packets (a connect can take `net_setuptime`) never
  blocks this server. Node names are atoms, which are never freed: at
  most #{256} names are ever made from what heartbeats say, and as many
  from what DNS and Kubernetes say (so that a flood of heartbeats cannot
  spend the lookups' room); past that, new names are skipped, and a
  warning says so once a minute. Heartbeats that are not libcluster's,
  name no node, or name one on another host than the sender's, are
  ignored, and counted by outcome (`heartbeats/0`).

  At start, it warns when the FunLess Core would not take this node for
  a worker: the Core counts a node as a worker only when its name
  contains `worker` (`Core.Domain.Nodes`, and its telemetry `Monitor`),
  and as a Core when it contains `core`. It warns too when the cookie is
  a well-known one (FunLess's own images ship `default_secret`): any host
  that reaches the node's Erlang ports with it can run code on it.
  """
  use GenServer

  alias Worker.Cluster.{Gossip, Kubernetes}
  alias Worker.Stray

  require Logger

  @min_backoff 500
  @max_backoff 30_000
  @max_made_names 256
  # a node heard of through gossip stays a target this long after its
  # last heartbeat (libcluster sends one every 5 s at most)
  @heard_ttl 30_000
  @gossip_retry 30_000
  @warn_every 60_000

  @outcomes [:ok, :malformed, :oversized, :foreign, :over_cap]

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc false
  def server, do: :persistent_term.get({__MODULE__, :server})

  @doc "The target nodes and whether each is connected."
  @spec status() :: %{node() => boolean()}
  def status, do: GenServer.call(server(), :status)

  @doc """
  Gossip heartbeats received since the start, by outcome: `:ok` (a node
  named, this one included), `:malformed` (not a libcluster heartbeat
  naming a node), `:oversized` (over #{Gossip.max_packet()} bytes),
  `:foreign` (naming a node on another host than the sender),
  `:over_cap` (a new name, with no atom left for it).
  """
  @spec heartbeats() :: %{atom() => non_neg_integer()}
  def heartbeats do
    counters = :persistent_term.get({__MODULE__, :heartbeats}, nil)

    for {outcome, i} <- Enum.with_index(@outcomes, 1),
        into: %{},
        do: {outcome, if(counters, do: :counters.get(counters, i), else: 0)}
  end

  defp count(outcome) do
    index = Enum.find_index(@outcomes, &(&1 == outcome)) + 1
    :counters.add(:persistent_term.get({__MODULE__, :heartbeats}), index, 1)
  end

  @impl true
  def init(_opts) do
    :persistent_term.put({__MODULE__, :server}, self())

    # the counts outlive restarts of this server
    unless :persistent_term.get({__MODULE__, :heartbeats}, nil) do
      counters = :counters.new(length(@outcomes), [:write_concurrency])
      :persistent_term.put({__MODULE__, :heartbeats}, counters)
    end

    static = MapSet.new(Application.fetch_env!(:worker, :core_nodes))

    state = %{
      static: static,
      dns_found: MapSet.new(),
      k8s_found: MapSet.new(),
      heard: %{},
      backoff: %{},
      connecting: MapSet.new(),
      # names made into atoms, by where they came from
      made: %{gossip: MapSet.new(), lookup: MapSet.new()},
      skipped: 0,
      warned_at: nil,
      dns: Application.get_env(:worker, :core_dns),
      # {module, function}, called with the name as a charlist; a test can
      # put its own in the state
      resolver: {__MODULE__, :getaddrs},
      basename: Application.fetch_env!(:worker, :core_basename),
      dns_interval: Application.fetch_env!(:worker, :core_dns_interval_ms),
      discovery: discovery(static),
      gossip: %{
        socket: nil,
        if_addr: Application.fetch_env!(:worker, :gossip_if),
        port: Application.fetch_env!(:worker, :gossip_port),
        group: Application.fetch_env!(:worker, :gossip_addr),
        failed: nil
      },
      kubernetes: %{
        api: Application.fetch_env!(:worker, :k8s_api),
        selector: Application.fetch_env!(:worker, :k8s_selector),
        namespace: Application.get_env(:worker, :k8s_namespace),
        account_dir: Application.fetch_env!(:worker, :k8s_account_dir)
      },
      k8s_interval: Application.fetch_env!(:worker, :k8s_interval_ms),
      k8s_error: nil
    }

    if Node.alive?() do
      warn_about_name(Atom.to_string(node()))
      warn_about_cookie(Node.get_cookie())
      :ok = :net_kernel.monitor_nodes(true)
      Enum.each(static, &send(self(), {:connect, &1}))
      if state.dns, do: send(self(), :resolve)

      case state.discovery do
        :gossip -> send(self(), :gossip_open)
        :kubernetes -> send(self(), :k8s_lookup)
        :none -> :ok
      end
    else
      Logger.info("Worker.Cluster: this node is not distributed; no Core can reach it")
    end

    {:ok, state}
  end

  # FL_DISCOVERY's default: gossip unless the Core is named otherwise
  defp discovery(static) do
    case Application.fetch_env!(:worker, :discovery) do
      :auto ->
        if MapSet.size(static) > 0 or Application.get_env(:worker, :core_dns),
          do: :none,
          else: :gossip

      discovery ->
        discovery
    end
  end

  @doc false
  # The warnings of init/1, for a node name; public for tests.
  def warn_about_name(name) do
    unless String.contains?(name, "worker") do
      Logger.warning(
        "Worker.Cluster: the FunLess Core will not schedule on #{name}: it takes a node " <>
          "for a worker only when its name contains \"worker\" (set RELEASE_NODE=worker@ADDRESS)"
      )
    end

    if String.contains?(name, "core") do
      Logger.warning(
        "Worker.Cluster: the FunLess Core takes #{name} for a Core node too, " <>
          "because its name contains \"core\"; give it a name without it"
      )
    end

    :ok
  end

  # cookies that come with software or its examples, FunLess's first
  @known_cookies ~w(default_secret secret cookie changeme change_me erlang elixir
                    monster nocookie mycookie my_cookie secret_cookie test password)

  @doc false
  # The warning of init/1 for a cookie; public for tests.
  def warn_about_cookie(cookie) do
    text = Atom.to_string(cookie)

    cond do
      String.downcase(text) in @known_cookies ->
        Logger.warning(
          "Worker.Cluster: the Erlang cookie is a well-known one (#{inspect(text)}; FunLess's " <>
            "images ship \"default_secret\"): any host that reaches this node's Erlang ports " <>
            "with it can run code here. Keep the ports on a network of their own, use TLS " <>
            "distribution, or give the Core (its image rebuilt) and every worker (RELEASE_COOKIE) " <>
            "a secret cookie"
        )

      byte_size(text) < 16 ->
        Logger.warning(
          "Worker.Cluster: the Erlang cookie has #{byte_size(text)} characters, too few to " <>
            "be a secret: set RELEASE_COOKIE to 16 random characters or more"
        )

      true ->
        :ok
    end

    :ok
  end

  @impl true
  def handle_call(:status, _from, state) do
    {:reply, Map.new(targets(state), &{&1, &1 in Node.list()}), state}
  end

  def handle_call(request, _from, state), do: Stray.call(__MODULE__, request, state)

  @impl true
  def handle_cast(request, state), do: Stray.cast(__MODULE__, request, state)

  @impl true
  def handle_info({:connect, node}, state) when is_atom(node) do
    cond do
      node not in targets(state) ->
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

      node in targets(state) ->
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

    state =
      case apply(module, function, [String.to_charlist(state.dns)]) do
        # The latest answer replaces the previous one: hosts gone from DNS
        # are no longer retried. A failed lookup keeps the previous answer.
        {:ok, ips} ->
          {found, state} = names(ips, state)
          found(state, :dns_found, found)

        {:error, reason} ->
          Logger.warning("Worker.Cluster: cannot resolve #{state.dns}: #{inspect(reason)}")
          state
      end

    Process.send_after(self(), :resolve, state.dns_interval)
    {:noreply, state}
  end

  ## Kubernetes

  def handle_info(:k8s_lookup, state) do
    server = self()
    opts = state.kubernetes

    spawn(fn ->
      result =
        try do
          Kubernetes.lookup(opts)
        catch
          kind, reason -> {:error, Exception.format_banner(kind, reason)}
        end

      send(server, {:"$fl_k8s", result})
    end)

    {:noreply, state}
  end

  def handle_info({:"$fl_k8s", result}, state) do
    Process.send_after(self(), :k8s_lookup, state.k8s_interval)

    case result do
      {:ok, ips} ->
        {found, state} = names(ips, state)
        if state.k8s_error, do: Logger.info("Worker.Cluster: the Kubernetes API answers again")
        {:noreply, found(%{state | k8s_error: nil}, :k8s_found, found)}

      # logged when it changes, not every lookup; the previous answer stays
      {:error, reason} ->
        if reason != state.k8s_error,
          do: Logger.warning("Worker.Cluster: cannot list the Core's pods: #{reason}")

        {:noreply, %{state | k8s_error: reason}}
    end
  end

  ## Gossip

  def handle_info(:gossip_open, %{gossip: gossip} = state) do
    case Gossip.open(gossip.if_addr, gossip.port, gossip.group) do
      {:ok, socket} ->
        if gossip.failed, do: Logger.info("Worker.Cluster: gossip listening again")
        send(self(), :heartbeat)
        Process.send_after(self(), :expire_heard, @heard_ttl)
        {:noreply, %{state | gossip: %{gossip | socket: socket, failed: nil}}}

      {:error, reason} ->
        if reason != gossip.failed do
          Logger.error(
            "Worker.Cluster: cannot listen for gossip on #{:inet.ntoa(gossip.if_addr)}:" <>
              "#{gossip.port} (group #{:inet.ntoa(gossip.group)}): #{inspect(reason)}; " <>
              "retrying every #{div(@gossip_retry, 1000)} s"
          )
        end

        Process.send_after(self(), :gossip_open, @gossip_retry)
        {:noreply, %{state | gossip: %{gossip | failed: reason}}}
    end
  end

  def handle_info(:heartbeat, %{gossip: %{socket: socket} = gossip} = state) when socket != nil do
    _ = Gossip.send_heartbeat(socket, gossip.group, gossip.port)
    # as libcluster: at a random time within 5 s
    Process.send_after(self(), :heartbeat, :rand.uniform(5_000))
    {:noreply, state}
  end

  def handle_info({:udp, socket, ip, _port, packet}, %{gossip: %{socket: socket}} = state) do
    case Gossip.decode(packet) do
      {:ok, text} ->
        {:noreply, heard(text, ip, state)}

      {:error, outcome} ->
        count(outcome)
        {:noreply, state}
    end
  end

  def handle_info({:udp_passive, socket}, %{gossip: %{socket: socket}} = state) do
    :ok = Gossip.rearm(socket)
    {:noreply, state}
  end

  def handle_info(:expire_heard, state) do
    now = System.monotonic_time(:millisecond)
    heard = Map.filter(state.heard, fn {_node, at} -> now - at < @heard_ttl end)
    Process.send_after(self(), :expire_heard, @heard_ttl)
    {:noreply, %{state | heard: heard}}
  end

  def handle_info({:nodeup, node}, state) do
    Logger.info("Worker.Cluster: joined #{node}")
    {:noreply, state}
  end

  def handle_info({:nodedown, node}, state) do
    Logger.warning("Worker.Cluster: lost #{node}")

    if node in targets(state) do
      Process.send_after(self(), {:connect, node}, @min_backoff)
    end

    {:noreply, state}
  end

  def handle_info(message, state), do: Stray.info(__MODULE__, message, state)

  @doc false
  def getaddrs(name), do: :inet.getaddrs(name, :inet)

  defp targets(state) do
    state.static
    |> MapSet.union(state.dns_found)
    |> MapSet.union(state.k8s_found)
    |> MapSet.union(MapSet.new(Map.keys(state.heard)))
  end

  # A lookup's answer replaces the previous one of its source; the nodes
  # that are new targets are connected to.
  defp found(state, source, found) do
    before = targets(state)
    state = Map.put(state, source, found)
    Enum.each(MapSet.difference(found, before), &send(self(), {:connect, &1}))
    state
  end

  # A heartbeat from `ip` named the node `text`: a target while heartbeats
  # keep naming it, if it is on the sender's host.
  defp heard(text, ip, state) do
    [_name, host] = String.split(text, "@", parts: 2)

    if :inet.parse_strict_address(String.to_charlist(host)) == {:ok, ip} do
      heard_from_its_host(text, state)
    else
      count(:foreign)
      state
    end
  end

  defp heard_from_its_host(text, state) do
    case node_name(text, :gossip, state) do
      {nil, state} ->
        count(:over_cap)
        state

      {node, state} ->
        count(:ok)

        cond do
          node == node() ->
            state

          Map.has_key?(state.heard, node) ->
            put_in(state.heard[node], System.monotonic_time(:millisecond))

          true ->
            send(self(), {:connect, node})
            put_in(state.heard[node], System.monotonic_time(:millisecond))
        end
    end
  end

  # Node names for the addresses.
  defp names(ips, state) do
    Enum.reduce(ips, {MapSet.new(), state}, fn ip, {found, state} ->
      case node_name("#{state.basename}@#{:inet.ntoa(ip)}", :lookup, state) do
        {nil, state} -> {found, state}
        {name, state} -> {MapSet.put(found, name), state}
      end
    end)
  end

  # The atom for a node name: one that exists, or a new one while fewer
  # than @max_made_names were made from `source`'s names (`:gossip` or
  # `:lookup`); else nil, with a warning once a minute.
  defp node_name(text, source, state) do
    {String.to_existing_atom(text), state}
  rescue
    ArgumentError ->
      if MapSet.size(state.made[source]) < @max_made_names do
        name = String.to_atom(text)
        {name, update_in(state.made[source], &MapSet.put(&1, name))}
      else
        {nil, skipped(state, text)}
      end
  end

  defp skipped(state, text) do
    now = System.monotonic_time(:millisecond)

    if state.warned_at == nil or now - state.warned_at >= @warn_every do
      Logger.warning(
        "Worker.Cluster: #{@max_made_names} node names made from this source already; " <>
          "skipped #{state.skipped + 1} new ones since the last warning, #{inspect(text)} among them"
      )

      %{state | skipped: 0, warned_at: now}
    else
      %{state | skipped: state.skipped + 1}
    end
  end
end
