defmodule Worker.Request do
  @moduledoc """
  Reads the function descriptions the FunLess Core sends: its own structs
  (`%Data.FunctionStruct{name, module, code, hash, metadata}` with
  `metadata` a `%Data.FunctionMetadata{tag, capacity}`) or plain maps with
  the same keys. The Core's modules need not be loaded here: structs are
  maps, and only the keys are read.
  """

  @max_name 1024

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
      not text?(name) or name == "" ->
        bad("name must be non-empty UTF-8 text of at most #{@max_name} bytes")

      not text?(module) ->
        bad("module must be UTF-8 text of at most #{@max_name} bytes")

      not is_binary(hash) or hash == "" or byte_size(hash) > 256 ->
        bad("hash must be a binary of 1 to 256 bytes")

      not (is_nil(code) or is_binary(code)) ->
        bad("code must be a binary")

      code_required and is_nil(code) ->
        bad("code is missing")

      true ->
        {:ok, %{key: {module, name, hash}, code: code, capacity_mb: capacity(fun)}}
    end
  end

  def function(_other, _code_required), do: bad("expected a map with name, module and hash")

  defp text?(value),
    do: is_binary(value) and byte_size(value) <= @max_name and String.valid?(value)

  defp capacity(%{metadata: %{capacity: capacity}}) when is_integer(capacity) and capacity > 0,
    do: capacity

  defp capacity(_), do: nil

  defp bad(reason), do: {:error, {:bad_request, reason}}
end
