defmodule Mix.Tasks.Compile.WorkerNativeTest do
  # The NIF compiler, run in a scratch project with a stand-in cargo that
  # records its calls, so the real build is left alone.
  use ExUnit.Case, async: false

  alias Mix.Tasks.Compile.WorkerNative

  @moduletag :tmp_dir

  setup %{tmp_dir: dir} do
    File.mkdir_p!(Path.join(dir, "native/worker_nif/src"))
    File.write!(Path.join(dir, "native/worker_nif/src/lib.rs"), "// nif\n")
    File.write!(Path.join(dir, "native/worker_nif/Cargo.toml"), "[package]\n")
    File.write!(Path.join(dir, "Cargo.toml"), "[workspace]\n")

    cargo = Path.join(dir, "fake-cargo")

    # Like cargo, it builds into CARGO_TARGET_DIR (from its working
    # directory) when that is set.
    File.write!(cargo, """
    #!/bin/sh
    echo "$@" >> "#{dir}/cargo-calls"
    if [ -f "#{dir}/cargo-fails" ]; then echo "error[E0425]: cannot find value"; exit 101; fi
    out="${CARGO_TARGET_DIR:-target}/release"
    mkdir -p "$out"
    echo "library built at $(date +%s%N)" > "$out/libworker_nif.so"
    echo "compiler built" > "$out/fl-compile"
    """)

    File.chmod!(cargo, 0o755)
    # the real target directory, if the suite runs with one, is left alone
    set_env("CARGO_TARGET_DIR", nil)
    set_env("CARGO", cargo)

    %{dir: dir}
  end

  # Sets (or, with nil, unsets) a variable for this test only.
  defp set_env(name, value) do
    previous = System.get_env(name)
    if value, do: System.put_env(name, value), else: System.delete_env(name)

    on_exit(fn ->
      if previous, do: System.put_env(name, previous), else: System.delete_env(name)
    end)
  end

  defp compile(dir, args \\ []) do
    File.cd!(dir, fn ->
      ExUnit.CaptureIO.capture_io(fn -> send(self(), {:result, WorkerNative.run(args)}) end)
    end)

    assert_received {:result, result}
    result
  end

  defp calls(dir),
    do: dir |> Path.join("cargo-calls") |> File.read!() |> String.split("\n", trim: true)

  defp installed(dir), do: File.read!(Path.join(dir, "priv/native/worker_nif.so"))

  defp age(path, seconds) do
    File.touch!(path, System.os_time(:second) + seconds)
  end

  test "builds the release profile of the crate and installs it under priv/native", %{dir: dir} do
    assert compile(dir) == {:ok, []}

    assert calls(dir) == [
             "build --release --package worker_nif --package worker_runtime --lib --bin fl-compile"
           ]

    assert installed(dir) =~ "library built"
    assert File.read!(Path.join(dir, "priv/native/fl-compile")) =~ "compiler built"
  end

  test "does nothing while the library is newer than every source", %{dir: dir} do
    assert compile(dir) == {:ok, []}
    age(Path.join(dir, "priv/native/worker_nif.so"), 10)
    assert compile(dir) == {:noop, []}
    assert length(calls(dir)) == 1
  end

  test "rebuilds when the compiler child is missing beside a fresh library", %{dir: dir} do
    assert compile(dir) == {:ok, []}
    age(Path.join(dir, "priv/native/worker_nif.so"), 10)
    File.rm!(Path.join(dir, "priv/native/fl-compile"))
    assert compile(dir) == {:ok, []}
    assert File.exists?(Path.join(dir, "priv/native/fl-compile"))
  end

  test "rebuilds when a .rs file or a Cargo.toml changes", %{dir: dir} do
    for source <- ["native/worker_nif/src/lib.rs", "native/worker_nif/Cargo.toml", "Cargo.toml"] do
      assert compile(dir) in [{:ok, []}, {:noop, []}]
      age(Path.join(dir, "priv/native/worker_nif.so"), 10)
      before = installed(dir)
      age(Path.join(dir, source), 20)
      assert compile(dir) == {:ok, []}, source
      refute installed(dir) == before
    end
  end

  test "--force rebuilds regardless", %{dir: dir} do
    compile(dir)
    age(Path.join(dir, "priv/native/worker_nif.so"), 10)
    assert compile(dir, ["--force"]) == {:ok, []}
    assert length(calls(dir)) == 2
  end

  test "a cargo failure fails the compile loudly, with cargo's output", %{dir: dir} do
    File.write!(Path.join(dir, "cargo-fails"), "")

    output =
      ExUnit.CaptureIO.capture_io(fn ->
        assert_raise Mix.Error,
                     ~r/cargo failed to build the worker_nif NIF \(exit status 101\)/,
                     fn ->
                       File.cd!(dir, fn -> WorkerNative.run([]) end)
                     end
      end)

    assert output =~ "error[E0425]"
    refute File.exists?(Path.join(dir, "priv/native/worker_nif.so"))
  end

  test "installs what cargo built in CARGO_TARGET_DIR", %{dir: dir} do
    set_env("CARGO_TARGET_DIR", Path.join(dir, "elsewhere"))
    assert compile(dir) == {:ok, []}
    assert File.exists?(Path.join(dir, "elsewhere/release/libworker_nif.so"))
    refute File.exists?(Path.join(dir, "target"))
    assert installed(dir) =~ "library built"
    assert File.read!(Path.join(dir, "priv/native/fl-compile")) =~ "compiler built"
  end

  test "a relative CARGO_TARGET_DIR is taken from the project, where cargo runs", %{dir: dir} do
    set_env("CARGO_TARGET_DIR", "relative")
    assert compile(dir) == {:ok, []}
    assert File.exists?(Path.join(dir, "relative/release/libworker_nif.so"))
    assert installed(dir) =~ "library built"
  end
end
