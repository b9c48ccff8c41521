defmodule Worker.InvocationTest do
  # One Core invocation, as Worker.Handler runs it, in this VM.
  use ExUnit.Case, async: false
  import Bitwise

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Test.Helpers
  alias Worker.{Function, Functions, Invocation}

  defp function(name, code, capacity \\ nil) do
    %Function{
      module: "invocation_test",
      name: Helpers.unique_name(name),
      hash: "h",
      code: code,
      capacity: capacity
    }
  end

  test "without code anywhere: code_not_found, nothing run" do
    assert Invocation.run(function("none", nil), {:json, "{}"}, self()) ==
             {:error, :code_not_found}
  end

  test "with code: compiled, stored and run, with the arguments as JSON text" do
    f = function("hello", wasm!("hello"))

    assert Invocation.run(f, {:json, ~s({"name":"Inv"})}, self()) ==
             {:ok, %{"payload" => "Hello Inv!"}}

    # and after, without the code
    assert Invocation.run(%{f | code: nil}, %{"name" => "Again"}, self()) ==
             {:ok, %{"payload" => "Hello Again!"}}
  end

  test "the Core's capacity, in bytes, bounds memory, never above FL_MAX_CAPACITY_MB" do
    grow = function("grow", wat!("grow"), 1024 * 1024)
    assert Functions.store(grow) == :ok
    # 1 MiB: 16 pages, one of which the module starts with
    assert Invocation.run(grow, 15, self()) == {:ok, 1}
    assert Invocation.run(grow, 16, self()) == {:ok, -1}

    previous = Application.fetch_env!(:worker, :max_capacity_mb)
    Application.put_env(:worker, :max_capacity_mb, 1)
    on_exit(fn -> Application.put_env(:worker, :max_capacity_mb, previous) end)
    big = %{grow | capacity: 64 * 1024 * 1024}
    assert Invocation.run(big, 16, self()) == {:ok, -1}
  end

  test "a capacity below what the module's memory starts with is refused, saying so" do
    # hello's memory starts at 17 pages (1,114,112 bytes); nothing runs
    hello = function("small", wasm!("hello"), 1_048_576)
    assert {:ok, module} = Functions.fetch(hello)
    assert module.initial_memory > 1_048_576

    assert {:error, {:insufficient_capacity, reason}} =
             Invocation.run(hello, %{"name" => "x"}, self())

    assert reason =~ "starts at #{module.initial_memory} bytes"
    assert reason =~ "capacity of 1048576 bytes"
    # and exactly enough runs
    enough = %{hello | capacity: module.initial_memory}
    assert {:ok, %{"payload" => "Hello x!"}} = Invocation.run(enough, %{"name" => "x"}, self())

    # FL_MAX_CAPACITY_MB lowers a capacity under the module's memory: said too
    previous = Application.fetch_env!(:worker, :max_capacity_mb)
    Application.put_env(:worker, :max_capacity_mb, 1)
    on_exit(fn -> Application.put_env(:worker, :max_capacity_mb, previous) end)
    huge = %{hello | capacity: 1 <<< 30}
    assert {:error, {:insufficient_capacity, reason}} = Invocation.run(huge, %{}, self())
    assert reason =~ "1048576 bytes under FL_MAX_CAPACITY_MB"
  end

  test "failures are logged with the function, the invocation and the outcome" do
    previous = Logger.level()
    Logger.configure(level: :info)
    on_exit(fn -> Logger.configure(level: previous) end)
    error = function("error", wasm!("error"))
    trap = function("trap", wat!("trap_unreachable"))

    log =
      capture_log([metadata: [:fl_function, :fl_outcome, :fl_invocation]], fn ->
        assert {:error, {:exec_error, _}} = Invocation.run(error, %{}, self())
        assert {:error, {:trap, _}} = Invocation.run(trap, %{}, self())
      end)

    assert log =~ ~r/\[info\].*invocation failed in the function/
    assert log =~ "fl_function=#{error.name}"
    assert log =~ "fl_outcome=exec_error"
    assert log =~ ~r/\[warning\].*invocation failed: \{:trap/
    assert log =~ "fl_outcome=trap"
    assert log =~ ~r/fl_invocation=\d+/
  end
end
