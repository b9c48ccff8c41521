defmodule Worker.InvokeTest do
  # One Core invocation, as Worker.Job runs it, in this VM.
  use ExUnit.Case, async: false
  import Bitwise

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Test.Helpers
  alias Worker.{Cache, Function, Invoke}

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
    assert Invoke.run(function("none", nil), {:json, "{}"}, self()) ==
             {:error, :code_not_found}
  end

  test "with code: compiled, stored and run, with the arguments as JSON text" do
    f = function("hello", wasm!("hello"))

    assert Invoke.run(f, {:json, ~s({"name":"Inv"})}, self()) ==
             {:ok, %{"payload" => "Hello Inv!"}}

    # and after, without the code
    assert Invoke.run(%{f | code: nil}, %{"name" => "Again"}, self()) ==
             {:ok, %{"payload" => "Hello Again!"}}
  end

  test "the Core's capacity, in bytes, bounds memory, never above FL_MEMORY_CAP_MB" do
    grow = function("grow", wat!("grow"), 1024 * 1024)
    assert Cache.store(grow) == :ok
    # 1 MiB: 16 pages, one of which the module starts with
    assert Invoke.run(grow, 15, self()) == {:ok, 1}
    assert Invoke.run(grow, 16, self()) == {:ok, -1}

    # 1 GiB: as much as the runtime's cap, 512 MiB, no more
    cap_pages = div(Application.fetch_env!(:worker, :memory_cap_bytes), 65_536)
    big = %{grow | capacity: 1 <<< 30}
    assert Invoke.run(big, cap_pages, self()) == {:ok, -1}
    assert Invoke.run(big, cap_pages - 1, self()) == {:ok, 1}

    # the largest capacity a request can carry (Function.parse bounds a
    # bignum to it) is the same ceiling, not an internal error
    huge = %{grow | capacity: 0xFFFF_FFFF_FFFF_FFFF}
    assert Invoke.run(huge, cap_pages, self()) == {:ok, -1}
    assert Invoke.run(huge, cap_pages - 1, self()) == {:ok, 1}
  end

  test "a capacity below what the module's memory starts with is refused, saying so" do
    # hello's memory starts at 17 pages (1,114,112 bytes); nothing runs
    hello = function("small", wasm!("hello"), 1_048_576)
    assert {:ok, module} = Cache.fetch(hello)
    assert module.initial_memory > 1_048_576

    assert {:error, {:insufficient_capacity, reason}} =
             Invoke.run(hello, %{"name" => "x"}, self())

    assert reason =~ "starts at #{module.initial_memory} bytes"
    assert reason =~ "capacity of 1048576 bytes"
    # and exactly enough runs
    enough = %{hello | capacity: module.initial_memory}
    assert {:ok, %{"payload" => "Hello x!"}} = Invoke.run(enough, %{"name" => "x"}, self())
  end

  test "failures are logged with the function, the invocation and the outcome" do
    previous = Logger.level()
    Logger.configure(level: :info)
    on_exit(fn -> Logger.configure(level: previous) end)
    error = function("error", wasm!("error"))
    trap = function("trap", wat!("trap_unreachable"))

    log =
      capture_log([metadata: [:fl_function, :fl_outcome, :fl_invocation]], fn ->
        assert {:error, {:exec_error, _}} = Invoke.run(error, %{}, self())
        assert {:error, {:trap, _}} = Invoke.run(trap, %{}, self())
      end)

    assert log =~ ~r/\[info\].*invocation failed in the function/
    assert log =~ "fl_function=#{error.name}"
    assert log =~ "fl_outcome=exec_error"
    assert log =~ ~r/\[warning\].*invocation failed: \{:trap/
    assert log =~ "fl_outcome=trap"
    assert log =~ ~r/fl_invocation=\d+/
  end
end
