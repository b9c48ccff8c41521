defmodule Functions.ComponentP3Test do
  # WASI 0.3 components: commands exporting wasi:cli/run@0.3 and HTTP
  # handlers exporting wasi:http/handler@0.3, whose entry points are async
  # (native/worker_runtime/src/kinds/cli_component.rs, http_component.rs):
  # the examples (functions/components/hello_cli_p3, hello_http_p3), the
  # test guests with hooks (test/guests/components/probe_cli_p3,
  # probe_http_p3), and the wasip3 crate's own examples
  # (scripts/foreign-guests).
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  import Worker.Test.Helpers, only: [eventually: 2]
  alias Worker.Runtime
  alias Worker.Test.HttpServer

  @moduletag :capture_log

  setup_all do
    %{
      hello: compile_component!("hello_cli_p3"),
      cli: compile_component!("probe_cli_p3"),
      hello_http: compile_component!("hello_http_p3"),
      http: compile_component!("probe_http_p3")
    }
  end

  defp compile_component!(name) do
    {:ok, module} = Runtime.compile(component!(name))
    module
  end

  # A component exporting `wasi:cli/run` at `version`, whose `run` returns
  # ok and prints nothing.
  defp minimal_command(version), do: minimal_component("wasi:cli/run@#{version}")

  defp minimal_component(export) do
    """
    (component
      (core module $m (func (export "f") (result i32) i32.const 0))
      (core instance $i (instantiate $m))
      (func $f (result (result)) (canon lift (core func $i "f")))
      (instance $inst (export "run" (func $f)))
      (export "#{export}" (instance $inst)))
    """
  end

  test "any 0.3 release of wasi:cli/run is a 0.3 command; a release candidate is refused" do
    for version <- ["0.3.0", "0.3.1", "0.3.99"] do
      assert {:ok, module} = Runtime.compile(minimal_command(version))
      assert module.kind == :cli_component_p3
      assert Runtime.invoke(module, %{}) == {:error, :no_response}
    end

    assert {:error, {:invalid_module, reason}} =
             Runtime.compile(minimal_command("0.3.0-rc-2025-09-16"))

    assert reason =~ "`wasi:cli/run@0.3.0-rc-2025-09-16`, from a release candidate of WASI 0.3"
  end

  test "a 0.3 handler's `handle` must take one request and give one result" do
    # `run`'s shape under the handler's name
    assert {:error, {:invalid_module, reason}} =
             Runtime.compile(
               String.replace(
                 minimal_component("wasi:http/handler@0.3.0"),
                 ~s("run"),
                 ~s("handle")
               )
             )

    assert reason =~ "`handle` of the component's `wasi:http/handler@0.3.0` export is not"
  end

  test "the example and the wasip3 crate's own example run", %{hello: hello} do
    assert hello.kind == :cli_component_p3
    assert inspect(hello) =~ ~r/^#Worker.Runtime.Module<cli_component_p3, /
    assert Runtime.invoke(hello, "Ada") == {:ok, "Hello Ada!"}
    assert Runtime.invoke(hello, %{"name" => "Core"}) == {:ok, "Hello Core!"}

    {:ok, foreign} = Runtime.compile(component!("wasip3_cli-command"))
    assert foreign.kind == :cli_component_p3
    assert Runtime.invoke(foreign, %{}) == {:ok, "Hello, WASI!"}
  end

  test "reads stdin's stream and writes stdout's; a large output comes whole", %{cli: cli} do
    assert Runtime.invoke(cli, "Ada") == {:ok, "Hello Ada!"}
    assert {:ok, out} = Runtime.invoke(cli, %{"stdout_kb" => 1024})
    assert out == String.duplicate("x", 1024 * 1024)
  end

  test "stdout past the response cap fails the invocation, at once", %{cli: cli} do
    assert {:error, {:trap, message}} = Runtime.invoke(cli, %{"stdout_kb" => 5 * 1024})
    assert message =~ "over the response cap"

    # a guest that writes on, though each write past the cap fails, is
    # ended then, not at its deadline
    started = System.monotonic_time(:millisecond)

    assert {:error, {:trap, message}} =
             Runtime.invoke(cli, %{"stdout_forever" => true}, timeout: 20_000)

    assert message =~ "over the response cap"
    assert System.monotonic_time(:millisecond) - started < 5_000
  end

  test "run returning err, or an exit with a status, is an exec error carrying stderr",
       %{cli: cli} do
    assert {:error, {:exec_error, "run returned an error: it would not go"}} =
             Runtime.invoke(cli, %{"fail" => "it would not go"})

    assert {:error, {:exec_error, "exited with status 3: exiting with status 3, as asked"}} =
             Runtime.invoke(cli, %{"exit_code" => 3})
  end

  test "a panic is a trap carrying the panic's text", %{cli: cli} do
    assert {:error, {:trap, message}} = Runtime.invoke(cli, %{"panic" => "the sky fell"})
    assert message =~ "panicked at"
    assert message =~ "the sky fell"
  end

  test "the timeout stops it spinning in wasm or waiting on an async host call", %{cli: cli} do
    assert Runtime.invoke(cli, %{"spin" => true}, timeout: 100) == {:error, :timeout}
    assert Runtime.invoke(cli, %{"sleep_ms" => 60_000}, timeout: 100) == {:error, :timeout}
    assert Runtime.invoke(cli, %{"sleep_ms" => 1}) == {:ok, %{"slept_ms" => 1}}
  end

  test ":max_memory bounds its memory", %{cli: cli} do
    assert Runtime.invoke(cli, %{"grow_mb" => 16}) == {:ok, %{"grew_mb" => 16}}

    assert {:error, {:trap, _}} =
             Runtime.invoke(cli, %{"grow_mb" => 16}, max_memory: 8 * 1024 * 1024)
  end

  test "stderr is logged, under the log caps", %{cli: cli} do
    log = capture_log(fn -> Runtime.invoke(cli, %{"fail" => "a word on stderr"}) end)
    assert log =~ "a word on stderr"

    log =
      capture_log(fn ->
        assert {{:ok, "Hello World!"}, stats} =
                 Runtime.invoke_with_stats(cli, %{"stderr_lines" => 5_000})

        assert stats.dropped_lines > 0
      end)

    assert log =~ "over the log caps were dropped"
  end

  test "a caller that dies takes its invocation with it", %{cli: cli} do
    caller = spawn(fn -> Process.sleep(:infinity) end)
    test = self()

    spawn(fn ->
      send(test, {:result, Runtime.invoke(cli, %{"sleep_ms" => 60_000}, caller: caller)})
    end)

    Process.sleep(100)
    Process.exit(caller, :kill)
    assert_receive {:result, {:error, :cancelled}}, 2_000
  end

  test "its artifact loads as a 0.3 command", %{hello: hello} do
    assert {:ok, artifact} = Runtime.serialize(hello)
    assert {:ok, loaded} = Runtime.load(artifact, hello.wasm_bytes)
    assert loaded.kind == :cli_component_p3
    assert Runtime.invoke(loaded, "again") == {:ok, "Hello again!"}
  end

  describe "a WASI 0.3 HTTP handler" do
    test "gets the arguments as a POST body; a 2xx body is the result", %{hello_http: hello} do
      assert hello.kind == :http_component_p3
      assert Runtime.invoke(hello, %{"name" => "Ada"}) == {:ok, %{"message" => "Hello, Ada!"}}
      assert Runtime.invoke(hello, "Core") == {:ok, %{"message" => "Hello, Core!"}}

      {:ok, foreign} = Runtime.compile(component!("wasip3_http-proxy"))
      assert foreign.kind == :http_component_p3
      assert Runtime.invoke(foreign, %{}) == {:ok, "Hello, WASI!"}
    end

    # componentize-py's CPython: compiling it takes seconds
    @tag timeout: 180_000
    test "one in Python (componentize-py, functions/python/hello_p3_py) runs" do
      {:ok, py} = Runtime.compile(component!("hello_p3_py"))
      assert py.kind == :http_component_p3
      assert Runtime.invoke(py, "Ada", timeout: 30_000) == {:ok, %{"message" => "Hello, Ada!"}}
      assert Runtime.invoke(py, %{"name" => "Core"}) == {:ok, %{"message" => "Hello, Core!"}}
      assert Runtime.invoke(py, [1]) == {:ok, %{"message" => "Hello, World!"}}
    end

    test "another status or an error code is an exec error; a panic a trap", %{http: http} do
      assert Runtime.invoke(http, %{"status" => 404, "text" => "not here"}) ==
               {:error, {:exec_error, "status 404: not here"}}

      assert {:error, {:exec_error, "the handler answered with an error: " <> code}} =
               Runtime.invoke(http, %{"error_code" => "it broke"})

      assert code =~ "it broke"
      assert {:error, {:trap, message}} = Runtime.invoke(http, %{"panic" => "the sky fell"})
      assert message =~ "the sky fell"

      assert {:error, {:exec_error, "exited with status 3"}} =
               Runtime.invoke(http, %{"exit_code" => 3})
    end

    test "a body over the response cap traps at once, however it is written", %{http: http} do
      assert {:ok, body} = Runtime.invoke(http, %{"body_kb" => 1024})
      assert body == String.duplicate("x", 1024 * 1024)
      started = System.monotonic_time(:millisecond)

      for args <- [%{"body_kb" => 5 * 1024}, %{"endless" => true}] do
        assert {:error, {:trap, message}} = Runtime.invoke(http, args, timeout: 20_000)
        assert message =~ "the response body is over the response cap of 4194304 bytes"
      end

      # not at the deadline: as soon as the cap is passed
      assert System.monotonic_time(:millisecond) - started < 5_000
    end

    test "the timeout stops it spinning or waiting; memory is bounded", %{http: http} do
      assert Runtime.invoke(http, %{"spin" => true}, timeout: 100) == {:error, :timeout}
      assert Runtime.invoke(http, %{"sleep_ms" => 60_000}, timeout: 100) == {:error, :timeout}
      assert Runtime.invoke(http, %{"sleep_ms" => 1}) == {:ok, %{"slept_ms" => 1}}
      assert Runtime.invoke(http, %{"grow_mb" => 16}) == {:ok, %{"grew_mb" => 16}}

      assert {:error, {:trap, _}} =
               Runtime.invoke(http, %{"grow_mb" => 16}, max_memory: 8 * 1024 * 1024)
    end

    test "stderr goes to the log", %{http: http} do
      log = capture_log(fn -> Runtime.invoke(http, %{"stderr" => "a word on stderr"}) end)
      assert log =~ "a word on stderr"
    end

    test "a caller that dies takes its invocation with it", %{http: http} do
      caller = spawn(fn -> Process.sleep(:infinity) end)
      test = self()

      spawn(fn ->
        send(test, {:result, Runtime.invoke(http, %{"sleep_ms" => 60_000}, caller: caller)})
      end)

      Process.sleep(100)
      Process.exit(caller, :kill)
      assert_receive {:result, {:error, :cancelled}}, 2_000
    end

    test "outbound wasi:http@0.3 is under the address policy: loopback refused unless allowed",
         %{http: http} do
      port = URI.parse(HttpServer.start!()).port

      for {_label, url} <- HttpServer.non_public_urls() do
        url = String.replace(url, "PORT", Integer.to_string(port))

        {result, stats} = Runtime.invoke_with_stats(http, %{"fetch" => url}, timeout: 5_000)
        assert {:ok, %{"error" => error}} = result, "#{url}: #{inspect(result)}"
        assert error =~ "DestinationIpProhibited", url
        assert stats.http_refused == 1
        refute_received {:http_request, _}
      end

      url = "http://127.0.0.1:#{port}/text/allowed"

      assert Runtime.invoke(http, %{"fetch" => url}, http_allow: ["127.0.0.1"]) ==
               {:ok, %{"status" => 200, "body" => "allowed"}}

      assert_received {:http_request, %{method: "GET", path: "/text/allowed"}}
    end

    test "an outbound connection ends with its invocation, even to a server that stops reading",
         %{http: http} do
      {:ok, listener} =
        :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}, recbuf: 4096])

      {:ok, port} = :inet.port(listener)
      test = self()

      # accepts, answers a head whose body never comes, and reads nothing:
      # the guest waits on the response's body, and the connection on the
      # request's, which the server does not take
      server =
        spawn(fn ->
          {:ok, socket} = :gen_tcp.accept(listener)
          :ok = :gen_tcp.send(socket, "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
          send(test, :accepted)
          Process.sleep(:infinity)
        end)

      on_exit(fn -> Process.exit(server, :kill) end)
      url = "http://127.0.0.1:#{port}/sink"

      # the guest waits out its time, or hyper gives up on the exchange
      # first (an early answer to a request still being sent): either way
      # the invocation ends, and the connection must go with it
      result =
        Runtime.invoke(http, %{"fetch" => url, "post_kb" => 3 * 1024},
          timeout: 500,
          http_allow: ["127.0.0.1"]
        )

      assert result == {:error, :timeout} or match?({:ok, %{"error" => _}}, result),
             inspect(result)

      assert_receive :accepted
      # the worker's end of the connection goes with the invocation
      assert eventually(fn -> established_to(port) == 0 end, 3_000),
             "a connection to port #{port} outlived its invocation"
    end

    test "its artifact loads as a 0.3 handler", %{hello_http: hello} do
      assert {:ok, artifact} = Runtime.serialize(hello)
      assert {:ok, loaded} = Runtime.load(artifact, hello.wasm_bytes)
      assert loaded.kind == :http_component_p3
      assert Runtime.invoke(loaded, "again") == {:ok, %{"message" => "Hello, again!"}}
    end
  end

  describe "a WASI 0.3 HTTP handler's instances (128 requests each, 16 at once, 1 s idle)" do
    # each test loads the probe afresh: a compiled function's instances are
    # its own
    setup %{http: http} do
      {:ok, artifact} = Runtime.serialize(http)

      fresh = fn ->
        {:ok, module} = Runtime.load(artifact, http.wasm_bytes)
        module
      end

      %{fresh: fresh}
    end

    test "one instance serves 128 of a function's requests, then a fresh one", %{fresh: fresh} do
      probe = fresh.()
      assert Enum.map(1..128, fn _ -> count(probe) end) == Enum.to_list(1..128)
      assert count(probe) == 1
    end

    test "never across functions: each has instances of its own", %{fresh: fresh} do
      {a, b} = {fresh.(), fresh.()}
      assert [count(a), count(a), count(b), count(a), count(b)] == [1, 2, 1, 3, 2]
    end

    test "requests under other limits get an instance of their own", %{fresh: fresh} do
      probe = fresh.()
      assert count(probe) == 1
      assert count(probe, max_memory: 40 * 1024 * 1024) == 1
      assert count(probe) == 2
      assert count(probe, max_memory: 40 * 1024 * 1024) == 2
    end

    test "16 requests at once share an instance; the 17th gets another", %{fresh: fresh} do
      probe = fresh.()
      started = System.monotonic_time(:millisecond)

      # one after another, each asleep when the next comes: an instance
      # that is computing leaves a new request to another instance
      counts =
        1..20
        |> Enum.map(fn _ ->
          task =
            Task.async(fn -> Runtime.invoke(probe, %{"count" => true, "sleep_ms" => 2_000}) end)

          Process.sleep(50)
          task
        end)
        |> Task.await_many(20_000)
        |> Enum.map(fn {:ok, %{"count" => n}} -> n end)

      assert Enum.sort(counts) == Enum.sort(Enum.to_list(1..16) ++ Enum.to_list(1..4))
      # at once: one after another, 16 would take 32 s
      assert System.monotonic_time(:millisecond) - started < 8_000
    end

    test "a request that comes while its instance computes gets another instance",
         %{fresh: fresh} do
      probe = fresh.()
      spinner = Task.async(fn -> Runtime.invoke(probe, %{"spin" => true}, timeout: 1_000) end)
      Process.sleep(200)
      assert count(probe) == 1
      assert Task.await(spinner) == {:error, :timeout}
    end

    test "a trap ends the instance: the requests in flight on it fail, saying so",
         %{fresh: fresh} do
      probe = fresh.()
      assert count(probe) == 1
      other = Task.async(fn -> Runtime.invoke(probe, %{"count" => true, "sleep_ms" => 2_000}) end)
      Process.sleep(200)
      assert {:error, {:trap, message}} = Runtime.invoke(probe, %{"panic" => "the sky fell"})
      assert message =~ "the sky fell"
      assert {:error, {:trap, message}} = Task.await(other)
      assert message =~ "the instance serving this request and others trapped"
      assert message =~ "the sky fell"
      # alone, a trap is the request's own; the next request gets a fresh
      # instance
      assert count(probe) == 1
      assert {:error, {:trap, message}} = Runtime.invoke(probe, %{"panic" => "alone"})
      assert message =~ "alone"
      refute message =~ "others"
      assert count(probe) == 1
    end

    test "a request past its timeout ends the instance, spinning or waiting", %{fresh: fresh} do
      probe = fresh.()

      for hog <- [%{"spin" => true}, %{"sleep_ms" => 60_000}] do
        assert count(probe) == 1

        other =
          Task.async(fn -> Runtime.invoke(probe, %{"count" => true, "sleep_ms" => 3_000}) end)

        Process.sleep(200)
        assert Runtime.invoke(probe, hog, timeout: 300) == {:error, :timeout}
        assert {:error, {:trap, message}} = Task.await(other)
        assert message =~ "another request on it ran past its timeout", inspect({hog, message})
      end

      assert count(probe) == 1
    end

    test "an instance whose only caller died goes with it", %{fresh: fresh} do
      probe = fresh.()
      assert count(probe) == 1
      caller = spawn(fn -> Process.sleep(:infinity) end)
      test = self()
      args = %{"count" => true, "sleep_ms" => 60_000}
      spawn(fn -> send(test, {:result, Runtime.invoke(probe, args, caller: caller)}) end)
      Process.sleep(100)
      Process.exit(caller, :kill)
      assert_receive {:result, {:error, :cancelled}}, 2_000
      assert count(probe) == 1
    end

    test "outbound requests are capped at an invocation's cap for each request the instance took",
         %{fresh: fresh} do
      port = URI.parse(HttpServer.start!()).port
      urls = fn n -> for i <- 1..n, do: "http://127.0.0.1:#{port}/text/n#{i}" end
      probe = fresh.()

      fetch = fn n ->
        {{:ok, %{"results" => results}}, stats} =
          Runtime.invoke_with_stats(probe, %{"urls" => urls.(n)}, http_allow: ["127.0.0.1"])

        {Enum.count(results, &(&1["status"] == 200)), List.last(results), stats}
      end

      # its first request: 20, and the 21st refused
      assert {20, last, stats} = fetch.(21)
      assert last["error"] =~ "DestinationIpProhibited"
      assert {stats.http_ok, stats.http_refused} == {20, 1}
      # its second takes 1 of its 20; its third may use the rest: 39 of 40
      assert {1, %{"status" => 200}, _} = fetch.(1)
      assert {39, %{"error" => error}, _} = fetch.(40)
      assert error =~ "DestinationIpProhibited"
    end

    test "an instance with no request for 1 s is retired", %{fresh: fresh} do
      probe = fresh.()
      assert count(probe) == 1
      Process.sleep(300)
      assert count(probe) == 2
      Process.sleep(1_300)
      assert count(probe) == 1
    end
  end

  defp count(module, opts \\ []) do
    assert {:ok, %{"count" => n}} = Runtime.invoke(module, %{"count" => true}, opts)
    n
  end

  # Connections of this node's processes to 127.0.0.1:`port` that are
  # established (/proc/net/tcp: state 01), seen from the connecting end.
  defp established_to(port) do
    remote = ":" <> String.pad_leading(Integer.to_string(port, 16), 4, "0")

    "/proc/net/tcp"
    |> File.read!()
    |> String.split("\n", trim: true)
    |> Enum.count(fn line ->
      case String.split(line) do
        [_, _local, rem, "01" | _] -> String.ends_with?(rem, remote)
        _ -> false
      end
    end)
  end
end
