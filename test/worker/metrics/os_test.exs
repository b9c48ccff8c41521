defmodule Worker.Metrics.OSTest do
  use ExUnit.Case, async: true

  alias Worker.Metrics.OS

  test "memory comes from /proc/meminfo, in bytes" do
    %{total: total, free: free, available: available} = OS.memory()
    [_, kb | _] = File.read!("/proc/meminfo") |> String.split(["\n", " "], trim: true)
    # (at most the machine's: this test may run in a limited cgroup)
    assert total <= String.to_integer(kb) * 1024
    assert free > 0 and free <= total
    assert available > 0 and available <= total
  end

  @meminfo """
  MemTotal:       16000000 kB
  MemFree:         8000000 kB
  MemAvailable:   12000000 kB
  Buffers:          100000 kB
  """

  @mib 1024 * 1024

  defp tree(dir, files) do
    for {path, text} <- files do
      path = Path.join(dir, path)
      File.mkdir_p!(Path.dirname(path))
      File.write!(path, text)
    end

    dir
  end

  @tag :tmp_dir
  test "without a memory limit, the machine's figures", %{tmp_dir: dir} do
    root =
      tree(dir, %{
        "proc/meminfo" => @meminfo,
        "proc/self/cgroup" => "0::/user.slice\n",
        "sys/fs/cgroup/user.slice/memory.max" => "max\n",
        "sys/fs/cgroup/user.slice/memory.current" => "123456\n"
      })

    assert OS.memory(root) == %{
             total: 16_000_000 * 1024,
             free: 8_000_000 * 1024,
             available: 12_000_000 * 1024
           }

    # no cgroup file at all: the same
    File.rm!(Path.join(root, "proc/self/cgroup"))
    assert OS.memory(root).total == 16_000_000 * 1024
  end

  @tag :tmp_dir
  test "cgroup v2: the limit bounds total, free and available", %{tmp_dir: dir} do
    # a container with a cgroup namespace sees its cgroup at the root
    root =
      tree(dir, %{
        "proc/meminfo" => @meminfo,
        "proc/self/cgroup" => "0::/\n",
        "sys/fs/cgroup/memory.max" => "#{512 * @mib}\n",
        "sys/fs/cgroup/memory.current" => "#{200 * @mib}\n",
        "sys/fs/cgroup/memory.stat" => "anon 1000\ninactive_file #{50 * @mib}\nactive_file 7\n"
      })

    assert OS.memory(root) == %{
             total: 512 * @mib,
             free: 312 * @mib,
             # the inactive file cache is reclaimed before an allocation fails
             available: 362 * @mib
           }

    # a cgroup path that the mount shows as it is (no namespace)
    root2 =
      tree(Path.join(dir, "two"), %{
        "proc/meminfo" => @meminfo,
        "proc/self/cgroup" => "0::/kubepods/pod1/c1\n",
        "sys/fs/cgroup/kubepods/pod1/c1/memory.max" => "#{256 * @mib}\n",
        "sys/fs/cgroup/kubepods/pod1/c1/memory.current" => "#{300 * @mib}\n"
      })

    # over its limit (it happens, briefly): nothing free, nothing available
    assert OS.memory(root2) == %{total: 256 * @mib, free: 0, available: 0}
  end

  @tag :tmp_dir
  test "cgroup v1: the memory controller's limit, usage and inactive cache", %{tmp_dir: dir} do
    root =
      tree(dir, %{
        "proc/meminfo" => @meminfo,
        "proc/self/cgroup" => "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n",
        "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes" => "#{1024 * @mib}\n",
        "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes" => "#{100 * @mib}\n",
        "sys/fs/cgroup/memory/docker/abc/memory.stat" =>
          "cache 5\ninactive_file 1\ntotal_inactive_file #{10 * @mib}\n"
      })

    assert OS.memory(root) == %{total: 1024 * @mib, free: 924 * @mib, available: 934 * @mib}

    # v1's "unlimited" is no limit
    File.write!(
      Path.join(root, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes"),
      "9223372036854771712\n"
    )

    assert OS.memory(root).total == 16_000_000 * 1024
  end

  @tag :tmp_dir
  test "an ancestor's lower limit bounds the figures (a pod's, a slice's)", %{tmp_dir: dir} do
    # v2: the container has no limit of its own; its pod has 256 MiB, used
    # 200 MiB by the pod's containers together
    root =
      tree(dir, %{
        "proc/meminfo" => @meminfo,
        "proc/self/cgroup" => "0::/kubepods/pod1/c1\n",
        "sys/fs/cgroup/memory.max" => "max\n",
        "sys/fs/cgroup/kubepods/memory.max" => "max\n",
        "sys/fs/cgroup/kubepods/memory.current" => "#{900 * @mib}\n",
        "sys/fs/cgroup/kubepods/pod1/memory.max" => "#{256 * @mib}\n",
        "sys/fs/cgroup/kubepods/pod1/memory.current" => "#{200 * @mib}\n",
        "sys/fs/cgroup/kubepods/pod1/c1/memory.max" => "max\n",
        "sys/fs/cgroup/kubepods/pod1/c1/memory.current" => "#{50 * @mib}\n"
      })

    assert OS.memory(root) == %{total: 256 * @mib, free: 56 * @mib, available: 56 * @mib}

    # v1: the ancestors' least limit is in memory.stat
    root1 =
      tree(Path.join(dir, "v1"), %{
        "proc/meminfo" => @meminfo,
        "proc/self/cgroup" => "4:memory:/slice/app\n",
        "sys/fs/cgroup/memory/slice/app/memory.limit_in_bytes" => "9223372036854771712\n",
        "sys/fs/cgroup/memory/slice/app/memory.usage_in_bytes" => "#{10 * @mib}\n",
        "sys/fs/cgroup/memory/slice/app/memory.stat" =>
          "hierarchical_memory_limit #{300 * @mib}\ntotal_inactive_file 0\n"
      })

    assert OS.memory(root1) == %{total: 300 * @mib, free: 290 * @mib, available: 290 * @mib}
  end

  @tag :tmp_dir
  test "a limit above the machine's memory leaves the machine's figures", %{tmp_dir: dir} do
    root =
      tree(dir, %{
        "proc/meminfo" => @meminfo,
        "proc/self/cgroup" => "0::/\n",
        "sys/fs/cgroup/memory.max" => "#{64 * 1024 * @mib}\n",
        "sys/fs/cgroup/memory.current" => "#{1 * @mib}\n"
      })

    assert OS.memory(root) == %{
             total: 16_000_000 * 1024,
             free: 8_000_000 * 1024,
             available: 12_000_000 * 1024
           }
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
