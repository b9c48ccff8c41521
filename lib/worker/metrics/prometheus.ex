defmodule Worker.Metrics.Prometheus do
  @moduledoc """
  Renders `Worker.Metrics` as a page in the Prometheus text exposition
  format (version 0.0.4), with the node's own figures: BEAM, admission,
  requests, the native runtime, and the OS figures the FunLess Core reads
  (see `Worker.Metrics` for the list). `Worker.Metrics.Endpoint` serves it.
  """

  alias Worker.Metrics
  alias Worker.Metrics.OS

  # where each figure sits in a function's row
  layout = Metrics.layout()
  @other layout.other
  @in_flight layout.in_flight
  @outcome_samples layout.outcomes
  @invoke_sum layout.invoke_sum
  @first_invoke_bucket layout.first_invoke_bucket
  @invoke_les layout.invoke_les
  @hits layout.hits
  @misses layout.misses
  @evictions layout.evictions
  @compiles layout.compiles
  @compile_sum layout.compile_sum
  @first_compile_bucket layout.first_compile_bucket
  @compile_les layout.compile_les
  @http_ok layout.http_ok
  @http_failed layout.http_failed
  @http_refused layout.http_refused
  @dropped layout.dropped
  @deleted layout.deleted
  @kind layout.kind
  @kind_labels Map.new(layout.kinds, fn {kind, code} -> {code, ~s(,kind="#{kind}"})} end)

  @doc """
  The CPU utilization for the page, measured since the calling process's
  last call (`Worker.Metrics.OS.cpu_utilization/0`): call it from a
  long-lived process.
  """
  @spec cpu_utilization() :: number()
  def cpu_utilization, do: OS.cpu_utilization()

  @doc """
  The whole page, in the Prometheus text exposition format 0.0.4. Option
  `:cpu_utilization`: the figure to show, as `cpu_utilization/0` read it
  in a long-lived process (a render in a fresh one would read garbage).
  """
  @spec render(keyword()) :: iodata()
  def render(opts \\ []) do
    cpu = Keyword.get_lazy(opts, :cpu_utilization, &cpu_utilization/0)
    {rows, folded} = Metrics.snapshot()

    # each row once, its labels escaped once, shared by all its lines
    rows =
      for row <- rows, shown?(row) do
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
        header(
          "worker_function_info",
          "Functions with figures of their own, with their kind (funless, wasi_command, cli_component, cli_component_p3, http_component, http_component_p3).",
          "gauge"
        )
        | for {labels, row} <- rows, kind = @kind_labels[elem(row, @kind - 1)] do
            sample("worker_function_info", labels, kind, 1)
          end
      ],
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
        Integer.to_string(folded),
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
  # (PromEx's os_mon plugin) exports them: labelled with this node's name,
  # which the Core's Collector selects them by (`{node="worker@..."}`).
  # Every value is a finite number: the Collector parses each as a float.
  defp os_metrics(cpu_utilization) do
    memory = OS.memory()
    {load1, load5, load15} = OS.load() || {0, 0, 0}
    prefix = "worker_prom_ex_os_mon_resources_"
    labels = [~s({node="), escape(Atom.to_string(node())), ~s("})]

    for {name, help, value} <- [
          {"cpu_utilization", "CPU utilization, percent.", cpu_utilization},
          {"available_mem", "Available memory, bytes (within the memory cgroup's limit).",
           Map.get(memory, :available, 0)},
          {"free_mem", "Free memory, bytes (within the memory cgroup's limit).",
           Map.get(memory, :free, 0)},
          {"total_mem", "Total memory, bytes (the memory cgroup's limit, if lower).",
           Map.get(memory, :total, 0)},
          {"load_avg1", "Load average over 1 minute.", load1},
          {"load_avg5", "Load average over 5 minutes.", load5},
          {"load_avg15", "Load average over 15 minutes.", load15}
        ] do
      [header(prefix <> name, help, "gauge"), prefix, name, labels, " ", number(value), "\n"]
    end
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

    requests = safe(fn -> Worker.Job.info() end, %{requests: 0, handler_bytes: 0, overloaded: 0})

    stray = safe(fn -> Worker.Stray.count() end, 0)
    heartbeats = safe(fn -> Worker.Cluster.heartbeats() end, %{})

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
      [
        header(
          "worker_gossip_heartbeats_total",
          "libcluster gossip heartbeats received, by outcome (ok, malformed, oversized, over_cap: a new node name past the cap).",
          "counter"
        )
        | for {outcome, n} <- Enum.sort(heartbeats) do
            [
              "worker_gossip_heartbeats_total{outcome=\"",
              Atom.to_string(outcome),
              "\"} ",
              number(n),
              "\n"
            ]
          end
      ],
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

  # A figure that cannot be had (a server not running, an error tuple) is the
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
