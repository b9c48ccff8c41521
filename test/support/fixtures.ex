defmodule Worker.Test.Fixtures do
  @moduledoc """
  Test modules: the example functions in `functions/`, built from source for
  wasm32-wasip1, and the WAT files in `test/fixtures/`.
  """

  alias Worker.MixCargo

  @root Path.expand("../..", __DIR__)
  @functions Path.join(@root, "functions")

  @doc "Builds every example function (incrementally); raises with cargo's output on failure."
  def build_functions! do
    {output, status} =
      System.cmd(MixCargo.cargo!(), ["build", "--release", "--target", "wasm32-wasip1"],
        cd: @functions,
        stderr_to_stdout: true
      )

    if status != 0 do
      raise "building the example functions failed:\n#{output}"
    end

    :ok
  end

  @doc "The Wasm binary of an example function, e.g. `wasm!(\"hello\")`."
  def wasm!(name), do: File.read!(wasm_path(name))

  @doc "Where cargo puts the Wasm binary of an example function."
  def wasm_path(name),
    do: Path.join(MixCargo.release_dir(@functions, "wasm32-wasip1"), name <> ".wasm")

  @doc "The text of `test/fixtures/NAME.wat`."
  def wat!(name), do: File.read!(Path.join([@root, "test", "fixtures", name <> ".wat"]))

  @doc "Compiles an example function or a WAT fixture, raising on failure."
  def compile!({:wat, name}), do: ok!(Worker.Runtime.compile(wat!(name)))
  def compile!(name), do: ok!(Worker.Runtime.compile(wasm!(name)))

  defp ok!({:ok, module}), do: module
  defp ok!(other), do: raise("compile failed: #{inspect(other)}")
end
