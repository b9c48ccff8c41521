defmodule Worker.Runtime.InvocationTest do
  # Invoking a compiled function in this process (Worker.Runtime.Invocation).
  use ExUnit.Case, async: true

  import Worker.Test.Fixtures
  alias Worker.Runtime

  describe "invoke/3 with the example functions" do
    test "hello greets by name" do
      module = compile!("hello")

      assert Runtime.invoke(module, %{"name" => "FunLess"}) ==
               {:ok, %{"payload" => "Hello FunLess!"}}

      assert Runtime.invoke(module, %{name: "atom key"}) ==
               {:ok, %{"payload" => "Hello atom key!"}}
    end

    test "echo returns what it was given, through JSON both ways" do
      module = compile!("echo")

      args = %{
        "string" => "héllo \"quoted\"\n\t\u0001",
        "int" => -42,
        "big" => 18_446_744_073_709_551_615,
        "float" => 2.5,
        "list" => [1, "two", [3.0], %{}],
        "map" => %{"nested" => %{"deep" => [true, false, nil]}},
        "empty" => ""
      }

      assert Runtime.invoke(module, args) == {:ok, args}
      assert Runtime.invoke(module, []) == {:ok, []}
      assert Runtime.invoke(module, "just a string") == {:ok, "just a string"}
      assert Runtime.invoke(module, nil) == {:ok, nil}
    end

    test "the error function's message comes back as an exec_error" do
      module = compile!("error")

      assert Runtime.invoke(module, %{"message" => "no such user"}) ==
               {:error, {:exec_error, "error while executing function: no such user"}}
    end

    test "a function that returns 1 without a message still gives an exec_error" do
      assert {:error, {:exec_error, message}} =
               Runtime.invoke(compile!({:wat, "error_without_message"}), %{})

      assert message =~ "without an error message"
    end
  end

  describe "arguments" do
    setup do
      %{echo: compile!("echo")}
    end

    test "atoms other than booleans and nil become strings; integer keys become strings", %{
      echo: echo
    } do
      assert Runtime.invoke(echo, %{1 => 2, key: :value, flag: true, none: nil}) ==
               {:ok, %{"key" => "value", "flag" => true, "none" => nil, "1" => 2}}
    end

    test "terms with no JSON form are refused before the guest runs", %{echo: echo} do
      for bad <- [
            {:tuple},
            self(),
            make_ref(),
            fn -> :ok end,
            <<1::1>>,
            <<255, 254>>,
            %{{:tuple, :key} => 1},
            [1 | 2],
            %URI{},
            Integer.pow(2, 64),
            -Integer.pow(2, 63) - 1
          ] do
        assert {:error, {:invalid_args, reason}} = Runtime.invoke(echo, bad), inspect(bad)
        assert is_binary(reason)
      end
    end

    test "nesting deeper than 100 levels is refused, not recursed into", %{echo: echo} do
      nest = fn depth -> Enum.reduce(1..depth, [], fn _, acc -> [acc] end) end
      assert Runtime.invoke(echo, nest.(99)) == {:ok, nest.(99)}
      assert {:error, {:invalid_args, _}} = Runtime.invoke(echo, nest.(100))
      deep = nest.(100_000)
      assert {:error, {:invalid_args, reason}} = Runtime.invoke(echo, deep)
      assert reason =~ "nesting"
    end

    test "input over the 4 MiB cap is refused", %{echo: echo} do
      assert {:error, {:invalid_args, reason}} =
               Runtime.invoke(echo, :binary.copy("x", 5 * 1024 * 1024))

      assert reason =~ "larger than"
    end
  end

  describe "responses" do
    test "a response that is not JSON is an error, not a crash" do
      assert {:error, {:invalid_response, reason}} =
               Runtime.invoke(compile!({:wat, "not_json"}), %{})

      assert reason =~ "expected"
    end

    test "a large response is decoded whole" do
      echo = compile!("echo")
      big = for i <- 1..20_000, into: %{}, do: {"key#{i}", [i, "value #{i}"]}
      assert {:ok, ^big} = Runtime.invoke(echo, big)
    end

    test "returning 0 without a response is :no_response" do
      assert Runtime.invoke(compile!({:wat, "no_response"}), %{}) == {:error, :no_response}
    end

    test "returning something other than 0 or 1 is :bad_return" do
      assert Runtime.invoke(compile!({:wat, "bad_return"}), %{}) == {:error, {:bad_return, 7}}
    end
  end

  describe "traps and bad pointers" do
    test "unreachable is a trap" do
      assert {:error, {:trap, message}} =
               Runtime.invoke(compile!({:wat, "trap_unreachable"}), %{})

      assert message =~ "unreachable"
    end

    test "unbounded recursion is a trap and the node lives" do
      assert {:error, {:trap, message}} = Runtime.invoke(compile!({:wat, "recursion"}), %{})
      assert message =~ "call stack exhausted"
    end

    test "input written past the end of memory is a trap" do
      module = compile!({:wat, "input_out_of_bounds"})
      assert {:error, {:trap, message}} = Runtime.invoke(module, %{"too" => "long"})
      assert message =~ "__get_input_data"
      assert message =~ "outside guest memory"
    end

    test "a response region past the end of memory is a trap" do
      assert {:error, {:trap, message}} =
               Runtime.invoke(compile!({:wat, "response_out_of_bounds"}), %{})

      assert message =~ "__insert_response"
    end

    test "a response over the size cap is a trap, before any copy" do
      assert {:error, {:trap, message}} =
               Runtime.invoke(compile!({:wat, "oversized_response"}), %{})

      assert message =~ "over the limit"
    end

    test "a console_log region outside memory is a trap" do
      assert {:error, {:trap, message}} =
               Runtime.invoke(compile!({:wat, "console_out_of_bounds"}), %{})

      assert message =~ "__console_log"
    end

    test "the runtime stays usable after every kind of failure" do
      hello = compile!("hello")

      for name <- ~w(trap_unreachable recursion response_out_of_bounds not_json) do
        assert {:error, _} = Runtime.invoke(compile!({:wat, name}), %{})
        assert {:ok, %{"payload" => "Hello again!"}} = Runtime.invoke(hello, %{name: "again"})
      end
    end
  end

  describe "WASI" do
    test "proc_exit ends the invocation with its code" do
      assert Runtime.invoke(compile!({:wat, "proc_exit"}), %{}) == {:error, {:exit, 3}}
    end

    test "the guest sees no environment variables" do
      System.put_env("FL_TEST_SECRET", "hunter2")
      assert Runtime.invoke(compile!({:wat, "wasi_environ"}), %{}) == {:ok, 0}
    end

    test "the guest has no filesystem" do
      # errno 8 is EBADF: fd 3 is not a preopened directory
      assert Runtime.invoke(compile!({:wat, "wasi_open"}), %{}) == {:ok, 8}
    end

    test "random_get gives up to 1 MiB a call; asking more traps" do
      random = compile!({:wat, "random_get"})
      assert Runtime.invoke(random, 16) == {:ok, 0}
      assert Runtime.invoke(random, 1_048_576) == {:ok, 0}
      assert {:error, {:trap, message}} = Runtime.invoke(random, 1_048_577)
      assert message =~ "exceeds limit"
    end
  end

  describe "options" do
    test "are checked before anything runs" do
      echo = compile!("echo")
      assert_raise ArgumentError, fn -> Runtime.invoke(echo, %{}, timeout: -1) end
      assert_raise ArgumentError, fn -> Runtime.invoke(echo, %{}, timeout: 2 ** 40) end
      assert_raise ArgumentError, fn -> Runtime.invoke(echo, %{}, max_memory: "lots") end
      assert_raise ArgumentError, fn -> Runtime.invoke(echo, %{}, metadata: :nope) end
    end
  end

  describe "limits" do
    test "a spinning guest is stopped at its timeout" do
      started = System.monotonic_time(:millisecond)
      assert Runtime.invoke(compile!({:wat, "spin"}), %{}, timeout: 100) == {:error, :timeout}
      elapsed = System.monotonic_time(:millisecond) - started
      assert elapsed >= 100
      assert elapsed < 1_000
    end

    test "the deadline holds while the guest sleeps in WASI" do
      started = System.monotonic_time(:millisecond)

      assert Runtime.invoke(compile!({:wat, "wasi_sleep"}), %{}, timeout: 200) ==
               {:error, :timeout}

      assert System.monotonic_time(:millisecond) - started < 1_000
    end

    test "a guest whose slices run long still completes (on dirty schedulers)" do
      assert Runtime.invoke(compile!({:wat, "bulk_fill"}), %{}, max_memory: 64 * 1024 * 1024) ==
               {:ok, 1}
    end

    test "memory.grow past :max_memory fails inside the guest" do
      grow = compile!({:wat, "grow"})
      # 1 page at start; 1 MiB allows 16 pages in all
      assert Runtime.invoke(grow, 15, max_memory: 1024 * 1024) == {:ok, 1}
      assert Runtime.invoke(grow, 16, max_memory: 1024 * 1024) == {:ok, -1}
    end

    test "a module whose memory does not fit :max_memory does not instantiate" do
      hello = compile!("hello")
      assert {:error, {:instantiate, reason}} = Runtime.invoke(hello, %{}, max_memory: 65_536)
      assert reason =~ "memory"
    end
  end
end

defmodule Worker.Runtime.InvocationDefaultsTest do
  # Not async: the defaults are the VM's.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  alias Worker.Runtime

  describe "defaults" do
    test "are the runtime's own until put, and checked as options are" do
      defaults = Runtime.Invocation.defaults()
      assert Keyword.keys(defaults) == [:timeout, :max_memory, :http_allow, :log_lines_per_s]
      on_exit(fn -> Runtime.Invocation.put_defaults(defaults) end)

      :ok = Runtime.Invocation.put_defaults(timeout: 50)
      assert Runtime.Invocation.default(:timeout) == 50
      assert Runtime.invoke(compile!({:wat, "spin"}), %{}) == {:error, :timeout}

      assert_raise ArgumentError, fn -> Runtime.Invocation.put_defaults(timeout: -1) end
      assert_raise ArgumentError, fn -> Runtime.Invocation.put_defaults(http_allow: ["a:b"]) end
      assert_raise ArgumentError, fn -> Runtime.Invocation.put_defaults(colour: :blue) end
      assert Runtime.Invocation.default(:timeout) == 50
    end
  end
end
