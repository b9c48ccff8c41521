defmodule Functions.ReactorTest do
  # WASI reactors: core modules that export _initialize (as Go and C build
  # modules that export functions), called once per instance before the
  # entry point, __invoke or _start (native/worker_runtime/src/core_host.rs).
  # WAT cases; Go's own reactor is in go_test.exs.
  use ExUnit.Case, async: true

  import Worker.Test.Fixtures
  alias Worker.Runtime

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
