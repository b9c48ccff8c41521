defmodule Worker.Cluster.GossipTest do
  # libcluster's gossip heartbeats (Worker.Cluster.Gossip), on loopback:
  # they go to 127.0.0.x, never to a multicast group.
  use ExUnit.Case, async: false

  import Worker.Test.Helpers, only: [eventually: 1, free_udp_port: 0, free_udp_port: 1]
  alias Worker.Test.Cluster

  @moduletag :tmp_dir

  defp connected?(node, other), do: other in :erpc.call(node, Node, :list, [])

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
end
