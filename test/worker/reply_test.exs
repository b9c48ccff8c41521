defmodule Worker.ReplyTest do
  # The protocol's error replies, and the one count of :overloaded.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog
  alias Worker.Reply

  test "each shape is built as the protocol says" do
    assert Reply.bad_request("why") == {:error, {:bad_request, "why"}}
    assert Reply.timeout() == {:error, :timeout}
    assert Reply.insufficient_capacity("why") == {:error, {:insufficient_capacity, "why"}}

    assert Reply.internal(:error, %RuntimeError{message: "boom"}) ==
             {:error, {:internal, "** (RuntimeError) boom"}}

    assert Reply.internal(:exit, :bye) == {:error, {:internal, "** (exit) :bye"}}
  end

  test ":overloaded is counted by bound" do
    before = Reply.overloaded_counts()
    assert Reply.overloaded(:requests) == {:error, :overloaded}
    assert Reply.overloaded(:admission) == {:error, :overloaded}
    assert Reply.overloaded(:admission) == {:error, :overloaded}
    now = Reply.overloaded_counts()
    assert now.requests - before.requests == 1
    assert now.handler_bytes - before.handler_bytes == 0
    assert now.admission - before.admission == 2
  end

  test "a function held to its share is named in a warning, at most one a second" do
    # the last warning's second has passed
    Process.sleep(1_000)

    log =
      capture_log(fn ->
        for _ <- 1..100, do: Reply.overloaded(:handler_bytes, {"mod", "flood"})
      end)

    assert log =~ ~s["mod"/"flood" holds its share (FL_FUNCTION_SHARE)]
    assert log =~ "FL_HANDLER_MAX_MB"
    assert length(String.split(log, "holds its share")) == 2
  end
end
