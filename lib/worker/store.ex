defmodule Worker.Store do
  @moduledoc """
  What the worker keeps on disk, under its data directory (`FL_DATA_DIR`):

    * `functions/` - the code of every function it was given, one file per
      `{module, name, hash}`;
    * `artifacts/FINGERPRINT/` - compiled modules (`Worker.Runtime.serialize/1`)
      keyed by the SHA-256 of their code, under the engine fingerprint that
      can load them;
    * `artifact_key` - the key artifacts are sealed with (`use_artifact_key/0`);
    * `node_info` - the node's long name and tag.

  Every file is written atomically (temporary file, fsync, rename, then an
  fsync of the directory, so that a power loss cannot undo the rename) and
  is checked on every read: a torn, corrupt or foreign file reads as
  missing and is deleted, never used. Code and terms carry a SHA-256 of
  their contents; an artifact carries its seal, which the runtime checks
  when it loads it (an artifact that fails is deleted by `Worker.Loader`).
  """

  @magic "FLW1"

  @type key :: Worker.Function.key()

  @doc "The data directory."
  @spec dir() :: Path.t()
  def dir, do: Application.fetch_env!(:worker, :data_dir)

  @doc "Writes a function's code."
  @spec put_code(key(), binary()) :: :ok | {:error, term()}
  def put_code(key, code), do: write(code_path(key), :erlang.term_to_binary({key, code}))

  @doc "Reads a function's code, or `:error` if it is not stored (or unreadable)."
  @spec get_code(key()) :: {:ok, binary()} | :error
  def get_code(key) do
    with {:ok, payload} <- read(code_path(key)),
         {^key, code} when is_binary(code) <- safe_decode(payload) do
      {:ok, code}
    else
      _ -> :error
    end
  end

  @doc "Deletes a function's code; deleting what is not there is fine."
  @spec delete_code(key()) :: :ok
  def delete_code(key) do
    _ = File.rm(code_path(key))
    :ok
  end

  @doc """
  Writes a function's code, unless this very code is stored under its key
  already (then nothing is written).
  """
  @spec keep_code(key(), binary()) :: :ok | {:error, term()}
  def keep_code(key, code),
    do: if(get_code(key) == {:ok, code}, do: :ok, else: put_code(key, code))

  @doc """
  The SHA-256 of a function's code: what artifacts are kept by, and what
  `Worker.Cache` compares code by.
  """
  @spec code_hash(binary()) :: binary()
  def code_hash(code), do: :crypto.hash(:sha256, code)

  @doc """
  Writes the compiled artifact of the code whose `code_hash/1` is
  `code_hash`, as it is: the runtime has sealed it
  (`Worker.Runtime.serialize/1`), so it needs no checksum of its own.
  """
  @spec put_artifact(binary(), binary()) :: :ok | {:error, term()}
  def put_artifact(code_hash, artifact) do
    with {:ok, path} <- artifact_path(code_hash), do: write_file(path, artifact)
  end

  @doc """
  Reads the artifact of the code whose hash is `code_hash`, if one is
  stored, as it was written: `Worker.Runtime.load/2` checks its seal.
  """
  @spec get_artifact(binary()) :: {:ok, binary()} | :error
  def get_artifact(code_hash) do
    with {:ok, path} <- artifact_path(code_hash), {:ok, artifact} <- File.read(path) do
      {:ok, artifact}
    else
      _ -> :error
    end
  end

  @doc """
  Seals artifacts with the key in the data directory (`artifact_key`,
  made on first use, readable by this user only), so that those written
  before a restart load after it. Until this is called, the runtime seals
  them with a key of its own that ends with the VM.
  """
  @spec use_artifact_key() :: :ok | {:error, term()}
  def use_artifact_key, do: Worker.Native.artifact_key(Path.join(dir(), "artifact_key"))

  @doc "Deletes the artifact of the code whose hash is `code_hash`."
  @spec delete_artifact(binary()) :: :ok
  def delete_artifact(code_hash) do
    with {:ok, path} <- artifact_path(code_hash), do: File.rm(path)
    :ok
  end

  @doc """
  Deletes artifacts that no stored function's code refers to, and those of
  other engine fingerprints (which this runtime cannot load).
  """
  @spec prune_artifacts() :: :ok
  def prune_artifacts do
    case Worker.Runtime.fingerprint() do
      {:ok, current} -> prune_artifacts(current)
      # no runtime: nothing is loadable, and nothing is known to be foreign
      {:error, _} -> :ok
    end
  end

  defp prune_artifacts(current) do
    root = Path.join(dir(), "artifacts")

    for other <- ls(root), other != current, do: File.rm_rf(Path.join(root, other))

    referenced =
      for file <- ls(Path.join(dir(), "functions")),
          {:ok, payload} <- [read(Path.join([dir(), "functions", file]))],
          {_key, code} when is_binary(code) <- [safe_decode(payload)],
          into: MapSet.new(),
          do: hex(code_hash(code))

    for artifact <- ls(Path.join(root, current)), artifact not in referenced do
      File.rm(Path.join([root, current, artifact]))
    end

    :ok
  end

  @doc """
  Removes the temporary files that writes interrupted by a crash (or a
  `kill -9`) left behind. Run at start, before anything writes.
  """
  @spec remove_temporary() :: :ok
  def remove_temporary do
    artifacts = Path.join(dir(), "artifacts")

    dirs = [
      dir(),
      Path.join(dir(), "functions") | Enum.map(ls(artifacts), &Path.join(artifacts, &1))
    ]

    for dir <- dirs,
        {:ok, names} <- [File.ls(dir)],
        name <- names,
        String.contains?(name, ".tmp.") do
      File.rm(Path.join(dir, name))
    end

    :ok
  end

  defp ls(path) do
    case File.ls(path) do
      {:ok, names} -> Enum.reject(names, &String.contains?(&1, ".tmp."))
      {:error, _} -> []
    end
  end

  @doc "Writes a term under `name` in the data directory."
  @spec put_term(String.t(), term()) :: :ok | {:error, term()}
  def put_term(name, term), do: write(Path.join(dir(), name), :erlang.term_to_binary(term))

  @doc "Reads a term written by `put_term/2`."
  @spec get_term(String.t()) :: {:ok, term()} | :error
  def get_term(name) do
    with {:ok, payload} <- read(Path.join(dir(), name)),
         {:ok, term} <- safe_decode_ok(payload) do
      {:ok, term}
    else
      _ -> :error
    end
  end

  @doc "Path of a function's code file."
  @spec code_path(key()) :: Path.t()
  def code_path({module, name, hash} = key)
      when is_binary(module) and is_binary(name) and is_binary(hash) do
    Path.join([dir(), "functions", hex(:crypto.hash(:sha256, :erlang.term_to_binary(key)))])
  end

  @doc """
  Path of the artifact for the code whose hash is `code_hash`, under this
  engine's fingerprint (read once, see `Worker.Runtime.fingerprint/0`).
  """
  @spec artifact_path(binary()) :: {:ok, Path.t()} | {:error, {:runtime_unavailable, String.t()}}
  def artifact_path(code_hash) do
    with {:ok, fingerprint} <- Worker.Runtime.fingerprint() do
      {:ok, Path.join([dir(), "artifacts", fingerprint, hex(code_hash)])}
    end
  end

  defp write(path, payload),
    do: write_file(path, [@magic, :crypto.hash(:sha256, payload), payload])

  defp write_file(path, data) do
    tmp = "#{path}.tmp.#{System.unique_integer([:positive])}"

    result =
      with :ok <- File.mkdir_p(Path.dirname(path)),
           :ok <- write_synced(tmp, data),
           :ok <- :file.rename(tmp, path) do
        Worker.Native.store_sync_dir(Path.dirname(path))
      end

    if result != :ok, do: File.rm(tmp)
    result
  end

  defp write_synced(path, data) do
    case :file.open(path, [:write, :raw, :binary]) do
      {:ok, fd} ->
        try do
          with :ok <- :file.write(fd, data), do: :file.sync(fd)
        after
          :file.close(fd)
        end

      error ->
        error
    end
  end

  defp read(path) do
    case File.read(path) do
      {:ok, <<@magic, digest::binary-size(32), payload::binary>>} ->
        if :crypto.hash(:sha256, payload) == digest do
          {:ok, payload}
        else
          discard(path)
        end

      {:ok, _} ->
        discard(path)

      {:error, _} ->
        :error
    end
  end

  defp discard(path) do
    require Logger
    Logger.warning("Worker.Store: #{path} is corrupt or foreign; discarding it")
    _ = File.rm(path)
    :error
  end

  defp safe_decode(payload) do
    :erlang.binary_to_term(payload, [:safe])
  rescue
    ArgumentError -> :error
  end

  defp safe_decode_ok(payload) do
    case safe_decode(payload) do
      :error -> :error
      term -> {:ok, term}
    end
  end

  defp hex(bytes), do: Base.encode16(bytes, case: :lower)
end
