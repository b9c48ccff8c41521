defmodule Worker.Metrics.PrometheusTest do
  # The tools operators run against a worker: a real Prometheus server
  # (Debian's `prometheus`, installed by scripts/setup) scraping a worker
  # node, `promtool check metrics` on its page, and the Grafana dashboard's
  # queries checked against a real page.
  use ExUnit.Case, async: false

  import Worker.Test.{Fixtures, Helpers}
  import Worker.Test.Core, only: [call: 2, invoke: 3]
  alias Worker.Test.{Cluster, Core, Prometheus}

  @moduletag :tmp_dir
  @moduletag timeout: 120_000

  # labels that Prometheus adds to every scraped series (the target's)
  @target_labels ~w(instance job)

  setup %{tmp_dir: dir} do
    port = free_port()
    # a small cache, so that functions are evicted and loaded again
    {peer, node} =
      Cluster.start_worker!(Path.join(dir, "worker"), metrics_port: port, cache_max_entries: 3)

    on_exit(fn -> Cluster.stop(peer) end)
    {:ok, _} = Application.ensure_all_started(:inets)
    %{node: node, port: port}
  end

  test "a real Prometheus scrapes the worker and counts exactly the invocations made",
       %{node: node, port: port, tmp_dir: dir} do
    prometheus = start_prometheus!(dir, "127.0.0.1:#{port}")

    hello = Core.function("counted", wasm!("hello"), module: "prom")
    error = Core.function("failing", wasm!("error"), module: "prom")
    assert call(node, {:store_function, hello}) == :ok
    assert call(node, {:store_function, error}) == :ok
    for _ <- 1..7, do: assert({:ok, _} = invoke(node, hello, %{}))
    for _ <- 1..3, do: assert({:error, {:exec_error, _}} = invoke(node, error, %{}))

    # Nothing more is invoked: each figure can only reach its count and
    # stay there, so waiting for it to equal the count fails on a count
    # that is off either way.
    expected = [
      {~s|up{job="worker"}|, 1.0},
      {~s|sum(worker_invocations_total{module="prom"})|, 10.0},
      {~s|worker_invocations_total{function="counted",outcome="ok"}|, 7.0},
      {~s|worker_invocations_total{function="failing",outcome="exec_error"}|, 3.0},
      {~s|sum(worker_invocation_duration_seconds_count{module="prom"})|, 10.0},
      {~s|worker_invocation_duration_seconds_count{function="counted"}|, 7.0},
      {~s|worker_invocation_duration_seconds_bucket{function="counted",le="+Inf"}|, 7.0},
      {~s|count(worker_invocations_total{module="prom"})|, 2.0}
    ]

    for {query, value} <- expected do
      assert eventually(fn -> query_value(prometheus, query) == value end, 30_000, 200),
             "#{query}: #{inspect(query!(prometheus, query))}, expected #{value}"
    end

    # the series carry the page's labels and the target's
    [series] = query!(prometheus, ~s(worker_invocations_total{function="counted"}))

    assert Map.take(series["metric"], ~w(module function outcome job instance)) == %{
             "module" => "prom",
             "function" => "counted",
             "outcome" => "ok",
             "job" => "worker",
             "instance" => "127.0.0.1:#{port}"
           }

    # and the target is healthy: the page parsed
    {:ok, %{"data" => %{"activeTargets" => [target]}}} = api!(prometheus, "/api/v1/targets")
    assert %{"health" => "up", "lastError" => ""} = target
  end

  test "the FunLess Core's telemetry query finds each worker by its node name, with floats only",
       %{node: node, port: port, tmp_dir: dir} do
    # a second worker, in a memory cgroup of 768 MiB where the machine
    # allows one: the Core must see the two apart
    port2 = free_port()
    {peer2, node2} = Cluster.start_worker!(Path.join(dir, "worker2"), metrics_port: port2)
    on_exit(fn -> Cluster.stop(peer2) end)
    os_pid2 = :erpc.call(node2, :os, :getpid, []) |> List.to_integer()

    limited =
      case Worker.Test.Cgroup.limit(os_pid2, 768 * 1024 * 1024) do
        {:unavailable, reason} ->
          IO.puts("(no memory cgroup for the second worker: #{inspect(reason)})")
          false

        undo ->
          on_exit(undo)
          true
      end

    # static targets, no relabelling: as FunLess's deployment has it
    prometheus = start_prometheus!(dir, ["127.0.0.1:#{port}", "127.0.0.1:#{port2}"])

    gauges =
      for g <- ~w(cpu_utilization free_mem total_mem available_mem load_avg1 load_avg5
                    load_avg15),
          do: "worker_prom_ex_os_mon_resources_" <> g

    for {worker, other} <- [{node, node2}, {node2, node}] do
      # the Collector's query, composed as it composes it
      query = :uri_string.compose_query([{"query", "{node=\"#{Atom.to_string(worker)}\"}"}])

      assert eventually(fn -> length(core_query!(prometheus, query)) == 7 end, 30_000, 200),
             inspect(core_query!(prometheus, query))

      result = core_query!(prometheus, query)
      # what the Collector does with each series: Float.parse, which a NaN,
      # an Inf or a label-only series would crash
      parsed =
        Map.new(result, fn %{"metric" => %{"__name__" => name} = labels, "value" => [_, value]} ->
          assert {float, ""} = Float.parse(value), "#{name}: #{value}"
          assert labels["node"] == Atom.to_string(worker)
          {name, float}
        end)

      assert Enum.sort(Map.keys(parsed)) == Enum.sort(gauges)
      assert parsed["worker_prom_ex_os_mon_resources_total_mem"] > 0
      assert parsed["worker_prom_ex_os_mon_resources_available_mem"] > 0

      # the other worker's series are not among them
      refute Enum.any?(result, &(&1["metric"]["node"] == Atom.to_string(other)))
    end

    if limited do
      total = fn worker ->
        query = :uri_string.compose_query([{"query", "{node=\"#{worker}\"}"}])

        for %{
              "metric" => %{"__name__" => "worker_prom_ex_os_mon_resources_" <> name},
              "value" => [_, value]
            } <- core_query!(prometheus, query),
            into: %{},
            do: {name, elem(Float.parse(value), 0)}
      end

      # the limited worker reports its cgroup's memory, which the Core's
      # default policy then weighs against the other's
      assert eventually(fn -> total.(node2)["total_mem"] == 768 * 1024 * 1024 end, 30_000, 200)
      assert total.(node2)["available_mem"] <= 768 * 1024 * 1024
      assert total.(node)["available_mem"] > total.(node2)["available_mem"]
    end
  end

  test "promtool check metrics finds nothing to say about a page of every outcome",
       %{node: node, port: port, tmp_dir: dir} do
    run_every_outcome!(node)
    page = scrape!(port)
    # (the page has what is linted: every outcome, histograms, HTTP, drops)
    parsed = Prometheus.parse!(page)

    for outcome <- ~w(ok exec_error trap timeout error) do
      assert Prometheus.samples(parsed, "worker_invocations_total", %{"outcome" => outcome}) !=
               [],
             outcome
    end

    assert {"", 0} == promtool_check_metrics(page, dir)

    # and it does speak up: a counter without `_total`, a page it rejects
    assert {complaint, _} =
             promtool_check_metrics(
               page <>
                 "# HELP worker_things Things.\n# TYPE worker_things counter\n" <>
                 "worker_things 1\n",
               dir
             )

    assert complaint =~ "worker_things"
  end

  test "every metric, label and label value the Grafana dashboard queries is on a real page",
       %{node: node, port: port} do
    run_every_outcome!(node)
    page = Prometheus.parse!(scrape!(port))
    dashboard = File.read!("grafana/worker-dashboard.json")

    queries = dashboard_queries(dashboard)
    # every panel's queries and the variables': nothing was skipped
    assert length(queries) >= 18
    assert "label_values(worker_beam_processes, instance)" in queries

    assert dashboard_problems(dashboard, page) == []

    # A rename on either side is caught: a metric, a label, a label value.
    for {from, to} <- [
          {"worker_invocations_total", "worker_invocations_count_total"},
          {"worker_beam_processes", "worker_beam_process_count"},
          {"by (outcome)", "by (result)"},
          {~s(outcome!=\\"ok\\"), ~s(outcome!=\\"success\\")}
        ] do
      renamed = String.replace(dashboard, from, to)
      assert renamed != dashboard, from
      assert [_ | _] = dashboard_problems(renamed, page), "renaming #{from} went unnoticed"
    end
  end

  # -- the worker ------------------------------------------------------------

  # Stores and runs functions of every outcome, an HTTP request refused by
  # policy, and more log lines than the cap (dropped). The cache holds 3:
  # the stores evict, so the first invocation is a miss and the next a hit.
  defp run_every_outcome!(node) do
    functions = [
      ok: Core.function("hello", wasm!("hello")),
      exec_error: Core.function("error", wasm!("error")),
      trap: Core.function("trap", wat!("trap_unreachable")),
      timeout: Core.function("spin", wat!("spin")),
      error: Core.function("bad", wat!("not_json")),
      http: Core.function("http", wasm!("http")),
      logger: Core.function("logger", wasm!("logger"))
    ]

    for {_, f} <- functions, do: assert(call(node, {:store_function, f}) == :ok)
    :ok = :erpc.call(node, Worker.Config, :put, [:invoke_timeout_ms, 200])
    # a miss, then a hit
    assert {:ok, _} = invoke(node, functions[:ok], %{})
    assert {:ok, _} = invoke(node, functions[:ok], %{})
    assert {:error, {:exec_error, _}} = invoke(node, functions[:exec_error], %{})
    assert {:error, {:trap, _}} = invoke(node, functions[:trap], %{})
    assert {:error, :timeout} = invoke(node, functions[:timeout], %{})
    assert {:error, {:invalid_response, _}} = invoke(node, functions[:error], %{})
    :ok = :erpc.call(node, Worker.Config, :put, [:invoke_timeout_ms, 10_000])
    assert {:ok, %{"status" => 0}} = invoke(node, functions[:http], %{"url" => "http://[::1]:9/"})
    assert {:ok, _} = invoke(node, functions[:logger], %{"lines" => 1_100})
  end

  # The page as a scraper gets it, past the 1 s the endpoint serves a page
  # for, so that it shows what ran before.
  defp scrape!(port) do
    Process.sleep(1_100)
    url = ~c"http://127.0.0.1:#{port}/metrics"

    {:ok, {{_, 200, _}, _, body}} =
      :httpc.request(:get, {url, []}, [timeout: 10_000], body_format: :binary)

    body
  end

  # -- promtool ----------------------------------------------------------------

  # promtool reads the page on stdin: from a file, through sh.
  defp promtool_check_metrics(page, dir) do
    path = Path.join(dir, "page-#{System.unique_integer([:positive])}.prom")
    File.write!(path, page)

    System.cmd("sh", ["-c", ~s(exec promtool check metrics < "$1"), "sh", path],
      stderr_to_stdout: true
    )
  end

  # -- Prometheus ------------------------------------------------------------

  # Starts `prometheus` on loopback, scraping `target` every second, and
  # stops it when the test ends. It runs under sh, which kills it when its
  # stdin (the port) closes: when the test ends, and when this VM does,
  # however it ends.
  defp start_prometheus!(dir, targets) do
    port = free_port()
    config = Path.join(dir, "prometheus.yml")
    targets = targets |> List.wrap() |> Enum.map_join(", ", &~s("#{&1}"))

    File.write!(config, """
    global:
      scrape_interval: 1s
      scrape_timeout: 1s
    scrape_configs:
      - job_name: worker
        static_configs:
          - targets: [#{targets}]
    """)

    args = [
      "--config.file=#{config}",
      "--storage.tsdb.path=#{Path.join(dir, "tsdb")}",
      "--web.listen-address=127.0.0.1:#{port}"
    ]

    script = ~S"""
    "$@" </dev/null & child=$!
    echo "prometheus pid $child"
    read _
    kill "$child"
    wait "$child"
    """

    os_port =
      Port.open({:spawn_executable, System.find_executable("sh")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-c", script, "sh", System.find_executable("prometheus") | args]
      ])

    child = child_pid(os_port, "")

    on_exit(fn -> stop_prometheus(os_port, child) end)
    base = "http://127.0.0.1:#{port}"

    assert eventually(fn -> match?({:ok, 200, _}, get(base <> "/-/ready")) end, 30_000, 100),
           "prometheus never got ready:\n" <> output(os_port)

    base
  end

  # sh's first line, which may come after prometheus' own first lines
  defp child_pid(os_port, seen) do
    case Regex.run(~r/prometheus pid (\d+)\n/, seen) do
      [_, pid] ->
        pid

      nil ->
        receive do
          {^os_port, {:data, data}} -> child_pid(os_port, seen <> data)
        after
          10_000 -> flunk("prometheus did not start: #{seen}")
        end
    end
  end

  defp output(os_port) do
    receive do
      {^os_port, {:data, data}} -> data <> output(os_port)
    after
      0 -> ""
    end
  end

  # Closing the port ends sh's `read`: it kills prometheus. Then wait until
  # the process is gone, and make sure of it.
  defp stop_prometheus(os_port, child) do
    Port.close(os_port)
  catch
    _, _ -> :ok
  after
    gone? = fn ->
      match?({_, s} when s != 0, System.cmd("kill", ["-0", child], stderr_to_stdout: true))
    end

    unless eventually(gone?, 10_000, 50) do
      System.cmd("kill", ["-9", child])
    end
  end

  defp get(url) do
    case :httpc.request(:get, {String.to_charlist(url), []}, [timeout: 5_000],
           body_format: :binary
         ) do
      {:ok, {{_, status, _}, _, body}} -> {:ok, status, body}
      {:error, reason} -> {:error, reason}
    end
  end

  defp api!(base, path_and_query) do
    {:ok, 200, body} = get(base <> path_and_query)
    {:ok, %{"status" => "success"}} = Worker.JSON.decode(body)
  end

  # The instant vector of `promql`, now.
  defp query!(base, promql) do
    {:ok, %{"data" => %{"resultType" => "vector", "result" => result}}} =
      api!(base, "/api/v1/query?query=" <> URI.encode_www_form(promql))

    result
  end

  # The result of a query sent as the FunLess Core's Collector sends it
  # (`query` composed by :uri_string.compose_query/1), the body decoded.
  defp core_query!(base, query) do
    {:ok, %{"data" => %{"result" => result}}} = api!(base, "/api/v1/query?" <> query)
    result
  end

  # The value of a query with one series, or nil.
  defp query_value(base, promql) do
    case query!(base, promql) do
      [%{"value" => [_time, value]}] -> String.to_float(float_text(value))
      _ -> nil
    end
  end

  defp float_text(value), do: if(String.contains?(value, "."), do: value, else: value <> ".0")

  # -- the dashboard -----------------------------------------------------------

  # The PromQL of every panel target and every query variable.
  defp dashboard_queries(json) do
    {:ok, dashboard} = Worker.JSON.decode(json)

    targets =
      for panel <- dashboard["panels"], target <- panel["targets"] || [], do: target["expr"]

    variables =
      for variable <- get_in(dashboard, ["templating", "list"]) || [],
          variable["type"] == "query",
          do: variable["query"]

    Enum.reject(targets ++ variables, &is_nil/1)
  end

  # What the dashboard's queries ask for that the page does not have: a
  # metric (a sample name: `_bucket` and `_count` included), a label on
  # that metric (from a matcher, `by (...)`/`without (...)`, or
  # `label_values(metric, label)`), or a label value a matcher compares with
  # `=` or `!=`. `instance` and `job` are the target's labels, added by
  # Prometheus. Each label must be on every metric of its query (each
  # query reads one metric).
  defp dashboard_problems(json, page) do
    for query <- dashboard_queries(json), problem <- query_problems(query, page), do: problem
  end

  defp query_problems(query, page) do
    %{metrics: metrics, labels: labels, values: values} = parse_promql(query)

    missing_metrics =
      for metric <- metrics, Prometheus.samples(page, metric) == [] do
        "#{query}: no metric #{metric}"
      end

    missing_labels =
      for metric <- metrics,
          label <- labels,
          label not in @target_labels,
          not Enum.any?(Prometheus.samples(page, metric), fn {l, _} -> Map.has_key?(l, label) end) do
        "#{query}: #{metric} has no label #{label}"
      end

    missing_values =
      for {metric, label, value} <- values,
          label not in @target_labels,
          not Enum.any?(Prometheus.samples(page, metric), fn {l, _} -> l[label] == value end) do
        "#{query}: #{metric} has no #{label}=#{inspect(value)}"
      end

    missing_metrics ++ missing_labels ++ missing_values
  end

  @promql_keywords ~w(by without on ignoring group_left group_right bool offset and or unless)

  # Metric names, labels and compared values in a PromQL expression, read
  # with regular expressions: enough for the dashboard's queries.
  defp parse_promql(query) do
    matchers = Regex.scan(~r/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}/, query)

    compared =
      for [_, metric, body] <- matchers,
          [_, label, op, value] <- Regex.scan(~r/([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"/, body) do
        {metric, label, op, value}
      end

    grouped =
      for [_, list] <- Regex.scan(~r/\b(?:by|without)\s*\(([^)]*)\)/, query),
          label <- String.split(list, ",", trim: true),
          do: String.trim(label)

    # label_values(metric, label)
    {label_values_metrics, label_values_labels} =
      Regex.scan(~r/label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)/, query)
      |> Enum.map(fn [_, m, l] -> {m, l} end)
      |> Enum.unzip()

    # what is left once strings, matchers, groupings, ranges and function
    # calls are taken out: metric names
    bare =
      query
      |> String.replace(~r/label_values\([^)]*\)/, " ")
      |> String.replace(~r/"([^"\\]|\\.)*"/, "")
      |> String.replace(~r/\{[^}]*\}/, " ")
      |> String.replace(~r/\b(by|without)\s*\([^)]*\)/, " ")
      |> String.replace(~r/\[[^\]]*\]/, " ")
      |> String.replace(~r/[a-zA-Z_]\w*\s*\(/, " (")

    metrics =
      Regex.scan(~r/[a-zA-Z_:][a-zA-Z0-9_:]*/, bare)
      |> List.flatten()
      |> Enum.reject(&(&1 in @promql_keywords))
      |> Kernel.++(label_values_metrics)
      |> Enum.uniq()

    labels = Enum.uniq(for({_, l, _, _} <- compared, do: l) ++ grouped ++ label_values_labels)
    values = for {m, l, op, v} <- compared, op in ["=", "!="], do: {m, l, v}
    %{metrics: metrics, labels: labels, values: values}
  end
end
