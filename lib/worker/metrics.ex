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

  Recording is an `:ets.update_counter/4` on a table with write
  concurrency: cheap enough for every invocation.
  """

  @table __MODULE__

  @invoke_buckets [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25] ++
                    [0.5, 1, 2.5, 5, 10, 30]
  @compile_buckets [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

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

  @doc "Records an invocation's outcome and duration (native time units)."
  @spec invocation(function_id(), term(), integer()) :: :ok
  def invocation(id, result, duration) do
    add({:invocations, id, outcome(result)}, 1)
    observe(:invoke, id, duration, @invoke_buckets)
  end

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
    add({:compiles, id}, 1)
    observe(:compile, id, duration, @compile_buckets)
  end

  @doc "Counts a cache hit, miss or eviction."
  @spec cache(function_id(), :hit | :miss | :eviction) :: :ok
  def cache(id, event), do: add({:cache, id, event}, 1)

  @doc "Adds to the function's in-flight gauge (+1 when starting, -1 when done)."
  @spec in_flight(function_id(), integer()) :: :ok
  def in_flight(id, delta), do: add({:in_flight, id}, delta)

  @doc "Records what `Worker.Runtime.invoke/3` reports through `:on_stats`."
  @spec invocation_stats(function_id(), map()) :: :ok
  def invocation_stats(id, stats) do
    if stats.http_ok > 0, do: add({:http, id, "ok"}, stats.http_ok)
    if stats.http_failed > 0, do: add({:http, id, "failed"}, stats.http_failed)
    if stats.http_refused > 0, do: add({:http, id, "refused"}, stats.http_refused)
    if stats.dropped_lines > 0, do: add({:dropped, id}, stats.dropped_lines)
    :ok
  end

  defp add(key, n) do
    :ets.update_counter(@table, key, n, {key, 0})
    :ok
  end

  defp observe(kind, id, duration, buckets) do
    micros = System.convert_time_unit(duration, :native, :microsecond)
    seconds = micros / 1_000_000
    index = Enum.find_index(buckets, &(seconds <= &1)) || length(buckets)
    add({kind, :bucket, id, index}, 1)
    add({kind, :sum_us, id}, micros)
  end

  ## Rendering

  @doc "The whole page, in the Prometheus text exposition format 0.0.4."
  @spec render() :: iodata()
  def render do
    rows = :ets.tab2list(@table)

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
        Worker.Runtime.stats().in_flight
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
