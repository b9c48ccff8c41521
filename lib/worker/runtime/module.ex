defmodule Worker.Runtime.Module do
  @moduledoc """
  A compiled FunLess function, from `Worker.Runtime.compile/1`.

  It wraps a native resource: a module compiled and linked once, which any
  number of processes may invoke at the same time. The compiled code stays
  alive as long as some process holds the struct.
  """

  @enforce_keys [:ref, :wasm_bytes, :initial_memory]
  defstruct [:ref, :wasm_bytes, :initial_memory]

  @type t :: %__MODULE__{
          ref: reference(),
          wasm_bytes: non_neg_integer(),
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
