defmodule WorkerNode.MetricsTest do
  # A worker node with its metrics endpoint, driven through the Core
  # protocol; the page is fetched over HTTP and parsed whole.
  use ExUnit.Case, async: false

  import Worker.Test.{Fixtures, Helpers}
  import Worker.Test.Core, only: [call: 2, invoke: 3]
  alias Worker.Test.{Cluster, Core, Prometheus}

  @moduletag :tmp_dir

  setup %{tmp_dir: dir} do
    port = free_port()
    {peer, node} = Cluster.start_worker!(dir, metrics_port: port)
    on_exit(fn -> Cluster.stop(peer) end)
    {:ok, _} = Application.ensure_all_started(:inets)
    %{node: node, base: "http://127.0.0.1:#{port}", port: port}
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

  # A page is served for 1 s after its render (Worker.Metrics.Endpoint): a
  # scrape that must see what happened since the last one waits that out.
  defp fresh_metrics!(base) do
    Process.sleep(1_100)
    metrics!(base)
  end

  # A render on the node itself, bypassing the endpoint and its cache.
  defp rendered!(node) do
    Prometheus.parse!(
      IO.iodata_to_binary(:erpc.call(node, Worker.Metrics.Prometheus, :render, []))
    )
  end

  defp function(name, wasm, module \\ "obs"), do: Core.function(name, wasm, module: module)

  defp delete(node, fun), do: call(node, {:delete_function, fun.name, fun.module, fun.hash})

  # Functions with 1 KB names, all of the same code.
  defp long_functions(n, code, tag) do
    for i <- 1..n, do: function(String.duplicate("n", 1_000) <> "#{tag}#{i}", code)
  end

  defp store_and_invoke!(node, funs) do
    funs
    |> Task.async_stream(
      fn f ->
        :ok = call(node, {:store_function, f})
        {:ok, _} = invoke(node, f, %{})
      end,
      max_concurrency: 8,
      timeout: 60_000
    )
    |> Stream.run()
  end

  # The body of a GET /metrics over a connection of its own (HTTP/1.0: the
  # server closes it after the response), so that scrapes are concurrent.
  defp raw_scrape(port) do
    {:ok, socket} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false], 5_000)
    :ok = :gen_tcp.send(socket, "GET /metrics HTTP/1.0\r\n\r\n")
    [head, body] = socket |> recv_all([]) |> :binary.split("\r\n\r\n")
    assert head =~ ~r{^HTTP/1\.[01] 200 }
    body
  end

  defp recv_all(socket, acc) do
    case :gen_tcp.recv(socket, 0, 30_000) do
      {:ok, data} -> recv_all(socket, [acc | data])
      {:error, :closed} -> IO.iodata_to_binary(acc)
    end
  end

  defp function_samples(page, name) do
    for {_, %{"function" => ^name} = labels, value} <- page.samples, do: {labels, value}
  end

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

    # stored, so compiled once each; every invocation after was a hit, and
    # a store is not a miss
    assert at.("worker_compiles_total", hello_l) == 1.0
    assert at.("worker_compile_duration_seconds_count", hello_l) == 1.0
    assert at.("worker_cache_misses_total", hello_l) == nil
    assert at.("worker_cache_hits_total", hello_l) == 7.0
    assert at.("worker_invocations_in_flight", hello_l) == 0.0
    # spin ran in slices until its timeout: the histogram of slices counts
    # them, and they add up to much of its 50 ms (not all: between two
    # slices the scheduler runs others, for longer on a loaded machine; CI
    # once measured 39 ms)
    slices = at.("worker_runtime_slice_seconds_count", %{})
    assert slices > 0
    assert at.("worker_runtime_slice_seconds_sum", %{}) > 0.025
    assert page.types["worker_runtime_slice_seconds"] == "histogram"
    slice_buckets = Prometheus.samples(page, "worker_runtime_slice_seconds_bucket")
    slice_counts = Enum.map(slice_buckets, &elem(&1, 1))
    assert slice_counts == Enum.sort(slice_counts)
    assert List.last(slice_buckets) == {%{"le" => "+Inf"}, slices}
    # (per render: a scrape within the second after gets the same page)
    assert Prometheus.value(metrics!(base), "worker_runtime_slice_seconds_count", %{}) == slices
    # and a read resets nothing: the next render counts on from there
    assert Prometheus.value(fresh_metrics!(base), "worker_runtime_slice_seconds_count", %{}) >=
             slices

    # node and the names the FunLess Core reads, labelled with the node's
    # name (its Collector selects {node="..."}), and only those
    node_label = %{"node" => Atom.to_string(node)}

    for name <-
          ~w(cpu_utilization available_mem free_mem total_mem load_avg1 load_avg5 load_avg15) do
      assert [{^node_label, value}] =
               Prometheus.samples(page, "worker_prom_ex_os_mon_resources_" <> name),
             name

      assert is_float(value), name
    end

    assert for({_, labels, _} <- page.samples, Map.has_key?(labels, "node"), do: labels)
           |> length() == 7

    assert at.("worker_prom_ex_os_mon_resources_total_mem", node_label) > 0
    assert at.("worker_beam_processes", %{}) > 0
    assert at.("worker_beam_memory_bytes", %{}) > 0
    assert at.("worker_admission_overloaded_total", %{}) == 0.0
    assert page.types["worker_invocation_duration_seconds"] == "histogram"
    assert page.types["worker_invocations_total"] == "counter"
  end

  test "a first invocation through the code handler is one miss, in the function's own row",
       %{node: node} do
    lazy = function("lazy", wasm!("hello"))
    # no code here: code_not_found, and the Core sends it to the handler
    assert {:error, :code_not_found, handler} = invoke(node, lazy, %{"name" => "x"})
    assert GenServer.call(handler, {:invoke, lazy}) == {:ok, %{"payload" => "Hello x!"}}

    page = rendered!(node)
    labels = %{"module" => lazy.module, "function" => lazy.name}
    assert Prometheus.value(page, "worker_cache_misses_total", labels) == 1.0
    # nothing was folded, so nothing is counted in the shared row
    assert Prometheus.samples(page, "worker_cache_misses_total", %{"module" => "_other"}) == []
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

    page = fresh_metrics!(base)
    assert Prometheus.value(page, "worker_invocations_total", labels) == 10_000.0

    assert Prometheus.value(page, "worker_invocation_duration_seconds_count", %{
             "function" => "echo"
           }) == 10_000.0
  end

  test "deleted functions leave the page: 300 with 1 KB names, then a fresh node's page size",
       %{node: node, base: base} do
    {200, _, fresh} = get(base <> "/metrics")
    funs = long_functions(300, wasm!("hello"), "deleted")
    store_and_invoke!(node, funs)

    page = fresh_metrics!(base)
    rows = for {"worker_invocations_in_flight", %{"function" => _}, _} <- page.samples, do: 1
    assert length(rows) == 300

    for f <- funs, do: assert(delete(node, f) == :ok)

    {200, _, body} = fresh_metrics!(base) && get(base <> "/metrics")
    page = Prometheus.parse!(body)
    assert for({name, %{"function" => _} = l, _} <- page.samples, do: {name, l}) == []
    assert byte_size(body) < byte_size(fresh) + 512, "#{byte_size(body)} vs #{byte_size(fresh)}"
  end

  test "a function deleted while it runs leaves no row, and counts afresh when stored again",
       %{node: node} do
    sleeper = function("sleeper", wat!("wasi_sleep"))
    labels = %{"module" => "obs", "function" => "sleeper"}
    assert call(node, {:store_function, sleeper}) == :ok
    :ok = :erpc.call(node, Worker.Config, :put, [:invoke_timeout_ms, 1_500])
    running = Task.async(fn -> invoke(node, sleeper, %{}) end)

    assert eventually(fn ->
             Prometheus.value(rendered!(node), "worker_invocations_in_flight", labels) == 1.0
           end)

    assert delete(node, sleeper) == :ok
    # still shown while it runs
    assert Prometheus.value(rendered!(node), "worker_invocations_in_flight", labels) == 1.0
    assert {:error, :timeout} = Task.await(running, 10_000)

    page = rendered!(node)
    assert function_samples(page, "sleeper") == []
    assert for({"worker_invocations_in_flight", l, v} <- page.samples, v != 0, do: {l, v}) == []

    # stored again, other code: a fresh row
    hello = function("sleeper", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok
    assert {:ok, _} = invoke(node, hello, %{})
    page = rendered!(node)
    at = fn name, extra -> Prometheus.value(page, name, Map.merge(labels, extra)) end
    assert at.("worker_invocations_total", %{"outcome" => "ok"}) == 1.0
    assert at.("worker_invocations_total", %{"outcome" => "timeout"}) == nil
    assert at.("worker_invocation_duration_seconds_count", %{}) == 1.0
    assert at.("worker_invocations_in_flight", %{}) == 0.0
    assert at.("worker_compiles_total", %{}) == 1.0
    assert at.("worker_cache_hits_total", %{}) == 1.0
  end

  test "an invocation admitted after its function's deletion makes no row", %{tmp_dir: dir} do
    {peer, node} =
      Cluster.start_worker!(Path.join(dir, "one_slot"),
        max_concurrency: 1,
        invoke_timeout_ms: 1_000
      )

    on_exit(fn -> Cluster.stop(peer) end)
    sleeper = function("sleeper", wat!("wasi_sleep"))
    labels = %{"module" => "obs", "function" => "sleeper"}
    assert call(node, {:store_function, sleeper}) == :ok
    first = Task.async(fn -> invoke(node, sleeper, %{}) end)

    assert eventually(fn ->
             Prometheus.value(rendered!(node), "worker_invocations_in_flight", labels) == 1.0
           end)

    # the second has its module (a cache hit) and waits for the slot
    second = Task.async(fn -> invoke(node, sleeper, %{}) end)
    assert eventually(fn -> :erpc.call(node, Worker.Admission, :info, []).waiting == 1 end)
    assert delete(node, sleeper) == :ok
    assert {:error, :timeout} = Task.await(first, 10_000)
    assert {:error, :timeout} = Task.await(second, 10_000)

    page = rendered!(node)
    assert function_samples(page, "sleeper") == []
    # the second's start and end both counted in the shared row
    other = %{"module" => "_other", "function" => "_other"}
    assert Prometheus.value(page, "worker_invocations_in_flight", other) == 0.0

    assert Prometheus.value(
             page,
             "worker_invocations_total",
             Map.put(other, "outcome", "timeout")
           ) ==
             1.0

    hello = function("sleeper", wasm!("hello"))
    assert call(node, {:store_function, hello}) == :ok
    assert {:ok, _} = invoke(node, hello, %{})

    assert Prometheus.value(
             rendered!(node),
             "worker_invocations_total",
             Map.put(labels, "outcome", "ok")
           ) ==
             1.0
  end

  test "over metrics_max_functions, further functions share the _other row", %{tmp_dir: dir} do
    port = free_port()

    {peer, node} =
      Cluster.start_worker!(Path.join(dir, "capped"), metrics_port: port, metrics_max_functions: 5)

    on_exit(fn -> Cluster.stop(peer) end)
    code = wasm!("hello")

    for i <- 1..12 do
      f = function("f#{String.pad_leading("#{i}", 2, "0")}", code)
      assert call(node, {:store_function, f}) == :ok
      for _ <- 1..i, do: assert({:ok, _} = invoke(node, f, %{}))
    end

    page = metrics!("http://127.0.0.1:#{port}")
    rows = for {"worker_invocations_in_flight", l, _} <- page.samples, do: l["function"]
    assert Enum.sort(rows) == ~w(_other f01 f02 f03 f04 f05)
    ok = fn function -> %{"function" => function, "outcome" => "ok"} end

    for i <- 1..5 do
      assert Prometheus.value(page, "worker_invocations_total", ok.("f0#{i}")) == i * 1.0
    end

    other = %{"module" => "_other", "function" => "_other"}

    assert Prometheus.value(page, "worker_invocations_total", ok.("_other")) ==
             Enum.sum(6..12) * 1.0

    assert Prometheus.value(page, "worker_invocation_duration_seconds_count", other) == 63.0
    assert Prometheus.value(page, "worker_metrics_functions_folded_total") == 7.0
  end

  test "16 concurrent scrapes while a page renders: one render, byte-identical pages",
       %{node: node, port: port} do
    # a page of megabytes, so that its render takes a while
    store_and_invoke!(node, long_functions(200, wasm!("hello"), "scraped"))
    renders = :erpc.call(node, Worker.Metrics, :renders, [])

    scrapes =
      for _ <- 1..16 do
        Task.async(fn ->
          receive do
            :go -> raw_scrape(port)
          end
        end)
      end

    Enum.each(scrapes, &send(&1.pid, :go))
    bodies = Task.await_many(scrapes, 60_000)
    assert byte_size(hd(bodies)) > 1_000_000
    assert bodies |> Enum.uniq() |> length() == 1
    assert :erpc.call(node, Worker.Metrics, :renders, []) - renders <= 2
    page = Prometheus.parse!(hd(bodies))
    assert length(Prometheus.samples(page, "worker_invocations_in_flight")) == 200
  end

  test "an update keeps the function's rows; deleting a hash nobody runs keeps them too", %{
    node: node
  } do
    old = function("greeter", wasm!("hello"))
    new = function("greeter", wasm!("echo"))
    assert call(node, {:store_function, old}) == :ok
    assert {:ok, _} = invoke(node, old, %{})
    assert call(node, {:update_function, old.hash, new}) == :ok
    assert {:ok, _} = invoke(node, new, %{})
    assert call(node, {:delete_function, "greeter", "obs", "no such hash"}) == :ok
    assert {:ok, _} = invoke(node, new, %{})

    labels = %{"module" => "obs", "function" => "greeter", "outcome" => "ok"}
    assert Prometheus.value(rendered!(node), "worker_invocations_total", labels) == 3.0
  end
end
