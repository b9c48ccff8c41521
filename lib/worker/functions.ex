defmodule Worker.Functions do
  @moduledoc """
  Compiled functions, by `{module, name, hash}`: an in-memory cache in front
  of `Worker.Store`.

  * **Hits** are a lookup in an ETS table, in the caller's process.
  * **Misses** go through this server, which runs one loader per key at a
    time (single flight): a hundred simultaneous first invocations of one
    function compile it once, and all hundred get the result. A loader reads
    the compiled artifact from disk (no compile), or else the code, which
    it compiles and whose artifact it writes for next time.
  * The cache is bounded by entries (`FL_CACHE_MAX_ENTRIES`) and by compiled
    bytes (`FL_CACHE_MAX_MB`), and evicts the least recently used.
  """
  use GenServer

  alias Worker.{Metrics, Runtime, Store, Stray}

  require Logger

  @table __MODULE__
  @lru Worker.Functions.LRU
  @touch_ms 250

  @type key :: Store.key()

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  # Not registered: only this node's own processes reach it (see
  # Worker.Server on what other nodes may send).
  defp server, do: :persistent_term.get({__MODULE__, :server})

  @doc """
  The compiled module for `key`. With `code`, the code is first written to
  disk (if it is not there already) and compiled if needed; without, it is
  loaded from the cache, the artifact or the stored code, or
  `{:error, :code_not_found}`.
  """
  @spec fetch(key(), binary() | nil) :: {:ok, Runtime.Module.t()} | {:error, term()}
  def fetch(key, code \\ nil)

  def fetch(key, nil) do
    case lookup(key) do
      {:ok, module} -> {:ok, module}
      :miss -> GenServer.call(server(), {:load, key, nil}, :infinity)
    end
  end

  def fetch(key, code), do: GenServer.call(server(), {:load, key, code}, :infinity)

  @doc """
  Stores a function: writes its code, compiles it (refusing invalid
  modules) and caches it.
  """
  @spec store(key(), binary()) :: :ok | {:error, term()}
  def store(key, code) do
    case GenServer.call(server(), {:load, key, code}, :infinity) do
      {:ok, _module} -> :ok
      error -> error
    end
  end

  @doc "Forgets a function: cache and code (after any load of it under way)."
  @spec delete(key()) :: :ok
  def delete(key), do: GenServer.call(server(), {:delete, key}, :infinity)

  @doc """
  Cache figures: entries, compiled bytes, hits, misses, evictions, and how
  misses were served: compiles, artifact loads.
  """
  @spec info() :: map()
  def info, do: GenServer.call(server(), :info)

  defp lookup(key) do
    case :ets.lookup(@table, key) do
      [{^key, module, _bytes, tick}] ->
        touch(key, tick)
        :counters.add(counters(), 1, 1)
        Metrics.cache(id(key), :hit)
        {:ok, module}

      [] ->
        :miss
    end
  end

  # Marks an entry as just used, at most once per @touch_ms: the order of
  # recency is kept to that precision, and a hot function costs one ETS
  # read per hit. The tick is swapped only if it is still the one read, so
  # of concurrent touches exactly one moves the entry's LRU row.
  defp touch(key, {used_ms, _} = old_tick) do
    if System.monotonic_time(:millisecond) - used_ms >= @touch_ms do
      tick = tick()

      swap = [
        {{key, :"$1", :"$2", old_tick}, [], [{{{:const, key}, :"$1", :"$2", {:const, tick}}}]}
      ]

      if :ets.select_replace(@table, swap) == 1 do
        :ets.insert(@lru, {tick, key})
        :ets.delete(@lru, old_tick)
      end
    end
  end

  defp tick, do: {System.monotonic_time(:millisecond), :erlang.unique_integer([:monotonic])}

  defp counters, do: :persistent_term.get({__MODULE__, :counters})

  defp id({module, name, _hash}), do: {module, name}

  ## Server

  @doc false
  # For tests and debugging: the loads under way, by key.
  def loading, do: GenServer.call(server(), :loading)

  @impl true
  def init(_opts) do
    :persistent_term.put({__MODULE__, :server}, self())
    Store.prune_artifacts()
    :ets.new(@table, [:set, :public, :named_table, read_concurrency: true])
    :ets.new(@lru, [:ordered_set, :public, :named_table])
    # hits, misses, evictions, compiles, artifact loads
    :persistent_term.put({__MODULE__, :counters}, :counters.new(5, [:write_concurrency]))

    {:ok,
     %{
       loading: %{},
       bytes: 0,
       max_entries: Application.fetch_env!(:worker, :cache_max_entries),
       max_bytes: Application.fetch_env!(:worker, :cache_max_bytes)
     }}
  end

  # While a key is loading, later requests for it wait their turn in the
  # load's queue, in order: a delete never races a load (which would write
  # the code back, or cache it again), and a store never takes the result of
  # a load of other code.
  @impl true
  def handle_call({:load, key, code}, from, state) do
    case state.loading do
      %{^key => %{code: running} = load} when is_nil(code) or code == running ->
        {:noreply, put_in(state.loading[key], %{load | waiters: [from | load.waiters]})}

      %{^key => load} ->
        {:noreply,
         put_in(state.loading[key], %{load | queue: :queue.in({:load, from, code}, load.queue)})}

      # as if it had waited: a load that finished since the caller's own
      # lookup missed serves it
      %{} ->
        {:noreply, drain(state, key, :queue.from_list([{:load, from, code}]))}
    end
  end

  def handle_call({:delete, key}, from, state) do
    case state.loading do
      %{^key => load} ->
        {:noreply,
         put_in(state.loading[key], %{load | queue: :queue.in({:delete, from}, load.queue)})}

      %{} ->
        {:reply, :ok, delete_now(state, key)}
    end
  end

  def handle_call(:info, _from, state) do
    c = counters()

    {:reply,
     %{
       entries: :ets.info(@table, :size),
       bytes: state.bytes,
       hits: :counters.get(c, 1),
       misses: :counters.get(c, 2),
       evictions: :counters.get(c, 3),
       compiles: :counters.get(c, 4),
       artifact_loads: :counters.get(c, 5)
     }, state}
  end

  def handle_call(:loading, _from, state), do: {:reply, Map.keys(state.loading), state}

  def handle_call(request, _from, state), do: Stray.call(__MODULE__, request, state)

  @impl true
  def handle_cast(request, state), do: Stray.cast(__MODULE__, request, state)

  @impl true
  def handle_info({:"$fl_loaded", ref, result}, state) when is_reference(ref) do
    Process.demonitor(ref, [:flush])
    finish(state, ref, result)
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, state) do
    finish(state, ref, {:error, {:load_crashed, inspect(reason)}})
  end

  def handle_info(message, state), do: Stray.info(__MODULE__, message, state)

  # A loader is a process of its own, monitored: this server never waits
  # on a compile, and a loader that crashes fails its load only.
  defp start_load(state, key, code, waiters, queue) do
    :counters.add(counters(), 2, 1)
    server = self()

    {_pid, ref} =
      spawn_monitor(fn ->
        receive do
          {:"$fl_go", ref} -> send(server, {:"$fl_loaded", ref, load(key, code)})
        end
      end)
      |> tap(fn {pid, ref} -> send(pid, {:"$fl_go", ref}) end)

    load = %{ref: ref, code: code, waiters: waiters, queue: queue}
    put_in(state.loading[key], load)
  end

  defp finish(state, ref, result) do
    case Enum.find(state.loading, fn {_key, load} -> load.ref == ref end) do
      nil ->
        {:noreply, state}

      {key, load} ->
        state = %{state | loading: Map.delete(state.loading, key)}

        state =
          case result do
            {:ok, module} ->
              Metrics.cache(id(key), :miss)
              insert(state, key, module)

            _ ->
              state
          end

        Enum.each(load.waiters, &GenServer.reply(&1, result))
        {:noreply, drain(state, key, load.queue)}
    end
  end

  # Runs what waited behind a load, in order, until one needs a load itself.
  defp drain(state, key, queue) do
    case :queue.out(queue) do
      {:empty, _} ->
        state

      {{:value, {:delete, from}}, rest} ->
        state = delete_now(state, key)
        GenServer.reply(from, :ok)
        drain(state, key, rest)

      {{:value, {:load, from, code}}, rest} ->
        case lookup(key) do
          {:ok, module} when is_nil(code) ->
            GenServer.reply(from, {:ok, module})
            drain(state, key, rest)

          _ ->
            start_load(state, key, code, [from], rest)
        end
    end
  end

  # Forgets the function: cache and code. Its artifact is kept: artifacts
  # are keyed by code, which another function may share; unreferenced ones
  # are pruned at start (see Store.prune_artifacts/0).
  defp delete_now(state, key) do
    state = evict(state, key)
    Store.delete_code(key)
    # the metrics are by {module, name}: keep them while another hash of
    # the function is loaded (an update deletes the old hash after storing
    # the new one)
    {module, name, _hash} = key
    if :ets.match(@table, {{module, name, :_}, :_, :_, :_}) == [], do: Metrics.forget(id(key))
    state
  end

  # Runs in a task: artifact, else code (compiled, artifact written).
  defp load(key, nil) do
    case Store.get_code(key) do
      {:ok, code} -> load_code(key, code)
      :error -> {:error, :code_not_found}
    end
  end

  # With code: when this very code is stored and compiled already (a store
  # repeated, a handler sent code the worker had), nothing is done again.
  defp load(key, code) do
    stored? = Store.get_code(key) == {:ok, code}

    case :ets.lookup(@table, key) do
      [{^key, module, _bytes, _tick}] when stored? ->
        {:ok, module}

      _ ->
        with {:ok, module} <- load_code(key, code),
             :ok <- if(stored?, do: :ok, else: Store.put_code(key, code)) do
          {:ok, module}
        end
    end
  end

  defp load_code(key, code) do
    started = System.monotonic_time()

    with :error <- load_artifact(code),
         {:ok, module} <- Runtime.compile(code) do
      :counters.add(counters(), 4, 1)
      Metrics.compile(id(key), System.monotonic_time() - started)
      save_artifact(code, module)
      {:ok, module}
    end
  end

  defp load_artifact(code) do
    with {:ok, artifact} <- Store.get_artifact(code),
         {:ok, module} <- Runtime.load(artifact, byte_size(code)) do
      :counters.add(counters(), 5, 1)
      {:ok, module}
    else
      {:error, reason} ->
        Logger.warning(
          "Worker.Functions: stored artifact refused (#{inspect(reason)}); recompiling"
        )

        Store.delete_artifact(code)
        :error

      :error ->
        :error
    end
  end

  defp save_artifact(code, module) do
    with {:ok, artifact} <- Runtime.serialize(module),
         :ok <- Store.put_artifact(code, artifact) do
      :ok
    else
      error -> Logger.warning("Worker.Functions: cannot save artifact: #{inspect(error)}")
    end
  end

  defp insert(state, key, module) do
    state = evict(state, key)
    tick = tick()
    bytes = module.native_bytes
    :ets.insert(@table, {key, module, bytes, tick})
    :ets.insert(@lru, {tick, key})
    shrink(%{state | bytes: state.bytes + bytes})
  end

  defp evict(state, key) do
    case :ets.take(@table, key) do
      [{^key, _module, bytes, tick}] ->
        :ets.delete(@lru, tick)
        %{state | bytes: state.bytes - bytes}

      [] ->
        state
    end
  end

  # Evicts least recently used entries until both bounds hold.
  defp shrink(state) do
    over? = :ets.info(@table, :size) > state.max_entries or state.bytes > state.max_bytes

    case over? && :ets.first(@lru) do
      false ->
        state

      :"$end_of_table" ->
        state

      tick ->
        [{^tick, key}] = :ets.lookup(@lru, tick)
        :ets.delete(@lru, tick)

        case :ets.lookup(@table, key) do
          [{^key, _module, _bytes, ^tick}] ->
            :counters.add(counters(), 3, 1)
            Metrics.cache(id(key), :eviction)
            shrink(evict(state, key))

          _stale ->
            shrink(state)
        end
    end
  end
end
