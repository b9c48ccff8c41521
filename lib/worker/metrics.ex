defmodule Worker.Metrics do
  @moduledoc """
  The worker's metrics, in the Prometheus text format (version 0.0.4).

  Per function (labels `module` and `function`):

    * `worker_invocations_total{outcome}` - `ok`, `exec_error`, `trap`,
      `timeout` or `error`;
    * `worker_invocation_duration_seconds` - a histogram;
    * `worker_compiles_total` and `worker_compile_duration_seconds`;
    * `worker_cache_hits_total`, `worker_cache_misses_total`,
      `worker_cache_evictions_total`;
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
  into the cache (its compile or its cache miss), never by a later event:
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

  **Deletion.** `forget/1` (from `Worker.Functions` when a function is
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

  # node-wide counters
  @renders 1
  @folded 2

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
      :persistent_term.put({__MODULE__, :counters}, :counters.new(2, [:write_concurrency]))
    end

    :ok
  end

  @typedoc "`{module, function}`: the labels of a function's metrics."
  @type function_id :: {String.t(), String.t()}

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
  @row_size @deleted

  @outcome_samples for {outcome, i} <- Enum.with_index(@outcomes),
                       do: {~s(,outcome="#{outcome}"}), @first_outcome + i}

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
      {@first_outcome + outcome_index(result), 1},
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

  defp outcome_index({:ok, _}), do: 0
  defp outcome_index({:error, {:exec_error, _}}), do: 1
  defp outcome_index({:error, {:trap, _}}), do: 2
  defp outcome_index({:error, :timeout}), do: 3
  defp outcome_index(_), do: 4

  @doc "The outcome label of an invocation result."
  @spec outcome(term()) :: String.t()
  def outcome({:ok, _}), do: "ok"
  def outcome({:error, {:exec_error, _}}), do: "exec_error"
  def outcome({:error, {:trap, _}}), do: "trap"
  def outcome({:error, :timeout}), do: "timeout"
  def outcome(_), do: "error"

  @doc "Records a compile and its duration (native time units)."
  @spec compile(function_id(), integer()) :: :ok
  def compile(id, duration) do
    micros = System.convert_time_unit(duration, :native, :microsecond)
    bucket = bucket(micros, @compile_buckets_us, 0)

    loaded(
      id,
      [{@compiles, 1}, {@compile_sum, micros}, {@first_compile_bucket + bucket, 1}],
      false
    )
  end

  @doc """
  Counts a cache hit, miss or eviction. A miss is a load into the cache:
  it makes the function's row (see the moduledoc).
  """
  @spec cache(function_id(), :hit | :miss | :eviction) :: :ok
  def cache(id, :hit), do: record(id, [{@hits, 1}])
  def cache(id, :miss), do: loaded(id, [{@misses, 1}], true)
  def cache(id, :eviction), do: record(id, [{@evictions, 1}])

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

  # A load (compile, miss): makes the row, room permitting. A row still
  # marked deleted is a function stored again: it starts afresh, keeping
  # only what is in flight (whose ends count in it).
  defp loaded(id, ops, count_fold?) do
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
          if count_fold?, do: :counters.add(counters(), @folded, 1)
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

  ## Rendering

  @doc """
  The CPU utilization for the page. `:cpu_sup` measures it since the
  calling process's last call: call it from a long-lived process.
  """
  @spec cpu_utilization() :: number()
  def cpu_utilization, do: safe(fn -> :cpu_sup.util() end, 0)

  @doc """
  The whole page, in the Prometheus text exposition format 0.0.4. Option
  `:cpu_utilization`: the figure to show, as `cpu_utilization/0` read it
  in a long-lived process (a render in a fresh one would read garbage).
  """
  @spec render(keyword()) :: iodata()
  def render(opts \\ []) do
    :counters.add(counters(), @renders, 1)
    cpu = Keyword.get_lazy(opts, :cpu_utilization, &cpu_utilization/0)

    # each row once, its labels escaped once, shared by all its lines
    rows =
      for row <- @table |> :ets.tab2list() |> Enum.sort_by(&elem(&1, 0)), shown?(row) do
        {row_labels(elem(row, 0)), row}
      end

    [
      os_metrics(cpu),
      node_metrics(),
      counter(rows, "worker_invocations_total", "Invocations by outcome.", @outcome_samples),
      histogram(
        rows,
        "worker_invocation_duration_seconds",
        "Invocation duration.",
        @invoke_sum,
        @first_invoke_bucket,
        @invoke_les
      ),
      counter(
        rows,
        "worker_compiles_total",
        "Compiles (a miss served from an artifact is not one).",
        [{"}", @compiles}]
      ),
      histogram(
        rows,
        "worker_compile_duration_seconds",
        "Compile duration.",
        @compile_sum,
        @first_compile_bucket,
        @compile_les
      ),
      for {pos, name} <- [{@hits, "hits"}, {@misses, "misses"}, {@evictions, "evictions"}] do
        counter(rows, "worker_cache_#{name}_total", "Compiled-module cache #{name}.", [{"}", pos}])
      end,
      [
        header("worker_invocations_in_flight", "Invocations running now.", "gauge")
        | for {labels, row} <- rows do
            sample("worker_invocations_in_flight", labels, "}", elem(row, @in_flight - 1))
          end
      ],
      counter(
        rows,
        "worker_http_requests_total",
        "Outbound HTTP requests by outcome.",
        [{",outcome=\"ok\"}", @http_ok}] ++
          [{",outcome=\"failed\"}", @http_failed}, {",outcome=\"refused\"}", @http_refused}]
      ),
      counter(
        rows,
        "worker_log_lines_dropped_total",
        "Function log lines dropped over the caps.",
        [{"}", @dropped}]
      ),
      [
        header(
          "worker_metrics_functions_folded_total",
          "Loads of functions with no room for a row of their own (FL_METRICS_MAX_FUNCTIONS): their figures go to the _other row.",
          "counter"
        ),
        "worker_metrics_functions_folded_total ",
        Integer.to_string(:counters.get(counters(), @folded)),
        "\n"
      ]
    ]
  end

  # A deleted function's row is gone from the page once nothing of it is in
  # flight (even before it leaves the table); the shared row shows once used.
  defp shown?(row) when elem(row, 0) == @other,
    do: Enum.any?(@in_flight..@dropped, &(elem(row, &1 - 1) != 0))

  defp shown?(row), do: elem(row, @deleted - 1) == 0 or elem(row, @in_flight - 1) != 0

  # `{module="...",function="..."`: the labels of a row's lines, open for
  # more, one binary
  defp row_labels(@other), do: ~s({module="_other",function="_other")

  defp row_labels({:fn, {module, function}}) do
    IO.iodata_to_binary([~s({module="), escape(module), ~s(",function="), escape(function), ~s(")])
  end

  defp header(name, help, type), do: "# HELP #{name} #{help}\n# TYPE #{name} #{type}\n"

  defp sample(name, labels, rest, n), do: [name, labels, rest, " ", Integer.to_string(n), "\n"]

  # A counter family: for each row, a line per `{labels_rest, position}`
  # whose count is above 0.
  defp counter(rows, name, help, samples) do
    lines =
      for {labels, row} <- rows, {rest, pos} <- samples, n = elem(row, pos - 1), n > 0 do
        sample(name, labels, rest, n)
      end

    [header(name, help, "counter") | lines]
  end

  # Cumulative buckets, sum and count, for each row with any bucket above 0.
  defp histogram(rows, name, help, sum_pos, first, les) do
    {bucket, sum, count} = {name <> "_bucket", name <> "_sum", name <> "_count"}
    last = first + length(les) - 1

    [
      header(name, help, "histogram")
      | for {labels, row} <- rows, Enum.any?(first..last, &(elem(row, &1 - 1) > 0)) do
          {lines, total} =
            les
            |> Enum.with_index(first - 1)
            |> Enum.map_reduce(0, fn {le, i}, acc ->
              acc = acc + elem(row, i)
              {sample(bucket, labels, le, acc), acc}
            end)

          [
            lines,
            [sum, labels, "} ", number(elem(row, sum_pos - 1) / 1_000_000), "\n"],
            sample(count, labels, "}", total)
          ]
        end
    ]
  end

  # The names the FunLess Core reads from Prometheus, as the FunLess worker
  # (PromEx's os_mon plugin) exports them.
  defp os_metrics(cpu_utilization) do
    memory = safe(fn -> :memsup.get_system_memory_data() end, [])
    prefix = "worker_prom_ex_os_mon_resources_"

    [
      gauge(prefix <> "cpu_utilization", "CPU utilization, percent.", cpu_utilization),
      gauge(
        prefix <> "available_mem",
        "Available memory, bytes.",
        memory[:available_memory] || 0
      ),
      gauge(prefix <> "free_mem", "Free memory, bytes.", memory[:free_memory] || 0),
      gauge(prefix <> "total_mem", "Total memory, bytes.", memory[:total_memory] || 0),
      gauge(
        prefix <> "load_avg1",
        "Load average over 1 minute.",
        safe(fn -> :cpu_sup.avg1() / 256 end, 0)
      ),
      gauge(
        prefix <> "load_avg5",
        "Load average over 5 minutes.",
        safe(fn -> :cpu_sup.avg5() / 256 end, 0)
      ),
      gauge(
        prefix <> "load_avg15",
        "Load average over 15 minutes.",
        safe(fn -> :cpu_sup.avg15() / 256 end, 0)
      )
    ]
  end

  defp node_metrics do
    admission =
      safe(fn -> Worker.Admission.info() end, %{
        running: 0,
        waiting: 0,
        overloaded: 0,
        expired: 0,
        cancelled: 0
      })

    requests =
      safe(fn -> Worker.Handler.info() end, %{requests: 0, handler_bytes: 0, overloaded: 0})

    stray = safe(fn -> Worker.Stray.count() end, 0)

    runtime =
      safe(fn -> Worker.Runtime.stats() end, %{
        in_flight: 0,
        slice_bounds_us: [],
        slice_buckets: [],
        slice_count: 0,
        slice_sum_us: 0
      })

    [
      gauge("worker_beam_memory_bytes", "Memory allocated by the BEAM.", :erlang.memory(:total)),
      gauge(
        "worker_beam_processes",
        "Processes on the node.",
        :erlang.system_info(:process_count)
      ),
      gauge(
        "worker_beam_run_queue",
        "Processes ready to run.",
        :erlang.statistics(:total_run_queue_lengths)
      ),
      gauge(
        "worker_admission_running",
        "Invocations holding an admission slot.",
        admission.running
      ),
      gauge(
        "worker_admission_queue_length",
        "Invocations waiting for a slot.",
        admission.waiting
      ),
      [
        "# HELP worker_admission_overloaded_total Invocations refused with :overloaded.\n",
        "# TYPE worker_admission_overloaded_total counter\n",
        "worker_admission_overloaded_total #{admission.overloaded}\n"
      ],
      node_counter(
        "worker_admission_expired_total",
        "Invocations that waited FL_QUEUE_TIMEOUT_MS for a slot and were dropped.",
        admission.expired
      ),
      node_counter(
        "worker_admission_cancelled_total",
        "Queued invocations whose caller died.",
        admission.cancelled
      ),
      gauge(
        "worker_requests_in_flight",
        "Core requests being served, code handlers included (at most FL_MAX_REQUESTS).",
        requests.requests
      ),
      node_counter(
        "worker_requests_overloaded_total",
        "Core requests refused with :overloaded at FL_MAX_REQUESTS or FL_HANDLER_MAX_MB.",
        requests.overloaded
      ),
      gauge(
        "worker_handler_bytes",
        "Bytes of arguments held by code_not_found handlers.",
        requests.handler_bytes
      ),
      node_counter(
        "worker_stray_messages_total",
        "Messages nobody asked for, dropped (casts, malformed calls, system messages).",
        stray
      ),
      gauge(
        "worker_runtime_in_flight",
        "Invocations alive in the native runtime.",
        runtime.in_flight
      ),
      slice_histogram(runtime)
    ]
  end

  # The native runtime's histogram of time slices, cumulative since the VM
  # started: reading it resets nothing.
  defp slice_histogram(runtime) do
    name = "worker_runtime_slice_seconds"

    buckets =
      for {bound, count} <- Enum.zip(runtime.slice_bounds_us, runtime.slice_buckets) do
        [name, "_bucket{le=\"", number(bound / 1_000_000), "\"} ", number(count), "\n"]
      end

    [
      header(name, "How long a guest held a scheduler, each time slice.", "histogram"),
      buckets,
      [name, "_bucket{le=\"+Inf\"} ", number(runtime.slice_count), "\n"],
      [name, "_sum ", number(runtime.slice_sum_us / 1_000_000), "\n"],
      [name, "_count ", number(runtime.slice_count), "\n"]
    ]
  end

  # A figure that cannot be had (os_mon not running, an error tuple) is the
  # default: one missing figure never takes the page down.
  defp safe(fun, default) do
    case fun.() do
      value when is_number(value) or is_map(value) or is_list(value) -> value
      _ -> default
    end
  catch
    _, _ -> default
  end

  defp node_counter(name, help, value) do
    [header(name, help, "counter"), name, " ", number(value), "\n"]
  end

  defp gauge(name, help, value) do
    [header(name, help, "gauge"), name, " ", number(value), "\n"]
  end

  @doc "Escapes a label value: backslash, double quote and newline."
  @spec escape(String.t()) :: String.t()
  def escape(value) do
    value
    |> to_string()
    |> String.replace("\\", "\\\\")
    |> String.replace("\"", "\\\"")
    |> String.replace("\n", "\\n")
  end

  defp number(n) when is_integer(n), do: Integer.to_string(n)
  defp number(n) when is_float(n), do: :erlang.float_to_binary(n, [:short])
end
