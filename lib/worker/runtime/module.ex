defmodule Worker.Runtime.Module do
  @moduledoc """
  A compiled function, from `compile/1` (or `load/2`), of one of six
  kinds, told by its exports:

    * `:funless` - a FunLess module, exporting `__invoke`;
    * `:wasi_command` - a WASI core command, exporting `_start`: its
      arguments on stdin, its result on stdout;
    * `:cli_component` - a WASI 0.2 component exporting `wasi:cli/run`:
      stdin and stdout, as a command;
    * `:cli_component_p3` - the same in WASI 0.3 (`wasi:cli/run@0.3`,
      whose `run` is async);
    * `:http_component` - a WASI 0.2 component exporting
      `wasi:http/incoming-handler`: its arguments are the body of a
      `POST /`, its result the body of the response;
    * `:http_component_p3` - the same in WASI 0.3 (`wasi:http/handler@0.3`,
      whose `handle` is async).

  It wraps a native resource: a module compiled and linked once, which any
  number of processes may invoke at the same time. The compiled code stays
  alive as long as some process holds the struct. The NIF returns the
  struct itself (`native/worker_nif/src/module.rs`, over
  `worker_runtime`'s `module.rs`, `compiler.rs` and `artifact.rs`).

  `Worker.Runtime` delegates compiling, serializing and loading here.
  """

  alias Worker.Native

  # {timeout_ms, max_mb} of a compile
  @compile_limits {60_000, 2_048}

  @enforce_keys [:ref, :kind, :wasm_bytes, :native_bytes, :initial_memory]
  defstruct [:ref, :kind, :wasm_bytes, :native_bytes, :initial_memory]

  @typedoc "What kind of function a module is, told by its exports."
  @type kind ::
          :funless
          | :wasi_command
          | :cli_component
          | :cli_component_p3
          | :http_component
          | :http_component_p3

  @typedoc """
  * `kind` - see `t:kind/0`;
  * `wasm_bytes` - size of the Wasm binary;
  * `native_bytes` - size of the compiled code in memory;
  * `initial_memory` - bytes of linear memory an instance starts with.
  """
  @type t :: %__MODULE__{
          ref: reference(),
          kind: kind(),
          wasm_bytes: non_neg_integer(),
          native_bytes: non_neg_integer(),
          initial_memory: non_neg_integer()
        }

  @typedoc """
  Why there is no module:

    * `{:invalid_module, reason}` - the module is refused (see `compile/1`);
    * `{:runtime_unavailable, reason}` - the engine could not start, or has
      no settings yet, or the compiler could not be started;
    * `{:panic, reason}` - a bug in the worker or the compiler; the
      runtime stays usable.
  """
  @type compile_error ::
          {:invalid_module, String.t()}
          | {:runtime_unavailable, String.t()}
          | {:panic, String.t()}

  @doc "`{timeout_ms, max_mb}` of every compile: see `put_compile_limits/1`."
  @spec compile_limits() :: {non_neg_integer(), non_neg_integer()}
  def compile_limits, do: :persistent_term.get({__MODULE__, :compile_limits}, @compile_limits)

  @doc """
  Sets the limits of every later compile in this VM: `:timeout_ms`, after
  which the compiler is killed, and `:max_mb`, its address space.
  """
  @spec put_compile_limits(timeout_ms: non_neg_integer(), max_mb: non_neg_integer()) :: :ok
  def put_compile_limits(limits) do
    {timeout, max_mb} = compile_limits()
    new = {Keyword.get(limits, :timeout_ms, timeout), Keyword.get(limits, :max_mb, max_mb)}

    unless Enum.all?(Tuple.to_list(new), &(is_integer(&1) and &1 >= 0)) do
      raise ArgumentError, "compile limits must be non-negative integers: #{inspect(limits)}"
    end

    if compile_limits() != new, do: :persistent_term.put({__MODULE__, :compile_limits}, new)
    :ok
  end

  @doc """
  Compiles a Wasm module (binary, or WAT text).

  The compile runs in a child process (`priv/native/fl-compile`) under OS
  limits (`put_compile_limits/1`): its address space is at most 2 048 MiB
  (`FL_COMPILE_MAX_MB`), and it is killed after 60 000 ms
  (`FL_COMPILE_TIMEOUT_MS`).
  No scheduler waits for it: the calling process waits in `receive`.

  Returns `{:error, {:invalid_module, reason}}` when the module is not valid
  Wasm, imports something the worker does not provide (or with the wrong
  type), lacks `__invoke: (i32) -> i32` or an exported `memory`, asks for
  more memory than the worker's cap, is larger than `FL_MAX_MODULE_MB`, or
  needs more memory or time to compile than the limits above (the reason
  names the limit).
  `{:error, {:runtime_unavailable, reason}}` means the engine itself could
  not start (or the compiler could not), and `{:error, {:panic, reason}}`
  that the compiler panicked.
  """
  @spec compile(binary()) :: {:ok, t()} | {:error, compile_error()}
  def compile(wasm) when is_binary(wasm) do
    {timeout, max_mb} = compile_limits()
    ref = make_ref()

    # Once started, the native side always answers: it kills the compiler
    # at `timeout`.
    with :ok <- Native.module_compile(wasm, ref, compiler(), timeout, max_mb) do
      receive do
        {^ref, reply} -> reply
      after
        timeout + 60_000 -> {:error, {:runtime_unavailable, "the compiler did not answer"}}
      end
    end
  end

  def compile(_), do: {:error, {:invalid_module, "expected the module as a binary"}}

  defp compiler, do: Path.join(:code.priv_dir(:worker), "native/fl-compile")

  @doc """
  The compiled form of a module (machine code), to keep and `load/2` later
  without compiling again. Only a runtime with the same `fingerprint/0` can
  load it. `{:error, {:serialize, reason}}` if Wasmtime cannot write it.
  """
  @spec serialize(t()) :: {:ok, binary()} | {:error, {:serialize, String.t()}}
  def serialize(%__MODULE__{ref: ref}), do: Native.module_serialize(ref)

  @doc """
  Loads a module from `serialize/1`'s output. `wasm_bytes` is recorded as
  the size of the original binary.

  An artifact holds machine code that runs as it is, so `serialize/1` seals
  it with this node's artifact key (`Worker.Store.use_artifact_key/0`), and
  `load/2` refuses anything else before it reaches Wasmtime: bytes from
  elsewhere, or damaged, are `{:error, {:invalid_module, reason}}`, and so
  is an artifact of another Wasmtime version or configuration.
  """
  @spec load(binary(), non_neg_integer()) :: {:ok, t()} | {:error, compile_error()}
  def load(artifact, wasm_bytes) when is_binary(artifact) and is_integer(wasm_bytes),
    do: Native.module_load(artifact, wasm_bytes)

  @doc """
  The engine's fingerprint: artifacts are only loadable under the same one.
  It cannot change while the VM runs, so it is read from the runtime once
  and kept in `:persistent_term`.
  """
  @spec fingerprint() :: {:ok, String.t()} | {:error, {:runtime_unavailable, String.t()}}
  def fingerprint do
    case :persistent_term.get({__MODULE__, :fingerprint}, nil) do
      nil ->
        with {:ok, text} <- Native.engine_fingerprint() do
          :persistent_term.put({__MODULE__, :fingerprint}, text)
          {:ok, text}
        end

      text ->
        {:ok, text}
    end
  end

  defimpl Inspect do
    import Inspect.Algebra

    def inspect(module, opts) do
      concat([
        "#Worker.Runtime.Module<",
        Atom.to_string(module.kind),
        ", ",
        to_doc(module.wasm_bytes, opts),
        " bytes, ",
        to_doc(div(module.initial_memory, 1024), opts),
        " KiB memory>"
      ])
    end
  end
end
