defmodule Worker.Job do
  @moduledoc """
  A process per Core request: it serves the request, replies to the Core
  itself, and ends.

  * It holds a ticket of the request gate (`FL_MAX_REQUESTS`) while it
    lives, so requests of every kind are bounded together, and the ticket
    goes back however the process ends. The ticket is held for the
    request's function, which may hold at most its share of the gate
    (`FL_FUNCTION_SHARE`): a flood aimed at one function leaves room for
    the others.
  * It replies by the job's deadline (`Worker.Request.deadline/1`),
    whatever it waits on: a load or compile, the admission queue, another
    request for the same function, the guest. Past it, the reply is
    `{:error, :timeout}`, and nothing is held for the request any more: a
    running invocation is stopped at the deadline; a load goes on, for the
    cache and the store (no request slot waits for it).
  * An invocation passes the function to `Worker.Cache`, then to
    `Worker.Invoke`. If the Core's calling process dies, a queued or
    running invocation is cancelled.
  * An invocation of a function this worker has no code for replies
    `{:error, :code_not_found, self()}` and the process becomes the code
    handler: it keeps the arguments (as JSON text, one binary, counted
    against `FL_HANDLER_MAX_MB`) until the Core calls it with
    `{:invoke, function_with_code}`, then stores the code, runs the
    function with those arguments, and replies as an invocation does. The
    Core knows the handler's pid and may send it anything, so that
    invocation runs in a new process of its own, whose mailbox nobody else
    can reach; the handler waits for it, dropping whatever else comes. It
    ends after answering, or after `FL_HANDLER_TIMEOUT_MS` without a call.
    That call's deadline counts from its arrival.

  A crash while serving a request answers that request with
  `{:error, {:internal, _}}`, and nothing else.
  """

  alias Worker.{Cache, Function, Gate, Invoke, NodeInfo, Reply, Request, Stray}

  require Logger

  @doc false
  def init_gates do
    unless :persistent_term.get({__MODULE__, :gate}, nil) do
      requests = Application.fetch_env!(:worker, :max_requests)
      handler_bytes = Application.fetch_env!(:worker, :handler_max_bytes)
      percent = Application.fetch_env!(:worker, :function_share)
      gate = Gate.new(requests, Gate.share(requests, percent))
      bytes = Gate.new(handler_bytes, Gate.share(handler_bytes, percent))
      :persistent_term.put({__MODULE__, :gate}, gate)
      :persistent_term.put({__MODULE__, :bytes}, bytes)
      # stores, updates and deletes of a function: an eighth of its share,
      # of their own, so that neither a flood of its invocations keeps them
      # out, nor a flood of them takes its invocations' room
      :persistent_term.put({__MODULE__, :manage_share}, max(div(Gate.info(gate).share, 8), 1))
    end

    :ok
  end

  @doc "The gate of requests being served."
  @spec gate() :: Gate.t()
  def gate, do: :persistent_term.get({__MODULE__, :gate})

  @doc """
  Serves `job` for the Core's `from` in a process of its own, which
  replies by `deadline`; `:worker` calls it and goes on. The process
  starts with a ticket of the request gate (`admit/1`); past the gate, the
  reply is `{:error, :overloaded}` at once.
  """
  @spec start(GenServer.from(), Request.job(), Request.deadline()) :: :ok
  def start(from, job, deadline) do
    case admit(job) do
      {:ok, ticket} ->
        try do
          :erlang.spawn_opt(__MODULE__, :run, [from, ticket, job, deadline], min_heap_size: 1024)
        rescue
          # the VM's process table is full
          SystemLimitError -> reply(from, Reply.overloaded(:requests))
        end

      refused ->
        reply(from, refused)
    end

    :ok
  end

  @doc """
  A ticket of the request gate for `job`, held for its function: its
  invocations within the function's share, its stores, updates and deletes
  within an eighth of it, of their own. `{:error, :overloaded}` past
  either, or past the gate.
  """
  @spec admit(Request.job()) :: {:ok, Gate.ticket()} | {:error, :overloaded}
  def admit(job) do
    {key, share} =
      case {Request.function_id(job), job} do
        {nil, _} -> {nil, nil}
        {id, {:invoke, _, _}} -> {Gate.key(id), nil}
        {id, _} -> {Gate.key({:manage, id}), :persistent_term.get({__MODULE__, :manage_share})}
      end

    case Gate.enter(gate(), 1, key, share) do
      nil -> Reply.overloaded(:requests)
      :share -> Reply.overloaded(:requests, Request.function_id(job))
      ticket -> {:ok, ticket}
    end
  end

  @doc """
  Requests being served, bytes of arguments held by code handlers, and
  requests refused so far at either bound.
  """
  @spec info() :: %{
          requests: integer(),
          max_requests: integer(),
          handler_bytes: integer(),
          overloaded: integer()
        }
  def info do
    %{used: used, max: max} = Gate.info(gate())
    %{used: bytes} = Gate.info(:persistent_term.get({__MODULE__, :bytes}))
    counts = Reply.overloaded_counts()
    overloaded = counts.requests + counts.handler_bytes
    %{requests: used, max_requests: max, handler_bytes: bytes, overloaded: overloaded}
  end

  @doc false
  # The job's process (start/3); `ticket` is its slot in the request gate,
  # made in `:worker` and taken over here; `deadline`, when the reply is due
  # (`Worker.Request.deadline/1`).
  def run(from, ticket, job, deadline) do
    # The ticket must stay referenced until the end: a ticket that is
    # garbage is freed at the next collection, and its slot with it.
    ticket = Gate.take(ticket)
    serve(from, job, ticket, deadline)
    if ticket, do: Gate.leave(ticket)
  end

  defp serve({caller, _} = from, {:invoke, function, input}, ticket, deadline) do
    case safely(fn -> Invoke.run(function, input, caller, deadline) end) do
      {:error, :code_not_found} -> await_code(from, input, ticket, Function.id(function))
      result -> reply(from, result)
    end
  end

  defp serve(from, job, _ticket, deadline),
    do: reply(from, safely(fn -> handle(job, deadline) end))

  defp handle({:store, function}, deadline), do: Cache.store(function, deadline)

  # Once the new code is stored, the update is done: forgetting the old
  # hash is best done by the deadline, else it happens in its turn.
  defp handle({:update, prev_hash, function}, deadline) do
    with :ok <- Cache.store(function, deadline) do
      if prev_hash != function.hash,
        do: Cache.delete({function.module, function.name, prev_hash}, deadline)

      :ok
    end
  end

  defp handle({:delete, key}, deadline), do: Cache.delete(key, deadline)

  defp handle({:set_node_info, name, tag}, deadline) do
    with {:ok, {name, tag}} <- NodeInfo.set(name, tag, deadline), do: {:ok, name, tag}
  end

  # The code handler: holds the arguments until the Core sends the code.
  defp await_code(from, {:json, text} = input, ticket, function_id) do
    bytes = :persistent_term.get({__MODULE__, :bytes})

    case Gate.enter(bytes, byte_size(text), Gate.key(function_id)) do
      nil ->
        reply(from, Reply.overloaded(:handler_bytes))

      :share ->
        reply(from, Reply.overloaded(:handler_bytes, function_id))

      held ->
        reply(from, {:error, :code_not_found, self()})
        timeout = Application.fetch_env!(:worker, :handler_timeout_ms)
        wait_for_code(input, ticket, System.monotonic_time(:millisecond) + timeout)
        Gate.leave(held)
    end
  end

  # The Core knows this process's pid and may send it anything; so the
  # invocation, once the code comes, runs in a new process whose mailbox
  # nobody else can reach, which takes over the request ticket. This one
  # stays until it ends (the Core's call watches this pid), consuming
  # whatever else arrives.
  defp wait_for_code(input, ticket, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:"$gen_call", {caller, _} = from, {:invoke, function_with_code}} when is_pid(caller) ->
        deadline = Request.deadline(:invoke)

        run = fn ->
          with {:ok, function} <- Function.parse_with_code(function_with_code),
               do: Invoke.run(function, input, caller, deadline)
        end

        {_pid, monitor} =
          :erlang.spawn_opt(__MODULE__, :run_code, [from, ticket, run], [
            :monitor,
            min_heap_size: 1024
          ])

        await_run(monitor)

      {:"$gen_call", {caller, _} = from, other} when is_pid(caller) ->
        Stray.drop("Worker code handler", other)
        reply(from, Reply.bad_request("expected {:invoke, function_with_code}"))
        wait_for_code(input, ticket, deadline)

      message ->
        Stray.drop("Worker code handler", message)
        wait_for_code(input, ticket, deadline)
    after
      left -> :ok
    end
  end

  defp await_run(monitor) do
    receive do
      {:DOWN, ^monitor, _, _, _} -> :ok
      message -> Stray.drop("Worker code handler", message) && await_run(monitor)
    end
  end

  @doc false
  # Runs the invocation a code handler was sent the code for.
  def run_code(from, ticket, run) do
    ticket = Gate.take(ticket)
    reply(from, safely(run))
    if ticket, do: Gate.leave(ticket)
  end

  # Raises, throws and exits (a dependency restarting, say) alike.
  defp safely(fun) do
    fun.()
  catch
    kind, reason ->
      Logger.error(
        "Worker.Job: request failed: " <> Exception.format(kind, reason, __STACKTRACE__)
      )

      Reply.internal(kind, reason)
  end

  defp reply(from, reply), do: GenServer.reply(from, reply)
end
