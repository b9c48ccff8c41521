defmodule WorkerNode.HostileTest do
  # A stand-in Core on this node attacks worker nodes over distribution:
  # messages of every shape, killed and abandoned callers, floods, compile
  # bombs. Each test failed before its fix.
  use ExUnit.Case, async: false

  import Worker.Test.{Core, Fixtures, Helpers}
  alias Worker.Test.Cluster

  @moduletag :tmp_dir
  @timeout 60_000

  defp running(node), do: remote(node, Worker.Admission, :info, []).running

  @hostile [
    {:"$gen_cast", :hello},
    {:"$gen_call", :bad_from, :get_info},
    {:"$gen_call", {:not_a_pid, :tag}, :get_info},
    {:system, :bad_from, :get_state},
    {:system, :bad_from, {:terminate, :normal}},
    {:"$gen_call", {:pid, :tag}, {:system, :x}},
    :garbage,
    {:EXIT, :fake, :kill},
    {:DOWN, :fake, :process, :fake, :normal},
    {:"$fl_wake", 1},
    :"$fl_gate_free"
  ]

  test "no message of any shape hurts :worker, a handler, or a call in flight", %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir, invoke_timeout_ms: 1_500)
    on_exit(fn -> Cluster.stop(peer) end)
    server = remote(node, Process, :whereis, [:worker])

    # only :worker can be named from another node
    registered =
      for name <- remote(node, Process, :registered, []),
          pid = remote(node, Process, :whereis, [name]),
          remote(node, :application, :get_application, [pid]) == {:ok, :worker},
          do: name

    assert registered == [:worker]

    spin = function("spin", wat!("spin"))
    assert call(node, {:store_function, spin}) == :ok
    in_flight = Task.async(fn -> call(node, {:invoke, without_code(spin), %{}}) end)

    hello = function("hello", wasm!("hello"))
    assert {:error, :code_not_found, handler} = call(node, {:invoke, without_code(hello), %{}})

    for _ <- 1..5, message <- @hostile do
      send({:worker, node}, message)
      send(handler, message)
      GenServer.cast({:worker, node}, {:anything, message})
      Process.sleep(1)
    end

    assert call(node, {:no_such_request, 1}) == {:error, {:bad_request, "unknown request"}}
    assert Task.await(in_flight, @timeout) == {:error, :timeout}
    assert remote(node, Process, :whereis, [:worker]) == server

    assert GenServer.call(handler, {:invoke, hello}, @timeout) ==
             {:ok, %{"payload" => "Hello World!"}}

    assert remote(node, Worker.Stray, :count, []) >= 5 * length(@hostile)
  end

  test "a killed holder gives its admission slot back; no remote node can take one", %{
    tmp_dir: dir
  } do
    {peer, node} = Cluster.start_worker!(dir, max_concurrency: 2, invoke_timeout_ms: 60_000)
    on_exit(fn -> Cluster.stop(peer) end)

    for i <- 1..4 do
      # a new name each time: the handler stores the code it is sent
      spin = function("spin#{i}", wat!("spin"))
      assert {:error, :code_not_found, handler} = call(node, {:invoke, without_code(spin), %{}})
      spawn(fn -> GenServer.call(handler, {:invoke, spin}, @timeout) end)
      assert eventually(fn -> running(node) == 1 end)
      Process.exit(handler, :kill)
      assert eventually(fn -> running(node) == 0 end)
    end

    # the slot server is not a name anyone can call
    catch_exit(GenServer.call({Worker.Admission, node}, :wait, 1_000))
    assert running(node) == 0
    assert eventually(fn -> remote(node, Worker.Runtime, :stats, []).in_flight == 0 end)
  end

  test "a dead caller cancels its running and queued invocations", %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir, max_concurrency: 1, invoke_timeout_ms: 60_000)
    on_exit(fn -> Cluster.stop(peer) end)
    spin = function("spin", wat!("spin"))
    assert call(node, {:store_function, spin}) == :ok

    callers =
      for _ <- 1..20 do
        spawn(fn -> call(node, {:invoke, without_code(spin), %{}}) end)
      end

    assert eventually(fn -> remote(node, Worker.Admission, :info, []).waiting == 19 end)
    Enum.each(callers, &Process.exit(&1, :kill))

    assert eventually(fn ->
             remote(node, Worker.Admission, :info, []) |> Map.take([:running, :waiting]) ==
               %{running: 0, waiting: 0}
           end)

    assert eventually(fn -> remote(node, Worker.Runtime, :stats, []).in_flight == 0 end)
    # fresh work is served at once
    echo = function("echo", wasm!("echo"))
    assert call(node, {:invoke, echo}) == {:ok, %{}}
  end

  test "a queued invocation expires after FL_QUEUE_TIMEOUT_MS", %{tmp_dir: dir} do
    {peer, node} =
      Cluster.start_worker!(dir,
        max_concurrency: 1,
        queue_timeout_ms: 300,
        invoke_timeout_ms: 3_000
      )

    on_exit(fn -> Cluster.stop(peer) end)
    spin = function("spin", wat!("spin"))
    assert call(node, {:store_function, spin}) == :ok
    first = Task.async(fn -> call(node, {:invoke, without_code(spin), %{}}) end)
    assert eventually(fn -> running(node) == 1 end)

    started = System.monotonic_time(:millisecond)
    assert call(node, {:invoke, without_code(spin), %{}}) == {:error, :queue_timeout}
    assert System.monotonic_time(:millisecond) - started < 2_000
    assert Task.await(first) == {:error, :timeout}
    assert %{expired: 1, waiting: 0} = remote(node, Worker.Admission, :info, [])
  end

  test "requests of every kind are bounded: past FL_MAX_REQUESTS, :overloaded", %{tmp_dir: dir} do
    {peer, node} =
      Cluster.start_worker!(dir, max_requests: 10, max_concurrency: 1, invoke_timeout_ms: 2_000)

    on_exit(fn -> Cluster.stop(peer) end)

    # ten code handlers hold every request slot, and their arguments
    args = %{"pad" => String.duplicate("x", 1_000)}

    handlers =
      for i <- 1..10 do
        hello = function("hello#{i}", wasm!("hello"))

        assert {:error, :code_not_found, handler} =
                 call(node, {:invoke, without_code(hello), args})

        handler
      end

    # junk and garbage collections free nothing
    for handler <- handlers do
      for _ <- 1..100, do: send(handler, {:junk, String.duplicate("y", 1_000)})
      true = remote(node, :erlang, :garbage_collect, [handler])
    end

    Process.sleep(100)
    json = byte_size(~s({"pad":"#{String.duplicate("x", 1_000)}"}))
    assert %{requests: 10, handler_bytes: bytes} = remote(node, Worker.Job, :info, [])
    assert bytes == 10 * json

    spin = function("spin", wat!("spin"))
    processes = remote(node, :erlang, :system_info, [:process_count])

    results =
      1..200
      |> Enum.map(fn i ->
        request =
          case rem(i, 3) do
            0 -> {:invoke, without_code(spin), %{}}
            1 -> {:delete_function, "x#{i}", "m", "h"}
            2 -> {:store_function, spin}
          end

        Task.async(fn -> call(node, request) end)
      end)
      |> Task.await_many(@timeout)

    assert Enum.all?(results, &(&1 == {:error, :overloaded}))
    assert remote(node, :erlang, :system_info, [:process_count]) < processes + 20

    # a handler that goes frees its slot at once
    Process.exit(hd(handlers), :kill)
    assert eventually(fn -> remote(node, Worker.Job, :info, []).requests == 9 end)
    assert call(node, {:delete_function, "x", "m", "h"}) == :ok
    assert call(node, :get_info) |> elem(0) == :ok
  end

  test "arguments over the input cap are refused at the door", %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir)
    on_exit(fn -> Cluster.stop(peer) end)
    echo = function("echo", wasm!("echo"))
    assert call(node, {:store_function, echo}) == :ok

    assert {:error, {:invalid_args, reason}} =
             call(node, {:invoke, without_code(echo), Enum.to_list(1..2_000_000)})

    assert reason =~ "larger than"
    # refused by :worker itself: no request was started
    assert remote(node, Worker.Job, :info, []).requests == 0
  end

  test "node info refuses what is not a sane name, and keeps the old one", %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir)
    on_exit(fn -> Cluster.stop(peer) end)
    before = call(node, :get_info)

    for bad <- [String.duplicate("x", 100_000), <<255, 0>>, "", "line\nbreak", 42] do
      assert {:error, {:bad_request, _}} = call(node, {:set_tag, bad})
      assert {:error, {:bad_request, _}} = call(node, {:set_long_name, bad})
    end

    assert call(node, :get_info) == before
    assert {:ok, _, "gpü"} = call(node, {:set_tag, "gpü"})
  end

  test "temporary files left by a kill are removed at start", %{tmp_dir: dir} do
    for sub <- ["functions", "artifacts/abc"] do
      File.mkdir_p!(Path.join(dir, sub))
      File.write!(Path.join([dir, sub, "0123.tmp.42"]), String.duplicate("x", 1000))
    end

    File.write!(Path.join(dir, "node_info.tmp.7"), "x")
    {peer, _node} = Cluster.start_worker!(dir)
    on_exit(fn -> Cluster.stop(peer) end)

    left = Path.wildcard(Path.join(dir, "**/*.tmp.*"))
    assert left == []
  end

  describe "compile bombs" do
    test "are refused at the limits, and the worker stays well", %{tmp_dir: dir} do
      {peer, node} = Cluster.start_worker!(dir, compile_timeout_ms: 4_000, compile_max_mb: 256)

      on_exit(fn -> Cluster.stop(peer) end)
      echo = function("echo", wasm!("echo"))
      assert call(node, {:store_function, echo}) == :ok
      rss = fn -> rss(node) end
      baseline = rss.()

      # quadratic in time: many locals live across many loops
      slow = function("slow", locals_bomb(5_000, 5_000))
      # huge in memory: a million empty functions
      big = function("big", many_functions(1_000_000))

      bombs =
        for bomb <- [slow, big, slow] do
          Task.async(fn -> call(node, {:store_function, bomb}) end)
        end

      # a warm invocation answers meanwhile
      Process.sleep(200)
      {micros, result} = :timer.tc(fn -> call(node, {:invoke, without_code(echo), [1]}) end)
      assert result == {:ok, [1]}
      assert micros < 500_000

      [slow_result, big_result, _] = Task.await_many(bombs, @timeout)
      assert {:error, {:invalid_module, reason}} = slow_result
      assert reason =~ ~r/FL_COMPILE_(TIMEOUT_MS|MAX_MB)/
      assert {:error, {:invalid_module, reason}} = big_result
      assert reason =~ "FL_COMPILE_MAX_MB"
      assert rss.() < baseline + 100 * 1024 * 1024
      assert call(node, {:invoke, without_code(echo), [2]}) == {:ok, [2]}
    end
  end

  test "the compile timeout names itself", %{tmp_dir: dir} do
    {peer, node} = Cluster.start_worker!(dir, compile_timeout_ms: 1)
    on_exit(fn -> Cluster.stop(peer) end)

    assert {:error, {:invalid_module, reason}} =
             call(node, {:store_function, function("hello", wasm!("hello"))})

    assert reason =~ "longer than the limit of 1 ms (FL_COMPILE_TIMEOUT_MS)"
  end

  # A function with `locals` i64 locals, each set, then `loops` empty loops,
  # then every local read: register allocation is quadratic in it.
  defp locals_bomb(locals, loops) do
    sets = Enum.map_join(1..locals, "\n", &"(local.set #{&1} (i64.const #{&1}))")
    loops = String.duplicate("(loop)\n", loops)
    reads = Enum.map_join(1..locals, "\n", &"(drop (local.get #{&1}))")

    """
    (module
      (memory (export "memory") 1)
      (func (export "__invoke") (param i32) (result i32)
        (local #{String.duplicate("i64 ", locals)})
        #{sets}
        #{loops}
        #{reads}
        (i32.const 0)))
    """
  end

  # A binary module of `n` empty functions, written directly (WAT text of a
  # million functions would take long to build here).
  defp many_functions(n) do
    section = fn id, body -> [id, leb(IO.iodata_length(body)), body] end
    types = section.(1, [leb(1), 0x60, 0, 0])
    funcs = section.(3, [leb(n), List.duplicate(0, n)])
    codes = section.(10, [leb(n), List.duplicate(<<2, 0, 0x0B>>, n)])
    IO.iodata_to_binary([<<0, "asm", 1, 0, 0, 0>>, types, funcs, codes])
  end

  defp leb(n) when n < 128, do: <<n>>
  defp leb(n), do: <<1::1, Bitwise.band(n, 127)::7, leb(Bitwise.bsr(n, 7))::binary>>
end
