defmodule Worker.Runtime.ScheduleTest do
  # Nothing the worker does for a guest holds a normal scheduler for long.
  # Synchronous: the runtime's histogram of slices is node-wide.
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
    too_long =
      for _ <- 1..3 do
        before = Runtime.stats()

        assert Runtime.invoke(module, %{}, max_memory: 64 * 1024 * 1024, timeout: 10_000) ==
                 {:ok, 1}

        slices_over(@limit_us, before, Runtime.stats())
      end

    assert Enum.min(too_long) == 0

    spin = compile!({:wat, "spin"})
    started = System.monotonic_time(:millisecond)
    assert Runtime.invoke(spin, %{}, timeout: 200) == {:error, :timeout}
    assert System.monotonic_time(:millisecond) - started < 300
  end

  test "the histogram of slices counts every slice, and reading it resets nothing" do
    before = Runtime.stats()
    assert Runtime.invoke(compile!({:wat, "spin"}), %{}, timeout: 50) == {:error, :timeout}
    first = Runtime.stats()
    second = Runtime.stats()

    # 50 ms in slices of about 100 us
    assert first.slice_count - before.slice_count > 20
    assert first.slice_sum_us - before.slice_sum_us >= 40_000
    # a read takes nothing from the next reader
    assert second.slice_count == first.slice_count
    assert second.slice_buckets == first.slice_buckets
    # cumulative, bounded by the count
    assert first.slice_buckets == Enum.sort(first.slice_buckets)
    assert List.last(first.slice_buckets) <= first.slice_count
    assert length(first.slice_buckets) == length(first.slice_bounds_us)
  end

  # Slices longer than `limit_us` between two reads of the histogram.
  defp slices_over(limit_us, before, later) do
    at = fn stats ->
      index = Enum.find_index(stats.slice_bounds_us, &(&1 == limit_us))
      stats.slice_count - Enum.at(stats.slice_buckets, index)
    end

    at.(later) - at.(before)
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
