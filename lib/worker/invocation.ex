defmodule Worker.Invocation do
  @moduledoc """
  Runs one Core invocation: the compiled function from `Worker.Functions`
  (which may compile it, or answer `{:error, :code_not_found}`), then an
  admission slot (`Worker.Admission`, `FL_MAX_CONCURRENCY`) around the
  invocation itself, then the metrics and the log line of its outcome.
  `Worker.Handler` calls it, for requests with and without code alike.
  """

  alias Worker.{Admission, Function, Functions, Metrics, Runtime}

  require Logger

  @doc """
  Invokes `function` with `input` (a term, or `{:json, text}`). `caller`
  is the process the invocation serves: if it dies, a queued or running
  invocation is cancelled.
  """
  @spec run(Function.t(), term(), pid() | nil) :: {:ok, term()} | {:error, term()}
  def run(%Function{} = function, input, caller) do
    with {:ok, module} <- Functions.fetch(function),
         do: run(function, module, input, caller)
  end

  defp run(%Function{module: module_name, name: name} = function, module, input, caller) do
    id = Function.id(function)
    invocation = System.unique_integer([:positive])
    metadata = [fl_module: module_name, fl_function: name, fl_invocation: invocation]

    opts = [metadata: metadata, caller: caller]
    opts = if mb = function.capacity_mb, do: [max_memory: capacity_bytes(mb)] ++ opts, else: opts

    Admission.run(fn -> invoke(id, module, input, opts) end, caller: caller)
    |> log_outcome(metadata)
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

  defp capacity_bytes(mb),
    do: min(mb, Application.fetch_env!(:worker, :max_capacity_mb)) * 1024 * 1024
end
