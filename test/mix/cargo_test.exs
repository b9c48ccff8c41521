defmodule Worker.MixCargoTest do
  # Where cargo is and where it builds, as the NIF compiler, the benchmark
  # and the test fixtures all find them.
  use ExUnit.Case, async: false

  alias Worker.MixCargo

  @moduletag :tmp_dir

  setup do
    for name <- ["CARGO", "CARGO_TARGET_DIR", "PATH"] do
      previous = System.get_env(name)

      on_exit(fn ->
        if previous, do: System.put_env(name, previous), else: System.delete_env(name)
      end)
    end

    System.delete_env("CARGO_TARGET_DIR")
    :ok
  end

  test "CARGO names the cargo to run, before PATH" do
    System.put_env("CARGO", "/opt/rust/bin/cargo")
    assert MixCargo.cargo!() == "/opt/rust/bin/cargo"
  end

  test "without CARGO, cargo on PATH", %{tmp_dir: dir} do
    System.delete_env("CARGO")
    cargo = Path.join(dir, "bin/cargo")
    File.mkdir_p!(Path.dirname(cargo))
    File.write!(cargo, "#!/bin/sh\n")
    File.chmod!(cargo, 0o755)
    System.put_env("PATH", Path.dirname(cargo))
    assert MixCargo.cargo!() == cargo
  end

  test "each workspace builds into its own target/ by default" do
    assert MixCargo.target_dir("/src/worker") == "/src/worker/target"
    assert MixCargo.target_dir("/src/worker/functions") == "/src/worker/functions/target"
    assert MixCargo.release_dir("/src/worker") == "/src/worker/target/release"

    assert MixCargo.release_dir("/src/worker/functions", "wasm32-wasip1") ==
             "/src/worker/functions/target/wasm32-wasip1/release"
  end

  test "CARGO_TARGET_DIR holds every workspace's outputs, host and Wasm apart" do
    System.put_env("CARGO_TARGET_DIR", "/cache/cargo")
    assert MixCargo.release_dir("/src/worker") == "/cache/cargo/release"

    assert MixCargo.release_dir("/src/worker/functions", "wasm32-wasip1") ==
             "/cache/cargo/wasm32-wasip1/release"
  end

  test "a relative CARGO_TARGET_DIR is taken from the workspace, as cargo run there does" do
    System.put_env("CARGO_TARGET_DIR", "out")
    assert MixCargo.target_dir("/src/worker") == "/src/worker/out"
    assert MixCargo.target_dir("/src/worker/functions") == "/src/worker/functions/out"
  end
end
