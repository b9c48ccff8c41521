# The Core's own structs, defined only on this (Core) node: the worker
# nodes must accept them without having these modules.
defmodule Data.FunctionMetadata do
  defstruct tag: nil,
            capacity: -1,
            params: [],
            main_func: nil,
            miniSL_services: [],
            miniSL_equation: {}
end

defmodule Data.FunctionStruct do
  @enforce_keys [:name, :module, :hash]
  defstruct [:name, :module, :code, :hash, :metadata]
end

defmodule Worker.ServerTest do
  # A stand-in Core on this node drives worker nodes over distribution with
  # exactly the messages a FunLess Core sends.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  import Worker.Test.Core, only: [call: 2, without_code: 1, remote: 4]
  alias Worker.Test.Cluster

  @moduletag :tmp_dir
  @timeout 60_000

  setup %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir)
    on_exit(fn -> Cluster.stop(peer) end)
    %{node: node, peer: peer, dir: dir}
  end

  defp function(name, wasm, opts \\ []) do
    %Data.FunctionStruct{
      name: name,
      module: Keyword.get(opts, :module, "examples"),
      code: if(Keyword.get(opts, :code, true), do: wasm),
      hash: :crypto.hash(:sha3_256, wasm),
      metadata: %Data.FunctionMetadata{tag: "default", capacity: Keyword.get(opts, :capacity, -1)}
    }
  end

  test "store, then invoke without code", %{node: node} do
    hello = function("hello", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok

    assert call(
             node,
             {:invoke, Map.take(hello, [:name, :module, :hash, :metadata]), %{"name" => "Core"}}
           ) ==
             {:ok, %{"payload" => "Hello Core!"}}

    # storing it again neither compiles nor loads it again
    assert call(node, {:store_function, hello}) == :ok
    assert %{compiles: 1, artifact_loads: 0} = remote(node, Worker.Cache, :info, [])
  end

  test "plain maps work as well as the Core's structs", %{node: node} do
    wasm = wasm!("echo")
    fun = %{name: "echo", module: "m", hash: :crypto.hash(:sha3_256, wasm), code: wasm}
    assert call(node, {:store_function, fun}) == :ok
    assert call(node, {:invoke, %{fun | code: nil}, [1, 2]}) == {:ok, [1, 2]}
  end

  test "code_not_found hands back a handler that runs the original args", %{node: node} do
    hello = function("hello", wasm!("hello"))

    assert {:error, :code_not_found, handler} =
             call(node, {:invoke, without_code(hello), %{"name" => "original"}})

    assert node(handler) == node
    # the Core sends the code to the handler, as FunLess does, with call/3
    assert GenServer.call(handler, {:invoke, hello}, @timeout) ==
             {:ok, %{"payload" => "Hello original!"}}

    refute remote(node, Process, :alive?, [handler])

    # the code was kept: the next invocation needs none
    assert call(node, {:invoke, without_code(hello), %{"name" => "again"}}) ==
             {:ok, %{"payload" => "Hello again!"}}
  end

  test "an unused handler goes away after its timeout", %{dir: dir} do
    {peer, node} = Cluster.start_worker!(Path.join(dir, "other"), handler_timeout_ms: 100)
    on_exit(fn -> Cluster.stop(peer) end)
    hello = function("hello", wasm!("hello"))
    assert {:error, :code_not_found, handler} = call(node, {:invoke, without_code(hello), %{}})
    ref = Process.monitor(handler)
    assert_receive {:DOWN, ^ref, :process, _, _}, 5_000
  end

  test "invoke with code, sent straight to :worker", %{node: node} do
    assert call(node, {:invoke, function("echo", wasm!("echo"))}) == {:ok, %{}}
  end

  test "exec errors and invalid code come back as errors", %{node: node} do
    error = function("error", wasm!("error"))
    assert call(node, {:store_function, error}) == :ok

    assert call(node, {:invoke, without_code(error), %{"message" => "boom"}}) ==
             {:error, {:exec_error, "error while executing function: boom"}}

    bad = function("bad", "not wasm at all")
    assert {:error, {:invalid_module, _}} = call(node, {:store_function, bad})
    assert {:error, :code_not_found, _} = call(node, {:invoke, without_code(bad), %{}})
  end

  test "update serves the new code and forgets the old hash", %{node: node} do
    old = function("greeter", wasm!("hello"))
    new = function("greeter", wasm!("echo"))
    assert call(node, {:store_function, old}) == :ok
    assert call(node, {:update_function, old.hash, new}) == :ok

    assert call(node, {:invoke, without_code(new), %{"name" => "x"}}) == {:ok, %{"name" => "x"}}
    assert {:error, :code_not_found, _} = call(node, {:invoke, without_code(old), %{}})
  end

  test "delete forgets the function; deleting nothing is :ok", %{node: node} do
    hello = function("hello", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok
    assert call(node, {:delete_function, hello.name, hello.module, hello.hash}) == :ok
    assert {:error, :code_not_found, _} = call(node, {:invoke, without_code(hello), %{}})
    assert call(node, {:delete_function, "never", "stored", "hash"}) == :ok
  end

  test "a delete that arrives while the function is loading wins", %{node: node, dir: dir} do
    hello = function("hello", wasm!("hello"))
    # the store compiles for tens of milliseconds; the delete comes meanwhile
    store = Task.async(fn -> call(node, {:store_function, hello}) end)
    assert wait_until_loading(node)
    assert call(node, {:delete_function, hello.name, hello.module, hello.hash}) == :ok
    assert Task.await(store) == :ok

    assert {:error, :code_not_found, _} = call(node, {:invoke, without_code(hello), %{}})
    assert File.ls!(Path.join(dir, "functions")) == []
  end

  defp wait_until_loading(node, tries \\ 2_000) do
    cond do
      remote(node, Worker.Cache, :loading, []) != [] -> true
      tries == 0 -> false
      true -> wait_until_loading(node, tries - 1)
    end
  end

  test "node info: get, set long name, set tag", %{node: node} do
    assert call(node, :get_info) == {:ok, Atom.to_string(node), Atom.to_string(node)}

    assert call(node, {:set_long_name, "edge-worker-1"}) ==
             {:ok, "edge-worker-1", Atom.to_string(node)}

    assert call(node, {:set_tag, "gpu"}) == {:ok, "edge-worker-1", "gpu"}
    assert call(node, :get_info) == {:ok, "edge-worker-1", "gpu"}
  end

  test "node info that cannot be written is an error, and nothing changes", %{
    node: node,
    dir: dir
  } do
    # a data directory under a regular file: no directory can be made there
    blocker = Path.join(dir, "a-file")
    File.write!(blocker, "")
    data_dir = remote(node, Application, :fetch_env!, [:worker, :data_dir])
    :ok = remote(node, Application, :put_env, [:worker, :data_dir, Path.join(blocker, "data")])

    assert {:error, _} = call(node, {:set_tag, "gpu"})
    assert {:error, _} = call(node, {:set_long_name, "elsewhere"})
    assert call(node, :get_info) == {:ok, Atom.to_string(node), Atom.to_string(node)}

    :ok = remote(node, Application, :put_env, [:worker, :data_dir, data_dir])
    assert call(node, {:set_tag, "gpu"}) == {:ok, Atom.to_string(node), "gpu"}
  end

  test "capacity from the metadata, in bytes, bounds the function's memory", %{node: node} do
    metadata = %Data.FunctionMetadata{tag: "default", capacity: 1_048_576}
    grow = %{function("grow", wat!("grow")) | metadata: metadata}
    assert call(node, {:store_function, grow}) == :ok
    # 1 MiB: 16 pages, one of which the module starts with
    assert call(node, {:invoke, without_code(grow), 15}) == {:ok, 1}
    assert call(node, {:invoke, without_code(grow), 16}) == {:ok, -1}

    # what no module can run in is refused at once, in the Core's shape
    tiny = %{grow | metadata: %{metadata | capacity: 64}}
    assert {:error, {:insufficient_capacity, _}} = call(node, {:invoke, without_code(tiny), 1})
    assert {:error, {:insufficient_capacity, _}} = call(node, {:store_function, tiny})
  end

  test "malformed messages and crashing invocations leave :worker alive", %{node: node} do
    server = remote(node, Process, :whereis, [:worker])

    assert {:error, {:bad_request, _}} = call(node, {:no_such_request, 1, 2})

    assert {:error, {:bad_request, _}} =
             call(node, {:invoke, %{name: 1, module: "m", hash: "h"}, %{}})

    assert {:error, {:bad_request, _}} = call(node, {:invoke, :not_a_map, %{}})

    assert {:error, {:bad_request, _}} =
             call(node, {:store_function, %{name: "x", module: "m", hash: "h"}})

    assert {:error, {:bad_request, _}} =
             call(node, {:update_function, 42, function("x", wasm!("echo"))})

    assert {:error, {:bad_request, _}} = call(node, {:delete_function, :a, :b, :c})
    assert {:error, {:bad_request, _}} = call(node, :get_info_please)

    trap = function("trap", wat!("trap_unreachable"))
    assert {:error, {:trap, _}} = call(node, {:invoke, trap, %{}})

    assert {:error, {:invalid_args, _}} =
             call(node, {:invoke, function("echo", wasm!("echo")), {:tuple}})

    # a request that crashes (the function cache is gone) answers with the
    # crash; the next request is served
    echo = function("echo", wasm!("echo"))
    assert call(node, {:store_function, echo}) == :ok

    :ok =
      remote(node, Supervisor, :terminate_child, [
        remote(node, Worker.Application, :supervisor, []),
        Worker.Cache
      ])

    level = remote(node, Logger, :level, [])
    :ok = remote(node, Logger, :configure, [[level: :critical]])
    assert {:error, {:internal, _}} = call(node, {:invoke, without_code(echo), %{}})
    :ok = remote(node, Logger, :configure, [[level: level]])

    {:ok, _} =
      remote(node, Supervisor, :restart_child, [
        remote(node, Worker.Application, :supervisor, []),
        Worker.Cache
      ])

    # a raw message to the process
    send({:worker, node}, :garbage)

    assert call(node, {:invoke, without_code(echo), %{}}) == {:ok, %{}}
    assert remote(node, Process, :whereis, [:worker]) == server
  end

  test "500 concurrent invocations over distribution all succeed", %{node: node} do
    hello = function("hello", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok

    results =
      1..500
      |> Enum.map(fn i ->
        Task.async(fn -> {i, call(node, {:invoke, without_code(hello), %{"name" => "#{i}"}})} end)
      end)
      |> Task.await_many(@timeout)

    for {i, result} <- results, do: assert(result == {:ok, %{"payload" => "Hello #{i}!"}})
  end

  test "a hundred simultaneous first invocations compile once", %{node: node, dir: dir} do
    hello = function("hello", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok

    # a fresh node on the same data: nothing cached, no artifact
    File.rm_rf!(Path.join(dir, "artifacts"))
    {peer, fresh} = Cluster.start_worker!(dir)
    on_exit(fn -> Cluster.stop(peer) end)

    1..100
    |> Enum.map(fn _ -> Task.async(fn -> call(fresh, {:invoke, without_code(hello), %{}}) end) end)
    |> Task.await_many(@timeout)
    |> Enum.each(&assert(&1 == {:ok, %{"payload" => "Hello World!"}}))

    assert %{compiles: 1, misses: 1} = remote(fresh, Worker.Cache, :info, [])
  end

  test "the admission limit answers :overloaded past the queue", %{dir: dir} do
    {peer, node} =
      Cluster.start_worker!(Path.join(dir, "small"),
        max_concurrency: 2,
        queue_limit: 3,
        invoke_timeout_ms: 1_500,
        # one function may take every slot here (see fairness_test)
        function_share: 100
      )

    on_exit(fn -> Cluster.stop(peer) end)
    spin = function("spin", wat!("spin"))
    assert call(node, {:store_function, spin}) == :ok

    results =
      1..20
      |> Enum.map(fn _ -> Task.async(fn -> call(node, {:invoke, without_code(spin), %{}}) end) end)
      |> Task.await_many(@timeout)

    # 2 run, 3 wait their turn, the rest are turned away at once
    assert Enum.count(results, &(&1 == {:error, :timeout})) == 5
    assert Enum.count(results, &(&1 == {:error, :overloaded})) == 15
    assert %{overloaded: 15, running: 0, waiting: 0} = remote(node, Worker.Admission, :info, [])
  end
end
