defmodule Functions.ComponentTest do
  # WASI 0.2 components: commands exporting wasi:cli/run and HTTP handlers
  # exporting wasi:http/incoming-handler (native/worker_runtime/src/component.rs):
  # the examples in functions/components (hello_cli, hello_http), and the
  # test guests in test/guests/components with the hooks the tests call
  # (probe_cli and probe_http, which greet as the examples do; hostile_http).
  use ExUnit.Case, async: true

  import Bitwise
  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime

  @moduletag :capture_log

  setup_all do
    %{
      hello_cli: compile_component!("hello_cli"),
      hello_http: compile_component!("hello_http"),
      cli: compile_component!("probe_cli"),
      http: compile_component!("probe_http")
    }
  end

  defp compile_component!(name) do
    {:ok, module} = Runtime.compile(component!(name))
    module
  end

  # A component exporting `export` as an instance with one function, `func`,
  # of type `func() -> result`, which returns ok and prints nothing.
  defp minimal_component(export, func \\ "run") do
    """
    (component
      (core module $m (func (export "f") (result i32) i32.const 0))
      (core instance $i (instantiate $m))
      (func $f (result (result)) (canon lift (core func $i "f")))
      (instance $inst (export "#{func}" (func $f)))
      (export "#{export}" (instance $inst)))
    """
  end

  test "the kind comes from the exports, shown by inspect", %{hello_cli: cli, hello_http: http} do
    assert cli.kind == :cli_component
    assert http.kind == :http_component
    assert inspect(cli) =~ ~r/^#Worker.Runtime.Module<cli_component, \d+ bytes, \d+ KiB memory>$/
    assert inspect(http) =~ ~r/^#Worker.Runtime.Module<http_component, \d+ bytes/
  end

  test "any 0.2 minor version of wasi:cli/run is a command (0.3: component_p3_test.exs)" do
    for version <- ["0.2.0", "0.2.1", "0.2.99"] do
      assert {:ok, module} = Runtime.compile(minimal_component("wasi:cli/run@#{version}"))
      assert module.kind == :cli_component
      assert Runtime.invoke(module, %{}) == {:error, :no_response}
    end

    assert {:error, {:invalid_module, reason}} =
             Runtime.compile(minimal_component("wasi:cli/run@0.4.0"))

    assert reason =~ "it exports `wasi:cli/run@0.4.0`"
  end

  test "a component exporting neither interface is refused, naming both and its exports" do
    assert {:error, {:invalid_module, reason}} =
             Runtime.compile(minimal_component("example:greet/hello", "greet"))

    assert reason =~ "`wasi:http/incoming-handler@0.2.x`"
    assert reason =~ "`wasi:cli/run@0.2.x` or `wasi:cli/run@0.3.x`"
    assert reason =~ "it exports `example:greet/hello`"
    assert {:error, {:invalid_module, reason}} = Runtime.compile("(component)")
    assert reason =~ "it exports nothing"

    # the right name with a function of another shape is refused too, when
    # compiled rather than at every call
    wrong = """
    (component
      (core module $m (func (export "f") (param i32) (result i32) i32.const 0))
      (core instance $i (instantiate $m))
      (func $f (param "x" u32) (result (result)) (canon lift (core func $i "f")))
      (instance $inst (export "run" (func $f)))
      (export "wasi:cli/run@0.2.0" (instance $inst)))
    """

    assert {:error, {:invalid_module, reason}} = Runtime.compile(wrong)
    assert reason =~ "`run` of the component's `wasi:cli/run@0.2.0` export is not"
  end

  test ":max_memory bounds a component's memories together, not each" do
    # two core instances, each with a memory of 5 MiB (80 pages)
    two = """
    (component
      (core module $a (memory (export "mem") 80))
      (core module $m (memory 80) (func (export "f") (result i32) i32.const 0))
      (core instance $ia (instantiate $a))
      (core instance $i (instantiate $m))
      (func $f (result (result)) (canon lift (core func $i "f")))
      (instance $inst (export "run" (func $f)))
      (export "wasi:cli/run@0.2.0" (instance $inst)))
    """

    assert {:ok, module} = Runtime.compile(two)
    assert Runtime.invoke(module, %{}, max_memory: 16 * 1024 * 1024) == {:error, :no_response}

    assert {:error, {:instantiate, _}} = Runtime.invoke(module, %{}, max_memory: 8 * 1024 * 1024)
  end

  describe "a command component" do
    test "reads JSON on stdin; JSON on stdout is decoded, other text is a binary",
         %{cli: cli} do
      assert Runtime.invoke(cli, "Ada") == {:ok, "Hello Ada!"}
      assert Runtime.invoke(cli, %{"name" => "Core"}) == {:ok, "Hello Core!"}
      assert Runtime.invoke(cli, %{"text" => "plain words"}) == {:ok, "plain words"}
      big = String.duplicate("x", 100_000)
      assert Runtime.invoke(cli, %{"text" => ~s(["#{big}"])}) == {:ok, [big]}
    end

    test "a non-zero exit is an exec error carrying stderr", %{cli: cli} do
      assert {:error, {:exec_error, message}} = Runtime.invoke(cli, %{"exit" => 3})
      # wasi:cli/exit carries success or failure, not the status
      assert message =~ "exited with status 1"
      assert message =~ "exiting with status 3, as asked"
      # wasi:cli/exit's exit-with-code carries it
      assert {:error, {:exec_error, "exited with status 3: " <> _}} =
               Runtime.invoke(cli, %{"exit_code" => 3})
    end

    test "a panic is a trap carrying the panic's text", %{cli: cli} do
      assert {:error, {:trap, message}} = Runtime.invoke(cli, %{"panic" => "the sky fell"})
      assert message =~ "panicked at"
      assert message =~ "the sky fell"
      refute message =~ "RUST_BACKTRACE"
    end

    test "the timeout stops it spinning in wasm or sleeping in WASI", %{cli: cli} do
      assert Runtime.invoke(cli, %{"spin" => true}, timeout: 100) == {:error, :timeout}
      assert Runtime.invoke(cli, %{"sleep_ms" => 60_000}, timeout: 100) == {:error, :timeout}
      assert Runtime.invoke(cli, %{"sleep_ms" => 1}) == {:ok, %{"slept_ms" => 1}}
    end

    test ":max_memory bounds its memory", %{cli: cli} do
      assert Runtime.invoke(cli, %{"grow_mb" => 16}) == {:ok, %{"grew_mb" => 16}}

      assert {:error, {:trap, _}} =
               Runtime.invoke(cli, %{"grow_mb" => 16}, max_memory: 8 * 1024 * 1024)
    end

    test "recursion without bound traps", %{cli: cli} do
      assert {:error, {:trap, message}} = Runtime.invoke(cli, %{"recurse" => true})
      assert message =~ "stack"
    end

    test "stderr is logged, as every function's", %{cli: cli} do
      log = capture_log(fn -> Runtime.invoke(cli, %{"stderr" => "a word on stderr"}) end)
      assert log =~ "a word on stderr"
    end

    test "its artifact loads as a command component", %{hello_cli: cli} do
      assert {:ok, artifact} = Runtime.serialize(cli)
      assert {:ok, loaded} = Runtime.load(artifact, cli.wasm_bytes)
      assert loaded.kind == :cli_component
      assert Runtime.invoke(loaded, "again") == {:ok, "Hello again!"}
    end
  end

  describe "an HTTP component" do
    test "gets the arguments as a POST body; a 2xx body is the result", %{hello_http: http} do
      assert Runtime.invoke(http, %{"name" => "Ada"}) == {:ok, %{"message" => "Hello, Ada!"}}
      assert Runtime.invoke(http, %{}) == {:ok, %{"message" => "Hello, World!"}}
    end

    test "a 2xx body that is not JSON comes back byte for byte; an empty one is no response",
         %{http: http} do
      for body <- ["Hello, Ada!\n", "two lines\r\n\r\n", " \n", "\t"] do
        assert Runtime.invoke(http, %{"status" => 200, "body" => body}) == {:ok, body}
      end

      assert Runtime.invoke(http, %{"status" => 201, "body" => ""}) == {:error, :no_response}
    end

    test "another status is an exec error with the status and the start of the body",
         %{http: http} do
      assert {:error, {:exec_error, message}} = Runtime.invoke(http, %{"status" => 500})
      assert message =~ ~r/^status 500: /
      assert message =~ "500"
    end

    test "a panic is a trap carrying the panic's text", %{http: http} do
      assert {:error, {:trap, message}} = Runtime.invoke(http, %{"panic" => "the sky fell"})
      assert message =~ "the sky fell"
    end

    test "the timeout stops it spinning or sleeping", %{http: http} do
      assert Runtime.invoke(http, %{"spin" => true}, timeout: 100) == {:error, :timeout}
      assert Runtime.invoke(http, %{"sleep_ms" => 60_000}, timeout: 100) == {:error, :timeout}
    end

    test ":max_memory bounds its memory; recursion traps", %{http: http} do
      assert {:ok, _} = Runtime.invoke(http, %{"grow_mb" => 16})

      assert {:error, {:trap, _}} =
               Runtime.invoke(http, %{"grow_mb" => 16}, max_memory: 8 * 1024 * 1024)

      assert {:error, {:trap, message}} = Runtime.invoke(http, %{"recurse" => true})
      assert message =~ "stack"
    end

    test "stdout and stderr go to the log, under the log caps", %{http: http} do
      log = capture_log(fn -> Runtime.invoke(http, %{"print" => "printed by the handler"}) end)
      assert log =~ "printed by the handler"

      lines = Enum.map_join(1..5_000, "\n", &"line #{&1}")

      log =
        capture_log(fn ->
          assert {{:ok, _}, stats} = Runtime.invoke_with_stats(http, %{"print" => lines})
          assert stats.dropped_lines > 0
        end)

      assert log =~ "over the log caps were dropped"
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

    test "a body written on past the response cap ends the handler at once, with the trap" do
      hostile = compile_component!("hostile_http")
      started = System.monotonic_time(:millisecond)

      assert {:error, {:trap, message}} =
               Runtime.invoke(hostile, %{"endless_body" => true}, timeout: 20_000)

      assert message =~ "the response body is over the response cap of 4194304 bytes"
      # not at the deadline: as soon as the cap is passed
      assert System.monotonic_time(:millisecond) - started < 5_000
    end

    test "a raw write to stderr past the stream's permit traps, whatever its size" do
      hostile = compile_component!("hostile_http")
      # 16 KiB is the permit; a guest that writes more without asking traps
      assert {:error, {:trap, message}} = Runtime.invoke(hostile, %{"raw_stderr" => 1 <<< 20})
      assert message =~ "a write of 1048576 bytes past the permit of 16384"
      assert {:ok, "done"} = Runtime.invoke(hostile, %{"raw_stderr" => 100})
    end

    test "its artifact loads as an HTTP component", %{hello_http: http} do
      assert {:ok, artifact} = Runtime.serialize(http)
      assert {:ok, loaded} = Runtime.load(artifact, http.wasm_bytes)
      assert loaded.kind == :http_component

      assert Runtime.invoke(loaded, %{"name" => "again"}) ==
               {:ok, %{"message" => "Hello, again!"}}
    end
  end
end
