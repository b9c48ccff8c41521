defmodule Worker.Request do
  @moduledoc """
  Reads the function descriptions the FunLess Core sends: its own structs
  (`%Data.FunctionStruct{name, module, code, hash, metadata}` with
  `metadata` a `%Data.FunctionMetadata{tag, capacity}`) or plain maps with
  the same keys. The Core's modules need not be loaded here: structs are
  maps, and only the keys are read.
  """

  @type t :: %{
          key: Worker.Store.key(),
          code: binary() | nil,
          capacity_mb: non_neg_integer() | nil
        }

  @doc "Validates a function description; `code_required` says whether it must carry code."
  @spec function(term(), boolean()) :: {:ok, t()} | {:error, {:bad_request, String.t()}}
  def function(fun, code_required \\ false)

  def function(%{name: name, module: module, hash: hash} = fun, code_required) do
    code = Map.get(fun, :code)

    cond do
      not is_binary(name) or name == "" -> bad("name must be a non-empty binary")
      not is_binary(module) -> bad("module must be a binary")
      not is_binary(hash) or hash == "" -> bad("hash must be a non-empty binary")
      not (is_nil(code) or is_binary(code)) -> bad("code must be a binary")
      code_required and is_nil(code) -> bad("code is missing")
      true -> {:ok, %{key: {module, name, hash}, code: code, capacity_mb: capacity(fun)}}
    end
  end

  def function(_other, _code_required), do: bad("expected a map with name, module and hash")

  defp capacity(%{metadata: %{capacity: capacity}}) when is_integer(capacity) and capacity > 0,
    do: capacity

  defp capacity(_), do: nil

  defp bad(reason), do: {:error, {:bad_request, reason}}
end
