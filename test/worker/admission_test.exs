defmodule Worker.AdmissionTest do
  # Worker.Admission is one per node: its gate, counters and server are in
  # :persistent_term. Each test stops the application's server, makes a
  # fresh gate of its own size (`@tag max:`, `limit:`, `timeout_ms:`),
  # starts its own server, and puts the application's back afterwards.
  use ExUnit.Case, async: false

  import Worker.Test.Helpers, only: [eventually: 1]
  alias Worker.Admission

  @settings [:max_concurrency, :queue_limit, :queue_timeout_ms]
  @terms [{Admission, :gate}, {Admission, :counters}]

  setup context do
    sup = Worker.Application.supervisor()
    env = for key <- @settings, do: {key, Application.fetch_env!(:worker, key)}
    terms = for key <- @terms, do: {key, :persistent_term.get(key)}
    :ok = Supervisor.terminate_child(sup, Admission)

    on_exit(fn ->
      for {key, value} <- env, do: Application.put_env(:worker, key, value)
      for {key, value} <- terms, do: :persistent_term.put(key, value)
      {:ok, _} = Supervisor.restart_child(sup, Admission)
    end)

    Application.put_env(:worker, :max_concurrency, context[:max] || 2)
    Application.put_env(:worker, :queue_limit, context[:limit] || 100)
    Application.put_env(:worker, :queue_timeout_ms, context[:timeout_ms] || 30_000)
    :persistent_term.erase({Admission, :gate})
    Admission.init_gate()
    %{server: start_supervised!(Admission)}
  end

  # `fun` in a slot, as Worker.Invoke runs an invocation: enter, run, leave.
  defp run(fun, opts \\ []) do
    with {:ok, slot} <- Admission.enter(opts) do
      try do
        fun.()
      after
        Admission.leave(slot)
      end
    end
  end

  # A process that runs `run/2`; once in its slot it reports
  # `{:running, id}` and waits for `release/1`. It reports the result as
  # `{:done, id, result}`.
  defp runner(id, opts \\ []) do
    parent = self()

    spawn(fn ->
      result =
        run(
          fn ->
            send(parent, {:running, id})

            receive do
              :release -> {:ran, id}
            end
          end,
          opts
        )

      send(parent, {:done, id, result})
    end)
  end

  defp release(pid), do: send(pid, :release)

  # Starts runner `id` and waits until it is queued as the `n`th waiter.
  defp queued_runner(id, n, opts \\ []) do
    pid = runner(id, opts)
    assert eventually(fn -> Admission.info().waiting == n end), "runner #{id} never queued"
    pid
  end

  defp running_runner(id) do
    pid = runner(id)
    assert_receive {:running, ^id}, 5_000
    pid
  end

  defp counts, do: Map.take(Admission.info(), [:running, :waiting])

  test "a slot is held from enter to leave" do
    assert %{running: 0, waiting: 0, expired: 0, cancelled: 0} = Admission.info()
    assert {:ok, slot} = Admission.enter()
    assert counts() == %{running: 1, waiting: 0}
    assert Admission.leave(slot) == :ok
    assert counts() == %{running: 0, waiting: 0}
    # a second leave gives nothing back twice
    assert Admission.leave(slot) == :ok
    assert counts() == %{running: 0, waiting: 0}
  end

  @tag max: 2
  test "at most max_concurrency run at once; the next waits for a slot" do
    r1 = running_runner(1)
    r2 = running_runner(2)
    r3 = queued_runner(3, 1)
    refute_received {:running, 3}
    assert counts() == %{running: 2, waiting: 1}

    release(r1)
    assert_receive {:done, 1, {:ran, 1}}
    assert_receive {:running, 3}, 5_000
    assert counts() == %{running: 2, waiting: 0}

    release(r2)
    release(r3)
    assert_receive {:done, 2, {:ran, 2}}
    assert_receive {:done, 3, {:ran, 3}}
    assert eventually(fn -> counts() == %{running: 0, waiting: 0} end)
  end

  @tag max: 1, limit: 2
  test "past queue_limit waiters, a caller is refused at once with :overloaded" do
    r1 = running_runner(1)
    r2 = queued_runner(2, 1)
    r3 = queued_runner(3, 2)
    # counted node-wide, since the VM started
    overloaded = Admission.info().overloaded

    runner(4)
    assert_receive {:done, 4, {:error, :overloaded}}, 5_000
    assert run(fn -> flunk("ran past the limit") end) == {:error, :overloaded}
    assert %{running: 1, waiting: 2} = Admission.info()
    assert Admission.info().overloaded == overloaded + 2

    # the queued ones still run, in turn
    for {done, next} <- [{r1, 2}, {r2, 3}] do
      release(done)
      assert_receive {:running, ^next}, 5_000
    end

    release(r3)
    assert_receive {:done, 3, {:ran, 3}}
    refute_received {:running, 4}
  end

  @tag max: 1, timeout_ms: 100
  test "a caller waiting past queue_timeout_ms gets :queue_timeout and leaves the queue" do
    r1 = running_runner(1)
    assert run(fn -> flunk("ran without a slot") end) == {:error, :queue_timeout}
    assert %{running: 1, waiting: 0, expired: 1} = Admission.info()

    # the slot was not given to the one that left
    release(r1)
    assert_receive {:done, 1, {:ran, 1}}
    assert run(fn -> :ran end) == :ran
    assert %{running: 0, waiting: 0, expired: 1} = Admission.info()
  end

  @tag max: 1
  test "the death of the :caller gives up a queued wait" do
    r1 = running_runner(1)
    caller = spawn(fn -> Process.sleep(:infinity) end)
    queued_runner(2, 1, caller: caller)

    Process.exit(caller, :kill)
    assert_receive {:done, 2, {:error, :cancelled}}, 5_000
    assert %{running: 1, waiting: 0, cancelled: 1} = Admission.info()

    release(r1)
    assert_receive {:done, 1, {:ran, 1}}
    assert run(fn -> :ran end) == :ran
    refute_received {:running, 2}
  end

  @tag max: 1
  test "a waiter that dies leaves the queue; the slot goes to the next" do
    r1 = running_runner(1)
    r2 = queued_runner(2, 1)
    r3 = queued_runner(3, 2)

    Process.exit(r2, :kill)
    assert eventually(fn -> Admission.info().waiting == 1 end)
    release(r1)
    assert_receive {:running, 3}, 5_000
    release(r3)
    assert_receive {:done, 3, {:ran, 3}}
    refute_received {:running, 2}
  end

  @tag max: 1
  test "a slot granted to a waiter that dies before taking it goes to the next" do
    r1 = running_runner(1)
    r2 = queued_runner(2, 1)
    r3 = queued_runner(3, 2)

    # r2 cannot take its grant: the server reserves the slot and sends it
    :erlang.suspend_process(r2)
    release(r1)
    assert eventually(fn -> Admission.info().waiting == 1 end)
    Process.exit(r2, :kill)

    assert_receive {:running, 3}, 5_000
    release(r3)
    assert_receive {:done, 3, {:ran, 3}}
    refute_received {:running, 2}
  end

  @tag max: 1, capture_log: true
  test "a slot comes back however its holder ends" do
    # its process ends with a raise, an exit or a throw, never leaving
    for ending <- [fn -> raise "boom" end, fn -> exit(:bye) end, fn -> throw(:up) end] do
      {pid, monitor} =
        spawn_monitor(fn ->
          {:ok, _slot} = Admission.enter()
          ending.()
        end)

      assert_receive {:DOWN, ^monitor, :process, ^pid, _}
      assert eventually(fn -> counts() == %{running: 0, waiting: 0} end)
    end

    # killed: no after clause runs, the ticket goes with the heap
    r1 = running_runner(1)
    Process.exit(r1, :kill)
    assert eventually(fn -> Admission.info().running == 0 end)

    # killed while someone waits: the waiter gets the slot
    r2 = running_runner(2)
    r3 = queued_runner(3, 1)
    Process.exit(r2, :kill)
    assert_receive {:running, 3}, 5_000

    # a slot that came through the queue is the holder's own too
    r4 = queued_runner(4, 1)
    Process.exit(r3, :kill)
    assert_receive {:running, 4}, 5_000
    release(r4)
    assert_receive {:done, 4, {:ran, 4}}
    assert counts() == %{running: 0, waiting: 0}
  end

  @tag max: 1
  test "waiters get slots in the order they came" do
    r0 = running_runner(0)
    runners = Map.new(1..6, fn id -> {id, queued_runner(id, id)} end)
    release(r0)

    order =
      for _ <- 1..6 do
        assert_receive {:running, id}, 5_000
        release(runners[id])
        assert_receive {:done, ^id, {:ran, ^id}}
        id
      end

    assert order == Enum.to_list(1..6)
  end

  @tag max: 1
  test "a newcomer does not overtake a waiter while a freed slot is handed over", %{
    server: server
  } do
    r1 = running_runner(1)
    r2 = queued_runner(2, 1)

    # the slot is free, but the server has not handed it to r2 yet
    :erlang.suspend_process(server)
    release(r1)
    assert_receive {:done, 1, {:ran, 1}}
    assert counts() == %{running: 0, waiting: 1}
    r3 = runner(3)
    refute_receive {:running, 3}, 100
    :erlang.resume_process(server)

    assert_receive {:running, 2}, 5_000
    refute_received {:running, 3}
    release(r2)
    assert_receive {:running, 3}, 5_000
    release(r3)
    assert_receive {:done, 3, {:ran, 3}}
  end

  test "a request to the server that is not a wait is refused; the server lives on", %{
    server: server
  } do
    ExUnit.CaptureLog.capture_log(fn ->
      assert GenServer.call(server, :wait) == {:error, {:bad_request, "unknown request"}}
      send(server, {:"$fl_wait", :not_a_pid, make_ref()})
      send(server, :"$fl_gate_free")
      GenServer.cast(server, :hello)
      # answered after the messages above were handled
      assert GenServer.call(server, :sync) == {:error, {:bad_request, "unknown request"}}
    end)

    assert Process.alive?(server)
    assert run(fn -> :ran end) == :ran
  end
end
