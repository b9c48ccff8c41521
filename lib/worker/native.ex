defmodule Worker.Native do
  # The NIF stubs, one per `#[rustler::nif]` in native/worker_nif. Nothing
  # outside Worker.Runtime calls these; see that module for the contract.
  @moduledoc false

  @on_load :load_nif

  @doc false
  def load_nif do
    path = :filename.join(:code.priv_dir(:worker), ~c"native/worker_nif")

    case :erlang.load_nif(path, 0) do
      :ok ->
        :ok

      {:error, {reason, text}} ->
        require Logger
        Logger.error("Worker.Native: cannot load #{path}.so: #{reason} #{text}")
        {:error, reason}
    end
  end

  def module_compile(_wasm), do: err()
  def module_serialize(_module), do: err()
  def module_load(_artifact, _wasm_bytes), do: err()
  def engine_fingerprint, do: err()
  def invocation_start(_module, _args, _timeout_ms, _max_memory, _http_allow), do: err()
  def invocation_resume(_invocation), do: err()
  def invocation_resume_dirty(_invocation), do: err()
  def invocation_decode(_invocation), do: err()
  def invocation_cancel(_invocation), do: err()
  def runtime_stats, do: err()
  def json_encode(_term), do: err()
  def json_decode(_text), do: err()
  def store_sync_dir(_path), do: err()

  defp err, do: :erlang.nif_error(:nif_not_loaded)
end
