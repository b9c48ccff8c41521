defmodule Worker.Function do
  @moduledoc """
  A function as the FunLess Core describes it, parsed once, where its
  message arrives (`Worker.Request`).

  The Core sends its own structs (`%Data.FunctionStruct{name, module,
  code, hash, metadata}`, `metadata` a `%Data.FunctionMetadata{tag,
  capacity}`) or plain maps with the same keys. The Core's modules need
  not be loaded here: structs are maps, and only the keys are read.

  A function is known by its `key/1`, `{module, name, hash}`: the cache,
  the store and the code handler all use it. Its metrics are by `id/1`,
  `{module, name}`, so that they outlive an update.

  **Capacity is in bytes.** `metadata.capacity` is the memory a function
  needs; the Core's scheduling policies compare it with a worker's
  `available_mem`, which is in bytes (`Core.Domain.Policies`: the default
  policy's filter, and APP's `valid?/4` with `capacity_used`). So it is
  read in bytes here too, and the function runs within that much linear
  memory. The Core's default, -1, and any value below 1 mean no capacity
  was given (`FL_MAX_MEMORY_MB` applies). A capacity under one WebAssembly
  page (64 KiB) cannot run any module, and is refused at once with
  `{:insufficient_capacity, reason}`.
  """

  @enforce_keys [:module, :name, :hash]
  defstruct [:module, :name, :hash, :code, :capacity]

  @typedoc """
  * `code` - the Wasm binary, when the Core sent it;
  * `capacity` - the bytes of memory the Core asks the function to run in
    (`metadata.capacity`), bounded by `FL_MEMORY_CAP_MB` when it runs.
  """
  @type t :: %__MODULE__{
          module: String.t(),
          name: String.t(),
          hash: binary(),
          code: binary() | nil,
          capacity: pos_integer() | nil
        }

  @typedoc "What the cache and the store know a function by."
  @type key :: {module :: String.t(), name :: String.t(), hash :: binary()}

  @typedoc "What the metrics know a function by."
  @type id :: {module :: String.t(), name :: String.t()}

  @max_name 1024
  @page 65_536

  @typedoc "Why a function description is refused."
  @type refusal :: {:bad_request, String.t()} | {:insufficient_capacity, String.t()}

  @doc "Reads a function description; its code is optional."
  @spec parse(term()) :: {:ok, t()} | {:error, refusal()}
  def parse(%{name: name, module: module, hash: hash} = fun) do
    code = Map.get(fun, :code)
    capacity = capacity(fun)

    cond do
      not text?(name) or name == "" ->
        bad("name must be non-empty UTF-8 text of at most #{@max_name} bytes")

      not text?(module) ->
        bad("module must be UTF-8 text of at most #{@max_name} bytes")

      not is_binary(hash) or hash == "" or byte_size(hash) > 256 ->
        bad("hash must be a binary of 1 to 256 bytes")

      not (is_nil(code) or is_binary(code)) ->
        bad("code must be a binary")

      capacity && capacity < @page ->
        Worker.Reply.insufficient_capacity(
          "capacity #{capacity} is in bytes, as the Core's scheduler reads it, " <>
            "and no WebAssembly module runs in less than one 64 KiB page"
        )

      true ->
        {:ok, %__MODULE__{module: module, name: name, hash: hash, code: code, capacity: capacity}}
    end
  end

  def parse(_other), do: bad("expected a map with name, module and hash")

  @doc "Reads a function description that must carry its code."
  @spec parse_with_code(term()) :: {:ok, t()} | {:error, refusal()}
  def parse_with_code(fun) do
    case parse(fun) do
      {:ok, %__MODULE__{code: nil}} -> bad("code is missing")
      parsed -> parsed
    end
  end

  @doc "`{module, name, hash}`."
  @spec key(t()) :: key()
  def key(%__MODULE__{module: module, name: name, hash: hash}), do: {module, name, hash}

  @doc "`{module, name}`."
  @spec id(t() | key()) :: id()
  def id(%__MODULE__{module: module, name: name}), do: {module, name}
  def id({module, name, _hash}), do: {module, name}

  defp text?(value),
    do: is_binary(value) and byte_size(value) <= @max_name and String.valid?(value)

  # Beyond any memory the runtime allows (FL_MEMORY_CAP_MB bounds it) a
  # larger capacity means nothing more, and the runtime takes a u64: a
  # bignum from the Core is that ceiling, not a failed invocation.
  @max_capacity 0xFFFF_FFFF_FFFF_FFFF

  defp capacity(%{metadata: %{capacity: capacity}}) when is_integer(capacity) and capacity > 0,
    do: min(capacity, @max_capacity)

  defp capacity(_), do: nil

  defp bad(reason), do: Worker.Reply.bad_request(reason)
end
