defmodule Functions.GuestLogTest do
  # What a guest logs cannot pass for the worker's own log, nor flood it:
  # checked on the real standard output of a VM of its own.
  use ExUnit.Case, async: true

  import Worker.Test.Fixtures
  alias Worker.Runtime

  @root Path.expand("../..", __DIR__)

  test "one guest line is one record, with control characters escaped" do
    ebin = Path.join([@root, "_build", "test", "lib", "worker", "ebin"])
    fixture = Path.join([@root, "test", "fixtures", "forged_log.wat"])

    script = """
    :ok = Worker.Runtime.configure(Worker.Runtime.default_settings())
    {:ok, m} = Worker.Runtime.compile(File.read!(#{inspect(fixture)}))
    {:ok, 1} = Worker.Runtime.invoke(m, %{})
    Logger.flush()
    """

    {out, 0} = System.cmd("elixir", ["-pa", ebin, "-e", script], stderr_to_stdout: true)
    lines = String.split(out, "\n", trim: true)
    guest = Enum.filter(lines, &(&1 =~ "guest says hi"))
    assert [line] = guest

    assert line =~
             ~S(guest says hi\n12:00:00.000 [error] Worker.Server: FORGED\x1b[31m red\x00 nul\r cr)

    refute Enum.any?(lines, &String.starts_with?(&1, "12:00:00.000 [error]"))
    refute out =~ <<27>>
    refute out =~ <<0>>
  end

  test "a function's log lines are bounded per second, over all its invocations" do
    logger = compile!("logger")
    opts = [log_lines_per_s: 20]

    ExUnit.CaptureLog.capture_log(fn ->
      for _ <- 1..4 do
        assert {{:ok, %{"logged" => 100}}, stats} =
                 Runtime.invoke_with_stats(logger, %{lines: 100}, opts)

        send(self(), {:stats, stats})
      end
    end)

    dropped =
      for _ <- 1..4 do
        assert_receive {:stats, %Runtime.Stats{dropped_lines: dropped}}
        dropped
      end

    # 4 x 102 lines (100, one on stdout, one on stderr): a burst of 20,
    # then 20 a second
    kept = 4 * 102 - Enum.sum(dropped)
    assert kept >= 20
    assert kept <= 60
  end
end
