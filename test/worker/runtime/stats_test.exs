defmodule Worker.Runtime.StatsTest do
  # What an invocation did besides its result (Worker.Runtime.Stats).
  use ExUnit.Case, async: true
  @moduletag :capture_log

  import Worker.Test.Fixtures
  alias Worker.Runtime

  describe "invoke_with_stats/3" do
    test "returns the result with what the invocation did besides" do
      assert {{:ok, _}, %Runtime.Stats{} = stats} =
               Runtime.invoke_with_stats(compile!("hello"), %{"name" => "x"})

      assert stats == %Runtime.Stats{}
    end
  end

  test "counts the log lines dropped over the caps" do
    # logger writes n lines to __console_log; 1 000 are kept per invocation
    dropped = fn n ->
      assert {{:ok, _}, %Runtime.Stats{dropped_lines: dropped}} =
               Runtime.invoke_with_stats(compile!("logger"), %{"lines" => n}, log_lines_per_s: 0)

      dropped
    end

    assert dropped.(100) == 0
    assert dropped.(2_000) - dropped.(1_500) == 500
  end
end
