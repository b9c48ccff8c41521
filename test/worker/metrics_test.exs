defmodule Worker.MetricsTest do
  # Worker.Metrics of this node's application, recorded directly and read
  # from a rendered page, one function id per test.
  use ExUnit.Case, async: false

  alias Worker.Metrics
  alias Worker.Test.Prometheus

  setup do
    name = "m#{System.unique_integer([:positive])}"
    %{id: {"recording", name}, labels: %{"module" => "recording", "function" => name}}
  end

  defp page, do: Prometheus.parse!(IO.iodata_to_binary(Metrics.Prometheus.render()))
  defp at(page, name, labels), do: Prometheus.value(page, name, labels)
  defp ms(n), do: System.convert_time_unit(n, :millisecond, :native)

  test "a load makes the row; invocations count by outcome, in flight and by duration",
       %{id: id, labels: labels} do
    Metrics.loaded(id, :store, {:compiled, ms(30)})

    for result <- [{:ok, 1}, {:ok, 2}, {:error, {:exec_error, "x"}}, {:error, :timeout}] do
      Metrics.started(id)
      assert at(page(), "worker_invocations_in_flight", labels) == 1.0
      Metrics.invocation(id, result, ms(2))
    end

    page = page()
    assert at(page, "worker_invocations_in_flight", labels) == 0.0
    assert at(page, "worker_invocations_total", Map.put(labels, "outcome", "ok")) == 2.0
    assert at(page, "worker_invocations_total", Map.put(labels, "outcome", "exec_error")) == 1.0
    assert at(page, "worker_invocations_total", Map.put(labels, "outcome", "timeout")) == 1.0
    assert at(page, "worker_invocation_duration_seconds_count", labels) == 4.0
    # 2 ms each: above the 1 ms bound, within the 2.5 ms one
    assert at(page, "worker_invocation_duration_seconds_bucket", Map.put(labels, "le", "0.001")) ==
             0.0

    assert at(page, "worker_invocation_duration_seconds_bucket", Map.put(labels, "le", "0.0025")) ==
             4.0

    assert at(page, "worker_compiles_total", labels) == 1.0

    assert at(page, "worker_compile_duration_seconds_bucket", Map.put(labels, "le", "0.025")) ==
             0.0

    assert at(page, "worker_compile_duration_seconds_bucket", Map.put(labels, "le", "0.05")) ==
             1.0

    # a store is not a miss
    assert at(page, "worker_cache_misses_total", labels) == nil
  end

  test "hits, misses, evictions and loads count per function and for the node",
       %{id: id, labels: labels} do
    before = Metrics.cache_totals()
    Metrics.loaded(id, :miss, :artifact)
    Metrics.cache(id, :hit)
    Metrics.cache(id, :hit)
    Metrics.cache(id, :eviction)
    Metrics.cache(id, :miss)
    Metrics.loaded(id, :store, {:compiled, ms(1)})

    page = page()
    assert at(page, "worker_cache_hits_total", labels) == 2.0
    assert at(page, "worker_cache_misses_total", labels) == 2.0
    assert at(page, "worker_cache_evictions_total", labels) == 1.0
    assert at(page, "worker_compiles_total", labels) == 1.0

    later = Metrics.cache_totals()
    diff = Map.new(later, fn {k, v} -> {k, v - before[k]} end)
    assert diff == %{hits: 2, misses: 2, evictions: 1, compiles: 1, artifact_loads: 1}
  end

  test "events of a function that was never loaded go to the shared row, not a row of their own",
       %{id: id, labels: labels} do
    other = %{"module" => "_other", "function" => "_other"}
    before = at(page(), "worker_cache_hits_total", other) || 0.0
    Metrics.cache(id, :hit)
    page = page()
    assert at(page, "worker_cache_hits_total", labels) == nil
    assert at(page, "worker_cache_hits_total", other) == before + 1
  end

  test "a forgotten function's row goes at once when idle, else when its last invocation ends",
       %{id: id, labels: labels} do
    Metrics.loaded(id, :store, :artifact)
    Metrics.started(id)
    Metrics.forget(id)
    # still in flight: still shown
    assert at(page(), "worker_invocations_in_flight", labels) == 1.0
    Metrics.invocation(id, {:ok, 1}, ms(1))
    assert at(page(), "worker_invocations_in_flight", labels) == nil
    assert :ets.lookup(Metrics, {:fn, id}) == []

    # loaded again: a fresh row
    Metrics.loaded(id, :store, :artifact)
    assert at(page(), "worker_invocations_in_flight", labels) == 0.0
    assert at(page(), "worker_invocations_total", Map.put(labels, "outcome", "ok")) == nil
  end

  test "stats of an invocation count in its row" do
    id = {"recording", "stats#{System.unique_integer([:positive])}"}
    labels = %{"module" => "recording", "function" => elem(id, 1)}
    Metrics.loaded(id, :store, :artifact)
    Metrics.started(id)

    Metrics.invocation_stats(id, %Worker.Runtime.Stats{
      dropped_lines: 3,
      http_ok: 2,
      http_failed: 1,
      http_refused: 4
    })

    Metrics.invocation(id, {:ok, 1}, ms(1))
    page = page()
    assert at(page, "worker_log_lines_dropped_total", labels) == 3.0
    assert at(page, "worker_http_requests_total", Map.put(labels, "outcome", "ok")) == 2.0
    assert at(page, "worker_http_requests_total", Map.put(labels, "outcome", "failed")) == 1.0
    assert at(page, "worker_http_requests_total", Map.put(labels, "outcome", "refused")) == 4.0
  end

  test "worker_function_info carries a function's kind, as last loaded", %{id: id, labels: labels} do
    Metrics.loaded(id, :store, :artifact, :wasi_command)
    assert at(page(), "worker_function_info", Map.put(labels, "kind", "wasi_command")) == 1.0

    Metrics.loaded(id, :store, :artifact, :funless)

    assert [{%{"kind" => "funless"}, 1.0}] =
             Prometheus.samples(page(), "worker_function_info", labels)

    # the shared row has none
    other = %{"module" => "_other", "function" => "_other"}
    assert Prometheus.samples(page(), "worker_function_info", other) == []
  end

  test "the outcome label of every result" do
    assert Metrics.outcome({:ok, nil}) == "ok"
    assert Metrics.outcome({:error, {:exec_error, "m"}}) == "exec_error"
    assert Metrics.outcome({:error, {:trap, "m"}}) == "trap"
    assert Metrics.outcome({:error, :timeout}) == "timeout"
    assert Metrics.outcome({:error, :cancelled}) == "error"
    assert Metrics.outcome(:crashed) == "error"
  end
end
