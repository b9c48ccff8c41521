defmodule Worker.GateTest do
  # Each test makes its own gate: nothing global is touched.
  use ExUnit.Case, async: true

  import Worker.Test.Helpers, only: [eventually: 1]
  alias Worker.Gate

  defp used(gate), do: Gate.info(gate).used

  # Waits for `fun` to hold (a ticket is freed with its holder's heap, just
  # after the holder is reported down).
  # Runs `fun` in a process of its own, which then waits to be told to end.
  defp holder(fun) do
    parent = self()

    pid =
      spawn(fn ->
        send(parent, {self(), fun.()})

        receive do
          :exit -> :ok
        end
      end)

    receive do
      {^pid, result} -> {pid, result}
    end
  end

  defp await_down(pid) do
    ref = Process.monitor(pid)
    assert_receive {:DOWN, ^ref, :process, ^pid, _}, 5_000
  end

  test "a new gate has nothing used and nobody waiting" do
    assert Gate.info(Gate.new(3)) == %{used: 0, max: 3, waiting: 0, share: 3, keys: 0}
    assert Gate.info(Gate.new(0)) == %{used: 0, max: 0, waiting: 0, share: 0, keys: 0}
  end

  test "enter takes its weight while it fits, and a refused enter changes nothing" do
    gate = Gate.new(5)
    assert a = Gate.enter(gate, 2)
    assert used(gate) == 2
    assert b = Gate.enter(gate, 3)
    assert used(gate) == 5

    assert Gate.enter(gate, 1) == nil
    assert Gate.enter(gate) == nil
    assert used(gate) == 5

    assert Gate.leave(a)
    assert used(gate) == 3
    # 2 units are free: 3 do not fit, 2 do
    assert Gate.enter(gate, 3) == nil
    assert used(gate) == 3
    assert Gate.enter(gate, 2)
    assert used(gate) == 5
    assert Gate.leave(b)
    assert used(gate) == 2
  end

  test "enter defaults to one unit, and a gate of max units lets exactly max in" do
    gate = Gate.new(3)
    tickets = for _ <- 1..3, do: Gate.enter(gate)
    assert Enum.all?(tickets, &is_reference/1)
    assert used(gate) == 3
    assert Gate.enter(gate) == nil

    assert Gate.enter(Gate.new(0)) == nil
    assert Gate.enter(Gate.new(4), 5) == nil
  end

  test "leave gives the units back once" do
    gate = Gate.new(2)
    ticket = Gate.enter(gate, 2)
    assert Gate.leave(ticket) == true
    assert used(gate) == 0
    assert Gate.leave(ticket) == false
    assert used(gate) == 0
    assert Gate.enter(gate, 2)
  end

  test "a ticket's units go back when its holder ends, however it ends" do
    gate = Gate.new(3)

    for ending <- [:exit, :kill, :crash] do
      {pid, ticket} = holder(fn -> Gate.enter(gate, 3) end)
      assert is_reference(ticket)
      assert used(gate) == 3

      case ending do
        :exit -> send(pid, :exit)
        :kill -> Process.exit(pid, :kill)
        :crash -> Process.exit(pid, :crash)
      end

      await_down(pid)
      assert eventually(fn -> used(gate) == 0 end), "#{ending}: the units were kept"
    end

    # the test process saw the tickets, but only a holder's heap holds units
    assert Gate.enter(gate, 3)
  end

  test "a ticket dropped by its holder goes back when the holder collects garbage" do
    gate = Gate.new(1)
    parent = self()

    pid =
      spawn(fn ->
        _ = Gate.enter(gate)
        send(parent, {:entered, used(gate)})

        receive do
          :collect -> :erlang.garbage_collect()
        end

        send(parent, :collected)
        Process.sleep(:infinity)
      end)

    assert_receive {:entered, 1}
    send(pid, :collect)
    assert_receive :collected
    # the holder lives on; its collector freed the ticket (the VM runs the
    # ticket's destructor shortly after the collection)
    assert eventually(fn -> used(gate) == 0 end)
    assert Process.alive?(pid)
    Process.exit(pid, :kill)
  end

  test "take moves a ticket into the calling process" do
    gate = Gate.new(1)

    taker =
      spawn(fn ->
        receive do
          {:ticket, ticket, from} ->
            send(from, {:taken, Gate.take(ticket)})

            receive do
              :exit -> :ok
            end
        end
      end)

    {maker, {taken, left?}} =
      holder(fn ->
        ticket = Gate.enter(gate)
        send(taker, {:ticket, ticket, self()})

        receive do
          {:taken, taken} -> {taken, Gate.leave(ticket)}
        end
      end)

    assert is_reference(taken)
    # the maker's ticket holds nothing any more
    assert left? == false
    assert used(gate) == 1

    send(maker, :exit)
    await_down(maker)
    assert used(gate) == 1

    # the taker's ticket does
    send(taker, :exit)
    await_down(taker)
    assert eventually(fn -> used(gate) == 0 end)
  end

  test "a key holds at most the gate's share; other keys, and none, the rest" do
    gate = Gate.new(4, 3)
    a = Gate.key({"m", "a"})
    b = Gate.key({"m", "b"})
    tickets = for _ <- 1..3, do: Gate.enter(gate, 1, a)
    assert Enum.all?(tickets, &is_reference/1)
    # a's share is taken; the gate still has room
    assert Gate.enter(gate, 1, a) == :share
    assert Gate.reserve(gate, a) == :share
    assert Gate.held(gate, a) == 3
    assert %{used: 3, keys: 1} = Gate.info(gate)

    # b gets the last unit; then the gate is full for b and for no key
    assert is_reference(Gate.enter(gate, 1, b))
    assert Gate.enter(gate, 1, b) == nil
    assert Gate.enter(gate) == nil

    # a unit of a's back: a has room again, as its count follows its tickets
    assert Gate.leave(hd(tickets))
    assert Gate.held(gate, a) == 2
    assert is_reference(Gate.enter(gate, 1, a))
    # weights count against the share
    assert Gate.enter(Gate.new(10, 4), 5, a) == :share
  end

  test "a key's units go back with a dead holder's ticket, and a taken ticket keeps its key" do
    gate = Gate.new(2, 1)
    a = Gate.key({"m", "a"})
    # (the holder answers whether it got a ticket, not the ticket: this
    # process must not hold a reference to it)
    {pid, true} = holder(fn -> is_reference(Gate.enter(gate, 1, a)) end)
    assert Gate.enter(gate, 1, a) == :share
    Process.exit(pid, :kill)
    await_down(pid)
    assert eventually(fn -> Gate.held(gate, a) == 0 end)
    assert %{used: 0, keys: 0} = Gate.info(gate)

    # reserved for a, taken by another process: still a's
    reservation = Gate.reserve(gate, a)
    {taker, true} = holder(fn -> is_reference(Gate.take(reservation)) end)
    assert Gate.held(gate, a) == 1
    send(taker, :exit)
    await_down(taker)
    assert eventually(fn -> Gate.held(gate, a) == 0 end)
  end

  test "share/2: a percentage of the bound, at least one" do
    assert Gate.share(4_096, 75) == 3_072
    assert Gate.share(8, 75) == 6
    assert Gate.share(2, 75) == 1
    assert Gate.share(1, 1) == 1
    assert Gate.share(0, 75) == 0
    assert Gate.share(10, 100) == 10
  end

  test "take of a ticket given back already is nil" do
    gate = Gate.new(1)
    ticket = Gate.enter(gate)
    assert Gate.leave(ticket)
    assert Gate.take(ticket) == nil
    assert used(gate) == 0
  end

  test "while callers are queued, enter refuses and reserve serves the queue" do
    gate = Gate.new(2)
    assert :ok = Gate.queue(gate, 1, self())
    assert %{used: 0, max: 2, waiting: 1} = Gate.info(gate)

    # free units, but someone waits: first come, first served
    assert Gate.enter(gate) == nil
    assert used(gate) == 0

    assert a = Gate.reserve(gate)
    assert b = Gate.reserve(gate)
    assert Gate.reserve(gate) == nil
    assert used(gate) == 2

    # a unit given back while someone waits is announced to the server
    assert Gate.leave(a)
    assert_receive :"$fl_gate_free"
    assert used(gate) == 1

    # with nobody waiting, enter works again and nothing is announced
    assert :ok = Gate.queue(gate, 0, self())
    assert c = Gate.enter(gate)
    assert Gate.leave(b)
    assert Gate.leave(c)
    refute_receive :"$fl_gate_free", 50
    assert used(gate) == 0
  end

  test "a reservation nobody took goes back when the last heap holding it lets go" do
    # Worker.Admission's case: its server reserves a unit for a waiter that
    # dies before taking it
    gate = Gate.new(1)
    parent = self()

    waiter =
      spawn(fn ->
        receive do
          {:granted, _reservation} -> :ok
        end
      end)

    server =
      spawn(fn ->
        send(waiter, {:granted, Gate.reserve(gate)})

        receive do
          :collect -> :erlang.garbage_collect()
        end

        send(parent, :collected)
        Process.sleep(:infinity)
      end)

    await_down(waiter)
    send(server, :collect)
    assert_receive :collected, 5_000
    assert eventually(fn -> used(gate) == 0 end)
    Process.exit(server, :kill)
  end
end
