defmodule Functions.LoggingTest do
  # What functions print reaches Logger, with metadata, and is bounded.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  import Worker.Test.Fixtures
  alias Worker.Runtime

  setup do
    previous = Logger.level()
    Logger.configure(level: :info)
    on_exit(fn -> Logger.configure(level: previous) end)
    %{logger: compile!("logger")}
  end

  test "console lines, stdout and stderr reach Logger with the caller's metadata", %{
    logger: logger
  } do
    :ok = Logger.configure_backend(:console, metadata: [:fl_stream, :fl_function])

    log =
      capture_log([metadata: [:fl_stream, :fl_function]], fn ->
        assert {:ok, %{"logged" => 2}} =
                 Runtime.invoke(logger, %{lines: 2, message: "hi"},
                   metadata: [fl_function: "mod/logger"]
                 )
      end)

    assert log =~ ~r/fl_stream=console fl_function=mod\/logger.*hi 0/
    assert log =~ ~r/fl_stream=console fl_function=mod\/logger.*hi 1/
    assert log =~ ~r/fl_stream=stdout .*stdout: hi/
    assert log =~ ~r/fl_stream=stderr .*\[warning\] stderr: hi/
  end

  test "a function that logs 200,000 lines finishes quickly; the excess is dropped and counted",
       %{logger: logger} do
    {micros, log} =
      :timer.tc(fn ->
        capture_log(fn ->
          assert {:ok, %{"logged" => 200_000}} = Runtime.invoke(logger, %{lines: 200_000})
        end)
      end)

    kept = length(Regex.scan(~r/hello from the logger \d+/, log))
    assert kept == 1_000
    # the rest, plus the stdout and stderr lines, were dropped
    assert log =~ "199002 lines over the log caps were dropped"
    assert micros < 10_000_000
  end

  # CaptureIO would see the group leader only; a print straight to file
  # descriptor 1 or 2 (a println! in the native code) passes it by. So the
  # invocation runs in a VM of its own, whose Logger writes to a file, and
  # what the OS process wrote to its stdout and stderr is checked.
  @tag :tmp_dir
  test "nothing the function prints reaches the VM's stdout or stderr", %{tmp_dir: dir} do
    log = Path.join(dir, "logger.log")

    code = """
    {:ok, _} = Application.ensure_all_started(:logger)
    {:ok, log} = File.open(#{inspect(log)}, [:write, :utf8])
    Logger.configure_backend(:console, device: log, format: "$metadata$message\\n", metadata: [:fl_stream])
    Logger.configure(level: :info)
    :ok = Worker.Runtime.configure(Worker.Runtime.default_settings())
    {:ok, module} = Worker.Runtime.compile(File.read!(#{inspect(wasm_path("logger"))}))
    {:ok, %{"logged" => 2}} = Worker.Runtime.invoke(module, %{lines: 2, message: "quiet"})
    Logger.flush()
    IO.puts("invoked")
    """

    ebin = Path.join(:code.lib_dir(:worker), "ebin")

    {output, status} =
      System.cmd(System.find_executable("elixir"), ["-pa", ebin, "-e", code],
        stderr_to_stdout: true
      )

    assert status == 0, output
    assert output =~ "invoked"
    refute output =~ "quiet"
    # every line went to Logger
    logged = File.read!(log)
    assert logged =~ "fl_stream=console quiet 0"
    assert logged =~ "fl_stream=console quiet 1"
    assert logged =~ "fl_stream=stdout stdout: quiet"
    assert logged =~ "fl_stream=stderr stderr: quiet"
  end
end
