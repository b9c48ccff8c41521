defmodule Worker.JSON do
  @moduledoc """
  JSON text to and from Elixir terms, in Rust (there is no JSON library in
  Elixir 1.14's standard library, and hex.pm packages are not used here).

  The conversion is the one `Worker.Runtime.invoke/3` applies to arguments
  and responses: see there for the types on each side. Both run on a dirty
  scheduler, so any size is safe to pass.
  """

  @spec encode(term()) :: {:ok, String.t()} | {:error, String.t()}
  def encode(term), do: Worker.Native.json_encode(term)

  @spec decode(binary()) :: {:ok, term()} | {:error, String.t()}
  def decode(text) when is_binary(text), do: Worker.Native.json_decode(text)
end
