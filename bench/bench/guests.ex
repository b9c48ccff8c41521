defmodule Worker.Bench.Guests do
  @moduledoc """
  The functions measured, and how they are built: the examples
  (`functions/`) and the test guests (`test/guests/`), each a
  `wasm32-wasip1` cargo workspace with a `wasm32-wasip2` one in
  `components/`, and the WAT fixtures of `test/fixtures/`.
  """

  alias Worker.MixCargo

  @root Path.expand("../..", __DIR__)
  @functions Path.join(@root, "functions")
  @guests Path.join([@root, "test", "guests"])
  @guest_names ~w(echo echo_cli echo_http probe_cli)
  @noop Path.join(@root, "test/fixtures/noop.wat")
  @wasi_sleep Path.join(@root, "test/fixtures/wasi_sleep.wat")

  @doc "The repository's root."
  def root, do: @root

  @doc "Builds the examples and the test guests, modules and components."
  def build! do
    for workspace <- [@functions, @guests] do
      cargo_build!(workspace, ["--quiet", "--target", "wasm32-wasip1"])
      cargo_build!(Path.join(workspace, "components"), ["--quiet", "--target", "wasm32-wasip2"])
    end
  end

  @doc "The built module `name` (a FunLess module or a WASI command)."
  def wasm_path(name),
    do: Path.join(MixCargo.release_dir(workspace(name), "wasm32-wasip1"), name <> ".wasm")

  @doc "The built component `name`."
  def component_path(name),
    do:
      Path.join(
        MixCargo.release_dir(Path.join(workspace(name), "components"), "wasm32-wasip2"),
        name <> ".wasm"
      )

  @doc "A no-op WAT module."
  def noop, do: @noop

  @doc "A WAT module that suspends in a WASI sleep."
  def wasi_sleep, do: @wasi_sleep

  defp workspace(name) when name in @guest_names, do: @guests
  defp workspace(_example), do: @functions

  @doc "`cargo build --release` in `workspace`, its output shown."
  def cargo_build!(workspace, args) do
    {_, status} =
      System.cmd(MixCargo.cargo!(), ["build", "--release" | args],
        cd: workspace,
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0, do: Mix.raise("cargo build failed in #{workspace} (exit status #{status})")
  end
end
