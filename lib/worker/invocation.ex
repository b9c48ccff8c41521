defmodule Worker.Invocation do
  @moduledoc """
  Runs one Core invocation: the compiled function from `Worker.Functions`
  (which may compile it, or answer `{:error, :code_not_found}`), then an
  admission slot (`Worker.Admission`, `FL_MAX_CONCURRENCY`) around the
  invocation itself, then the metrics and the log line of its outcome.
  `Worker.Handler` calls it, for requests with and without code alike.
  """

  alias Worker.{Admission, Function, Functions, Metrics, Request, Runtime}

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
    with {:ok, module} <- Functions.fetch(function, deadline),
         {:ok, memory_opts} <- memory(function, module),
         do: run(function, module, input, caller, deadline, memory_opts)
  end

  defp run(%Function{} = function, module, input, caller, deadline, opts) do
    id = Function.id(function)
    invocation = System.unique_integer([:positive])
    metadata = [fl_module: function.module, fl_function: function.name, fl_invocation: invocation]
    opts = [metadata: metadata, caller: caller] ++ opts

    Admission.run(fn -> invoke(id, module, input, opts, deadline) end,
      key: Worker.Gate.key(id),
      caller: caller,
      deadline: deadline
    )
    |> log_outcome(metadata)
  end

  # The Core's capacity (bytes), within FL_MAX_CAPACITY_MB, is the
  # function's memory limit; a capacity below what the module's memory
  # starts with could only fail to instantiate, so it is refused, saying so.
  defp memory(%Function{capacity: nil}, _module), do: {:ok, []}

  defp memory(%Function{capacity: capacity}, module) do
    limit = min(capacity, Application.fetch_env!(:worker, :max_capacity_mb) * 1024 * 1024)

    if limit < module.initial_memory do
      {:error,
       {:insufficient_capacity,
        "this function's memory starts at #{module.initial_memory} bytes, " <>
          "above its capacity of #{capacity} bytes" <>
          if(limit < capacity, do: " (#{limit} bytes under FL_MAX_CAPACITY_MB)", else: "")}}
    else
      {:ok, [max_memory: limit]}
    end
  end

  defp invoke(id, module, input, opts, :infinity), do: invoke(id, module, input, opts)

  defp invoke(id, module, input, opts, deadline) do
    # what is left once a slot is had; a run that cannot start in time is
    # not started
    case Request.time_left(deadline) do
      0 ->
        {:error, :timeout}

      left ->
        {timeout, _, _, _} = Worker.Config.invoke_defaults()
        invoke(id, module, input, [timeout: min(timeout, left)] ++ opts)
    end
  end

  defp invoke(id, module, input, opts) do
    Metrics.started(id)
    started = System.monotonic_time()

    {result, stats} =
      try do
        Runtime.invoke_with_stats(module, input, opts)
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

  # refused by admission, and counted there: it never ran
  defp log_outcome({:error, _} = refused, _metadata), do: refused

  defp us(duration), do: System.convert_time_unit(duration, :native, :microsecond)
end
