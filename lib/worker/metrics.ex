defmodule Worker.Metrics do
  @moduledoc """
  Records the worker's metrics, in ETS counters that
  `Worker.Metrics.Prometheus` renders as a Prometheus page.

  Per function (labels `module` and `function`):

    * `worker_invocations_total{outcome}` - `ok`, `exec_error`, `trap`,
      `timeout` or `error`;
    * `worker_invocation_duration_seconds` - a histogram;
    * `worker_compiles_total` and `worker_compile_duration_seconds`;
    * `worker_cache_hits_total`, `worker_cache_misses_total`,
      `worker_cache_evictions_total` (as `Worker.Cache` defines them:
      a store is neither a hit nor a miss);
    * `worker_invocations_in_flight`;
    * `worker_http_requests_total{outcome}` - `ok`, `failed`, `refused`;
    * `worker_log_lines_dropped_total`.

  Whole node: BEAM memory, process count, run queue, admission queue and
  `:overloaded` count, and the OS figures the FunLess Core reads, under the
  names the FunLess worker exports (`worker_prom_ex_os_mon_resources_*`);
  and `worker_metrics_functions_folded_total` (below).

  ## Rows

  Each function has one ETS row of counters, so recording an invocation is
  one `:ets.update_counter/3` when it starts and one when it ends: cheap
  enough for every invocation. A row is made when the function is loaded
  into the cache (`loaded/4`: a store, or a miss), never by a later event:
  an event of a function without a row is counted in the shared row below.

  **The cap.** At most `FL_METRICS_MAX_FUNCTIONS` functions (default 1 000)
  have rows of their own, so that neither the table nor the page grows with
  the functions a Core sends. A function loaded when the cap is reached
  gets none: its figures go to one shared row, labelled
  `module="_other",function="_other"`, and the load is counted in
  `worker_metrics_functions_folded_total` (a function evicted and loaded
  again counts again). It keeps counting there until it is next loaded
  with room for a row (after deletions free some, or on a restart).
  Concurrent loads may overshoot the cap by the few that check at once.

  **Deletion.** `forget/1` (from `Worker.Cache` when a function is
  deleted) removes its row at once when nothing of it is in flight;
  otherwise it marks the row deleted, and the invocation that ends last
  removes it. An invocation's end always counts in the row its start
  counted in (it is remembered in the invoking process's dictionary), and
  a row is only ever removed with nothing in flight, atomically
  (`:ets.select_delete/2` on the in-flight counter being 0): so an
  invocation that outlives its function never makes a row again, nor a
  negative in-flight figure. A late event of a deleted function (an
  invocation admitted after the deletion, say) counts in the `_other` row.
  A function stored again gets a fresh row: its load clears a row still
  marked deleted, keeping only the in-flight count.

  **Scrapes.** `Worker.Metrics.Endpoint` renders one page at a time, in a
  process of its own, and serves it for a second after: concurrent scrapes
  wait for the render under way and get the same binary. No figure is
  reset by a read: the histogram of time slices
  (`worker_runtime_slice_seconds`) is cumulative, like every counter, and
  reads the same for every reader.
  """

  @table __MODULE__

  @invoke_buckets [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25] ++
                    [0.5, 1, 2.5, 5, 10, 30]
  @compile_buckets [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
  @invoke_buckets_us Enum.map(@invoke_buckets, &round(&1 * 1_000_000))
  @compile_buckets_us Enum.map(@compile_buckets, &round(&1 * 1_000_000))

  # The shared row of the functions without one (see the moduledoc).
  @other {:fn, :other}

  # node-wide counters: pages rendered, folded loads, then the cache's
  # totals (in cache_totals/0's order)
  @renders 1
  @folded 2
  @totals [:hits, :misses, :evictions, :compiles, :artifact_loads]
  @total_at Map.new(Enum.with_index(@totals, 3))

  @doc false
  def init do
    :ets.new(@table, [
      :set,
      :public,
      :named_table,
      write_concurrency: true,
      read_concurrency: true
    ])

    :ets.insert(@table, empty_row(@other))

    unless :persistent_term.get({__MODULE__, :counters}, nil) do
      counters = :counters.new(2 + length(@totals), [:write_concurrency])
      :persistent_term.put({__MODULE__, :counters}, counters)
    end

    :ok
  end

  @typedoc "`{module, function}` (`Worker.Function.id/1`): the labels of a function's metrics."
  @type function_id :: Worker.Function.id()

  # One row per function, a counter per position, so that an invocation
  # costs one update_counter when it starts and one when it ends.
  @outcomes ~w(ok exec_error trap timeout error)
  @in_flight 2
  @first_outcome 3
  @invoke_sum 8
  @first_invoke_bucket 9
  @hits @first_invoke_bucket + length(@invoke_buckets) + 1
  @misses @hits + 1
  @evictions @hits + 2
  @compiles @hits + 3
  @compile_sum @hits + 4
  @first_compile_bucket @hits + 5
  @http_ok @first_compile_bucket + length(@compile_buckets) + 1
  @http_failed @http_ok + 1
  @http_refused @http_ok + 2
  @dropped @http_ok + 3
  # 1 once the function is deleted (see forget/1); not a counter
  @deleted @dropped + 1
  # the function's kind once loaded (see @kinds); not a counter
  @kind @deleted + 1
  @row_size @kind
  @kinds %{
    funless: 1,
    wasi_command: 2,
    cli_component: 3,
    http_component: 4,
    cli_component_p3: 5,
    http_component_p3: 6
  }

  @outcome_at Map.new(Enum.with_index(@outcomes, @first_outcome))
  @outcome_samples for {outcome, at} <- Enum.with_index(@outcomes, @first_outcome),
                       do: {~s(,outcome="#{outcome}"}), at}

  # `,le="BOUND"}` for each bucket, then +Inf; formatted as number/1 does
  le = fn buckets ->
    Enum.map(buckets, fn
      b when is_integer(b) -> ~s(,le="#{b}"})
      b -> ~s(,le="#{:erlang.float_to_binary(b, [:short])}"})
    end) ++ [~s(,le="+Inf"})]
  end

  @invoke_les le.(@invoke_buckets)
  @compile_les le.(@compile_buckets)

  @doc """
  Counts an invocation as started (in flight). Pairs with `invocation/3`,
  which must be called by the same process: the row counted in is kept in
  its dictionary until then.
  """
  @spec started(function_id()) :: :ok
  def started(id) do
    key = {:fn, id}

    key =
      try do
        :ets.update_counter(@table, key, {@in_flight, 1})
        key
      rescue
        ArgumentError ->
          :ets.update_counter(@table, @other, {@in_flight, 1})
          @other
      end

    Process.put({__MODULE__, id}, key)
    :ok
  end

  @doc """
  Records an invocation's end: its outcome and duration (native time units).
  Pairs with `started/1`.
  """
  @spec invocation(function_id(), term(), integer()) :: :ok
  def invocation(id, result, duration) do
    micros = System.convert_time_unit(duration, :native, :microsecond)

    ops = [
      {Map.fetch!(@outcome_at, outcome(result)), 1},
      {@invoke_sum, micros},
      {@first_invoke_bucket + bucket(micros, @invoke_buckets_us, 0), 1}
    ]

    case Process.delete({__MODULE__, id}) do
      # not counted as started: the in-flight figure is left alone
      nil -> record(id, ops)
      key -> finish(key, ops)
    end
  end

  # The row holds this invocation's in-flight count, so it is still there.
  # Reading the mark in the same update_counter makes the decrement and the
  # check one atomic step: of the invocations of a deleted function, the
  # one that brings the count to 0 removes the row (or forget/1 does).
  defp finish(key, ops) do
    case :ets.update_counter(@table, key, [{@in_flight, -1}, {@deleted, 0} | ops]) do
      [0, 1 | _] -> delete_idle(key)
      _ -> :ok
    end

    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc "The outcome label of an invocation result: one of `#{inspect(@outcomes)}`."
  @spec outcome(term()) :: String.t()
  def outcome({:ok, _}), do: "ok"
  def outcome({:error, {:exec_error, _}}), do: "exec_error"
  def outcome({:error, {:trap, _}}), do: "trap"
  def outcome({:error, :timeout}), do: "timeout"
  def outcome(_), do: "error"

  @doc """
  Counts a cache hit, an eviction, or a miss whose load failed
  (`Worker.Cache`; a miss that loads is counted by `loaded/4`).
  """
  @spec cache(function_id(), :hit | :eviction | :miss) :: :ok
  def cache(id, :hit) do
    total(:hits)
    record(id, [{@hits, 1}])
  end

  def cache(id, :miss) do
    total(:misses)
    record(id, [{@misses, 1}])
  end

  def cache(id, :eviction) do
    total(:evictions)
    record(id, [{@evictions, 1}])
  end

  @doc """
  Counts a load into the cache (`Worker.Cache`): for a fetch that
  missed (`:miss`) or a store (`:store`), from an artifact or compiled
  (with the compile's duration, in native time units). It makes the
  function's row (see the moduledoc).
  """
  @spec loaded(
          function_id(),
          :miss | :store,
          :artifact | {:compiled, integer()},
          Worker.Runtime.Module.kind() | nil
        ) :: :ok
  def loaded(id, cause, source, kind \\ nil) do
    miss = if cause == :miss, do: [{@misses, 1}], else: []
    if cause == :miss, do: total(:misses)

    ops =
      case source do
        :artifact ->
          total(:artifact_loads)
          miss

        {:compiled, duration} ->
          total(:compiles)
          micros = System.convert_time_unit(duration, :native, :microsecond)
          bucket = bucket(micros, @compile_buckets_us, 0)
          [{@compiles, 1}, {@compile_sum, micros}, {@first_compile_bucket + bucket, 1} | miss]
      end

    loaded_row(id, ops)
    # the row's kind label (worker_function_info); not on the shared row
    if code = @kinds[kind], do: :ets.update_element(@table, {:fn, id}, {@kind, code})
    :ok
  end

  @doc """
  The cache's counts since the start, for the whole node: they stay when
  a function's row goes.
  """
  @spec cache_totals() :: %{
          hits: non_neg_integer(),
          misses: non_neg_integer(),
          evictions: non_neg_integer(),
          compiles: non_neg_integer(),
          artifact_loads: non_neg_integer()
        }
  def cache_totals do
    c = counters()
    Map.new(@total_at, fn {name, i} -> {name, :counters.get(c, i)} end)
  end

  defp total(name), do: :counters.add(counters(), Map.fetch!(@total_at, name), 1)

  @doc "Records what `Worker.Runtime.invoke_with_stats/3` reports besides the result."
  @spec invocation_stats(function_id(), Worker.Runtime.Stats.t()) :: :ok
  def invocation_stats(_id, %Worker.Runtime.Stats{
        dropped_lines: 0,
        http_ok: 0,
        http_failed: 0,
        http_refused: 0
      }),
      do: :ok

  def invocation_stats(id, %Worker.Runtime.Stats{} = stats) do
    ops = [
      {@http_ok, stats.http_ok},
      {@http_failed, stats.http_failed},
      {@http_refused, stats.http_refused},
      {@dropped, stats.dropped_lines}
    ]

    # in the row the invocation's start counted in, while it runs
    case Process.get({__MODULE__, id}) do
      nil -> record(id, ops)
      key -> record_at(key, ops)
    end
  end

  @doc """
  Forgets a deleted function's row: at once if nothing of it is in flight,
  else when its last invocation in flight ends (see the moduledoc).
  """
  @spec forget(function_id()) :: :ok
  def forget({_module, _name} = id) do
    key = {:fn, id}
    # Marked first, then removed if idle: an invocation that ends between
    # the two sees the mark and removes the row itself.
    if :ets.update_element(@table, key, {@deleted, 1}), do: delete_idle(key)
    :ok
  end

  @doc false
  # For tests: how many pages were rendered on this node.
  @spec renders() :: non_neg_integer()
  def renders, do: :counters.get(counters(), @renders)

  defp counters, do: :persistent_term.get({__MODULE__, :counters})

  # An event of a function that has a row, else of the shared row.
  defp record(id, ops), do: record_at({:fn, id}, ops)

  defp record_at(key, ops) do
    :ets.update_counter(@table, key, ops)
    :ok
  rescue
    ArgumentError ->
      :ets.update_counter(@table, @other, ops)
      :ok
  end

  # A load: makes the row, room permitting. A row still marked deleted is
  # a function stored again: it starts afresh, keeping only what is in
  # flight (whose ends count in it).
  defp loaded_row(id, ops) do
    key = {:fn, id}
    _ = :ets.select_replace(@table, [{deleted_pattern(key), [], [revived_row(key)]}])

    try do
      :ets.update_counter(@table, key, ops)
    rescue
      ArgumentError ->
        # the shared row is not a function's
        if :ets.info(@table, :size) - 1 < Application.fetch_env!(:worker, :metrics_max_functions) do
          :ets.update_counter(@table, key, ops, empty_row(key))
        else
          :counters.add(counters(), @folded, 1)
          :ets.update_counter(@table, @other, ops)
        end
    end

    :ok
  end

  defp empty_row(key), do: put_elem(Tuple.duplicate(0, @row_size), 0, key)

  # Match specifications on one row: keyed on `key` (a literal: function
  # ids are strings), whatever its counters but these.
  defp row_pattern(key, fixed) do
    Enum.reduce(fixed, put_elem(Tuple.duplicate(:_, @row_size), 0, key), fn {pos, value}, row ->
      put_elem(row, pos - 1, value)
    end)
  end

  defp delete_idle(key) do
    pattern = row_pattern(key, [{@in_flight, 0}, {@deleted, 1}])
    _ = :ets.select_delete(@table, [{pattern, [], [true]}])
    :ok
  end

  defp deleted_pattern(key), do: row_pattern(key, [{@in_flight, :"$1"}, {@deleted, 1}])

  # the body of a match specification: a fresh row, with the in-flight
  # count of the row matched
  defp revived_row(key) do
    {key |> empty_row() |> put_elem(0, {:const, key}) |> put_elem(@in_flight - 1, :"$1")}
  end

  # The index of the first bucket whose bound (in microseconds) is at least
  # `micros`; past the last bound, the +Inf bucket.
  defp bucket(micros, [bound | _], i) when micros <= bound, do: i
  defp bucket(micros, [_ | bounds], i), do: bucket(micros, bounds, i + 1)
  defp bucket(_micros, [], i), do: i

  @doc false
  # The row layout, for Worker.Metrics.Prometheus: positions (1-based, as
  # :ets.update_counter/3 counts them) and histogram bounds.
  def layout do
    %{
      other: @other,
      in_flight: @in_flight,
      outcomes: @outcome_samples,
      invoke_sum: @invoke_sum,
      first_invoke_bucket: @first_invoke_bucket,
      invoke_les: @invoke_les,
      hits: @hits,
      misses: @misses,
      evictions: @evictions,
      compiles: @compiles,
      compile_sum: @compile_sum,
      first_compile_bucket: @first_compile_bucket,
      compile_les: @compile_les,
      http_ok: @http_ok,
      http_failed: @http_failed,
      http_refused: @http_refused,
      dropped: @dropped,
      deleted: @deleted,
      kind: @kind,
      kinds: @kinds
    }
  end

  @doc false
  # For Worker.Metrics.Prometheus: every row, sorted by key, and the
  # node-wide count of folded loads; a render is counted.
  def snapshot do
    :counters.add(counters(), @renders, 1)
    rows = @table |> :ets.tab2list() |> Enum.sort_by(&elem(&1, 0))
    {rows, :counters.get(counters(), @folded)}
  end
end
