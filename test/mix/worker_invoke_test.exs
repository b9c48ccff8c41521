defmodule Mix.Tasks.Worker.InvokeTest do
  # `mix worker.invoke`, run as a user runs it: in a child OS process, on
  # this build (MIX_BUILD_PATH), so nothing is compiled again.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures

  @moduletag :tmp_dir
  @root Path.expand("../..", __DIR__)

  # `mix ARGS` in the test environment, stderr with stdout.
  defp mix(args) do
    System.cmd(System.find_executable("mix"), args,
      cd: @root,
      env: [{"MIX_ENV", "test"}, {"MIX_BUILD_PATH", Mix.Project.build_path()}],
      stderr_to_stdout: true
    )
  end

  # The task in a `mix run` that first sets these settings (the test
  # environment reads no FL_* variables), then lists the applications
  # still running.
  defp invoke_with(settings, args) do
    code = """
    for {key, value} <- #{inspect(settings)}, do: Application.put_env(:worker, key, value)
    Mix.Task.run("worker.invoke", #{inspect(args)})
    IO.puts("running: " <> inspect(Enum.map(Application.started_applications(), &elem(&1, 0))))
    """

    mix(["run", "--no-start", "-e", code])
  end

  test "a missing file is one line and a non-zero exit", %{tmp_dir: dir} do
    path = Path.join(dir, "missing.wasm")
    {output, status} = mix(["worker.invoke", path])
    assert status == 1

    assert List.last(String.split(output, "\n", trim: true)) ==
             "cannot read #{path}: no such file or directory"

    refute output =~ "** ("
  end

  test "settings that cannot work are one line, naming them, and a non-zero exit" do
    {output, status} =
      invoke_with([max_concurrency: 20, pool_instances: 10], [wasm_path("hello")])

    assert status == 1
    assert List.last(String.split(output, "\n", trim: true)) =~ "FL_MAX_CONCURRENCY"
    refute output =~ "** ("
  end

  test "arguments that are not JSON are one line and a non-zero exit" do
    {output, status} = mix(["worker.invoke", wasm_path("hello"), "{not json"])
    assert status == 1
    assert List.last(String.split(output, "\n", trim: true)) =~ "the arguments are not valid JSON"
    refute output =~ "** ("
  end

  test "runs while the metrics port is taken, and starts no worker", %{tmp_dir: dir} do
    {:ok, taken} = :gen_tcp.listen(0, [:binary, active: false])
    {:ok, port} = :inet.port(taken)
    data = Path.join(dir, "data")

    {output, status} =
      invoke_with([metrics_port: port, data_dir: data], [wasm_path("hello"), ~s({"name":"x"})])

    :gen_tcp.close(taken)
    assert status == 0, output
    assert output =~ ~s(result:  {"payload":"Hello x!"})
    [running] = Regex.run(~r/^running: .*$/m, output)
    refute running =~ ":worker"
    refute running =~ ":os_mon"
    # nothing written to the data directory either
    refute File.exists?(data)
  end

  test "no os_mon noise on exit, with metrics on", %{tmp_dir: dir} do
    {:ok, free} = :gen_tcp.listen(0, [:binary, active: false])
    {:ok, port} = :inet.port(free)
    :gen_tcp.close(free)

    {output, status} =
      invoke_with([metrics_port: port, data_dir: Path.join(dir, "data")], [wasm_path("hello")])

    assert status == 0, output
    refute output =~ "os_mon"
    refute output =~ "Erlang has closed"
  end
end
