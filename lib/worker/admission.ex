defmodule Worker.Admission do
  @moduledoc """
  Admission control: at most `FL_MAX_CONCURRENCY` invocations run at once.

  A slot is a `Worker.Gate` ticket, so it comes back when its invocation
  ends, however it ends. While slots are free and nobody waits, taking one
  is a single atomic operation in the caller. Otherwise the caller waits in
  a FIFO queue of at most `FL_QUEUE_LIMIT`, kept by this server:

    * past the limit, `{:error, :overloaded}` at once;
    * after `FL_QUEUE_TIMEOUT_MS` in the queue, `{:error, :queue_timeout}`;
    * at the `:deadline` of the request it serves, if that comes first,
      `{:error, :timeout}` (counted as expired too);
    * if the `:caller` it serves dies meanwhile, `{:error, :cancelled}`.

  The server is not registered and takes requests from local processes
  only: no other node can hold a slot or wedge the queue.
  """
  use GenServer

  alias Worker.{Gate, Stray}

  @overloaded 1
  @expired 2
  @cancelled 3

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc false
  # The gate and counters outlive restarts of the server: tickets held by
  # running invocations go back to the gate they came from.
  def init_gate do
    unless :persistent_term.get({__MODULE__, :gate}, nil) do
      max = Application.fetch_env!(:worker, :max_concurrency)
      :persistent_term.put({__MODULE__, :gate}, Gate.new(max))
      :persistent_term.put({__MODULE__, :counters}, :counters.new(3, [:write_concurrency]))
    end

    :ok
  end

  @doc """
  Runs `fun` in a slot, or returns `{:error, :overloaded | :queue_timeout
  | :timeout | :cancelled}`. Options: `:caller`, a process whose death,
  while this one waits, gives up the wait; `:deadline`
  (`Worker.Request.deadline/1`), past which it waits no more.
  """
  @spec run((() -> result), keyword()) :: result | {:error, atom()} when result: term()
  def run(fun, opts \\ []) do
    case acquire(opts) do
      {:ok, ticket} ->
        try do
          fun.()
        after
          Gate.leave(ticket)
        end

      {:error, _} = error ->
        error
    end
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
      overloaded: :counters.get(c, @overloaded),
      expired: :counters.get(c, @expired),
      cancelled: :counters.get(c, @cancelled)
    }
  end

  defp gate, do: :persistent_term.get({__MODULE__, :gate})
  defp counters, do: :persistent_term.get({__MODULE__, :counters})

  defp acquire(opts) do
    gate = gate()

    case Gate.enter(gate) do
      nil -> wait(:persistent_term.get({__MODULE__, :server}, nil), opts)
      ticket -> {:ok, ticket}
    end
  end

  defp wait(nil, _opts), do: refuse(@overloaded, :overloaded)

  defp wait(server, opts) do
    ref = Process.monitor(server)
    watch = if caller = opts[:caller], do: Process.monitor(caller)
    send(server, {:"$fl_wait", self(), ref})
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
          refuse(@overloaded, :overloaded)

        {:DOWN, ^ref, _, _, _} ->
          refuse(@overloaded, :overloaded)

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

  @impl true
  def init(_opts) do
    init_gate()
    :persistent_term.put({__MODULE__, :server}, self())

    state = %{
      gate: gate(),
      limit: Application.fetch_env!(:worker, :queue_limit),
      # refs in arrival order; entries that left are skipped when met
      queue: :queue.new(),
      # ref => {pid, monitor, :queued | :reserved}
      entries: %{},
      monitors: %{},
      queued: 0
    }

    {:ok, publish(state)}
  end

  @impl true
  def handle_info({:"$fl_wait", pid, ref}, state)
      when is_pid(pid) and node(pid) == node() and is_reference(ref) do
    if state.queued >= state.limit do
      send(pid, {ref, :overloaded})
      {:noreply, state}
    else
      monitor = Process.monitor(pid)

      state = %{
        state
        | queue: :queue.in(ref, state.queue),
          entries: Map.put(state.entries, ref, {pid, monitor, :queued}),
          monitors: Map.put(state.monitors, monitor, ref),
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
      %{^ref => {pid, _, _}} ->
        send(pid, {ref, :cancelled})
        {:noreply, forget(state, ref)}

      %{} ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, monitor, :process, _, _}, state) do
    case state.monitors do
      %{^monitor => ref} ->
        reserved? = match?({_, _, :reserved}, state.entries[ref])
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

  # Reserves free slots for the first waiters, in order.
  defp grant(state) do
    case :queue.out(state.queue) do
      {{:value, ref}, rest} ->
        case state.entries do
          %{^ref => {pid, monitor, :queued}} ->
            case Gate.reserve(state.gate) do
              nil ->
                state

              reservation ->
                send(pid, {ref, {:granted, reservation}})
                entries = Map.put(state.entries, ref, {pid, monitor, :reserved})

                %{state | queue: rest, entries: entries, queued: state.queued - 1}
                |> publish()
                |> grant()
            end

          %{} ->
            grant(%{state | queue: rest})
        end

      {:empty, _} ->
        state
    end
  end

  defp forget(state, ref) do
    case Map.pop(state.entries, ref) do
      {{_pid, monitor, status}, entries} ->
        Process.demonitor(monitor, [:flush])
        queued = if status == :queued, do: state.queued - 1, else: state.queued

        %{state | entries: entries, monitors: Map.delete(state.monitors, monitor), queued: queued}
        |> compact()
        |> publish()

      {nil, _} ->
        state
    end
  end

  # Entries that left stay in the queue until met; keep their number small.
  defp compact(state) do
    if :queue.len(state.queue) > 2 * state.queued + 64 do
      %{state | queue: :queue.filter(&Map.has_key?(state.entries, &1), state.queue)}
    else
      state
    end
  end

  defp publish(state) do
    Gate.queue(state.gate, state.queued, self())
    state
  end
end
