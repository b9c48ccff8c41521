defmodule Worker.Runtime.ScheduleTest do
  # Nothing the worker does for a guest holds a normal scheduler for long.
  # Synchronous: the runtime's longest-slice figure is node-wide.
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  alias Worker.Runtime

  @limit_us 10_000

  test "single memory.fill instructions over 32 MiB are preempted, and a timeout is on time" do
    # 40 fills of 32 MiB, each one instruction: unsplit, each holds the
    # scheduler for tens of milliseconds
    module = compile!({:wat, "bulk_fill"})

    # The best of three: on a shared 2-core VM the whole VM can be kept
    # off a core now and then.
    longest =
      for _ <- 1..3 do
        # read once: the figure is the longest slice since the last read
        _ = Runtime.stats()

        assert Runtime.invoke(module, %{}, max_memory: 64 * 1024 * 1024, timeout: 10_000) ==
                 {:ok, 1}

        Runtime.stats().max_slice_us
      end

    assert Enum.min(longest) < @limit_us

    spin = compile!({:wat, "spin"})
    started = System.monotonic_time(:millisecond)
    assert Runtime.invoke(spin, %{}, timeout: 200) == {:error, :timeout}
    assert System.monotonic_time(:millisecond) - started < 300
  end

  test "large arguments are encoded on a dirty scheduler, not a normal one" do
    args = %{"items" => Enum.map(1..60_000, &%{"i" => &1, "s" => "text #{&1}"})}

    # the normal-scheduler encoder gives up after 64 KiB of text
    {micros, :dirty} = :timer.tc(fn -> Worker.Native.args_encode(args) end)
    assert micros < @limit_us

    assert {:ok, %{"items" => items}} = Runtime.invoke(compile!("echo"), args)
    assert length(items) == 60_000
  end

  test "poll_oneoff over its subscription cap traps at once" do
    assert {:error, {:trap, reason}} = Runtime.invoke(compile!({:wat, "poll_many"}), %{})
    assert reason =~ "490000 subscriptions is over the limit of 1024"
  end
end
