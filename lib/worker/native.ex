defmodule Worker.Native do
  # The NIF stubs, one per `#[rustler::nif]` in native/worker_nif, for
  # Worker.Runtime (and its Settings and Module), Worker.Gate, Worker.Store
  # and Worker.JSON; see those modules for the contract. Worker.Runtime's
  # tests call a few directly.
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

  def runtime_defaults, do: err()
  def runtime_configure(_settings), do: err()
  def runtime_stats, do: err()
  def module_compile(_wasm, _reply_to, _compiler, _timeout_ms, _max_memory_mb), do: err()
  def module_serialize(_module), do: err()
  def module_load(_artifact, _wasm_bytes), do: err()
  def artifact_key(_path), do: err()
  def engine_fingerprint, do: err()

  def invocation_start(_module, _args, _encoded, _limits), do: err()
  def invocation_start_dirty(_module, _text, _limits), do: err()

  def invocation_check_allow(_entries), do: err()
  def invocation_resume(_invocation), do: err()
  def invocation_resume_dirty(_invocation), do: err()
  def invocation_decode(_invocation), do: err()
  def invocation_cancel(_invocation), do: err()
  def args_encode(_term), do: err()
  def args_encode_dirty(_term), do: err()
  def json_encode(_term), do: err()
  def json_decode(_text), do: err()
  def store_sync_dir(_path), do: err()
  def gate_new(_max, _share), do: err()
  def gate_enter(_gate, _weight, _key, _share), do: err()
  def gate_take(_ticket), do: err()
  def gate_leave(_ticket), do: err()
  def gate_reserve(_gate, _key), do: err()
  def gate_queue(_gate, _waiting, _server), do: err()
  def gate_info(_gate), do: err()
  def gate_held(_gate, _key), do: err()

  defp err, do: :erlang.nif_error(:nif_not_loaded)
end
