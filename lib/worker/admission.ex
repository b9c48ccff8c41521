defmodule Worker.Admission do
  @moduledoc """
  Admission control: at most `FL_MAX_CONCURRENCY` invocations run at once,
  and no function takes more than its share of them (`FL_FUNCTION_SHARE`
  percent, 75 by default), so that a flood of one function always leaves
  slots to the others.

  A slot is a `Worker.Gate` ticket held for the function (its `:key`), so
  it comes back when its invocation ends, however it ends. While slots are
  free, the function is within its share and nobody waits, taking one is a
  single call in the caller. Otherwise the caller waits in a queue kept by
  this server, one queue per function, served in turns: each free slot
  goes to the next function in the round that has a waiter and room in
  its share, so a function with one waiter is served before the next of a
  function with a thousand.

    * past `FL_QUEUE_LIMIT` waiters in all, or past the function's share
      of them, `{:error, :overloaded}` at once;
    * after `FL_QUEUE_TIMEOUT_MS` in the queue, `{:error, :queue_timeout}`;
    * at the `:deadline` of the request it serves, if that comes first,
      `{:error, :timeout}` (counted as expired too);
    * if the `:caller` it serves dies meanwhile, `{:error, :cancelled}`.

  The server is not registered and takes requests from local processes
  only: no other node can hold a slot or wedge the queue.
  """
  use GenServer

  alias Worker.{Gate, Reply, Stray}

  @expired 1
  @cancelled 2

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc false
  # The gate and counters outlive restarts of the server: tickets held by
  # running invocations go back to the gate they came from.
  def init_gate do
    unless :persistent_term.get({__MODULE__, :gate}, nil) do
      max = Application.fetch_env!(:worker, :max_concurrency)
      share = Gate.share(max, Application.fetch_env!(:worker, :function_share))
      :persistent_term.put({__MODULE__, :gate}, Gate.new(max, share))
      :persistent_term.put({__MODULE__, :counters}, :counters.new(2, [:write_concurrency]))
    end

    :ok
  end

  @doc """
  A slot for the calling process, waiting in the queue if need be, or
  `{:error, :overloaded | :queue_timeout | :timeout | :cancelled}`. The
  slot is held until `leave/1`, or until the process ends. Options:
  `:key`, the function's `Worker.Gate.key/1` (none: the slot counts against
  no share); `:caller`, a process whose death, while this one waits, gives
  up the wait; `:deadline` (`Worker.Request.deadline/1`), past which it
  waits no more.
  """
  @spec enter(keyword()) :: {:ok, Gate.ticket()} | {:error, atom()}
  def enter(opts \\ []) do
    case Gate.enter(gate(), 1, opts[:key]) do
      ticket when is_reference(ticket) ->
        {:ok, ticket}

      # no slot free, someone waits, or the function is at its share
      _ ->
        wait(:persistent_term.get({__MODULE__, :server}, nil), opts)
    end
  end

  @doc "Gives a slot back (once; a second time does nothing)."
  @spec leave(Gate.ticket()) :: :ok
  def leave(ticket) do
    Gate.leave(ticket)
    :ok
  end

  @doc "Slots in use, callers waiting, and requests refused or expired so far."
  @spec info() :: %{
          running: integer(),
          waiting: integer(),
          overloaded: integer(),
          expired: integer(),
          cancelled: integer()
        }
  def info do
    %{used: used, max: max, waiting: waiting} = Gate.info(gate())
    c = counters()

    %{
      running: min(used, max),
      waiting: waiting,
      overloaded: Reply.overloaded_counts().admission,
      expired: :counters.get(c, @expired),
      cancelled: :counters.get(c, @cancelled)
    }
  end

  defp gate, do: :persistent_term.get({__MODULE__, :gate})
  defp counters, do: :persistent_term.get({__MODULE__, :counters})

  defp wait(nil, _opts), do: Reply.overloaded(:admission)

  defp wait(server, opts) do
    ref = Process.monitor(server)
    watch = if caller = opts[:caller], do: Process.monitor(caller)
    send(server, {:"$fl_wait", self(), ref, opts[:key]})
    queue_timeout = Application.fetch_env!(:worker, :queue_timeout_ms)
    left = Worker.Request.time_left(Keyword.get(opts, :deadline, :infinity))

    {timeout, expired} =
      if left < queue_timeout, do: {left, :timeout}, else: {queue_timeout, :queue_timeout}

    result =
      receive do
        {^ref, {:granted, reservation}} ->
          # ours now: it goes back when this process ends
          ticket = Gate.take(reservation)
          send(server, {:"$fl_claimed", ref})
          {:ok, ticket}

        {^ref, :overloaded} ->
          Reply.overloaded(:admission)

        {:DOWN, ^ref, _, _, _} ->
          Reply.overloaded(:admission)

        {:DOWN, ^watch, _, _, _} ->
          cancel(server, ref)
          refuse(@cancelled, :cancelled)
      after
        timeout ->
          cancel(server, ref)
          refuse(@expired, expired)
      end

    Process.demonitor(ref, [:flush])
    if watch, do: Process.demonitor(watch, [:flush])
    result
  end

  defp refuse(counter, reason) do
    :counters.add(counters(), counter, 1)
    {:error, reason}
  end

  # Leaves the queue. A grant sent before the server saw the cancel comes
  # first (messages between two processes keep their order): give it back.
  defp cancel(server, ref) do
    send(server, {:"$fl_cancel", ref})
    await_cancel(ref)
  end

  defp await_cancel(ref) do
    receive do
      {^ref, {:granted, reservation}} ->
        Gate.leave(reservation)
        await_cancel(ref)

      {^ref, :cancelled} ->
        :ok

      {:DOWN, ^ref, _, _, _} ->
        :ok
    after
      5_000 -> :ok
    end
  end

  ## Server

  # The state:
  #   * queues: key => :queue of refs, in arrival order (refs that left are
  #     skipped when met);
  #   * round: :queue of the keys with a live waiter, in turn order;
  #   * entries: ref => {pid, monitor, key, :queued | :reserved};
  #   * waiting: key => live waiters; queued: live waiters in all.

  @impl true
  def init(_opts) do
    init_gate()
    :persistent_term.put({__MODULE__, :server}, self())
    limit = Application.fetch_env!(:worker, :queue_limit)

    state = %{
      gate: gate(),
      limit: limit,
      share: Gate.share(limit, Application.fetch_env!(:worker, :function_share)),
      queues: %{},
      round: :queue.new(),
      entries: %{},
      monitors: %{},
      waiting: %{},
      queued: 0
    }

    {:ok, publish(state)}
  end

  @impl true
  def handle_info({:"$fl_wait", pid, ref, key}, state)
      when is_pid(pid) and node(pid) == node() and is_reference(ref) and
             (is_nil(key) or is_integer(key)) do
    if state.queued >= state.limit or
         (key != nil and Map.get(state.waiting, key, 0) >= state.share) do
      send(pid, {ref, :overloaded})
      {:noreply, state}
    else
      monitor = Process.monitor(pid)
      waiting = Map.get(state.waiting, key, 0)
      queue = Map.get(state.queues, key, :queue.new())

      state = %{
        state
        | queues: Map.put(state.queues, key, :queue.in(ref, queue)),
          round: if(waiting == 0, do: :queue.in(key, state.round), else: state.round),
          entries: Map.put(state.entries, ref, {pid, monitor, key, :queued}),
          monitors: Map.put(state.monitors, monitor, ref),
          waiting: Map.put(state.waiting, key, waiting + 1),
          queued: state.queued + 1
      }

      # the waiter is counted before a slot is looked for: a slot given
      # back meanwhile either is found here or sends :"$fl_gate_free"
      {:noreply, state |> publish() |> grant()}
    end
  end

  def handle_info(:"$fl_gate_free", state), do: {:noreply, grant(state)}

  def handle_info({:"$fl_claimed", ref}, state), do: {:noreply, forget(state, ref)}

  def handle_info({:"$fl_cancel", ref}, state) do
    case state.entries do
      %{^ref => {pid, _, _, _}} ->
        send(pid, {ref, :cancelled})
        {:noreply, forget(state, ref)}

      %{} ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, monitor, :process, _, _}, state) do
    case state.monitors do
      %{^monitor => ref} ->
        reserved? = match?({_, _, _, :reserved}, state.entries[ref])
        state = forget(state, ref)
        # its reservation may now be referenced from this heap only
        if reserved?, do: :erlang.garbage_collect()
        {:noreply, state}

      %{} ->
        {:noreply, state}
    end
  end

  def handle_info(message, state), do: Stray.info(__MODULE__, message, state)

  @impl true
  def handle_call(request, _from, state), do: Stray.call(__MODULE__, request, state)

  @impl true
  def handle_cast(request, state), do: Stray.cast(__MODULE__, request, state)

  # Reserves free slots for waiters, a function at a time in turns: the
  # function at the head of the round gets its first waiter served and goes
  # to the back; one at its share is passed over this time. Stops when no
  # slot is free, or when every function in the round was passed over.
  defp grant(state), do: grant(state, :queue.len(state.round))

  defp grant(state, 0), do: state

  defp grant(state, untried) do
    case :queue.out(state.round) do
      {:empty, _} ->
        state

      {{:value, key}, round} ->
        {ref, pid, monitor, rest} = first_waiter(state, key)

        case Gate.reserve(state.gate, key) do
          nil ->
            state

          :share ->
            grant(%{state | round: :queue.in(key, round)}, untried - 1)

          reservation ->
            send(pid, {ref, {:granted, reservation}})

            %{state | round: round}
            |> dequeue(key, rest)
            |> Map.update!(:entries, &Map.put(&1, ref, {pid, monitor, key, :reserved}))
            |> publish()
            |> grant(:queue.len(round) + 1)
        end
    end
  end

  # The first live waiter of `key`'s queue (one exists while `key` is in
  # the round), and the queue behind it: the refs that left before it are
  # dropped on the way.
  defp first_waiter(state, key), do: first_waiter(state, key, Map.fetch!(state.queues, key))

  defp first_waiter(state, key, queue) do
    {{:value, ref}, rest} = :queue.out(queue)

    case state.entries do
      %{^ref => {pid, monitor, ^key, :queued}} -> {ref, pid, monitor, rest}
      %{} -> first_waiter(state, key, rest)
    end
  end

  # `key`'s first live waiter left its queue, granted; `rest` is the queue
  # behind it. `key` goes back in the round while it has waiters.
  defp dequeue(state, key, rest) do
    waiting = Map.fetch!(state.waiting, key) - 1
    state = %{state | queued: state.queued - 1}

    if waiting == 0 do
      %{state | queues: Map.delete(state.queues, key), waiting: Map.delete(state.waiting, key)}
    else
      %{
        state
        | queues: Map.put(state.queues, key, rest),
          waiting: Map.put(state.waiting, key, waiting),
          round: :queue.in(key, state.round)
      }
    end
  end

  defp forget(state, ref) do
    case Map.pop(state.entries, ref) do
      {{_pid, monitor, key, status}, entries} ->
        Process.demonitor(monitor, [:flush])
        state = %{state | entries: entries, monitors: Map.delete(state.monitors, monitor)}
        state = if status == :queued, do: leave_queue(state, key), else: state
        publish(state)

      {nil, _} ->
        state
    end
  end

  # A queued waiter left (cancelled, expired, dead): its ref stays in its
  # function's queue until met, unless the function has no waiter left.
  defp leave_queue(state, key) do
    waiting = Map.fetch!(state.waiting, key) - 1
    state = %{state | queued: state.queued - 1}

    if waiting == 0 do
      %{
        state
        | queues: Map.delete(state.queues, key),
          waiting: Map.delete(state.waiting, key),
          round: :queue.filter(&(&1 != key), state.round)
      }
    else
      compact(%{state | waiting: Map.put(state.waiting, key, waiting)}, key)
    end
  end

  # Refs that left stay in their queue until met; keep their number small.
  defp compact(state, key) do
    queue = Map.fetch!(state.queues, key)

    if :queue.len(queue) > 2 * Map.fetch!(state.waiting, key) + 64 do
      put_in(state.queues[key], :queue.filter(&Map.has_key?(state.entries, &1), queue))
    else
      state
    end
  end

  defp publish(state) do
    Gate.queue(state.gate, state.queued, self())
    state
  end
end
