defmodule Worker.MixCargo do
  @moduledoc """
  Where cargo is, and where it puts what it builds: one answer for the NIF
  compiler (`Mix.Tasks.Compile.WorkerNative`), the benchmark
  (`mix worker.bench`) and the test fixtures. Like the compiler, it is
  loaded by `mix.exs` and never compiled into the app.

  The repository holds several cargo workspaces: the worker's (the root,
  with `native/`), the examples' (`functions/`, built for `wasm32-wasip1`,
  and `functions/components/`, for `wasm32-wasip2`) and the test guests'
  (`test/guests/` and `test/guests/components/`, the same). Each has its
  own `target/`, unless `CARGO_TARGET_DIR` is set: then cargo builds them
  all into that one directory, where the host outputs are under
  `release/` and the Wasm ones under `wasm32-wasip1/release/` or
  `wasm32-wasip2/release/` (no two guests share a name), so they never
  overwrite each other.

  Environment:

    * `CARGO` - the cargo executable (default: `cargo` on `PATH`, then
      `~/.cargo/bin/cargo`);
    * `CARGO_TARGET_DIR` - cargo's output directory for every workspace
      (default: `target/` in each); a relative path is taken from the
      workspace, where cargo runs.
  """

  @doc "The cargo executable; raises with a hint when there is none."
  @spec cargo!() :: Path.t()
  def cargo! do
    home_cargo = Path.expand("~/.cargo/bin/cargo")

    cond do
      cargo = System.get_env("CARGO") ->
        cargo

      cargo = System.find_executable("cargo") ->
        cargo

      File.exists?(home_cargo) ->
        home_cargo

      true ->
        Mix.raise("cargo not found: install Rust with rustup (https://rustup.rs), or set CARGO")
    end
  end

  @doc "The directory cargo builds `workspace` into."
  @spec target_dir(Path.t()) :: Path.t()
  def target_dir(workspace) do
    case System.get_env("CARGO_TARGET_DIR") do
      dir when dir in [nil, ""] -> Path.join(Path.expand(workspace), "target")
      dir -> Path.expand(dir, workspace)
    end
  end

  @doc """
  Where the release profile's outputs of `workspace` are: for the host, or
  for the given target triple (such as `"wasm32-wasip1"`).
  """
  @spec release_dir(Path.t(), String.t() | nil) :: Path.t()
  def release_dir(workspace, triple \\ nil)
  def release_dir(workspace, nil), do: Path.join(target_dir(workspace), "release")
  def release_dir(workspace, triple), do: Path.join([target_dir(workspace), triple, "release"])
end
