defmodule Worker.ClusterTest do
  # Joining the Core with OTP alone: listed nodes, DNS, and reconnection;
  # the warnings about names and cookies. (Gossip and Kubernetes discovery
  # are tested in cluster/.)
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Worker.Test.Helpers, only: [eventually: 1]
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
