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
  names the FunLess worker exports (`worker_prom_ex_os_mon_resources_*`).

  Each function has one ETS row of counters, so recording an invocation is
  one `:ets.update_counter/4` when it starts and one when it ends: cheap
  enough for every invocation.
  """

  @table __MODULE__

  @invoke_buckets [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25] ++
                    [0.5, 1, 2.5, 5, 10, 30]
  @compile_buckets [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
  @invoke_buckets_us Enum.map(@invoke_buckets, &round(&1 * 1_000_000))
  @compile_buckets_us Enum.map(@compile_buckets, &round(&1 * 1_000_000))

  @doc false
  def init do
    :ets.new(@table, [
      :set,
      :public,
      :named_table,
      write_concurrency: true,
      read_concurrency: true
    ])

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
  @row_size @dropped

  @doc "Counts an invocation as started (in flight)."
  @spec started(function_id()) :: :ok
  def started(id), do: bump(id, [{@in_flight, 1}])

  @doc """
  Records an invocation's end: its outcome and duration (native time units).
  Pairs with `started/1`.
  """
  @spec invocation(function_id(), term(), integer()) :: :ok
  def invocation(id, result, duration) do
    micros = System.convert_time_unit(duration, :native, :microsecond)

    bump(id, [
      {@in_flight, -1},
      {@first_outcome + outcome_index(result), 1},
      {@invoke_sum, micros},
      {@first_invoke_bucket + bucket(micros, @invoke_buckets_us, 0), 1}
    ])
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
    bump(id, [{@compiles, 1}, {@compile_sum, micros}, {@first_compile_bucket + bucket, 1}])
  end

  @doc "Counts a cache hit, miss or eviction."
  @spec cache(function_id(), :hit | :miss | :eviction) :: :ok
  def cache(id, :hit), do: bump(id, [{@hits, 1}])
  def cache(id, :miss), do: bump(id, [{@misses, 1}])
  def cache(id, :eviction), do: bump(id, [{@evictions, 1}])

  @doc "Records what `Worker.Runtime.invoke/3` reports through `:on_stats`."
  @spec invocation_stats(function_id(), map()) :: :ok
  def invocation_stats(id, stats) do
    bump(id, [
      {@http_ok, stats.http_ok},
      {@http_failed, stats.http_failed},
      {@http_refused, stats.http_refused},
      {@dropped, stats.dropped_lines}
    ])
  end

  # The row exists after a function's first event: only then is the default
  # row built.
  defp bump(id, ops) do
    key = {:fn, id}

    try do
      :ets.update_counter(@table, key, ops)
    rescue
      ArgumentError ->
        :ets.update_counter(@table, key, ops, put_elem(Tuple.duplicate(0, @row_size), 0, key))
    end

    :ok
  end

  # The index of the first bucket whose bound (in microseconds) is at least
  # `micros`; past the last bound, the +Inf bucket.
  defp bucket(micros, [bound | _], i) when micros <= bound, do: i
  defp bucket(micros, [_ | bounds], i), do: bucket(micros, bounds, i + 1)
  defp bucket(_micros, [], i), do: i

  # The rows, spelled out as one counter each, for rendering.
  defp counters(row) do
    {:fn, id} = elem(row, 0)
    at = &elem(row, &1 - 1)

    Enum.concat([
      [{{:in_flight, id}, at.(@in_flight)}],
      for {outcome, i} <- Enum.with_index(@outcomes), at.(@first_outcome + i) > 0 do
        {{:invocations, id, outcome}, at.(@first_outcome + i)}
      end,
      histogram_rows(:invoke, id, at, @invoke_sum, @first_invoke_bucket, length(@invoke_buckets)),
      histogram_rows(
        :compile,
        id,
        at,
        @compile_sum,
        @first_compile_bucket,
        length(@compile_buckets)
      ),
      for {event, pos} <- [hit: @hits, miss: @misses, eviction: @evictions], at.(pos) > 0 do
        {{:cache, id, event}, at.(pos)}
      end,
      if(at.(@compiles) > 0, do: [{{:compiles, id}, at.(@compiles)}], else: []),
      for {outcome, pos} <- [
            {"ok", @http_ok},
            {"failed", @http_failed},
            {"refused", @http_refused}
          ],
          at.(pos) > 0 do
        {{:http, id, outcome}, at.(pos)}
      end,
      if(at.(@dropped) > 0, do: [{{:dropped, id}, at.(@dropped)}], else: [])
    ])
  end

  defp histogram_rows(kind, id, at, sum, first, n) do
    if Enum.any?(0..n, &(at.(first + &1) > 0)) do
      [
        {{kind, :sum_us, id}, at.(sum)}
        | for(i <- 0..n, do: {{kind, :bucket, id, i}, at.(first + i)})
      ]
    else
      []
    end
  end

  ## Rendering

  @doc "The whole page, in the Prometheus text exposition format 0.0.4."
  @spec render() :: iodata()
  def render do
    rows = @table |> :ets.tab2list() |> Enum.flat_map(&counters/1)

    [
      os_metrics(),
      node_metrics(),
      counter(rows, "worker_invocations_total", "Invocations by outcome.", fn
        {{:invocations, id, outcome}, n} -> {labels(id, outcome: outcome), n}
        _ -> nil
      end),
      histogram(
        rows,
        :invoke,
        "worker_invocation_duration_seconds",
        "Invocation duration.",
        @invoke_buckets
      ),
      counter(
        rows,
        "worker_compiles_total",
        "Compiles (a miss served from an artifact is not one).",
        fn
          {{:compiles, id}, n} -> {labels(id), n}
          _ -> nil
        end
      ),
      histogram(
        rows,
        :compile,
        "worker_compile_duration_seconds",
        "Compile duration.",
        @compile_buckets
      ),
      for {event, name} <- [hit: "hits", miss: "misses", eviction: "evictions"] do
        counter(rows, "worker_cache_#{name}_total", "Compiled-module cache #{name}.", fn
          {{:cache, id, ^event}, n} -> {labels(id), n}
          _ -> nil
        end)
      end,
      gauge_rows(rows, "worker_invocations_in_flight", "Invocations running now.", fn
        {{:in_flight, id}, n} -> {labels(id), n}
        _ -> nil
      end),
      counter(rows, "worker_http_requests_total", "Outbound HTTP requests by outcome.", fn
        {{:http, id, outcome}, n} -> {labels(id, outcome: outcome), n}
        _ -> nil
      end),
      counter(
        rows,
        "worker_log_lines_dropped_total",
        "Function log lines dropped over the caps.",
        fn
          {{:dropped, id}, n} -> {labels(id), n}
          _ -> nil
        end
      )
    ]
  end

  # The names the FunLess Core reads from Prometheus, as the FunLess worker
  # (PromEx's os_mon plugin) exports them.
  defp os_metrics do
    memory = safe(fn -> :memsup.get_system_memory_data() end, [])
    prefix = "worker_prom_ex_os_mon_resources_"

    [
      gauge(
        prefix <> "cpu_utilization",
        "CPU utilization, percent.",
        safe(fn -> :cpu_sup.util() end, 0)
      ),
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
    admission = safe(fn -> Worker.Admission.info() end, %{running: 0, waiting: 0, overloaded: 0})
    runtime = safe(fn -> Worker.Runtime.stats() end, %{in_flight: 0, max_slice_us: 0})

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
      gauge(
        "worker_runtime_in_flight",
        "Invocations alive in the native runtime.",
        runtime.in_flight
      ),
      gauge(
        "worker_runtime_max_slice_seconds",
        "Longest time a guest held a scheduler in one slice, since the last scrape.",
        runtime.max_slice_us / 1_000_000
      )
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

  defp gauge(name, help, value) do
    ["# HELP #{name} #{help}\n# TYPE #{name} gauge\n", name, " ", number(value), "\n"]
  end

  defp counter(rows, name, help, select), do: family(rows, name, help, "counter", select)
  defp gauge_rows(rows, name, help, select), do: family(rows, name, help, "gauge", select)

  defp family(rows, name, help, type, select) do
    samples = rows |> Enum.map(select) |> Enum.reject(&is_nil/1) |> Enum.sort()

    [
      "# HELP #{name} #{help}\n# TYPE #{name} #{type}\n"
      | Enum.map(samples, fn {labels, n} -> [name, labels, " ", number(n), "\n"] end)
    ]
  end

  defp histogram(rows, kind, name, help, buckets) do
    by_id =
      Enum.reduce(rows, %{}, fn
        {{^kind, :bucket, id, index}, n}, acc ->
          update_in(acc, [Access.key(id, %{})], &Map.put(&1, index, n))

        _, acc ->
          acc
      end)

    sums = for {{^kind, :sum_us, id}, us} <- rows, into: %{}, do: {id, us}
    bounds = Enum.map(buckets, &number/1) ++ ["+Inf"]

    [
      "# HELP #{name} #{help}\n# TYPE #{name} histogram\n"
      | for {id, counts} <- Enum.sort(by_id) do
          {lines, total} =
            bounds
            |> Enum.with_index()
            |> Enum.map_reduce(0, fn {bound, index}, acc ->
              acc = acc + Map.get(counts, index, 0)
              {[name, "_bucket", labels(id, le: bound), " ", Integer.to_string(acc), "\n"], acc}
            end)

          [
            lines,
            [name, "_sum", labels(id), " ", number(Map.get(sums, id, 0) / 1_000_000), "\n"],
            [name, "_count", labels(id), " ", Integer.to_string(total), "\n"]
          ]
        end
    ]
  end

  defp labels({module, function}, extra \\ []) do
    pairs = [module: module, function: function] ++ extra
    ["{", Enum.map_join(pairs, ",", fn {k, v} -> ~s(#{k}="#{escape(v)}") end), "}"]
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
