defmodule Worker.Runtime.LoggingTest do
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

  test "nothing reaches the VM's stdout", %{logger: logger} do
    output =
      ExUnit.CaptureIO.capture_io(fn ->
        capture_log(fn -> Runtime.invoke(logger, %{lines: 1, message: "quiet"}) end)
      end)

    refute output =~ "quiet"
  end
end
