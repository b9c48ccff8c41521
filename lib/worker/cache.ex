defmodule Worker.Cache do
  @moduledoc """
  Compiled functions, by `{module, name, hash}` (`Worker.Function.key/1`):
  an in-memory cache in front of `Worker.Loader` and `Worker.Store`.

  * **Hits** are a lookup in an ETS table, in the caller's process. A
    function that comes with its code is a hit when the cached module was
    made from that very code (compared by SHA-256): no disk read, no
    message to this server.
  * **Misses** go through this server, which runs one loader per key at a
    time (single flight): a hundred simultaneous first invocations of one
    function load it once, and count as one miss.
  * **Stores** load the function too (the same way, single flight), but
    are neither hits nor misses; storing code the cache holds already does
    nothing.
  * The cache is bounded by entries (`FL_CACHE_MAX_ENTRIES`) and by compiled
    bytes (`FL_CACHE_MAX_MB`), and evicts the least recently used.

  Every count (hits, misses, evictions, compiles, artifact loads) is
  recorded once, in `Worker.Metrics`, per function and for the node.

  `fetch/2`, `store/2` and `delete/2` wait for this server at most until a
  deadline (`Worker.Request.deadline/1`), then return `{:error, :timeout}`;
  what they asked for goes on: a load finishes (and is cached, its code
  stored), a queued delete is done in its turn.
  """
  use GenServer

  alias Worker.{Function, Loader, Metrics, Request, Runtime, Store, Stray}

  @table __MODULE__
  @lru Worker.Cache.LRU
  @touch_ms 250

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  # Not registered: only this node's own processes reach it (see
  # Worker.Server on what other nodes may send).
  defp server, do: :persistent_term.get({__MODULE__, :server})

  @doc """
  The compiled module of `function`. Without code, it comes from the
  cache, else from the artifact or the code stored on disk, else
  `{:error, :code_not_found}`. With code, it comes from the cache if the
  cached module was made from that code, else from that code (stored on
  disk if it compiles).
  """
  @spec fetch(Function.t(), Request.deadline()) :: {:ok, Runtime.Module.t()} | {:error, term()}
  def fetch(%Function{code: code} = function, deadline \\ :infinity) do
    key = Function.key(function)
    code = code && {code, Store.code_hash(code)}

    case cached(key, code) do
      {:ok, module} ->
        Metrics.cache(Function.id(key), :hit)
        {:ok, module}

      :miss ->
        call({:load, key, code, :miss}, deadline)
    end
  end

  @doc """
  Stores a function that carries its code: compiles it (refusing invalid
  modules), writes it to disk and caches it. Code the cache holds already
  is not compiled again; it is written again only if the stored copy is
  not that code.
  """
  @spec store(Function.t(), Request.deadline()) :: :ok | {:error, term()}
  def store(%Function{code: code} = function, deadline \\ :infinity) when is_binary(code) do
    key = Function.key(function)
    code = {code, Store.code_hash(code)}

    case cached(key, code) do
      {:ok, _module} ->
        {bytes, _hash} = code
        Store.keep_code(key, bytes)

      :miss ->
        with {:ok, _module} <- call({:load, key, code, :store}, deadline), do: :ok
    end
  end

  @doc "Forgets a function: cache and code (after any load of it under way)."
  @spec delete(Function.key(), Request.deadline()) :: :ok | {:error, :timeout}
  def delete(key, deadline \\ :infinity), do: call({:delete, key}, deadline)

  # A call to this server that gives up at `deadline`; the server replies
  # to a caller that gave up into the void (the call's alias is gone).
  defp call(request, deadline) do
    GenServer.call(server(), request, Request.time_left(deadline))
  catch
    :exit, {:timeout, _} -> Worker.Reply.timeout()
  end

  @doc """
  Cache figures: entries and compiled bytes now; hits, misses, evictions,
  compiles and artifact loads since the start (see `Worker.Metrics`).
  """
  @spec info() :: map()
  def info do
    {entries, bytes} = GenServer.call(server(), :size)
    Map.merge(%{entries: entries, bytes: bytes}, Metrics.cache_totals())
  end

  # The cached module for `key`, made from `code` when given; marks the
  # entry as used. Counts nothing.
  defp cached(key, code) do
    case :ets.lookup(@table, key) do
      [{^key, module, _bytes, tick, code_hash}] ->
        if is_nil(code) or elem(code, 1) == code_hash do
          touch(key, tick)
          {:ok, module}
        else
          :miss
        end

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
        {{key, :"$1", :"$2", old_tick, :"$3"}, [],
         [{{{:const, key}, :"$1", :"$2", {:const, tick}, :"$3"}}]}
      ]

      if :ets.select_replace(@table, swap) == 1 do
        :ets.insert(@lru, {tick, key})
        :ets.delete(@lru, old_tick)
      end
    end
  end

  defp tick, do: {System.monotonic_time(:millisecond), :erlang.unique_integer([:monotonic])}

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
  # a load of other code. `code` is `{code, code_hash}` or nil; `cause` is
  # `:miss` (a fetch) or `:store`.
  @impl true
  def handle_call({:load, key, code, cause}, from, state) do
    case state.loading do
      %{^key => %{code: running} = load} when is_nil(code) or elem(code, 1) == elem(running, 1) ->
        {:noreply, put_in(state.loading[key], %{load | waiters: [from | load.waiters]})}

      %{^key => load} ->
        queued = {:load, from, code, cause}
        {:noreply, put_in(state.loading[key], %{load | queue: :queue.in(queued, load.queue)})}

      # as if it had waited: a load that finished since the caller's own
      # lookup missed serves it
      %{} ->
        {:noreply, drain(state, key, :queue.from_list([{:load, from, code, cause}]))}
    end
  end

  # Deletes that wait behind a load one after the other are one: a flood of
  # them (its callers long gone, maybe) is one entry in the queue.
  def handle_call({:delete, key}, from, state) do
    case state.loading do
      %{^key => load} ->
        queue =
          case :queue.out_r(load.queue) do
            {{:value, {:delete, froms}}, rest} -> :queue.in({:delete, [from | froms]}, rest)
            _ -> :queue.in({:delete, [from]}, load.queue)
          end

        {:noreply, put_in(state.loading[key], %{load | queue: queue})}

      %{} ->
        {:reply, :ok, delete_now(state, key)}
    end
  end

  def handle_call(:size, _from, state),
    do: {:reply, {:ets.info(@table, :size), state.bytes}, state}

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
  defp start_load(state, key, code, cause, waiters, queue) do
    server = self()

    {_pid, ref} =
      spawn_monitor(fn ->
        receive do
          {:"$fl_go", ref} -> send(server, {:"$fl_loaded", ref, load(key, code)})
        end
      end)
      |> tap(fn {pid, ref} -> send(pid, {:"$fl_go", ref}) end)

    load = %{ref: ref, code: code, cause: cause, waiters: waiters, queue: queue}
    put_in(state.loading[key], load)
  end

  defp load(key, nil), do: Loader.load(key)
  defp load(key, {code, code_hash}), do: Loader.load(key, code, code_hash)

  defp finish(state, ref, result) do
    case Enum.find(state.loading, fn {_key, load} -> load.ref == ref end) do
      nil ->
        {:noreply, state}

      {key, load} ->
        state = %{state | loading: Map.delete(state.loading, key)}

        {state, reply} =
          case result do
            {:ok, loaded} ->
              Metrics.loaded(Function.id(key), load.cause, loaded.source, loaded.module.kind)
              {insert(state, key, loaded), {:ok, loaded.module}}

            # a function this worker has no code for: not a miss of its own
            # (the Core sends the code next, and that load is the miss), nor
            # a row in the metrics for a function it may never run
            {:error, :code_not_found} = error ->
              {state, error}

            error ->
              # a fetch the cache could not serve, though nothing came of it
              if load.cause == :miss, do: Metrics.cache(Function.id(key), :miss)
              {state, error}
          end

        Enum.each(load.waiters, &GenServer.reply(&1, reply))
        {:noreply, drain(state, key, load.queue)}
    end
  end

  # Runs what waited behind a load, in order, until one needs a load itself.
  defp drain(state, key, queue) do
    case :queue.out(queue) do
      {:empty, _} ->
        state

      {{:value, {:delete, froms}}, rest} ->
        state = delete_now(state, key)
        Enum.each(froms, &GenServer.reply(&1, :ok))
        drain(state, key, rest)

      {{:value, {:load, from, code, cause}}, rest} ->
        case cached(key, code) do
          {:ok, module} ->
            if cause == :miss, do: Metrics.cache(Function.id(key), :hit)
            GenServer.reply(from, {:ok, module})
            drain(state, key, rest)

          :miss ->
            start_load(state, key, code, cause, [from], rest)
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

    if :ets.match(@table, {{module, name, :_}, :_, :_, :_, :_}) == [],
      do: Metrics.forget(Function.id(key))

    state
  end

  defp insert(state, key, %{module: module, code_hash: code_hash}) do
    state = evict(state, key)
    tick = tick()
    bytes = module.native_bytes
    :ets.insert(@table, {key, module, bytes, tick, code_hash})
    :ets.insert(@lru, {tick, key})
    shrink(%{state | bytes: state.bytes + bytes})
  end

  defp evict(state, key) do
    case :ets.take(@table, key) do
      [{^key, _module, bytes, tick, _code_hash}] ->
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
          [{^key, _module, _bytes, ^tick, _code_hash}] ->
            Metrics.cache(Function.id(key), :eviction)
            shrink(evict(state, key))

          _stale ->
            shrink(state)
        end
    end
  end
end
