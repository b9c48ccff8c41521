defmodule Worker.ApplicationTest do
  # The boot of a worker node (Worker.Application), on a node of its own.
  use ExUnit.Case, async: false
  @moduletag :tmp_dir

  alias Worker.Test.Cluster

  defp start_node! do
    {peer, node} = Cluster.start_node!(name: :"app_#{System.unique_integer([:positive])}")
    on_exit(fn -> Cluster.stop(peer) end)
    node
  end

  defp boot(node, dir, env) do
    # quiet: a boot that fails reports each application stopping
    :ok = :erpc.call(node, :logger, :set_primary_config, [:level, :none])
    :ok = :erpc.call(node, Application, :load, [:worker])

    for {key, value} <- [data_dir: dir, metrics_port: 0, discovery: :none] ++ env do
      :ok = :erpc.call(node, Application, :put_env, [:worker, key, value])
    end

    :ok = :erpc.call(node, Application, :put_env, [:logger, :level, :emergency])
    :erpc.call(node, Application, :ensure_all_started, [:worker])
  end

  test "makes the data directory and the artifact key, clears interrupted writes, and " <>
         "registers :worker last",
       %{tmp_dir: dir} do
    data = Path.join(dir, "data")
    File.mkdir_p!(Path.join(data, "functions"))
    leftover = Path.join([data, "functions", "f.tmp.123"])
    File.write!(leftover, "half a write")

    node = start_node!()
    assert {:ok, _} = boot(node, data, [])

    refute File.exists?(leftover)
    key = Path.join(data, "artifact_key")
    assert %File.Stat{size: 32, mode: mode} = File.stat!(key)
    assert Bitwise.band(mode, 0o777) == 0o600
    assert is_pid(:erpc.call(node, Process, :whereis, [:worker]))

    children = :erpc.call(node, Supervisor, :which_children, [Worker.Application.supervisor()])
    ids = children |> Enum.map(&elem(&1, 0)) |> Enum.reverse()

    assert ids == [
             Worker.Metrics.Endpoint,
             Worker.NodeInfo,
             Worker.Cache,
             Worker.Admission,
             Worker.Server,
             Worker.Cluster
           ]
  end

  test "a runtime that cannot start with its settings stops the boot, saying why",
       %{tmp_dir: dir} do
    node = start_node!()
    # more concurrency than pool instances: refused before the engine starts
    assert {:error, {:worker, reason}} = boot(node, dir, max_concurrency: 8, pool_instances: 4)

    assert inspect(reason) =~ "FL_MAX_CONCURRENCY (8) is above FL_POOL_INSTANCES (4)"
    refute :erpc.call(node, Process, :whereis, [:worker])
  end
end
