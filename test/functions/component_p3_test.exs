defmodule Functions.ComponentP3Test do
  # WASI 0.3 commands: components exporting wasi:cli/run@0.3, whose `run` is
  # async (native/worker_runtime/src/kinds/cli_component.rs): the example
  # (functions/components/hello_cli_p3), the test guest with hooks
  # (test/guests/components/probe_cli_p3), and the wasip3 crate's own
  # example (scripts/foreign-guests).
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime

  @moduletag :capture_log

  setup_all do
    %{
      hello: compile_component!("hello_cli_p3"),
      cli: compile_component!("probe_cli_p3")
    }
  end

  defp compile_component!(name) do
    {:ok, module} = Runtime.compile(component!(name))
    module
  end

  # A component exporting `wasi:cli/run` at `version`, whose `run` returns
  # ok and prints nothing.
  defp minimal_command(version) do
    """
    (component
      (core module $m (func (export "f") (result i32) i32.const 0))
      (core instance $i (instantiate $m))
      (func $f (result (result)) (canon lift (core func $i "f")))
      (instance $inst (export "run" (func $f)))
      (export "wasi:cli/run@#{version}" (instance $inst)))
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

  test "stdout past the response cap fails the invocation", %{cli: cli} do
    assert {:error, {:trap, message}} = Runtime.invoke(cli, %{"stdout_kb" => 5 * 1024})
    assert message =~ "over the response cap"
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
end
