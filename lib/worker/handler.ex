defmodule Worker.Handler do
  @moduledoc """
  A process per Core request: it serves the request, replies to the Core
  itself, and ends.

  * It holds a ticket of the request gate (`FL_MAX_REQUESTS`) while it
    lives, so requests of every kind are bounded together, and the ticket
    goes back however the process ends.
  * An invocation passes the function to `Worker.Functions`, then to
    `Worker.Invocation`. If the Core's calling process dies, a queued or
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

  A crash while serving a request answers that request with
  `{:error, {:internal, _}}`, and nothing else.
  """

  alias Worker.{Functions, Gate, Invocation, NodeInfo, Request, Stray}

  require Logger

  @doc false
  def init_gates do
    unless :persistent_term.get({__MODULE__, :gate}, nil) do
      requests = Application.fetch_env!(:worker, :max_requests)
      handler_bytes = Application.fetch_env!(:worker, :handler_max_bytes)
      :persistent_term.put({__MODULE__, :gate}, Gate.new(requests))
      :persistent_term.put({__MODULE__, :bytes}, Gate.new(handler_bytes))
      :persistent_term.put({__MODULE__, :overloaded}, :counters.new(1, [:write_concurrency]))
    end

    :ok
  end

  @doc "The gate of requests being served."
  @spec gate() :: Gate.t()
  def gate, do: :persistent_term.get({__MODULE__, :gate})

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
    overloaded = :counters.get(:persistent_term.get({__MODULE__, :overloaded}), 1)
    %{requests: used, max_requests: max, handler_bytes: bytes, overloaded: overloaded}
  end

  @doc false
  # `{:error, :overloaded}`, counted.
  def overloaded do
    :counters.add(:persistent_term.get({__MODULE__, :overloaded}), 1, 1)
    {:error, :overloaded}
  end

  @doc "Whether `request` is one this module serves (besides invocations)."
  @spec request?(term()) :: boolean()
  def request?({:invoke, _function}), do: true
  def request?({:store_function, _function}), do: true
  def request?({:update_function, _prev_hash, _function}), do: true
  def request?({:delete_function, _name, _module, _hash}), do: true
  def request?({:set_long_name, _name}), do: true
  def request?({:set_tag, _tag}), do: true
  def request?(_), do: false

  @doc false
  # Runs in the process `Worker.Server` spawned; `ticket` is its slot in
  # the request gate, made by `:worker` and taken over here.
  def run(from, ticket, request) do
    # The ticket must stay referenced until the end: a ticket that is
    # garbage is freed at the next collection, and its slot with it.
    ticket = Gate.take(ticket)
    Process.put(:"$fl_request_ticket", ticket)
    serve(from, request)
    if ticket, do: Gate.leave(ticket)
  end

  # `request` was parsed by :worker already (Worker.Request.function/2)
  defp serve({caller, _} = from, {:invoke, %{key: _} = request, input}) do
    case safely(fn -> fetch_and_run(request, input, caller) end) do
      {:error, :code_not_found} -> await_code(from, request, input)
      result -> reply(from, result)
    end
  end

  defp serve(from, request), do: reply(from, safely(fn -> handle(request, from) end))

  # an invocation whose request must carry the code
  defp invoke_with_code(function, input, caller) do
    with {:ok, request} <- Request.function(function, true),
         do: fetch_and_run(request, input, caller)
  end

  defp fetch_and_run(request, input, caller) do
    with {:ok, module} <- Functions.fetch(request.key, request.code) do
      Invocation.run(request, module, input, caller)
    end
  end

  defp handle({:invoke, function}, {caller, _}),
    do: invoke_with_code(function, {:json, "{}"}, caller)

  defp handle({:store_function, function}, _from) do
    with {:ok, request} <- Request.function(function, true) do
      Functions.store(request.key, request.code)
    end
  end

  defp handle({:update_function, prev_hash, function}, _from) do
    with {:ok, request} <- Request.function(function, true),
         true <- is_binary(prev_hash) || {:error, {:bad_request, "prev_hash must be a binary"}},
         :ok <- Functions.store(request.key, request.code) do
      {module, name, hash} = request.key
      if prev_hash != hash, do: Functions.delete({module, name, prev_hash})
      :ok
    end
  end

  defp handle({:delete_function, name, module, hash}, _from)
       when is_binary(name) and is_binary(module) and is_binary(hash),
       do: Functions.delete({module, name, hash})

  defp handle({:delete_function, _, _, _}, _from),
    do: {:error, {:bad_request, "name, module and hash must be binaries"}}

  defp handle({:set_long_name, name}, _from) do
    with {:ok, {name, tag}} <- NodeInfo.set(name, nil), do: {:ok, name, tag}
  end

  defp handle({:set_tag, tag}, _from) do
    with {:ok, {name, tag}} <- NodeInfo.set(nil, tag), do: {:ok, name, tag}
  end

  # The code handler: holds the arguments until the Core sends the code.
  defp await_code(from, request, {:json, text} = input) do
    bytes = :persistent_term.get({__MODULE__, :bytes})

    case Gate.enter(bytes, byte_size(text)) do
      nil ->
        reply(from, overloaded())

      held ->
        reply(from, {:error, :code_not_found, self()})
        timeout = Application.fetch_env!(:worker, :handler_timeout_ms)
        await_code(request, input, System.monotonic_time(:millisecond) + timeout)
        Gate.leave(held)
    end
  end

  # The Core knows this process's pid and may send it anything; so the
  # invocation, once the code comes, runs in a new process whose mailbox
  # nobody else can reach, which takes over the request ticket. This one
  # stays until it ends (the Core's call watches this pid), consuming
  # whatever else arrives.
  defp await_code(request, input, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:"$gen_call", {caller, _} = from, {:invoke, function_with_code}} when is_pid(caller) ->
        ticket = Process.get(:"$fl_request_ticket")
        run = fn -> invoke_with_code(function_with_code, input, caller) end

        {_pid, monitor} =
          :erlang.spawn_opt(__MODULE__, :run_code, [from, ticket, run], [
            :monitor,
            min_heap_size: 1024
          ])

        await_run(monitor)

      {:"$gen_call", {caller, _} = from, other} when is_pid(caller) ->
        Stray.drop("Worker code handler", other)
        reply(from, {:error, {:bad_request, "expected {:invoke, function_with_code}"}})
        await_code(request, input, deadline)

      message ->
        Stray.drop("Worker code handler", message)
        await_code(request, input, deadline)
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
        "Worker.Handler: request failed: " <> Exception.format(kind, reason, __STACKTRACE__)
      )

      {:error, {:internal, Exception.format_banner(kind, reason)}}
  end

  defp reply(from, reply), do: GenServer.reply(from, reply)
end
