defmodule Worker.CacheTest do
  # The cache of this node's application: what it serves, and what it counts.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  alias Worker.Test.Helpers
  alias Worker.{Cache, Function, Store}

  setup do
    %{hello: unique(wasm!("hello")), name: Helpers.unique_name("f")}
  end

  # The module with a custom section of its own: code no test compiled
  # before, so that no artifact of it is stored.
  defp unique(wasm) do
    name = Helpers.unique_name("t")
    wasm <> <<0, byte_size(name) + 1, byte_size(name), name::binary>>
  end

  defp function(name, code, opts \\ []) do
    %Function{
      module: "functions_test",
      name: name,
      hash: Keyword.get(opts, :hash, "h"),
      code: code
    }
  end

  # what changed in Cache.info/0 while `fun` ran
  defp counted(fun) do
    before = Cache.info()
    fun.()
    later = Cache.info()
    keys = [:hits, :misses, :compiles, :artifact_loads, :evictions]
    Map.new(keys, &{&1, later[&1] - before[&1]})
  end

  test "store, store again, invoke with code, invoke: one compile, two hits, no miss",
       %{hello: hello, name: name} do
    f = function(name, hello)

    counts =
      counted(fn ->
        assert Cache.store(f) == :ok
        assert Cache.store(f) == :ok
        assert {:ok, module} = Cache.fetch(f)
        assert {:ok, ^module} = Cache.fetch(%{f | code: nil})
      end)

    assert counts == %{hits: 2, misses: 0, compiles: 1, artifact_loads: 0, evictions: 0}
  end

  test "a hot module is served by its code's hash, without the disk", %{hello: hello, name: name} do
    f = function(name, hello)
    assert Cache.store(f) == :ok
    # the stored copy goes; the cache still knows the code
    File.rm!(Store.code_path(Function.key(f)))

    assert counted(fn -> assert {:ok, _} = Cache.fetch(f) end) ==
             %{hits: 1, misses: 0, compiles: 0, artifact_loads: 0, evictions: 0}

    # a store is the Core asking for the code to be kept: it is written again
    assert counted(fn -> assert Cache.store(f) == :ok end) ==
             %{hits: 0, misses: 0, compiles: 0, artifact_loads: 0, evictions: 0}

    assert Store.get_code(Function.key(f)) == {:ok, hello}
  end

  test "other code under the same key is a miss, and is loaded", %{hello: hello, name: name} do
    f = function(name, hello)
    assert Cache.store(f) == :ok
    other = function(name, unique(wasm!("echo")))

    assert %{misses: 1, hits: 0, compiles: 1} =
             counted(fn -> assert {:ok, _module} = Cache.fetch(other) end)

    # and that is what is stored and cached now
    assert Store.get_code(Function.key(f)) == {:ok, other.code}
    assert %{hits: 1, misses: 0} = counted(fn -> Cache.fetch(%{f | code: nil}) end)
  end

  test "stored code, not cached: a miss served from the artifact", %{hello: hello, name: name} do
    f = function(name, hello)
    # on disk as a store leaves it, as a restarted worker finds it
    assert Cache.store(f) == :ok
    key = Function.key(f)
    Cache.delete(key)
    :ok = Store.put_code(key, hello)

    assert counted(fn -> assert {:ok, _} = Cache.fetch(%{f | code: nil}) end) ==
             %{hits: 0, misses: 1, compiles: 0, artifact_loads: 1, evictions: 0}
  end

  test "a load records the function's kind for the metrics", %{name: name} do
    f = function(name, unique(wasm!("hello_command")))
    assert Cache.store(f) == :ok

    page = Worker.Test.Prometheus.parse!(IO.iodata_to_binary(Worker.Metrics.Prometheus.render()))
    labels = %{"module" => "functions_test", "function" => name, "kind" => "wasi_command"}
    assert Worker.Test.Prometheus.value(page, "worker_function_info", labels) == 1.0
  end

  test "unknown functions: code_not_found, not a miss (the load with the code is)",
       %{name: name} do
    assert counted(fn ->
             assert Cache.fetch(function(name, nil)) == {:error, :code_not_found}
           end) == %{hits: 0, misses: 0, compiles: 0, artifact_loads: 0, evictions: 0}
  end

  test "invalid code is refused and neither stored nor cached", %{name: name} do
    f = function(name, "not wasm")
    assert {:error, {:invalid_module, _}} = Cache.store(f)
    assert Store.get_code(Function.key(f)) == :error
    assert Cache.fetch(%{f | code: nil}) == {:error, :code_not_found}
  end

  test "delete forgets cache and code", %{hello: hello, name: name} do
    f = function(name, hello)
    assert Cache.store(f) == :ok
    assert Cache.delete(Function.key(f)) == :ok
    assert Store.get_code(Function.key(f)) == :error
    assert Cache.fetch(%{f | code: nil}) == {:error, :code_not_found}
    # deleting what is not there is fine
    assert Cache.delete(Function.key(f)) == :ok
  end

  test "concurrent fetches of one stored function load it once", %{hello: hello, name: name} do
    f = function(name, hello)
    key = Function.key(f)
    :ok = Store.put_code(key, hello)

    counts =
      counted(fn ->
        1..20
        |> Enum.map(fn _ -> Task.async(fn -> Cache.fetch(%{f | code: nil}) end) end)
        |> Task.await_many()
        |> Enum.each(&assert {:ok, _} = &1)
      end)

    assert counts.compiles + counts.artifact_loads == 1
    assert counts.misses == 1
  end
end
