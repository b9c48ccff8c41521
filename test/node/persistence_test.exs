defmodule WorkerNode.PersistenceTest do
  # What a worker keeps survives SIGKILL: code, compiled artifacts and node
  # info are on disk before the reply, and a restarted worker serves them.
  use ExUnit.Case, async: false

  import Worker.Test.{Core, Fixtures}
  alias Worker.Test.Cluster

  @moduletag :tmp_dir

  defp restart!(node, dir, env \\ []) do
    Cluster.kill!(node)
    {peer, node} = Cluster.start_worker!(dir, env)
    on_exit(fn -> Cluster.stop(peer) end)
    node
  end

  test "stored code, artifacts and node info survive kill -9; deleted code stays deleted",
       %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir)
    on_exit(fn -> Cluster.stop(peer) end)

    hello = function("hello", wasm!("hello"))
    echo = function("echo", wasm!("echo"))
    assert call(node, {:store_function, hello}) == :ok
    assert call(node, {:store_function, echo}) == :ok
    assert call(node, {:delete_function, echo.name, echo.module, echo.hash}) == :ok
    assert {:ok, _, "edge"} = call(node, {:set_tag, "edge"})
    assert {:ok, "long", "edge"} = call(node, {:set_long_name, "long"})

    # killed right after the replies: nothing was flushed by a clean exit
    node = restart!(node, dir)

    assert call(node, {:invoke, %{hello | code: nil}, %{"name" => "again"}}) ==
             {:ok, %{"payload" => "Hello again!"}}

    # served from the precompiled artifact, without compiling
    assert %{compiles: 0, artifact_loads: 1} = :erpc.call(node, Worker.Cache, :info, [])
    assert call(node, :get_info) == {:ok, "long", "edge"}
    assert {:error, :code_not_found, _} = call(node, {:invoke, %{echo | code: nil}, %{}})
  end

  test "code sent to a code_not_found handler is kept too", %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir)
    on_exit(fn -> Cluster.stop(peer) end)
    hello = function("hello", wasm!("hello"))

    assert {:error, :code_not_found, handler} = call(node, {:invoke, %{hello | code: nil}, %{}})
    assert {:ok, _} = GenServer.call(handler, {:invoke, hello})

    node = restart!(node, dir)

    assert {:ok, %{"payload" => "Hello World!"}} =
             call(node, {:invoke, %{hello | code: nil}, %{}})
  end

  test "a corrupt, truncated or foreign artifact is recompiled, never loaded", %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir)
    on_exit(fn -> Cluster.stop(peer) end)
    hello = function("hello", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok
    [artifact] = Path.wildcard(Path.join(dir, "artifacts/*/*"))
    good = File.read!(artifact)

    damages = [
      fn bytes -> binary_part(bytes, 0, div(byte_size(bytes), 2)) end,
      fn <<head::binary-size(100), byte, rest::binary>> ->
        <<head::binary, Bitwise.bxor(byte, 0xFF), rest::binary>>
      end,
      fn _ -> "not an artifact" end,
      # the artifact's own machine code, under a seal made without the key
      fn <<"FLA1", _mac::binary-size(32), payload::binary>> ->
        <<"FLA1", :crypto.mac(:hmac, :sha256, "a guess", payload)::binary, payload::binary>>
      end
    ]

    Enum.reduce(damages, node, fn damage, node ->
      File.write!(artifact, damage.(good))
      node = restart!(node, dir)

      assert {:ok, %{"payload" => "Hello World!"}} =
               call(node, {:invoke, %{hello | code: nil}, %{}})

      assert %{compiles: 1, artifact_loads: 0} = :erpc.call(node, Worker.Cache, :info, [])
      # and a good artifact is written back
      assert File.read!(artifact) |> byte_size() > 1000
      node
    end)
  end

  test "the in-memory cache is bounded and evicts the least recently used", %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir, cache_max_entries: 2)
    on_exit(fn -> Cluster.stop(peer) end)
    [a, b, c] = for n <- ~w(hello echo error), do: function(n, wasm!(n))
    key = fn f -> {f.module, f.name, f.hash} end
    cached? = fn f -> :erpc.call(node, :ets, :member, [Worker.Cache, key.(f)]) end

    assert call(node, {:store_function, a}) == :ok
    assert call(node, {:store_function, b}) == :ok
    # a is used again (recency is kept to a quarter second), so b is now
    # the least recently used
    Process.sleep(300)
    assert {:ok, _} = call(node, {:invoke, %{a | code: nil}, %{}})
    assert call(node, {:store_function, c}) == :ok

    assert cached?.(a) and cached?.(c)
    refute cached?.(b)
    assert %{entries: 2, evictions: 1} = :erpc.call(node, Worker.Cache, :info, [])
    # evicted from memory, not from disk
    assert {:ok, _} = call(node, {:invoke, %{b | code: nil}, %{}})
  end

  test "a directory's entries can be flushed; a missing one is an error, not a crash",
       %{tmp_dir: dir} do
    assert Worker.Native.store_sync_dir(dir) == :ok
    missing = Path.join(dir, "missing")
    assert {:error, message} = Worker.Native.store_sync_dir(missing)
    assert message =~ missing
  end
end
