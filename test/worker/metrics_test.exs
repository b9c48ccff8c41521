defmodule Worker.MetricsTest do
  # A worker node with its metrics endpoint, driven through the Core
  # protocol; the page is fetched over HTTP and parsed whole.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  alias Worker.Test.{Cluster, Prometheus}

  @moduletag :tmp_dir

  setup %{tmp_dir: dir} do
    port = free_port()
    {peer, node} = Cluster.start_worker!(dir, metrics_port: port)
    on_exit(fn -> Cluster.stop(peer) end)
    {:ok, _} = Application.ensure_all_started(:inets)
    %{node: node, base: "http://127.0.0.1:#{port}"}
  end

  defp free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end

  defp get(url) do
    {:ok, {{_, status, _}, headers, body}} =
      :httpc.request(:get, {String.to_charlist(url), []}, [timeout: 10_000], body_format: :binary)

    {status, Map.new(headers, fn {k, v} -> {List.to_string(k), List.to_string(v)} end), body}
  end

  defp metrics!(base) do
    {200, headers, body} = get(base <> "/metrics")
    assert headers["content-type"] =~ "text/plain; version=0.0.4"
    Prometheus.parse!(body)
  end

  defp call(node, msg), do: GenServer.call({:worker, node}, msg, 60_000)

  defp function(name, wasm, module \\ "obs") do
    %{name: name, module: module, hash: :crypto.hash(:sha3_256, wasm), code: wasm}
  end

  defp invoke(node, fun, args), do: call(node, {:invoke, Map.delete(fun, :code), args})

  test "exact counts by outcome, histograms, cache and compile figures", %{node: node, base: base} do
    hello = function("hello", wasm!("hello"))
    error = function("error", wasm!("error"))
    trap = function("trap", wat!("trap_unreachable"))
    spin = function("spin", wat!("spin"))
    bad = function("bad", wat!("not_json"))
    for f <- [hello, error, trap, spin, bad], do: assert(call(node, {:store_function, f}) == :ok)

    for _ <- 1..7, do: assert({:ok, _} = invoke(node, hello, %{}))
    for _ <- 1..3, do: assert({:error, {:exec_error, _}} = invoke(node, error, %{}))
    for _ <- 1..2, do: assert({:error, {:trap, _}} = invoke(node, trap, %{}))
    :ok = :erpc.call(node, Worker.Config, :put, [:invoke_timeout_ms, 50])
    assert {:error, :timeout} = invoke(node, spin, %{})
    assert {:error, {:invalid_response, _}} = invoke(node, bad, %{})

    page = metrics!(base)
    at = fn name, labels -> Prometheus.value(page, name, labels) end
    hello_l = %{"module" => "obs", "function" => "hello"}

    assert at.("worker_invocations_total", Map.put(hello_l, "outcome", "ok")) == 7.0

    assert at.("worker_invocations_total", %{"function" => "error", "outcome" => "exec_error"}) ==
             3.0

    assert at.("worker_invocations_total", %{"function" => "trap", "outcome" => "trap"}) == 2.0
    assert at.("worker_invocations_total", %{"function" => "spin", "outcome" => "timeout"}) == 1.0
    assert at.("worker_invocations_total", %{"function" => "bad", "outcome" => "error"}) == 1.0
    assert at.("worker_invocations_total", Map.put(hello_l, "outcome", "trap")) == nil

    # the histogram: cumulative, monotonic, +Inf equal to the count
    buckets = Prometheus.samples(page, "worker_invocation_duration_seconds_bucket", hello_l)
    counts = Enum.map(buckets, &elem(&1, 1))
    assert counts == Enum.sort(counts)
    assert List.last(buckets) |> elem(0) |> Map.get("le") == "+Inf"
    assert List.last(counts) == 7.0
    assert at.("worker_invocation_duration_seconds_count", hello_l) == 7.0
    assert at.("worker_invocation_duration_seconds_sum", hello_l) > 0
    # each bucket by its bound: hello runs in microseconds, spin for its 50 ms
    assert at.("worker_invocation_duration_seconds_bucket", Map.put(hello_l, "le", "0.1")) == 7.0
    spin_l = %{"module" => "obs", "function" => "spin"}
    assert at.("worker_invocation_duration_seconds_bucket", Map.put(spin_l, "le", "0.025")) == 0.0
    assert at.("worker_invocation_duration_seconds_bucket", Map.put(spin_l, "le", "+Inf")) == 1.0

    # stored, so compiled once each; every invocation after was a hit
    assert at.("worker_compiles_total", hello_l) == 1.0
    assert at.("worker_compile_duration_seconds_count", hello_l) == 1.0
    assert at.("worker_cache_misses_total", hello_l) == 1.0
    assert at.("worker_cache_hits_total", hello_l) == 7.0
    assert at.("worker_invocations_in_flight", hello_l) == 0.0
    # spin ran in slices until its timeout; the figure is per scrape
    assert at.("worker_runtime_max_slice_seconds", %{}) > 0
    assert Prometheus.value(metrics!(base), "worker_runtime_max_slice_seconds", %{}) == 0.0

    # node and the names the FunLess Core reads
    for name <-
          ~w(cpu_utilization available_mem free_mem total_mem load_avg1 load_avg5 load_avg15) do
      assert is_float(at.("worker_prom_ex_os_mon_resources_" <> name, %{})), name
    end

    assert at.("worker_prom_ex_os_mon_resources_total_mem", %{}) > 0
    assert at.("worker_beam_processes", %{}) > 0
    assert at.("worker_beam_memory_bytes", %{}) > 0
    assert at.("worker_admission_overloaded_total", %{}) == 0.0
    assert page.types["worker_invocation_duration_seconds"] == "histogram"
    assert page.types["worker_invocations_total"] == "counter"
  end

  test "outbound requests by outcome, and dropped log lines", %{node: node, base: base} do
    http = function("http", wasm!("http"))
    logger = function("logger", wasm!("logger"))
    assert call(node, {:store_function, http}) == :ok
    assert call(node, {:store_function, logger}) == :ok

    # refused by policy (loopback), failed (nothing listens on the port)
    assert {:ok, %{"status" => 0}} = invoke(node, http, %{"url" => "http://127.0.0.1:9/"})
    :ok = :erpc.call(node, Worker.Config, :put, [:http_allow, ["127.0.0.1"]])
    assert {:ok, %{"status" => 0}} = invoke(node, http, %{"url" => "http://127.0.0.1:9/"})
    assert {:ok, _} = invoke(node, logger, %{"lines" => 1_500})

    page = metrics!(base)
    http_l = %{"module" => "obs", "function" => "http"}

    assert Prometheus.value(
             page,
             "worker_http_requests_total",
             Map.put(http_l, "outcome", "refused")
           ) == 1.0

    assert Prometheus.value(
             page,
             "worker_http_requests_total",
             Map.put(http_l, "outcome", "failed")
           ) == 1.0

    # 1,500 console lines, a stdout and a stderr line, over a cap of 1,000
    assert Prometheus.value(page, "worker_log_lines_dropped_total", %{"function" => "logger"}) ==
             502.0
  end

  test "every metric the Grafana dashboard queries is on the page", %{node: node, base: base} do
    hello = function("hello", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok
    assert {:ok, _} = invoke(node, hello, %{})
    families = metrics!(base).types |> Map.keys() |> MapSet.new()

    {:ok, dashboard} = Worker.JSON.decode(File.read!("grafana/worker-dashboard.json"))
    exprs = for panel <- dashboard["panels"], target <- panel["targets"], do: target["expr"]
    assert length(exprs) > 10

    for expr <- exprs, [name] <- Regex.scan(~r/worker_[a-z0-9_]+/, expr) do
      family = Regex.replace(~r/_bucket$/, name, "")
      assert family in families, "#{name} in #{expr}"
    end
  end

  test "label values with quotes, backslashes and newlines do not break the page",
       %{node: node, base: base} do
    nasty = function(~s(say "hi"\\\nbye), wasm!("echo"), "mod\"ule")
    assert call(node, {:store_function, nasty}) == :ok
    assert {:ok, %{}} = invoke(node, nasty, %{})

    page = metrics!(base)

    assert Prometheus.value(page, "worker_invocations_total", %{
             "module" => "mod\"ule",
             "function" => ~s(say "hi"\\\nbye),
             "outcome" => "ok"
           }) == 1.0
  end

  test "health, and readiness that follows the :worker server", %{node: node, base: base} do
    assert {200, _, "ok\n"} = get(base <> "/healthz")
    assert {200, _, "ready\n"} = get(base <> "/readyz")

    :ok =
      :erpc.call(node, Supervisor, :terminate_child, [
        :erpc.call(node, Worker.Application, :supervisor, []),
        Worker.Server
      ])

    assert {503, _, _} = get(base <> "/readyz")
    assert {200, _, _} = get(base <> "/healthz")

    {:ok, _} =
      :erpc.call(node, Supervisor, :restart_child, [
        :erpc.call(node, Worker.Application, :supervisor, []),
        Worker.Server
      ])

    assert {200, _, "ready\n"} = get(base <> "/readyz")
    assert {404, _, _} = get(base <> "/nope")
  end

  test "a burst of 10,000 invocations shows exactly, and the endpoint answers meanwhile",
       %{node: node, base: base} do
    echo = function("echo", wasm!("echo"))
    assert call(node, {:store_function, echo}) == :ok

    burst =
      Task.async(fn ->
        1..10_000
        |> Task.async_stream(fn i -> invoke(node, echo, %{"i" => i}) end,
          max_concurrency: 16,
          timeout: 60_000
        )
        |> Enum.count(&match?({:ok, {:ok, _}}, &1))
      end)

    # scraped while it runs
    scrapes = for _ <- 1..5, do: Process.sleep(50) && metrics!(base)
    assert Task.await(burst, 120_000) == 10_000

    # each page a consistent moment: the count only grows
    labels = %{"function" => "echo", "outcome" => "ok"}
    seen = Enum.map(scrapes, &(Prometheus.value(&1, "worker_invocations_total", labels) || 0.0))
    assert seen == Enum.sort(seen) and List.last(seen) <= 10_000.0

    page = metrics!(base)
    assert Prometheus.value(page, "worker_invocations_total", labels) == 10_000.0

    assert Prometheus.value(page, "worker_invocation_duration_seconds_count", %{
             "function" => "echo"
           }) == 10_000.0
  end
end
