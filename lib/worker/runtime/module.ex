defmodule Worker.Runtime.Module do
  @moduledoc """
  A compiled function, from `Worker.Runtime.compile/1`, of one of four
  kinds, told by its exports:

    * `:funless` - a FunLess module, exporting `__invoke`;
    * `:wasi_command` - a WASI core command, exporting `_start`: its
      arguments on stdin, its result on stdout;
    * `:cli_component` - a WASI 0.2 component exporting `wasi:cli/run`:
      stdin and stdout, as a command;
    * `:http_component` - a WASI 0.2 component exporting
      `wasi:http/incoming-handler`: its arguments are the body of a
      `POST /`, its result the body of the response.

  It wraps a native resource: a module compiled and linked once, which any
  number of processes may invoke at the same time. The compiled code stays
  alive as long as some process holds the struct. The NIF returns the
  struct itself (`native/worker_nif/src/module.rs`).
  """

  @enforce_keys [:ref, :kind, :wasm_bytes, :native_bytes, :initial_memory]
  defstruct [:ref, :kind, :wasm_bytes, :native_bytes, :initial_memory]

  @typedoc "What kind of function a module is, told by its exports."
  @type kind :: :funless | :wasi_command | :cli_component | :http_component

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
