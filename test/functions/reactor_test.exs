defmodule Functions.ReactorTest do
  # WASI reactors: core modules that export _initialize (as Go and C build
  # modules that export functions), called once per instance before the
  # entry point, __invoke or _start (native/worker_runtime/src/core_host.rs).
  # WAT cases; Go's own reactor is in go_test.exs.
  use ExUnit.Case, async: true

  import Worker.Test.Fixtures
  alias Worker.Runtime

  @moduletag :capture_log

  test "_initialize is called once per instance, before __invoke" do
    reactor = compile!({:wat, "reactor"})
    for _ <- 1..3, do: assert(Runtime.invoke(reactor, %{}) == {:ok, 1})
  end

  test "_initialize is called once per instance, before a command's _start" do
    command = compile!({:wat, "reactor_command"})
    for _ <- 1..3, do: assert(Runtime.invoke(command, %{}) == {:ok, 1})
  end

  test "a trap in _initialize is the invocation's trap; its deadline is the invocation's" do
    trapping = """
    (module (memory (export "memory") 1)
      (func (export "_initialize") unreachable)
      (func (export "__invoke") (param i32) (result i32) i32.const 0))
    """

    assert {:ok, module} = Runtime.compile(trapping)
    assert {:error, {:trap, message}} = Runtime.invoke(module, %{})
    assert message =~ "unreachable"

    spinning = """
    (module (memory (export "memory") 1)
      (func (export "_initialize") (loop br 0))
      (func (export "__invoke") (param i32) (result i32) i32.const 0))
    """

    assert {:ok, module} = Runtime.compile(spinning)
    assert Runtime.invoke(module, %{}, timeout: 100) == {:error, :timeout}
  end

  test "a failing _initialize ends a command as a failing _start would" do
    # writes to stderr, then traps: the trap carries the end of stderr
    trapping = """
    (module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "init failed")
      (func (export "_initialize")
        (i32.store (i32.const 16) (i32.const 0))
        (i32.store (i32.const 20) (i32.const 11))
        (drop (call $w (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 24)))
        unreachable)
      (func (export "_start")))
    """

    assert {:ok, module} = Runtime.compile(trapping)
    assert {:error, {:trap, message}} = Runtime.invoke(module, %{})
    assert message =~ "init failed"
    assert message =~ "unreachable"

    assert {:ok, module} = Runtime.compile(exiting("_start", "", 3))
    assert {:error, {:exec_error, "exited with status 3"}} = Runtime.invoke(module, %{})
    # exit 0 ends the run: nothing printed, no response
    assert {:ok, module} = Runtime.compile(exiting("_start", "", 0))
    assert Runtime.invoke(module, %{}) == {:error, :no_response}
  end

  test "an _initialize that exits ends a FunLess module as __invoke's exit would" do
    for status <- [0, 3] do
      assert {:ok, module} =
               Runtime.compile(
                 exiting("__invoke", "(param i32) (result i32) i32.const 0", status)
               )

      assert Runtime.invoke(module, %{}) == {:error, {:exit, status}}
    end
  end

  # A module whose _initialize calls proc_exit(status), with the entry
  # point `entry` of body `body`.
  defp exiting(entry, body, status) do
    """
    (module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_initialize") (call $exit (i32.const #{status})))
      (func (export "#{entry}") #{body}))
    """
  end

  test "an _initialize of another type is refused at compile time" do
    wrong = """
    (module (memory (export "memory") 1)
      (func (export "_initialize") (param i32))
      (func (export "__invoke") (param i32) (result i32) i32.const 0))
    """

    assert {:error, {:invalid_module, reason}} = Runtime.compile(wrong)
    assert reason =~ "_initialize"
    assert reason =~ "must have type () -> ()"
  end
end
