defmodule Worker.Server do
  @moduledoc """
  The process registered as `:worker`, which answers the FunLess Core.

  | request | reply |
  |---|---|
  | `{:invoke, function, args}` | `{:ok, result}`, `{:error, {:exec_error, msg}}`, `{:error, reason}`, or `{:error, :code_not_found, handler_pid}` |
  | `{:invoke, function_with_code}` | as above (args `%{}`); to a handler, with the original args |
  | `{:store_function, function_with_code}` | `:ok` or `{:error, reason}` |
  | `{:update_function, prev_hash, function_with_code}` | `:ok` or `{:error, reason}` |
  | `{:delete_function, name, module, hash}` | `:ok` |
  | `:get_info` | `{:ok, long_name, tag}` |
  | `{:set_long_name, name}`, `{:set_tag, tag}` | `{:ok, long_name, tag}` |

  Every request that may wait (invocations, compiles, disk writes) runs in
  a task of its own that replies directly; this process only dispatches, so
  it never waits on one. Malformed requests get `{:error, reason}`.
  """
  use GenServer

  alias Worker.{Admission, Functions, Metrics, NodeInfo, Request, Runtime}

  require Logger

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: :worker)

  @impl true
  def init(_opts), do: {:ok, nil}

  @impl true
  def handle_call(:get_info, _from, state) do
    # a read of :persistent_term: never waits on a disk write
    {name, tag} = NodeInfo.get()
    {:reply, {:ok, name, tag}, state}
  end

  def handle_call({:set_long_name, name}, from, state) when is_binary(name),
    do: async(from, fn -> set_info(name, nil) end, state)

  def handle_call({:set_tag, tag}, from, state) when is_binary(tag),
    do: async(from, fn -> set_info(nil, tag) end, state)

  def handle_call({:invoke, function, args}, from, state),
    do: async(from, fn -> invoke(function, args) end, state)

  def handle_call({:invoke, function}, from, state),
    do: async(from, fn -> invoke_with_code(function, %{}) end, state)

  def handle_call({:store_function, function}, from, state),
    do: async(from, fn -> store(function) end, state)

  def handle_call({:update_function, prev_hash, function}, from, state),
    do: async(from, fn -> update(prev_hash, function) end, state)

  def handle_call({:delete_function, name, module, hash}, from, state)
      when is_binary(name) and is_binary(module) and is_binary(hash),
      do: async(from, fn -> Functions.delete({module, name, hash}) end, state)

  def handle_call(request, _from, state) do
    Logger.warning("Worker.Server: unknown request #{inspect(request, limit: 20)}")
    {:reply, {:error, {:bad_request, "unknown request"}}, state}
  end

  @impl true
  def handle_info(message, state) do
    Logger.warning("Worker.Server: ignoring message #{inspect(message, limit: 20)}")
    {:noreply, state}
  end

  # A plain process per request: cheaper than a supervised task (no round
  # trip to a supervisor), and it only lives as long as its request.
  defp async(from, fun, state) do
    :erlang.spawn_opt(fn -> GenServer.reply(from, safely(fun)) end, min_heap_size: 1024)
    {:noreply, state}
  end

  @doc false
  # A crash while serving one request answers that request, nothing more:
  # raises, throws and exits (a dependency restarting, say) alike.
  def safely(fun) do
    fun.()
  catch
    kind, reason ->
      Logger.error(
        "Worker.Server: request failed: " <> Exception.format(kind, reason, __STACKTRACE__)
      )

      {:error, {:internal, Exception.format_banner(kind, reason)}}
  end

  @doc false
  # Runs an invocation: the code comes with the request, or from this
  # worker's cache or store, else a handler waits for the Core to send it.
  def invoke(function, args, code_required \\ false) do
    with {:ok, request} <- Request.function(function, code_required) do
      Admission.run(fn ->
        case Functions.fetch(request.key, request.code) do
          {:ok, module} ->
            run(request, module, args)

          {:error, :code_not_found} ->
            case Worker.CodeHandler.start(args) do
              {:ok, handler} -> {:error, :code_not_found, handler}
              {:error, _} -> {:error, :overloaded}
            end

          {:error, _} = error ->
            error
        end
      end)
    end
  end

  @doc false
  # The same, for a request that must carry the code (so it is never
  # :code_not_found).
  def invoke_with_code(function, args), do: invoke(function, args, true)

  defp run(%{key: {module_name, name, _}} = request, module, args) do
    id = {module_name, name}
    invocation = System.unique_integer([:positive])
    metadata = [fl_module: module_name, fl_function: name, fl_invocation: invocation]

    opts = [metadata: metadata, on_stats: &Metrics.invocation_stats(id, &1)]
    opts = if mb = request.capacity_mb, do: [max_memory: capacity_bytes(mb)] ++ opts, else: opts

    Metrics.started(id)
    started = System.monotonic_time()

    result =
      try do
        Runtime.invoke(module, args, opts)
      catch
        kind, reason ->
          Metrics.invocation(id, :crashed, System.monotonic_time() - started)
          :erlang.raise(kind, reason, __STACKTRACE__)
      end

    duration = System.monotonic_time() - started
    Metrics.invocation(id, result, duration)
    log_outcome(result, duration, metadata)
  end

  defp log_outcome(result, duration, metadata) do
    outcome = Metrics.outcome(result)
    metadata = [fl_outcome: outcome] ++ metadata

    case result do
      {:ok, _} ->
        Logger.debug(fn -> "invocation ok in #{us(duration)} us" end, metadata)

      {:error, {:exec_error, message}} ->
        Logger.info("invocation failed in the function: #{message}", metadata)

      {:error, reason} ->
        Logger.warning("invocation failed: #{inspect(reason)}", metadata)
    end

    result
  end

  defp us(duration), do: System.convert_time_unit(duration, :native, :microsecond)

  defp capacity_bytes(mb),
    do: min(mb, Application.fetch_env!(:worker, :max_capacity_mb)) * 1024 * 1024

  defp store(function) do
    with {:ok, request} <- Request.function(function, true) do
      Functions.store(request.key, request.code)
    end
  end

  defp update(prev_hash, function) do
    with {:ok, request} <- Request.function(function, true),
         true <- is_binary(prev_hash) || {:error, {:bad_request, "prev_hash must be a binary"}},
         :ok <- Functions.store(request.key, request.code) do
      {module, name, hash} = request.key
      if prev_hash != hash, do: Functions.delete({module, name, prev_hash})
      :ok
    end
  end

  defp set_info(name, tag) do
    with {:ok, {name, tag}} <- NodeInfo.set(name, tag), do: {:ok, name, tag}
  end
end
