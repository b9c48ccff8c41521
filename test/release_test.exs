defmodule Worker.ReleaseTest do
  # The BEAM release: built with `MIX_ENV=prod mix release`, started with
  # `bin/worker daemon`, configured by RELEASE_* and FL_* variables, and
  # driven over distribution like a real Core would.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures

  @moduletag :tmp_dir
  @moduletag timeout: 300_000

  test "the release carries the NIF, reads FL_* variables and serves the Core", %{tmp_dir: dir} do
    Worker.Test.Cluster.ensure_distributed!()
    root = Path.expand("..", __DIR__)
    release = Path.join(dir, "rel")

    {output, status} =
      System.cmd("mix", ["release", "--overwrite", "--path", release],
        cd: root,
        # a MIX_BUILD_PATH for this suite's build must not get prod's
        env: [{"MIX_ENV", "prod"}, {"MIX_BUILD_PATH", nil}],
        stderr_to_stdout: true
      )

    assert status == 0, output

    assert File.exists?(
             Path.join([release, "lib", "worker-0.1.0", "priv", "native", "worker_nif.so"])
           )

    # the benchmark is compiled in dev and test only
    assert Path.wildcard(Path.join([release, "**", "Elixir.Mix.Tasks.Worker.Bench.beam"])) == []

    node = :"release#{System.unique_integer([:positive])}@127.0.0.1"

    env = [
      {"RELEASE_NODE", Atom.to_string(node)},
      {"RELEASE_DISTRIBUTION", "name"},
      {"RELEASE_COOKIE", Atom.to_string(Node.get_cookie())},
      {"FL_DATA_DIR", Path.join(dir, "data")},
      {"FL_WORKER_TAG", "from-env"},
      {"FL_MAX_CONCURRENCY", "3"},
      {"FL_METRICS_PORT", "0"}
    ]

    bin = Path.join([release, "bin", "worker"])
    {_, 0} = System.cmd(bin, ["daemon"], env: env)
    on_exit(fn -> System.cmd(bin, ["stop"], env: env) end)

    assert wait_for_worker(node, 100)
    assert GenServer.call({:worker, node}, :get_info) == {:ok, Atom.to_string(node), "from-env"}
    assert :erpc.call(node, Application, :get_env, [:worker, :max_concurrency]) == 3

    wasm = wasm!("hello")
    fun = %{name: "hello", module: "rel", hash: :crypto.hash(:sha3_256, wasm), code: wasm}
    assert GenServer.call({:worker, node}, {:store_function, fun}) == :ok

    assert GenServer.call({:worker, node}, {:invoke, %{fun | code: nil}, %{"name" => "release"}}) ==
             {:ok, %{"payload" => "Hello release!"}}

    assert File.ls!(Path.join([dir, "data", "functions"])) != []
  end

  defp wait_for_worker(_node, 0), do: false

  defp wait_for_worker(node, tries) do
    if Node.connect(node) == true and :erpc.call(node, Process, :whereis, [:worker]) != nil do
      true
    else
      Process.sleep(100)
      wait_for_worker(node, tries - 1)
    end
  end
end
