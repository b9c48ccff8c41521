defmodule WorkerNode.ComponentProtocolTest do
  # WASI 0.2 components (wasi:http/incoming-handler and wasi:cli/run), and
  # WASI 0.3 ones (wasi:http/handler@0.3, wasi:cli/run@0.3), driven
  # by a stand-in Core on this node over distribution, with the Core's own
  # messages, on worker nodes with real data directories: as FunLess
  # functions are in server_test and persistence_test.
  use ExUnit.Case, async: false

  import Worker.Test.{Core, Fixtures}
  import Worker.Test.Helpers, only: [unique_name: 1, free_port: 0]
  alias Worker.Test.{Cluster, Prometheus}

  @moduletag :tmp_dir
  @timeout 60_000

  defp start!(dir, env \\ []) do
    {peer, node} = Cluster.start_worker!(dir, env)
    on_exit(fn -> Cluster.stop(peer) end)
    node
  end

  # until the node's compiles are over
  defp await_loads(node) do
    unless remote(node, Worker.Cache, :loading, []) == [] do
      Process.sleep(200)
      await_loads(node)
    end
  end

  defp component(name), do: function(unique_name(name), component!(name), module: "components")
  defp labels(f), do: %{"module" => f.module, "function" => f.name}

  # the kind worker_function_info shows for `f` (exactly one sample, of 1)
  defp kind(page, f) do
    [{%{"kind" => kind}, 1.0}] = Prometheus.samples(page, "worker_function_info", labels(f))
    kind
  end

  defp invocations(page, f, outcome),
    do: Prometheus.value(page, "worker_invocations_total", Map.put(labels(f), "outcome", outcome))

  # the page as rendered on the node (no endpoint cache in between)
  defp rendered!(node),
    do:
      Prometheus.parse!(IO.iodata_to_binary(remote(node, Worker.Metrics.Prometheus, :render, [])))

  defp scraped!(port) do
    {:ok, _} = Application.ensure_all_started(:inets)
    url = ~c"http://127.0.0.1:#{port}/metrics"

    {:ok, {{_, 200, _}, _headers, body}} =
      :httpc.request(:get, {url, []}, [timeout: 10_000], body_format: :binary)

    Prometheus.parse!(body)
  end

  test "HTTP and CLI components: stored, then invoked without code, with code, and through a code handler",
       %{tmp_dir: dir} do
    node = start!(dir)
    http = component("hello_http")
    cli = component("hello_cli")

    # store, then invoke without code
    assert call(node, {:store_function, http}) == :ok
    assert call(node, {:store_function, cli}) == :ok
    assert invoke(node, http, %{"name" => "Core"}) == {:ok, %{"message" => "Hello, Core!"}}
    assert invoke(node, cli, %{"name" => "Core"}) == {:ok, "Hello Core!"}
    assert invoke(node, cli, "Ada") == {:ok, "Hello Ada!"}
    assert %{compiles: 2, artifact_loads: 0} = remote(node, Worker.Cache, :info, [])

    # the code in the invoke message, straight to :worker (args %{}), for
    # functions never stored; the code is kept
    http2 = component("hello_http")
    cli2 = component("hello_cli")
    assert call(node, {:invoke, http2}) == {:ok, %{"message" => "Hello, World!"}}
    assert call(node, {:invoke, cli2}) == {:ok, "Hello World!"}
    assert invoke(node, http2, %{"name" => "again"}) == {:ok, %{"message" => "Hello, again!"}}
    assert invoke(node, cli2, "again") == {:ok, "Hello again!"}

    # unknown code: the Core sends it to the code handler, which runs the
    # original args; the code is kept
    for {name, args, expected, next} <- [
          {"hello_http", %{"name" => "handler"}, %{"message" => "Hello, handler!"},
           %{"message" => "Hello, World!"}},
          {"hello_cli", "handler", "Hello handler!", "Hello World!"}
        ] do
      f = component(name)
      assert {:error, :code_not_found, handler} = invoke(node, f, args)
      assert node(handler) == node
      assert GenServer.call(handler, {:invoke, f}, @timeout) == {:ok, expected}
      assert invoke(node, f, %{}) == {:ok, next}
    end

    # artifacts are by code: the same code under other names is compiled once
    assert %{compiles: 2, artifact_loads: 4} = remote(node, Worker.Cache, :info, [])
  end

  test "a restarted worker serves stored components (WASI 0.3 ones too) from their artifacts, without compiling",
       %{tmp_dir: dir} do
    node = start!(dir, wasi_p3: true)
    http = component("hello_http")
    cli = component("hello_cli")
    p3 = component("hello_cli_p3")
    http_p3 = component("hello_http_p3")

    for f <- [http, cli, p3, http_p3] do
      assert call(node, {:store_function, f}) == :ok
    end

    assert invoke(node, p3, "Core") == {:ok, "Hello Core!"}
    assert invoke(node, http_p3, "Core") == {:ok, %{"message" => "Hello, Core!"}}
    assert %{compiles: 4, artifact_loads: 0} = remote(node, Worker.Cache, :info, [])
    assert length(Path.wildcard(Path.join(dir, "artifacts/*/*"))) == 4

    # killed right after the replies: nothing was flushed by a clean exit
    Cluster.kill!(node)
    node = start!(dir, wasi_p3: true)

    assert invoke(node, http, %{"name" => "again"}) == {:ok, %{"message" => "Hello, again!"}}
    assert invoke(node, cli, "again") == {:ok, "Hello again!"}
    assert invoke(node, p3, "again") == {:ok, "Hello again!"}
    assert invoke(node, http_p3, "again") == {:ok, %{"message" => "Hello, again!"}}

    assert %{compiles: 0, artifact_loads: 4, misses: 4} = remote(node, Worker.Cache, :info, [])

    # loaded from an artifact, each keeps its kind
    page = rendered!(node)

    assert kind(page, http) == "http_component"
    assert kind(page, cli) == "cli_component"
    assert kind(page, p3) == "cli_component_p3"
    assert kind(page, http_p3) == "http_component_p3"
  end

  test "a WASI 0.3 handler's instance serves a function's requests; never another function's; FL_P3_INSTANCE_REQUESTS=1 gives each its own",
       %{tmp_dir: dir} do
    counts = fn node, f ->
      for _ <- 1..3 do
        {:ok, %{"count" => n}} = invoke(node, f, %{"count" => true})
        n
      end
    end

    node = start!(Path.join(dir, "reused"), wasi_p3: true)
    {a, b} = {component("probe_http_p3"), component("probe_http_p3")}
    assert call(node, {:store_function, a}) == :ok
    assert call(node, {:store_function, b}) == :ok
    assert counts.(node, a) == [1, 2, 3]
    assert counts.(node, b) == [1, 2, 3]

    node = start!(Path.join(dir, "own"), wasi_p3: true, p3_instance_requests: 1)
    assert call(node, {:store_function, a}) == :ok
    assert counts.(node, a) == [1, 1, 1]
  end

  test "by default (FL_WASI_P3=false), a 0.3 component is refused, saying why, and 0.2 ones run",
       %{tmp_dir: dir} do
    node = start!(dir)
    cli = component("hello_cli")
    assert call(node, {:store_function, cli}) == :ok
    assert invoke(node, cli, "Ada") == {:ok, "Hello Ada!"}

    for name <- ["hello_cli_p3", "hello_http_p3"] do
      assert {:error, {:invalid_module, reason}} = call(node, {:store_function, component(name)})

      assert reason =~ "WASI 0.3 is off on this worker: FL_WASI_P3=false", name
    end
  end

  test "the metrics page shows a loaded component's kind and its invocations", %{tmp_dir: dir} do
    port = free_port()
    node = start!(dir, metrics_port: port)
    http = component("hello_http")
    cli = component("hello_cli")
    funless = function(unique_name("hello"), wasm!("hello"), module: "components")

    for f <- [http, cli, funless] do
      assert call(node, {:store_function, f}) == :ok
      assert {:ok, _} = invoke(node, f, %{})
    end

    page = scraped!(port)

    for {f, kind} <- [{http, "http_component"}, {cli, "cli_component"}, {funless, "funless"}] do
      assert kind(page, f) == kind
      assert invocations(page, f, "ok") == 1.0
      assert Prometheus.value(page, "worker_compiles_total", labels(f)) == 1.0
    end
  end

  # Their binaries are 12 and 18 MB: compiling both takes about 20 s on two
  # quiet cores and over 60 s on two busy ones (seen here), so the 60 s
  # compile limit and the test's timeout are raised. The Core's calls get
  # their replies by their deadlines (the longest here, 59 s): a compile
  # that outlasts one is answered {:error, :timeout} and goes on, as the
  # Core would see it; the function then runs once it is compiled.
  @tag timeout: 600_000
  test "the Python command and the JavaScript HTTP handler run through the Core path",
       %{tmp_dir: dir} do
    node =
      start!(dir,
        compile_timeout_ms: 300_000,
        store_deadline_ms: 59_000,
        invoke_deadline_ms: 59_000
      )

    py = component("hello_py")
    js = component("hello_js")

    assert call(node, {:store_function, py}) in [:ok, {:error, :timeout}]
    await_loads(node)
    assert invoke(node, py, %{"name" => "Core"}) == {:ok, "Hello Core!"}
    # the JS one with its code in the invoke message
    assert call(node, {:invoke, js}) in [
             {:ok, %{"message" => "Hello, World!"}},
             {:error, :timeout}
           ]

    await_loads(node)
    assert invoke(node, js, %{"name" => "Core"}) == {:ok, %{"message" => "Hello, Core!"}}

    page = rendered!(node)

    assert kind(page, py) == "cli_component"
    assert kind(page, js) == "http_component"
  end

  test "a component's failure comes back as the exec error a FunLess function's does",
       %{tmp_dir: dir} do
    node = start!(dir)
    error = function(unique_name("error"), wasm!("error"), module: "components")
    # the test guests: the examples, with hooks for a status and an exit
    http = component("probe_http")
    cli = component("probe_cli")

    for f <- [error, http, cli], do: assert(call(node, {:store_function, f}) == :ok)

    # the FunLess function's error, for the shape
    assert {:error, {:exec_error, "error while executing function: boom"}} =
             invoke(node, error, %{"message" => "boom"})

    # a non-2xx answer: the status and the start of the body
    assert {:error, {:exec_error, "status 500: " <> _ = message}} =
             invoke(node, http, %{"status" => 500})

    assert message =~ "answering with status 500, as asked"

    # a command exiting with a failure: the status and its stderr
    assert {:error, {:exec_error, "exited with status 1" <> _ = message}} =
             invoke(node, cli, %{"exit" => 3})

    assert message =~ "exiting with status 3, as asked"

    # counted as exec errors; the worker serves the next request
    page = rendered!(node)

    for f <- [error, http, cli] do
      assert invocations(page, f, "exec_error") == 1.0
    end

    assert invoke(node, http, %{"name" => "after"}) == {:ok, %{"message" => "Hello, after!"}}
  end
end
