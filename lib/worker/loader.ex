defmodule Worker.Loader do
  @moduledoc """
  Makes a compiled module out of what the worker has: the artifact stored
  for the code if there is one (no compile), else the code, compiled, with
  its artifact written for next time.

  `Worker.Cache` runs it, in a process of its own per load, for the
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

  @doc """
  Loads a stored function from disk; `{:error, :code_not_found}` when its
  code is not stored.
  """
  @spec load(Function.key()) :: {:ok, loaded()} | {:error, term()}
  def load(key) do
    case Store.get_code(key) do
      {:ok, code} -> load_code(code, Store.code_hash(code))
      :error -> {:error, :code_not_found}
    end
  end

  @doc """
  Loads a function from the code the Core sent (`code_hash` is its
  `Worker.Store.code_hash/1`). The code is written to disk only once it
  compiled (so that invalid code is never stored), unless this very code
  is stored already.
  """
  @spec load(Function.key(), binary(), binary()) :: {:ok, loaded()} | {:error, term()}
  def load(key, code, code_hash) do
    with {:ok, loaded} <- load_code(code, code_hash),
         :ok <- Store.keep_code(key, code) do
      {:ok, loaded}
    end
  end

  defp load_code(code, code_hash) do
    case load_artifact(code, code_hash) do
      {:ok, module} ->
        {:ok, %{module: module, code_hash: code_hash, source: :artifact}}

      :error ->
        started = System.monotonic_time()

        with {:ok, module} <- Runtime.Module.compile(code) do
          duration = System.monotonic_time() - started
          save_artifact(code_hash, module)
          {:ok, %{module: module, code_hash: code_hash, source: {:compiled, duration}}}
        end
    end
  end

  defp load_artifact(code, code_hash) do
    with {:ok, artifact} <- Store.get_artifact(code_hash),
         {:ok, module} <- Runtime.Module.load(artifact, byte_size(code)) do
      {:ok, module}
    else
      {:error, reason} ->
        Logger.warning("Worker.Loader: stored artifact refused (#{inspect(reason)}); recompiling")
        Store.delete_artifact(code_hash)
        :error

      :error ->
        :error
    end
  end

  defp save_artifact(code_hash, module) do
    with {:ok, artifact} <- Runtime.Module.serialize(module),
         :ok <- Store.put_artifact(code_hash, artifact) do
      :ok
    else
      error -> Logger.warning("Worker.Loader: cannot save artifact: #{inspect(error)}")
    end
  end
end
