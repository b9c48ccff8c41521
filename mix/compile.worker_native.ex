defmodule Mix.Tasks.Compile.WorkerNative do
  @shortdoc "Builds the worker's Rust NIF with cargo"
  @moduledoc """
  Builds the `worker_nif` crate with cargo and installs it as
  `priv/native/worker_nif.so`, where `Worker.Native` loads it, beside the
  compiler child `priv/native/fl-compile` (from `worker_runtime`), which
  `Worker.Runtime.compile/1` runs.

  It stands in for rustler's Mix compiler, which lives on hex.pm. It runs as
  part of `mix compile` (see `:compilers` in `mix.exs`) and:

    * rebuilds when any `.rs` file, `Cargo.toml` or `Cargo.lock` under the
      project is newer than the installed library, or when `--force` is given;
    * always builds the `release` profile: Wasmtime and Cranelift are far too
      slow unoptimised, in every environment;
    * streams cargo's output and fails the compile if cargo fails;
    * deletes the old library before copying the new one, so a running VM
      that has the old file mapped is never handed a half-written file.

  It finds cargo and its output directory with `Worker.MixCargo`, so it
  honours `CARGO` and `CARGO_TARGET_DIR` (see there).
  """
  use Mix.Task.Compiler

  alias Worker.MixCargo

  @crate "worker_nif"
  @compiler "fl-compile"

  @impl true
  def run(args) do
    {opts, _, _} = OptionParser.parse(args, switches: [force: :boolean])
    root = File.cwd!()
    installed = Path.join([root, "priv", "native", @crate <> ".so"])

    if opts[:force] || stale?(root, installed) do
      build!(root)
      install!(root, installed)
      Mix.Project.build_structure()
      {:ok, []}
    else
      Mix.Project.build_structure()
      {:noop, []}
    end
  end

  @impl true
  def clean do
    File.rm(Path.join(["priv", "native", @crate <> ".so"]))
    File.rm(Path.join(["priv", "native", @compiler]))
    :ok
  end

  defp stale?(root, installed) do
    compiler = Path.join(Path.dirname(installed), @compiler)

    case File.exists?(compiler) && File.stat(installed, time: :posix) do
      {:ok, %{mtime: built}} -> Enum.any?(sources(root), &(mtime(&1) >= built))
      _missing -> true
    end
  end

  defp sources(root) do
    Path.wildcard(Path.join(root, "native/**/*.rs")) ++
      Path.wildcard(Path.join(root, "native/**/Cargo.toml")) ++
      Enum.filter([Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock")], &File.exists?/1)
  end

  defp mtime(path) do
    case File.stat(path, time: :posix) do
      {:ok, %{mtime: mtime}} -> mtime
      {:error, _} -> 0
    end
  end

  defp build!(root) do
    cargo = MixCargo.cargo!()
    Mix.shell().info("Compiling NIF crate #{@crate} (cargo build --release)")

    {_, status} =
      System.cmd(
        cargo,
        ["build", "--release", "--package", @crate, "--package", "worker_runtime"] ++
          ["--lib", "--bin", @compiler],
        cd: root,
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0 do
      Mix.raise(
        "cargo failed to build the #{@crate} NIF (exit status #{status}); see its output above"
      )
    end
  end

  defp install!(root, installed) do
    release = MixCargo.release_dir(root)
    ext = if match?({:unix, :darwin}, :os.type()), do: "dylib", else: "so"
    built = Path.join(release, "lib#{@crate}.#{ext}")

    unless File.exists?(built) do
      Mix.raise("cargo reported success but #{built} does not exist")
    end

    compiler = Path.join(release, @compiler)

    unless File.exists?(compiler) do
      Mix.raise("cargo reported success but #{compiler} does not exist")
    end

    File.mkdir_p!(Path.dirname(installed))
    installed_compiler = Path.join(Path.dirname(installed), @compiler)
    File.rm(installed_compiler)
    File.cp!(compiler, installed_compiler)
    File.chmod!(installed_compiler, 0o755)
    File.rm(installed)
    File.cp!(built, installed)
  end
end
