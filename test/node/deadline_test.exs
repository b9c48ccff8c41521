defmodule WorkerNode.DeadlineTest do
  # Every request the Core sends is answered by its deadline, whatever it
  # waits on, because the FunLess Core does not survive its own call
  # timeouts (60 s for an invocation, 5 s for the stores it waits on):
  # past the deadline, {:error, :timeout}, and nothing held for it.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  import Worker.Test.Helpers, only: [eventually: 1, eventually: 3]
  import Worker.Test.Core, only: [call: 2, remote: 4]
  alias Worker.Test.{Cluster, Core}

  @moduletag :tmp_dir
  @moduletag timeout: 120_000

  @invoke_deadline 1_000
  @store_deadline 400
  # how late a reply may be past its deadline: a few slices of the guest,
  # the reply's trip, this machine's stalls
  @slack 400

  setup %{tmp_dir: dir} do
    {peer, node} =
      Cluster.start_worker!(dir,
        invoke_deadline_ms: @invoke_deadline,
        store_deadline_ms: @store_deadline,
        max_concurrency: 1
      )

    on_exit(fn -> Cluster.stop(peer) end)
    %{node: node}
  end

  # The reply to `request` and the milliseconds it took, as the Core calls.
  defp timed(node, request) do
    started = System.monotonic_time(:millisecond)
    reply = call(node, request)
    {reply, System.monotonic_time(:millisecond) - started}
  end

  defp assert_on_time({reply, ms}, deadline) do
    assert reply == {:error, :timeout}
    assert ms >= deadline - 50, "answered after #{ms} ms, before its deadline of #{deadline}"
    assert ms <= deadline + @slack, "answered after #{ms} ms, deadline #{deadline}"
  end

  defp requests(node), do: remote(node, Worker.Job, :info, []).requests
  defp admission(node), do: remote(node, Worker.Admission, :info, [])

  test "a run that outlasts the deadline: stopped there, its slot free", %{node: node} do
    # the function's own timeout (30 s) is cut to what the deadline leaves
    spin = Core.function("spin", wat!("spin"))
    assert call(node, {:store_function, spin}) == :ok

    assert_on_time(timed(node, {:invoke, Core.without_code(spin), %{}}), @invoke_deadline)
    # the run is stopped at the next epoch tick, and its slot freed then
    assert eventually(fn -> admission(node).running == 0 end)
    assert eventually(fn -> remote(node, Worker.Runtime, :stats, []).in_flight == 0 end)
    assert eventually(fn -> requests(node) == 0 end)
  end

  test "a wait in the admission queue that outlasts the deadline", %{node: node} do
    hello = Core.function("hello", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok
    # the only slot, held by something else for 3 s
    holder = remote(node, Cluster, :hold_admission, [3_000])

    assert eventually(fn -> admission(node).running == 1 end)

    # FL_QUEUE_TIMEOUT_MS is 10 s: the deadline comes first
    assert_on_time(timed(node, {:invoke, Core.without_code(hello), %{}}), @invoke_deadline)
    assert admission(node).waiting == 0
    assert eventually(fn -> requests(node) == 0 end)

    # and once the slot is free, it runs
    Process.exit(holder, :kill)

    assert eventually(fn ->
             call(node, {:invoke, Core.without_code(hello), %{}}) ==
               {:ok, %{"payload" => "Hello World!"}}
           end)
  end

  test "a compile that outlasts the deadline goes on, holding no request slot", %{node: node} do
    slow = Core.function("slow", slow_module())

    # an invocation that brings the code, as the Core re-sends it: its
    # deadline passes during the compile
    assert_on_time(timed(node, {:invoke, slow}), @invoke_deadline)
    # no request waits for the compile, which goes on
    assert requests(node) == 0
    assert remote(node, Worker.Cache, :loading, []) == [Worker.Test.Core.key(slow)]

    # it ends stored and cached: the next invocation needs no code
    assert eventually(fn -> remote(node, Worker.Cache, :loading, []) == [] end, 30_000, 50)
    assert call(node, {:invoke, Core.without_code(slow), %{}}) == {:error, :no_response}
  end

  test "a store, another store and a delete behind a slow compile: each on time",
       %{node: node} do
    slow = Core.function("queued", slow_module())
    other = %{slow | code: wasm!("hello"), hash: "other"}
    key = Worker.Test.Core.key(slow)

    first = Task.async(fn -> timed(node, {:store_function, slow}) end)
    assert eventually(fn -> remote(node, Worker.Cache, :loading, []) == [key] end)

    # the same function with other code waits behind the first load, and so
    # does a delete; each is answered at its own deadline
    second = Task.async(fn -> timed(node, {:store_function, %{other | hash: slow.hash}}) end)
    # (in this order)
    Process.sleep(100)

    delete =
      Task.async(fn -> timed(node, {:delete_function, slow.name, slow.module, slow.hash}) end)

    assert_on_time(Task.await(first), @store_deadline)
    assert_on_time(Task.await(second), @store_deadline)
    assert_on_time(Task.await(delete), @store_deadline)
    assert eventually(fn -> requests(node) == 0 end)
    assert remote(node, Worker.Cache, :loading, []) == [key]

    # what they asked for is done in order once the compile ends: the first
    # load, the second, then the delete
    assert eventually(fn -> remote(node, Worker.Cache, :loading, []) == [] end, 30_000, 50)
    assert {:error, :code_not_found, _} = call(node, {:invoke, Core.without_code(slow), %{}})
    _ = other
  end

  test "a code handler's invocation has a deadline of its own, from its call", %{node: node} do
    spin = Core.function("late", wat!("spin"))

    assert {:error, :code_not_found, handler} =
             call(node, {:invoke, Core.without_code(spin), %{}})

    # the first call's deadline would pass during the second
    Process.sleep(700)
    {reply, ms} = timed_handler(handler, {:invoke, spin})
    assert_on_time({reply, ms}, @invoke_deadline)
    assert eventually(fn -> requests(node) == 0 end)
  end

  defp timed_handler(handler, request) do
    started = System.monotonic_time(:millisecond)
    reply = GenServer.call(handler, request, 60_000)
    {reply, System.monotonic_time(:millisecond) - started}
  end
end
