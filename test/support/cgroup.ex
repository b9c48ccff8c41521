defmodule Worker.Test.Cgroup do
  @moduledoc """
  Cgroups for tests: a process moved into a cgroup of its own with a
  memory limit, or a limit of tasks (threads), where the machine lets this
  VM make one (root, with the cgroup v1 controller, or cgroup v2 with it
  delegated).
  """

  @doc """
  Moves the OS process `os_pid` into a new memory cgroup limited to
  `bytes`, under this VM's own. Returns a function that takes it back out
  and removes the cgroup, or `{:unavailable, reason}`.
  """
  def limit(os_pid, bytes) do
    with {:ok, text} <- File.read("/proc/self/cgroup"),
         {:ok, version, parent} <- parent(text),
         dir = Path.join(parent, "fl_test_#{System.unique_integer([:positive])}"),
         :ok <- File.mkdir(dir),
         :ok <- write(dir, limit_file(version), bytes),
         :ok <- write(dir, "cgroup.procs", os_pid) do
      fn ->
        _ = write(parent, "cgroup.procs", os_pid)
        File.rmdir(dir)
      end
    else
      {:error, reason} -> {:unavailable, reason}
      other -> {:unavailable, other}
    end
  end

  defp parent(text) do
    lines =
      for line <- String.split(text, "\n", trim: true), do: String.split(line, ":", parts: 3)

    v1 = Enum.find_value(lines, fn [_, c, p] -> if "memory" in String.split(c, ","), do: p end)
    v2 = Enum.find_value(lines, fn l -> with ["0", "", p] <- l, do: p end)

    cond do
      v1 && File.dir?("/sys/fs/cgroup/memory" <> v1) ->
        {:ok, :v1, "/sys/fs/cgroup/memory" <> v1}

      v2 && File.exists?(Path.join("/sys/fs/cgroup" <> v2, "memory.max")) ->
        {:ok, :v2, "/sys/fs/cgroup" <> v2}

      true ->
        {:error, "no memory cgroup this VM can make children in"}
    end
  end

  defp limit_file(:v1), do: "memory.limit_in_bytes"
  defp limit_file(:v2), do: "memory.max"

  defp write(dir, file, value) do
    File.write(Path.join(dir, file), "#{value}\n")
  end

  @doc """
  Moves the OS process `os_pid` into a new pids cgroup that allows it no
  more tasks (threads included) than it has now. Returns the undo
  function, or `{:unavailable, reason}`.
  """
  def freeze_tasks(os_pid) do
    with {:ok, text} <- File.read("/proc/self/cgroup"),
         [_, path] <- Regex.run(~r/^\d+:(?:[^:]*,)?pids(?:,[^:]*)?:(.*)$/m, text),
         parent = "/sys/fs/cgroup/pids" <> path,
         true <- File.dir?(parent) || {:error, "no pids controller mounted"},
         dir = Path.join(parent, "fl_test_#{System.unique_integer([:positive])}"),
         :ok <- File.mkdir(dir),
         {:ok, tasks} <- File.ls("/proc/#{os_pid}/task"),
         :ok <- write(dir, "pids.max", length(tasks)),
         :ok <- write(dir, "cgroup.procs", os_pid) do
      fn ->
        _ = write(parent, "cgroup.procs", os_pid)
        File.rmdir(dir)
      end
    else
      {:error, reason} -> {:unavailable, reason}
      other -> {:unavailable, other}
    end
  end
end
