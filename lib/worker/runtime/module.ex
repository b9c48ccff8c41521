defmodule Worker.Runtime.Module do
  @moduledoc """
  A compiled FunLess function, from `Worker.Runtime.compile/1`.

  It wraps a native resource: a module compiled and linked once, which any
  number of processes may invoke at the same time. The compiled code stays
  alive as long as some process holds the struct. The NIF returns the
  struct itself (`native/worker_nif/src/module.rs`).
  """

  @enforce_keys [:ref, :wasm_bytes, :native_bytes, :initial_memory]
  defstruct [:ref, :wasm_bytes, :native_bytes, :initial_memory]

  @typedoc """
  * `wasm_bytes` - size of the Wasm binary;
  * `native_bytes` - size of the compiled code in memory;
  * `initial_memory` - bytes of linear memory an instance starts with.
  """
  @type t :: %__MODULE__{
          ref: reference(),
          wasm_bytes: non_neg_integer(),
          native_bytes: non_neg_integer(),
          initial_memory: non_neg_integer()
        }

  defimpl Inspect do
    import Inspect.Algebra

    def inspect(module, opts) do
      concat([
        "#Worker.Runtime.Module<",
        to_doc(module.wasm_bytes, opts),
        " bytes, ",
        to_doc(div(module.initial_memory, 1024), opts),
        " KiB memory>"
      ])
    end
  end
end
