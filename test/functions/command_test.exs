defmodule Functions.CommandTest do
  # WASI commands: core modules that export `_start`, with their arguments
  # on stdin and their result on stdout (native/worker_runtime/src/command.rs):
  # the example functions/hello_command, the test guest probe_command (the
  # same, with hooks the tests call) and WAT cases.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime

  @moduletag :capture_log

  setup_all do
    %{
      hello: compile!("hello_command"),
      probe: compile!("probe_command"),
      cases: compile!({:wat, "command_cases"})
    }
  end

  test "a Rust program for wasm32-wasip1 is a command: its kind, its inspect", %{hello: hello} do
    assert hello.kind == :wasi_command
    assert inspect(hello) =~ ~r/^#Worker.Runtime.Module<wasi_command, \d+ bytes, \d+ KiB memory>$/
    assert compile!("hello").kind == :funless
  end

  test "the arguments are JSON on stdin; JSON on stdout is decoded", %{hello: hello} do
    assert Runtime.invoke(hello, "Ada") == {:ok, "Hello Ada!"}
    assert Runtime.invoke(hello, %{"name" => "Core"}) == {:ok, "Hello Core!"}
    assert Runtime.invoke(hello, {:json, ~s({"name":"json"})}) == {:ok, "Hello json!"}
    assert Runtime.invoke(hello, %{}) == {:ok, "Hello World!"}
  end

  test "other UTF-8 text is a binary, less its trailing newline", %{probe: probe} do
    assert Runtime.invoke(probe, %{"text" => "plain words"}) == {:ok, "plain words"}
    assert Runtime.invoke(probe, %{"text" => "{not json"}) == {:ok, "{not json"}
    # JSON the worker's decoder refuses (too deep, out of range) is text too
    deep = String.duplicate("[", 200) <> String.duplicate("]", 200)
    assert Runtime.invoke(probe, %{"text" => deep}) == {:ok, deep}
    assert Runtime.invoke(probe, %{"text" => "1e400"}) == {:ok, "1e400"}
    # a large output is decoded off the normal schedulers, the same way
    big = String.duplicate("x", 100_000)
    assert Runtime.invoke(probe, %{"text" => big}) == {:ok, big}
    assert Runtime.invoke(probe, %{"text" => ~s(["#{big}"])}) == {:ok, [big]}
  end

  test "bytes that are not UTF-8 are an invalid response; no output is no response",
       %{cases: cases} do
    assert {:error, {:invalid_response, reason}} = Runtime.invoke(cases, 3)
    assert reason =~ "neither JSON nor UTF-8 text"
    assert Runtime.invoke(cases, 4) == {:error, :no_response}
  end

  test "a non-zero exit is an exec error carrying stderr", %{probe: probe} do
    assert {:error, {:exec_error, message}} = Runtime.invoke(probe, %{"exit" => 3})
    assert message =~ "exited with status 3"
    assert message =~ "exiting with status 3, as asked"
  end

  test "a panic is a trap carrying the panic's text", %{probe: probe} do
    assert {:error, {:trap, message}} = Runtime.invoke(probe, %{"panic" => "the sky fell"})
    assert message =~ "panicked at"
    assert message =~ "the sky fell"
    assert message =~ "unreachable"
    refute message =~ "RUST_BACKTRACE"
  end

  test "the timeout stops a command spinning in wasm or sleeping in WASI", %{cases: cases} do
    assert Runtime.invoke(cases, 1, timeout: 100) == {:error, :timeout}
    assert Runtime.invoke(cases, 2, timeout: 100) == {:error, :timeout}
  end

  test "recursion without bound traps", %{cases: cases} do
    assert {:error, {:trap, message}} = Runtime.invoke(cases, 5)
    assert message =~ "stack"
  end

  test ":max_memory bounds a command's memory", %{cases: cases} do
    assert Runtime.invoke(cases, 6) == {:ok, "grown"}
    assert Runtime.invoke(cases, 6, max_memory: 1024 * 1024) == {:ok, "refused"}
  end

  test "stderr is logged under the log caps; the excess is dropped and counted",
       %{cases: cases} do
    log =
      capture_log(fn ->
        assert {{:ok, "done"}, stats} = Runtime.invoke_with_stats(cases, 7)
        assert stats.dropped_lines > 0
      end)

    assert log =~ "over the log caps were dropped"
  end

  test "output over the response cap traps, never cut short", %{cases: cases} do
    assert {:error, {:trap, "the output is over the response cap of 4194304 bytes" <> _}} =
             Runtime.invoke(cases, 8)
  end

  test "a module with neither __invoke nor _start is refused, naming what it exports" do
    assert {:error, {:invalid_module, reason}} = Runtime.compile(wat!("neither_entry"))
    assert reason =~ "`__invoke`"
    assert reason =~ "`_start`"
    assert reason =~ "it exports `memory`, `main`"

    # however many exports, and however long their names, a few are named
    long = String.duplicate("n", 5_000)
    funcs = for i <- 1..20, do: ~s|(func (export "f#{i}#{if i == 1, do: long}"))|
    assert {:error, {:invalid_module, reason}} = Runtime.compile("(module #{funcs})")
    assert reason =~ "and 12 more"
    assert reason =~ "..."
    assert byte_size(reason) < 1_000
  end

  test "a command's artifact loads as a command", %{hello: hello} do
    assert {:ok, artifact} = Runtime.serialize(hello)
    assert {:ok, loaded} = Runtime.load(artifact, hello.wasm_bytes)
    assert loaded.kind == :wasi_command
    assert Runtime.invoke(loaded, "again") == {:ok, "Hello again!"}
  end
end
