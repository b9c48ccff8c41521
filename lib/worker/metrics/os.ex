defmodule Worker.Metrics.OS do
  @moduledoc """
  The machine's figures for the metrics page, read from Linux's `/proc`
  and `/sys/fs/cgroup`: memory (`/proc/meminfo`, bounded by the worker's
  memory cgroup), load averages (`/proc/loadavg`) and CPU utilization
  (`/proc/stat`). These are the figures the FunLess Core schedules by,
  which the FunLess worker took from `os_mon`; reading the files directly
  needs no port programs (and no "Erlang has closed" lines when the VM
  stops). Where a file cannot be read, the figure is missing and the page
  shows 0.

  **Memory in a container.** `/proc/meminfo` shows the host's memory, also
  inside a container limited to a fraction of it. A worker whose memory
  cgroup, or one of its ancestors (a pod's, a systemd slice's), has a limit
  (v2 `memory.max`, or v1 `memory.limit_in_bytes`) reports at most the
  least limit as its total, and as available at most a limit less what
  its cgroup uses (less its inactive file cache, which the kernel reclaims
  before it fails an allocation): the memory this worker can actually
  get, which is what the Core compares a function's capacity with.
  """

  # v1's "no limit" is the largest page-aligned i64; anything from 2^62 up is none
  @no_limit 4_611_686_018_427_387_904

  @doc """
  `total`, `free` and `available` memory, in bytes, as far as known, bounded
  by the memory cgroup's limit when it has one. `root` is the file system
  root the files are read under (`"/"`; tests point it elsewhere).
  """
  @spec memory(Path.t()) :: %{optional(:total | :free | :available) => non_neg_integer()}
  def memory(root \\ "/") do
    for %{limit: limit, usage: usage, reclaimable: reclaimable} <- cgroup_memory(root),
        reduce: meminfo(root) do
      figures ->
        bounded = %{
          total: limit,
          free: max(limit - usage, 0),
          available: max(limit - max(usage - reclaimable, 0), 0)
        }

        Map.merge(bounded, figures, fn _key, cgroup, machine -> min(cgroup, machine) end)
    end
  end

  defp meminfo(root) do
    case File.read(Path.join(root, "proc/meminfo")) do
      {:ok, text} ->
        for line <- String.split(text, "\n"),
            [field, value | _] <- [String.split(line, [":", " "], trim: true)],
            key = meminfo_key(field),
            {kb, ""} <- [Integer.parse(value)],
            into: %{},
            do: {key, kb * 1024}

      {:error, _} ->
        %{}
    end
  end

  defp meminfo_key("MemTotal"), do: :total
  defp meminfo_key("MemFree"), do: :free
  defp meminfo_key("MemAvailable"), do: :available
  defp meminfo_key(_), do: nil

  # The limit, usage and reclaimable cache of this process's memory cgroup
  # and of each ancestor with a limit (a limit on a pod, or on a systemd
  # slice, bounds what the cgroups under it get): none without a limit, or
  # when none can be read. The cgroup's path in /proc/self/cgroup is looked
  # up under the mount; a container with a cgroup namespace of its own sees
  # its cgroup at the mount's root. v1 gives the ancestors' least limit in
  # memory.stat, v2 in each ancestor's directory.
  defp cgroup_memory(root) do
    with {:ok, text} <- File.read(Path.join(root, "proc/self/cgroup")),
         {version, path} <- memory_cgroup(text),
         {dir, mount} when is_binary(dir) <- cgroup_dir(root, version, path) do
      for dir <- levels(version, dir, mount),
          {:ok, limit} when limit < @no_limit <- [read_limit(dir, version)],
          {:ok, usage} <- [read_integer(Path.join(dir, usage_file(version)))],
          do: %{limit: limit, usage: usage, reclaimable: reclaimable(dir, version)}
    else
      _ -> []
    end
  end

  # this cgroup's directory, and its ancestors' up to the mount (v2)
  defp levels(:v1, dir, _mount), do: [dir]

  defp levels(:v2, dir, mount) do
    if dir == mount or not String.starts_with?(dir, mount),
      do: [dir],
      else: [dir | levels(:v2, Path.dirname(dir), mount)]
  end

  # v1's memory controller line wins over v2's unified line: a host with
  # both mounts the controller on v1 (a hybrid set-up)
  defp memory_cgroup(text) do
    lines = for line <- String.split(text, "\n"), do: String.split(line, ":", parts: 3)

    v1 =
      Enum.find_value(lines, fn
        [_, controllers, path] -> if "memory" in String.split(controllers, ","), do: path
        _ -> nil
      end)

    v2 = Enum.find_value(lines, fn line -> with ["0", "", path] <- line, do: path end)

    cond do
      v1 -> {:v1, v1}
      v2 -> {:v2, v2}
      true -> nil
    end
  end

  defp cgroup_dir(root, version, path) do
    mount = Path.join(root, if(version == :v1, do: "sys/fs/cgroup/memory", else: "sys/fs/cgroup"))
    limit = if version == :v1, do: "memory.limit_in_bytes", else: "memory.max"
    dir = Enum.find([Path.join(mount, path), mount], &File.exists?(Path.join(&1, limit)))
    {dir, mount}
  end

  # v1: the least of this cgroup's limit and its ancestors'
  defp read_limit(dir, :v1) do
    with {:ok, own} <- read_integer(Path.join(dir, "memory.limit_in_bytes")) do
      case stat(dir, "hierarchical_memory_limit") do
        nil -> {:ok, own}
        ancestors -> {:ok, min(own, ancestors)}
      end
    end
  end

  defp read_limit(dir, :v2) do
    case File.read(Path.join(dir, "memory.max")) do
      {:ok, "max" <> _} -> {:ok, @no_limit}
      _ -> read_integer(Path.join(dir, "memory.max"))
    end
  end

  defp usage_file(:v1), do: "memory.usage_in_bytes"
  defp usage_file(:v2), do: "memory.current"

  # the inactive page cache of the cgroup, which the kernel reclaims first
  defp reclaimable(dir, :v1), do: stat(dir, "total_inactive_file") || 0
  defp reclaimable(dir, :v2), do: stat(dir, "inactive_file") || 0

  defp stat(dir, field) do
    with {:ok, text} <- File.read(Path.join(dir, "memory.stat")),
         [_, value] <- Regex.run(~r/^#{field} (\d+)$/m, text) do
      String.to_integer(value)
    else
      _ -> nil
    end
  end

  defp read_integer(path) do
    with {:ok, text} <- File.read(path),
         {n, _} when n >= 0 <- Integer.parse(String.trim(text)) do
      {:ok, n}
    else
      _ -> :error
    end
  end

  @doc "The load averages over 1, 5 and 15 minutes, or nil."
  @spec load() :: {float(), float(), float()} | nil
  def load do
    with {:ok, text} <- File.read("/proc/loadavg"),
         [a, b, c | _] <- String.split(text),
         {:ok, [a, b, c]} <- floats([a, b, c]) do
      {a, b, c}
    else
      _ -> nil
    end
  end

  defp floats(texts) do
    parsed = for text <- texts, {f, ""} <- [Float.parse(text)], do: f
    if length(parsed) == length(texts), do: {:ok, parsed}, else: :error
  end

  @doc """
  The percentage of CPU time spent busy, over all CPUs, since the calling
  process's previous call (the first call: since boot). Call it from a
  long-lived process.
  """
  @spec cpu_utilization() :: float()
  def cpu_utilization do
    case cpu_times() do
      {busy, total} ->
        {busy0, total0} = Process.get({__MODULE__, :cpu}, {0, 0})
        Process.put({__MODULE__, :cpu}, {busy, total})
        if total > total0, do: 100 * (busy - busy0) / (total - total0), else: 0.0

      nil ->
        0.0
    end
  end

  # Jiffies busy and in all, from the first line of /proc/stat: user nice
  # system idle iowait irq softirq steal (guest time is within user).
  defp cpu_times do
    with {:ok, text} <- File.read("/proc/stat"),
         ["cpu " <> times | _] <- String.split(text, "\n", parts: 2),
         [user, nice, system, idle, iowait, irq, softirq | rest] <-
           times |> String.split() |> Enum.map(&String.to_integer/1) do
      steal = List.first(rest, 0)
      busy = user + nice + system + irq + softirq + steal
      {busy, busy + idle + iowait}
    else
      _ -> nil
    end
  rescue
    ArgumentError -> nil
  end
end
