defmodule Worker.Runtime.ModuleTest do
  # Compiling, serializing and loading (Worker.Runtime.Module).
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

  describe "the struct" do
    test "shows its kind and sizes, not a reference" do
      hello = compile!("hello")
      assert %Runtime.Module{kind: :funless, wasm_bytes: bytes} = hello

      assert inspect(hello) ==
               "#Worker.Runtime.Module<funless, #{bytes} bytes, " <>
                 "#{div(hello.initial_memory, 1024)} KiB memory>"
    end
  end
end

defmodule Worker.Runtime.ModuleLimitsTest do
  # Not async: the compile limits are the VM's.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  alias Worker.Runtime

  describe "compile limits" do
    test "are kept for every later compile, and checked" do
      {timeout, max_mb} = Runtime.Module.compile_limits()
      on_exit(fn -> Runtime.Module.put_compile_limits(timeout_ms: timeout, max_mb: max_mb) end)

      # 0 ms: every compile is over its time
      :ok = Runtime.Module.put_compile_limits(timeout_ms: 0)
      assert Runtime.Module.compile_limits() == {0, max_mb}
      assert {:error, {:invalid_module, reason}} = Runtime.compile(wasm!("hello"))
      assert reason =~ "FL_COMPILE_TIMEOUT_MS"

      assert_raise ArgumentError, fn -> Runtime.Module.put_compile_limits(max_mb: -1) end
      assert Runtime.Module.compile_limits() == {0, max_mb}
    end
  end
end
