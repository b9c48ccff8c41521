defmodule Worker.RuntimeTest do
  use ExUnit.Case, async: true

  import Worker.Test.Fixtures
  alias Worker.Runtime

  describe "compile/1" do
    test "compiles a function built with the fl-wasm-rs ABI for wasm32-wasip1" do
      assert {:ok, %Runtime.Module{} = module} = Runtime.compile(wasm!("hello"))
      assert module.wasm_bytes == byte_size(wasm!("hello"))
      assert module.initial_memory > 0
      assert inspect(module) =~ ~r/^#Worker.Runtime.Module<funless, \d+ bytes, \d+ KiB memory>$/
    end

    test "refuses bytes that are not a module" do
      assert {:error, {:invalid_module, reason}} = Runtime.compile("garbage")
      assert reason =~ "not a WebAssembly module"
      assert {:error, {:invalid_module, _}} = Runtime.compile(<<0, "asm", 1, 0, 0, 0, 255>>)
      assert {:error, {:invalid_module, _}} = Runtime.compile(<<>>)
      assert {:error, {:invalid_module, _}} = Runtime.compile(:not_a_binary)
    end

    test "refuses a module without __invoke" do
      assert {:error, {:invalid_module, reason}} = Runtime.compile(wat!("no_invoke"))
      assert reason =~ "does not export `__invoke`"
    end

    test "refuses __invoke with the wrong signature" do
      assert {:error, {:invalid_module, reason}} = Runtime.compile(wat!("bad_invoke_signature"))
      assert reason =~ "must have type (i32) -> i32"
    end

    test "refuses a module without an exported memory" do
      assert {:error, {:invalid_module, reason}} = Runtime.compile(wat!("no_memory"))
      assert reason =~ "does not export a memory named `memory`"
    end

    test "refuses unknown imports at compile time, naming them" do
      assert {:error, {:invalid_module, reason}} = Runtime.compile(wat!("unknown_import"))
      assert reason =~ "env::launch_missiles"
    end

    test "GC types are refused when compiled: a call through a subtype would abort the VM" do
      # GHSA-rc4p-x33f-vpr2: with the GC proposal on and Wasmtime built
      # without GC, Wasmtime 48.0.8 aborts the process on this module's call
      # (see SECURITY.md); it must never get as far as an instance
      assert {:error, {:invalid_module, reason}} = Runtime.compile(wat!("gc_subtype_call"))
      assert reason =~ "gc"
    end

    test "64-bit memories are refused when compiled: their bulk operations would bypass the " <>
           "bulk rewrite" do
      memory64 = """
      (module (memory (export "memory") i64 1)
        (func (export "__invoke") (param i32) (result i32)
          (memory.fill (i64.const 0) (i32.const 0) (i64.const 65536))
          (i32.const 0)))
      """

      assert {:error, {:invalid_module, reason}} = Runtime.compile(memory64)
      assert reason =~ "memory64"
    end

    test "names the module chose are escaped in a refusal, once: no forged log line" do
      # an import whose name carries a newline, a terminal escape and a
      # backslash
      forged = ~S"""
      (module
        (import "env" "x\n[error] forged\1b[31m\\" (func))
        (memory (export "memory") 1)
        (func (export "__invoke") (param i32) (result i32) (i32.const 0)))
      """

      assert {:error, {:invalid_module, reason}} = Runtime.compile(forged)
      refute reason =~ "\n"
      refute reason =~ "\e"
      assert reason =~ ~S(x\n[error] forged\x1b[31m\\)

      # and exports, listed when there is no entry point
      exports = ~S"""
      (module (memory (export "memory") 1) (func (export "line\nbreak")))
      """

      assert {:error, {:invalid_module, reason}} = Runtime.compile(exports)
      refute reason =~ "\n"
      assert reason =~ ~S(`line\nbreak`)
    end

    test "refuses an fl_imps import of the wrong type" do
      assert {:error, {:invalid_module, reason}} = Runtime.compile(wat!("bad_import_signature"))
      assert reason =~ "fl_imps::__console_log"
    end

    test "refuses a module whose initial memory is over the cap" do
      assert {:error, {:invalid_module, reason}} = Runtime.compile(wat!("huge_initial_memory"))
      assert reason =~ "minimum byte size of 2147483648"
    end

    test "a module over the size cap (FL_MAX_MODULE_MB, 64 MiB) is refused before parsing" do
      assert {:error, {:invalid_module, reason}} =
               Runtime.compile(:binary.copy(<<0>>, 65 * 1024 * 1024))

      assert reason =~ "over the limit of 67108864 bytes"
    end

    test "a hostile module cannot exhaust the compiling thread's stack" do
      # 100,000 nested blocks: deep recursion for a naive validator or compiler
      n = 100_000
      body = String.duplicate("(block ", n) <> String.duplicate(")", n)

      wat =
        ~s|(module (memory (export "memory") 1) (func (export "__invoke") (param i32) (result i32) #{body} (i32.const 0)))|

      assert {:ok, module} = Runtime.compile(wat)
      assert Runtime.invoke(module, %{}) == {:error, :no_response}
    end

    test "a module can be shared: used from a process other than its compiler" do
      module = Task.async(fn -> compile!("hello") end) |> Task.await()
      assert {:ok, %{"payload" => "Hello shared!"}} = Runtime.invoke(module, %{name: "shared"})
    end
  end

  describe "artifacts" do
    test "the fingerprint is read once and is the same every time" do
      assert {:ok, fingerprint} = Runtime.fingerprint()
      assert fingerprint =~ ~r/^[0-9a-f]{16}$/
      assert Runtime.fingerprint() == {:ok, fingerprint}
      assert :persistent_term.get({Runtime.Module, :fingerprint}) == fingerprint
    end

    @tag :tmp_dir
    test "without settings the runtime is unavailable, and says so; the store copes",
         %{tmp_dir: dir} do
      # a VM of its own: the runtime of this one is configured
      script = """
      {:error, {:runtime_unavailable, _}} = Worker.Runtime.fingerprint()
      {:error, {:runtime_unavailable, _}} = Worker.Runtime.compile("(module)")
      Application.put_env(:worker, :data_dir, #{inspect(dir)})
      :error = Worker.Store.get_artifact(Worker.Store.code_hash("code"))
      {:error, {:runtime_unavailable, _}} =
        Worker.Store.put_artifact(Worker.Store.code_hash("code"), "artifact")
      :ok = Worker.Store.prune_artifacts()
      :ok = Worker.Runtime.configure(Worker.Runtime.default_settings())
      {:ok, _} = Worker.Runtime.fingerprint()
      IO.puts("checked")
      """

      ebin = Path.join(:code.lib_dir(:worker), "ebin")
      {output, status} = System.cmd("elixir", ["-pa", ebin, "-e", script], stderr_to_stdout: true)
      assert status == 0, output
      assert output =~ "checked"
    end

    test "a serialized module loads back as a module struct; garbage does not" do
      hello = compile!("hello")
      assert {:ok, artifact} = Runtime.serialize(hello)
      assert {:ok, %Runtime.Module{} = loaded} = Runtime.load(artifact, hello.wasm_bytes)

      assert {loaded.wasm_bytes, loaded.initial_memory} ==
               {hello.wasm_bytes, hello.initial_memory}

      assert {:ok, %{"payload" => _}} = Runtime.invoke(loaded, %{"name" => "again"})
      assert {:error, {:invalid_module, _}} = Runtime.load("not an artifact", 10)
    end

    test "load/2 runs nothing it did not seal: Wasmtime's own bytes, a flipped byte, a " <>
           "forged seal" do
      hello = compile!("hello")

      {:ok, <<"FLA1", mac::binary-size(32), payload::binary>> = artifact} =
        Runtime.serialize(hello)

      flip = fn bytes, at ->
        <<head::binary-size(at), byte, rest::binary>> = bytes
        <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>
      end

      refused = [
        # what Wasmtime wrote, unsealed: machine code from anyone
        payload,
        flip.(artifact, byte_size(artifact) - 100),
        flip.(artifact, 10),
        <<"FLA1", :crypto.mac(:hmac, :sha256, "a guess", payload)::binary, payload::binary>>,
        binary_part(artifact, 0, 30)
      ]

      for bytes <- refused do
        assert {:error, {:invalid_module, reason}} = Runtime.load(bytes, hello.wasm_bytes)
        assert reason =~ "not sealed with this node's artifact key"
      end

      assert {:ok, _} = Runtime.load(<<"FLA1", mac::binary, payload::binary>>, 1)
    end
  end

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

  describe "invoke_with_stats/3" do
    test "returns the result with what the invocation did besides" do
      assert {{:ok, _}, %Runtime.Stats{} = stats} =
               Runtime.invoke_with_stats(compile!("hello"), %{"name" => "x"})

      assert stats == %Runtime.Stats{}
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
