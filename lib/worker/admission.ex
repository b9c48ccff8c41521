defmodule Worker.Admission do
  @moduledoc """
  Admission control: at most `FL_MAX_CONCURRENCY` invocations run at once.

  Taking a slot is one atomic operation while slots are free. Beyond that,
  callers wait in a FIFO queue of at most `FL_QUEUE_LIMIT`; past that they
  get `{:error, :overloaded}` at once. Nothing piles up without bound.
  """
  use GenServer

  @slots 1
  @waiting 2
  @overloaded 3

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "Runs `fun` in a slot, or returns `{:error, :overloaded}`."
  @spec run((() -> result)) :: result | {:error, :overloaded} when result: term()
  def run(fun) do
    case acquire() do
      :ok ->
        try do
          fun.()
        after
          release()
        end

      :overloaded ->
        {:error, :overloaded}
    end
  end

  @doc "Slots in use, callers waiting, and requests refused so far."
  @spec info() :: %{running: integer(), waiting: integer(), overloaded: integer()}
  def info do
    {atomics, max, _} = :persistent_term.get(__MODULE__)

    %{
      running: min(:atomics.get(atomics, @slots), max),
      waiting: :atomics.get(atomics, @waiting),
      overloaded: :atomics.get(atomics, @overloaded)
    }
  end

  defp acquire do
    {atomics, max, _} = :persistent_term.get(__MODULE__)

    # Nobody queued: a free slot is ours. Otherwise queue behind them.
    cond do
      :atomics.get(atomics, @waiting) > 0 ->
        GenServer.call(__MODULE__, :wait, :infinity)

      :atomics.add_get(atomics, @slots, 1) <= max ->
        :ok

      true ->
        :atomics.sub(atomics, @slots, 1)
        GenServer.call(__MODULE__, :wait, :infinity)
    end
  end

  defp release do
    {atomics, _, _} = :persistent_term.get(__MODULE__)
    :atomics.sub(atomics, @slots, 1)
    if :atomics.get(atomics, @waiting) > 0, do: GenServer.cast(__MODULE__, :grant)
  end

  @impl true
  def init(_opts) do
    max = Application.fetch_env!(:worker, :max_concurrency)
    queue_limit = Application.fetch_env!(:worker, :queue_limit)

    # The slot counter outlives a restart of this server: slots held by
    # running invocations are released into the same counter they came from.
    atomics =
      case :persistent_term.get(__MODULE__, nil) do
        {atomics, _, _} -> atomics
        nil -> :atomics.new(3, signed: true)
      end

    :atomics.put(atomics, @waiting, 0)
    :persistent_term.put(__MODULE__, {atomics, max, queue_limit})
    {:ok, %{queue: :queue.new(), atomics: atomics, max: max, queue_limit: queue_limit}}
  end

  @impl true
  def handle_call(:wait, {pid, _} = from, state) do
    cond do
      :queue.is_empty(state.queue) and take_slot(state) ->
        {:reply, :ok, state}

      :queue.len(state.queue) >= state.queue_limit ->
        :atomics.add(state.atomics, @overloaded, 1)
        {:reply, :overloaded, state}

      true ->
        ref = Process.monitor(pid)
        :atomics.add(state.atomics, @waiting, 1)
        # A slot freed since take_slot/1 saw no waiter to grant: look again.
        {:noreply, grant(%{state | queue: :queue.in({from, ref}, state.queue)})}
    end
  end

  @impl true
  def handle_cast(:grant, state), do: {:noreply, grant(state)}
  def handle_cast(_message, state), do: {:noreply, state}

  @impl true
  def handle_info({:DOWN, ref, :process, _, _}, state) do
    queue = :queue.filter(fn {_, r} -> r != ref end, state.queue)
    :atomics.put(state.atomics, @waiting, :queue.len(queue))
    {:noreply, grant(%{state | queue: queue})}
  end

  def handle_info(_message, state), do: {:noreply, state}

  defp grant(state) do
    with {{:value, {from, ref}}, rest} <- :queue.out(state.queue),
         true <- take_slot(state) do
      :atomics.sub(state.atomics, @waiting, 1)

      # A waiter that died (its :DOWN not yet handled) gets no slot.
      if Process.demonitor(ref, [:flush, :info]) do
        GenServer.reply(from, :ok)
      else
        :atomics.sub(state.atomics, @slots, 1)
      end

      grant(%{state | queue: rest})
    else
      _ -> state
    end
  end

  defp take_slot(state) do
    if :atomics.add_get(state.atomics, @slots, 1) <= state.max do
      true
    else
      :atomics.sub(state.atomics, @slots, 1)
      false
    end
  end
end
