defmodule Worker.Metrics.OSTest do
  use ExUnit.Case, async: true

  alias Worker.Metrics.OS

  test "memory comes from /proc/meminfo, in bytes" do
    %{total: total, free: free, available: available} = OS.memory()
    [_, kb | _] = File.read!("/proc/meminfo") |> String.split(["\n", " "], trim: true)
    assert total == String.to_integer(kb) * 1024
    assert free > 0 and free <= total
    assert available > 0 and available <= total
  end

  test "load averages come from /proc/loadavg" do
    {a, b, c} = OS.load()
    assert Enum.all?([a, b, c], &(is_float(&1) and &1 >= 0))
  end

  test "CPU utilization is per caller, since its last call, and sees this process spin" do
    task =
      Task.async(fn ->
        first = OS.cpu_utilization()
        deadline = System.monotonic_time(:millisecond) + 300
        spin(deadline)
        {first, OS.cpu_utilization()}
      end)

    {first, second} = Task.await(task)
    assert first >= 0 and first <= 100
    # one of the machine's CPUs was busy all along, whatever else ran
    assert second >= 100 / System.schedulers_online() * 0.5
    assert second <= 100
  end

  defp spin(deadline) do
    if System.monotonic_time(:millisecond) < deadline, do: spin(deadline)
  end
end
