defmodule Worker.Loader do
  @moduledoc """
  Makes a compiled module out of what the worker has: the artifact stored
  for the code if there is one (no compile), else the code, compiled, with
  its artifact written for next time.

  `Worker.Functions` runs it, in a process of its own per load, for the
  functions its cache does not hold.
  """

  alias Worker.{Function, Runtime, Store}

  require Logger

  @typedoc """
  A loaded function: its module, the SHA-256 of its code (what the cache
  compares code by), and how it was made: from an artifact, or compiled
  (with the compile's duration, in native time units).
  """
  @type loaded :: %{
          module: Runtime.Module.t(),
          code_hash: binary(),
          source: :artifact | {:compiled, integer()}
        }

  @doc "The SHA-256 of a function's code."
  @spec code_hash(binary()) :: binary()
  def code_hash(code), do: :crypto.hash(:sha256, code)

  @doc """
  Loads a stored function from disk; `{:error, :code_not_found}` when its
  code is not stored.
  """
  @spec load(Function.key()) :: {:ok, loaded()} | {:error, term()}
  def load(key) do
    case Store.get_code(key) do
      {:ok, code} -> load_code(code, code_hash(code))
      :error -> {:error, :code_not_found}
    end
  end

  @doc """
  Loads a function from the code the Core sent (`code_hash` is its
  `code_hash/1`). The code is written to disk only once it compiled (so
  that invalid code is never stored), unless this very code is stored
  already.
  """
  @spec load(Function.key(), binary(), binary()) :: {:ok, loaded()} | {:error, term()}
  def load(key, code, code_hash) do
    with {:ok, loaded} <- load_code(code, code_hash),
         :ok <- if(Store.get_code(key) == {:ok, code}, do: :ok, else: Store.put_code(key, code)) do
      {:ok, loaded}
    end
  end

  defp load_code(code, code_hash) do
    case load_artifact(code) do
      {:ok, module} ->
        {:ok, %{module: module, code_hash: code_hash, source: :artifact}}

      :error ->
        started = System.monotonic_time()

        with {:ok, module} <- Runtime.compile(code) do
          duration = System.monotonic_time() - started
          save_artifact(code, module)
          {:ok, %{module: module, code_hash: code_hash, source: {:compiled, duration}}}
        end
    end
  end

  defp load_artifact(code) do
    with {:ok, artifact} <- Store.get_artifact(code),
         {:ok, module} <- Runtime.load(artifact, byte_size(code)) do
      {:ok, module}
    else
      {:error, reason} ->
        Logger.warning("Worker.Loader: stored artifact refused (#{inspect(reason)}); recompiling")
        Store.delete_artifact(code)
        :error

      :error ->
        :error
    end
  end

  defp save_artifact(code, module) do
    with {:ok, artifact} <- Runtime.serialize(module),
         :ok <- Store.put_artifact(code, artifact) do
      :ok
    else
      error -> Logger.warning("Worker.Loader: cannot save artifact: #{inspect(error)}")
    end
  end
end
