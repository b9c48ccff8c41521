defmodule Worker.ClusterTest do
  # Joining the Core with OTP alone: listed nodes, DNS, libcluster's gossip
  # heartbeats, Kubernetes pods, and reconnection. Every address is on
  # loopback: gossip goes to 127.0.0.x, never to a multicast group.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Worker.Test.Helpers, only: [eventually: 1, free_udp_port: 0, free_udp_port: 1]
  alias Worker.Test.Cluster

  @moduletag :tmp_dir

  defp connected?(node, other), do: other in :erpc.call(node, Node, :list, [])

  test "connects to FL_CORE_NODES, and reconnects after losing one", %{tmp_dir: dir} do
    {core_peer, core} =
      Cluster.start_node!(name: :"core_#{System.unique_integer([:positive])}", isolated: true)

    on_exit(fn -> Cluster.stop(core_peer) end)

    {peer, worker} =
      Cluster.start_worker!(dir, [core_nodes: [core, :"nobody@127.0.0.1"]], isolated: true)

    on_exit(fn -> Cluster.stop(peer) end)

    assert eventually(fn -> connected?(worker, core) end)
    assert %{^core => true} = :erpc.call(worker, Worker.Cluster, :status, [])

    # the Core drops the connection; the worker comes back on its own
    true = :erpc.call(core, Node, :disconnect, [worker])
    # the worker retries after 500 ms at the earliest: the gap is seen
    assert eventually(fn -> not connected?(worker, core) end)
    assert eventually(fn -> connected?(worker, core) end)
  end

  test "finds Core nodes through DNS: FL_CORE_DNS and FL_CORE_BASENAME", %{tmp_dir: dir} do
    basename = "core#{System.unique_integer([:positive])}"
    {core_peer, core} = Cluster.start_node!(name: String.to_atom(basename), isolated: true)
    on_exit(fn -> Cluster.stop(core_peer) end)
    assert core == :"#{basename}@127.0.0.1"

    {peer, worker} =
      Cluster.start_worker!(
        dir,
        [core_dns: "localhost", core_basename: basename, core_dns_interval_ms: 100],
        isolated: true
      )

    on_exit(fn -> Cluster.stop(peer) end)
    assert eventually(fn -> connected?(worker, core) end)

    # DNS stops answering: the Core found before stays a target
    :ok = :erpc.call(worker, Cluster, :set_core_dns, ["nowhere.invalid"])
    :ok = :erpc.call(worker, Logger, :configure, [[level: :error]])
    # a few lookups later
    Process.sleep(500)
    assert %{^core => true} = :erpc.call(worker, Worker.Cluster, :status, [])
  end

  test "DNS answers that keep changing make a bounded number of atoms, and never block", %{
    tmp_dir: dir
  } do
    {peer, worker} = Cluster.start_worker!(dir, [core_dns_interval_ms: 50], isolated: true)
    on_exit(fn -> Cluster.stop(peer) end)
    :ok = :erpc.call(worker, Cluster, :set_changing_dns, [])
    # the first answers reach the cap of 256 names (and load what a connect
    # attempt needs); from then on, no answer makes an atom
    Process.sleep(500)
    atoms = :erpc.call(worker, :erlang, :system_info, [:atom_count])

    # 300 new addresses every 50 ms; the server answers meanwhile
    for _ <- 1..20 do
      Process.sleep(50)
      {micros, status} = :timer.tc(fn -> :erpc.call(worker, Worker.Cluster, :status, []) end)
      assert is_map(status)
      assert micros < 200_000
    end

    assert :erpc.call(worker, :erlang, :system_info, [:atom_count]) - atoms < 50
  end

  # -- gossip ------------------------------------------------------------------

  # libcluster's heartbeat, as Cluster.Strategy.Gossip sends it (no secret)
  defp heartbeat(node, opts \\ []),
    do: ["heartbeat::", :erlang.term_to_binary(%{node: node}, opts)]

  # A worker listening for gossip on 127.0.0.2:port and sending its own
  # heartbeats to 127.0.0.1:port, where `socket` listens.
  defp gossiping_worker(dir) do
    port = free_udp_port({127, 0, 0, 2})
    {:ok, socket} = :gen_udp.open(port, [:binary, active: true, ip: {127, 0, 0, 1}])
    on_exit(fn -> :gen_udp.close(socket) end)

    env = [
      discovery: :gossip,
      gossip_if: {127, 0, 0, 2},
      gossip_addr: {127, 0, 0, 1},
      gossip_port: port
    ]

    {peer, worker} = Cluster.start_worker!(dir, env, isolated: true)
    on_exit(fn -> Cluster.stop(peer) end)
    # listening: its first heartbeat goes out once its socket is open
    assert_receive {:udp, ^socket, _, _, "heartbeat::" <> _}, 5_000
    %{worker: worker, port: port, socket: socket}
  end

  defp tell(port, packet) do
    {:ok, s} = :gen_udp.open(0, ip: {127, 0, 0, 1})
    :ok = :gen_udp.send(s, {127, 0, 0, 2}, port, packet)
    :gen_udp.close(s)
  end

  # the external term format's compressed form (term_to_binary/2 leaves a
  # term this small as it is)
  defp compressed(term) do
    <<131, raw::binary>> = :erlang.term_to_binary(term)
    <<131, 80, byte_size(raw)::32, :zlib.compress(raw)::binary>>
  end

  defp heartbeats(worker), do: :erpc.call(worker, Worker.Cluster, :heartbeats, [])

  test "gossip: a libcluster heartbeat makes the worker connect to the node it names, " <>
         "and the worker sends its own",
       %{tmp_dir: dir} do
    {core_peer, core} =
      Cluster.start_node!(name: :"core_#{System.unique_integer([:positive])}", isolated: true)

    on_exit(fn -> Cluster.stop(core_peer) end)
    %{worker: worker, port: port, socket: socket} = gossiping_worker(dir)
    refute connected?(worker, core)

    # its own heartbeats, every 5 s at most, read the way libcluster reads them
    assert_receive {:udp, ^socket, {127, 0, 0, 2}, ^port, "heartbeat::" <> term}, 6_000
    assert :erlang.binary_to_term(term) == %{node: worker}
    # (more than one)

    tell(port, heartbeat(core))
    assert eventually(fn -> connected?(worker, core) end)
    assert %{^core => true} = :erpc.call(worker, Worker.Cluster, :status, [])
    assert heartbeats(worker).ok >= 1

    # an older encoding of the same (atoms as Latin-1), and the worker's own
    # name, are read too
    tell(port, heartbeat(core, minor_version: 1))
    tell(port, heartbeat(worker))
    assert eventually(fn -> heartbeats(worker).ok >= 3 end)
    assert heartbeats(worker).malformed == 0
  end

  test "gossip: malformed and oversized heartbeats are ignored and counted, making no atom",
       %{tmp_dir: dir} do
    %{worker: worker, port: port} = gossiping_worker(dir)
    atoms = :erpc.call(worker, :erlang, :system_info, [:atom_count])
    fresh = "fresh#{System.unique_integer([:positive])}@127.0.0.1"

    malformed = [
      "",
      "hello",
      "heartbeat::",
      "heartbeat::" <> :binary.copy(<<255>>, 40),
      # not a map of node: atom
      ["heartbeat::", :erlang.term_to_binary(%{node: fresh})],
      ["heartbeat::", :erlang.term_to_binary(%{node: :a@b, other: 1})],
      ["heartbeat::", :erlang.term_to_binary({:node, :a@b})],
      ["heartbeat::", :erlang.term_to_binary(%{name: :a@b})],
      # a node name that is not one
      ["heartbeat::", :erlang.term_to_binary(%{node: :"no at sign"})],
      ["heartbeat::", :erlang.term_to_binary(%{node: :"bad name@host\n"})],
      # compressed, or with trailing bytes
      ["heartbeat::", compressed(%{node: :a@b})],
      ["heartbeat::", :erlang.term_to_binary(%{node: :a@b}), "x"],
      # libcluster's encrypted heartbeats: 16 bytes of IV, then ciphertext
      :crypto.strong_rand_bytes(48)
    ]

    for packet <- malformed, do: tell(port, packet)
    tell(port, :binary.copy("h", 600))
    tell(port, ["heartbeat::", :erlang.term_to_binary(%{node: :binary.copy("n", 600)})])

    expected = %{ok: 0, malformed: length(malformed), oversized: 2, foreign: 0, over_cap: 0}
    assert eventually(fn -> heartbeats(worker) == expected end), inspect(heartbeats(worker))

    # none of it made an atom (the fresh name among them)
    assert :erpc.call(worker, :erlang, :system_info, [:atom_count]) - atoms < 10
    assert :erpc.call(worker, Worker.Cluster, :status, []) == %{}

    # and so says the metrics page
    page =
      :erpc.call(worker, Worker.Metrics.Prometheus, :render, [])
      |> IO.iodata_to_binary()
      |> Worker.Test.Prometheus.parse!()

    counted =
      &Worker.Test.Prometheus.value(page, "worker_gossip_heartbeats_total", %{"outcome" => &1})

    assert counted.("malformed") == length(malformed) * 1.0
    assert counted.("oversized") == 2.0
    assert counted.("ok") == 0.0
  end

  test "gossip: a heartbeat is taken only from the host it names", %{tmp_dir: dir} do
    %{worker: worker, port: port} = gossiping_worker(dir)
    # sent from 127.0.0.1, naming nodes elsewhere
    for host <- ["10.1.2.3", "127.0.0.2", "example.com"] do
      tell(port, ["heartbeat::", :erlang.term_to_binary(%{node: :"core@#{host}"})])
    end

    assert eventually(fn -> heartbeats(worker).foreign == 3 end)
    assert heartbeats(worker).ok == 0
    assert :erpc.call(worker, Worker.Cluster, :status, []) == %{}
  end

  test "gossip is the default unless the Core is named, as FunLess's workers gossip",
       %{tmp_dir: dir} do
    discovery = fn env ->
      {peer, worker} = Cluster.start_worker!(Path.join(dir, "#{System.unique_integer()}"), env)

      state =
        :erpc.call(worker, :sys, :get_state, [:erpc.call(worker, Worker.Cluster, :server, [])])

      Cluster.stop(peer)
      state.discovery
    end

    # on a port of its own, on loopback: the default would listen everywhere
    gossip = [
      gossip_if: {127, 0, 0, 2},
      gossip_addr: {127, 0, 0, 1},
      gossip_port: free_udp_port()
    ]

    assert discovery.([discovery: :auto] ++ gossip) == :gossip
    assert discovery.([discovery: :auto, core_nodes: [:"core@127.0.0.1"]] ++ gossip) == :none
    assert discovery.([discovery: :auto, core_dns: "localhost"] ++ gossip) == :none
  end

  test "gossip: heartbeats naming ever new nodes make a bounded number of atoms", %{
    tmp_dir: dir
  } do
    %{worker: worker, port: port} = gossiping_worker(dir)
    :ok = :erpc.call(worker, Logger, :configure, [[level: :error]])
    atoms = :erpc.call(worker, :erlang, :system_info, [:atom_count])
    base = System.unique_integer([:positive])

    # 1,000 names no node has, paced so that the socket's buffer keeps them
    # (names are made from the text by hand here: no atom in this VM either)
    for batch <- Enum.chunk_every(1..1_000, 50) do
      for i <- batch do
        name = "n#{base}_#{i}@127.0.0.1"

        tell(port, [
          "heartbeat::",
          <<131, 116, 1::32, 119, 4, "node", 119, byte_size(name)>>,
          name
        ])
      end

      Process.sleep(10)
    end

    assert eventually(fn ->
             %{ok: ok, over_cap: over} = heartbeats(worker)
             ok + over == 1_000
           end)

    assert %{ok: 256, over_cap: 744} = heartbeats(worker)
    assert :erpc.call(worker, :erlang, :system_info, [:atom_count]) - atoms < 256 + 50
    # and the server answers meanwhile
    assert map_size(:erpc.call(worker, Worker.Cluster, :status, [])) == 256
  end

  # -- Kubernetes ---------------------------------------------------------------

  test "kubernetes: the Core's pods, listed with the service account, are connected to",
       %{tmp_dir: dir} do
    basename = "fl_core#{System.unique_integer([:positive])}"
    {core_peer, core} = Cluster.start_node!(name: String.to_atom(basename), isolated: true)
    on_exit(fn -> Cluster.stop(core_peer) end)

    pods = [
      %{
        "metadata" => %{"name" => "core-0", "namespace" => "fl"},
        "status" => %{"podIP" => "127.0.0.1"}
      },
      # a pod with no address yet, and one with something else
      %{"metadata" => %{"name" => "core-1"}, "status" => %{"phase" => "Pending"}},
      %{"metadata" => %{"name" => "core-2"}, "status" => %{"podIP" => "not an address"}}
    ]

    api = Worker.Test.KubernetesAPI.start!(dir, pods)

    env = [
      discovery: :kubernetes,
      k8s_api: api.api,
      k8s_account_dir: api.account_dir,
      k8s_interval_ms: 200,
      core_basename: basename
    ]

    {peer, worker} = Cluster.start_worker!(Path.join(dir, "worker"), env, isolated: true)
    on_exit(fn -> Cluster.stop(peer) end)

    # the request libcluster's :pods mode makes, with the pod's token, in
    # the pod's own namespace
    assert_receive {:k8s_request, path, authorization}, 10_000
    assert path == "/api/v1/namespaces/fl/pods?labelSelector=app%3Dfl-core"
    assert authorization == "Bearer " <> api.token

    assert eventually(fn -> connected?(worker, core) end)
    assert :erpc.call(worker, Worker.Cluster, :status, []) == %{core => true}
  end

  test "kubernetes: an API whose certificate the service account's CA did not sign is " <>
         "not trusted; a wrong token is refused",
       %{tmp_dir: dir} do
    api = Worker.Test.KubernetesAPI.start!(dir, [%{"status" => %{"podIP" => "127.0.0.1"}}])
    # another CA
    other = Worker.Test.KubernetesAPI.start!(Path.join(dir, "other"), [])
    File.cp!(Path.join(other.account_dir, "ca.crt"), Path.join(api.account_dir, "ca.crt"))

    opts = %{api: api.api, selector: "app=fl-core", namespace: nil, account_dir: api.account_dir}
    assert {:error, reason} = Worker.Cluster.Kubernetes.lookup(opts)
    assert reason =~ "certificate" or reason =~ "unknown_ca", reason

    # and with its own CA, the same API answers
    File.cp!(Path.join(dir, "ca.crt"), Path.join(api.account_dir, "ca.crt"))
    assert Worker.Cluster.Kubernetes.lookup(opts) == {:ok, [{127, 0, 0, 1}]}
    # a namespace given is used, a wrong token is refused
    File.write!(Path.join(api.account_dir, "token"), "wrong")

    assert {:error, "status 401" <> _} =
             Worker.Cluster.Kubernetes.lookup(%{opts | namespace: "elsewhere"})

    assert_receive {:k8s_request, "/api/v1/namespaces/elsewhere/pods?" <> _, "Bearer wrong"}
  end

  test "a well-known or short cookie is warned about, saying what to do" do
    for cookie <- [:default_secret, :Secret, :monster] do
      log = capture_log(fn -> Worker.Cluster.warn_about_cookie(cookie) end)
      assert log =~ "well-known", inspect(cookie)
      assert log =~ "RELEASE_COOKIE"
    end

    assert capture_log(fn -> Worker.Cluster.warn_about_cookie(:abc123) end) =~ "too few"

    assert capture_log(fn -> Worker.Cluster.warn_about_cookie(:k7Qz9vXw2LmPn4Rt8Ys) end) ==
             ""
  end

  test "a node name the FunLess Core would not take for a worker is warned about" do
    assert capture_log(fn -> Worker.Cluster.warn_about_name("fl@10.0.0.7") end) =~
             ~s(only when its name contains "worker")

    assert capture_log(fn -> Worker.Cluster.warn_about_name("worker@core-host") end) =~
             ~s(Core node too)

    assert capture_log(fn -> Worker.Cluster.warn_about_name("worker@10.0.0.7") end) == ""
  end
end
