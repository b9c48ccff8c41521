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
    with {:ok, version, parent} <- parent("memory") do
      file = if version == :v1, do: "memory.limit_in_bytes", else: "memory.max"
      move(os_pid, parent, [{file, bytes}])
    end
  end

  @doc """
  Moves the OS process `os_pid` into a new pids cgroup that allows it no
  more tasks (threads included) than it has now. Returns the undo
  function, or `{:unavailable, reason}`.
  """
  def freeze_tasks(os_pid) do
    with {:ok, _version, parent} <- parent("pids") do
      case File.ls("/proc/#{os_pid}/task") do
        {:ok, tasks} -> move(os_pid, parent, [{"pids.max", length(tasks)}])
        {:error, reason} -> {:unavailable, reason}
      end
    end
  end

  # A new cgroup under `parent` with `settings`, and `os_pid` in it.
  defp move(os_pid, parent, settings) do
    dir = Path.join(parent, "fl_test_#{System.unique_integer([:positive])}")

    with :ok <- File.mkdir(dir),
         :ok <- Enum.reduce_while(settings, :ok, &set(dir, &1, &2)),
         :ok <- write(dir, "cgroup.procs", os_pid) do
      fn ->
        _ = write(parent, "cgroup.procs", os_pid)
        File.rmdir(dir)
      end
    else
      {:error, reason} -> {:unavailable, reason}
    end
  end

  defp set(dir, {file, value}, :ok) do
    case write(dir, file, value) do
      :ok -> {:cont, :ok}
      error -> {:halt, error}
    end
  end

  # This VM's own cgroup of `controller`, where children can be made: the
  # v1 controller's, else the unified (v2) one with it enabled.
  defp parent(controller) do
    with {:ok, text} <- File.read("/proc/self/cgroup") do
      lines =
        for line <- String.split(text, "\n", trim: true), do: String.split(line, ":", parts: 3)

      v1 =
        Enum.find_value(lines, fn [_, c, p] -> if controller in String.split(c, ","), do: p end)

      v2 = Enum.find_value(lines, fn l -> with ["0", "", p] <- l, do: p end)

      cond do
        v1 && File.dir?("/sys/fs/cgroup/#{controller}" <> v1) ->
          {:ok, :v1, "/sys/fs/cgroup/#{controller}" <> v1}

        v2 && File.exists?(Path.join("/sys/fs/cgroup" <> v2, "#{controller}.max")) ->
          {:ok, :v2, "/sys/fs/cgroup" <> v2}

        true ->
          {:unavailable, "no #{controller} cgroup this VM can make children in"}
      end
    else
      {:error, reason} -> {:unavailable, reason}
    end
  end

  defp write(dir, file, value), do: File.write(Path.join(dir, file), "#{value}\n")
end
