defmodule Worker.Invoke do
  @moduledoc """
  Runs one Core invocation: the compiled function from `Worker.Cache`
  (which may compile it, or answer `{:error, :code_not_found}`), then an
  admission slot (`Worker.Admission`, `FL_MAX_CONCURRENCY`) around the
  invocation itself, then the metrics and the log line of its outcome.
  `Worker.Job` calls it, for requests with and without code alike.
  """

  alias Worker.{Admission, Cache, Function, Metrics, Reply, Request, Runtime}

  require Logger

  @doc """
  Invokes `function` with `input` (a term, or `{:json, text}`). `caller`
  is the process the invocation serves: if it dies, a queued or running
  invocation is cancelled. By `deadline` (`Worker.Request.deadline/1`)
  it has returned, `{:error, :timeout}` if nothing else: the load, the
  wait for a slot and the run share the time, and the run's timeout
  (`FL_INVOKE_TIMEOUT_MS`) is cut to what is left.
  """
  @spec run(Function.t(), term(), pid() | nil, Request.deadline()) ::
          {:ok, term()} | {:error, term()}
  def run(%Function{} = function, input, caller, deadline \\ :infinity) do
    with {:ok, module} <- Cache.fetch(function, deadline),
         {:ok, memory_opts} <- memory(function, module),
         do: run(function, module, input, caller, deadline, memory_opts)
  end

  defp run(%Function{} = function, module, input, caller, deadline, opts) do
    id = Function.id(function)
    invocation = System.unique_integer([:positive])
    metadata = [fl_module: function.module, fl_function: function.name, fl_invocation: invocation]
    opts = [metadata: metadata, caller: caller] ++ opts

    case Admission.enter(key: Worker.Gate.key(id), caller: caller, deadline: deadline) do
      {:ok, slot} ->
        try do
          id |> invoke(module, input, opts, deadline) |> log_outcome(metadata)
        after
          Admission.leave(slot)
        end

      # refused by admission, and counted there: it never ran
      {:error, _} = refused ->
        refused
    end
  end

  # The Core's capacity (bytes) is the function's memory limit (the runtime
  # bounds it by FL_MEMORY_CAP_MB); a capacity below what the module's
  # memory starts with could only fail to instantiate, so it is refused,
  # saying so.
  defp memory(%Function{capacity: nil}, _module), do: {:ok, []}

  defp memory(%Function{capacity: capacity}, module) when capacity < module.initial_memory do
    Reply.insufficient_capacity(
      "this function's memory starts at #{module.initial_memory} bytes, " <>
        "above its capacity of #{capacity} bytes"
    )
  end

  defp memory(%Function{capacity: capacity}, _module), do: {:ok, [max_memory: capacity]}

  defp invoke(id, module, input, opts, :infinity), do: invoke(id, module, input, opts)

  defp invoke(id, module, input, opts, deadline) do
    # what is left once a slot is had; a run that cannot start in time is
    # not started
    case Request.time_left(deadline) do
      0 ->
        Reply.timeout()

      left ->
        timeout = Runtime.Invocation.default(:timeout)
        invoke(id, module, input, [timeout: min(timeout, left)] ++ opts)
    end
  end

  defp invoke(id, module, input, opts) do
    Metrics.started(id)
    started = System.monotonic_time()

    {result, stats} =
      try do
        Runtime.Invocation.invoke_with_stats(module, input, opts)
      catch
        kind, reason ->
          Metrics.invocation(id, :crashed, System.monotonic_time() - started)
          :erlang.raise(kind, reason, __STACKTRACE__)
      end

    duration = System.monotonic_time() - started
    Metrics.invocation_stats(id, stats)
    Metrics.invocation(id, result, duration)
    {:ran, result, duration}
  end

  defp log_outcome({:ran, result, duration}, metadata) do
    outcome = Metrics.outcome(result)
    metadata = [fl_outcome: outcome] ++ metadata

    case result do
      {:ok, _} ->
        Logger.debug(fn -> "invocation ok in #{us(duration)} us" end, metadata)

      {:error, {:exec_error, message}} ->
        # inspected: the function's text, one line whatever it holds
        Logger.info("invocation failed in the function: #{inspect(message)}", metadata)

      {:error, reason} ->
        Logger.warning("invocation failed: #{inspect(reason)}", metadata)
    end

    result
  end

  # a run that could not start in time
  defp log_outcome({:error, _} = refused, _metadata), do: refused

  defp us(duration), do: System.convert_time_unit(duration, :native, :microsecond)
end
