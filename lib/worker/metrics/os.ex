defmodule Worker.Metrics.OS do
  @moduledoc """
  The machine's figures for the metrics page, read from Linux's `/proc`:
  memory (`/proc/meminfo`), load averages (`/proc/loadavg`) and CPU
  utilization (`/proc/stat`). These are the figures the FunLess Core
  schedules by, which the FunLess worker took from `os_mon`; reading the
  files directly needs no port programs (and no "Erlang has closed" lines
  when the VM stops). Where a file cannot be read, the figure is missing
  and the page shows 0.
  """

  @doc "`total`, `free` and `available` memory, in bytes, as far as known."
  @spec memory() :: %{optional(:total | :free | :available) => non_neg_integer()}
  def memory do
    case File.read("/proc/meminfo") do
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
