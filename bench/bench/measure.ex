defmodule Worker.Bench.Measure do
  @moduledoc """
  How the parts measure, with no worker code of their own:

    * one path at a time: `latency/2` (µs per call, median and p99, after
      a tenth as many calls to warm up), `rate/3` (calls/s from a number
      of callers for whole seconds) and `median_ms/2` (ms, for cold
      starts);
    * paths in turns, so that the drift of a shared machine hits them
      alike: `alternating_latency/3` and `alternating_rates/4`, from
      `durations/2` and `rate_ms/3`;
    * CPU: `alternating_cpu/5` (CPU µs per call of paths in turns, in the
      OS processes named, from `cpu_ns/1`);
    * memory: `rss/0` (resident bytes of this VM), `collect_all/0` (a
      settled baseline) and `in_flight/3` (the resident bytes while many
      invocations are suspended).
  """

  alias Worker.Runtime

  ## One path at a time

  @doc "µs per call of `fun`, median and p99 of `n` calls, after `n / 10` to warm up."
  def latency(n, fun) do
    for _ <- 1..div(n, 10), do: fun.()

    samples =
      for _ <- 1..n do
        started = System.monotonic_time()
        fun.()
        System.monotonic_time() - started
      end
      |> Enum.sort()

    us = fn native -> System.convert_time_unit(native, :native, :nanosecond) / 1000 end
    %{median: us.(Enum.at(samples, div(n, 2))), p99: us.(Enum.at(samples, div(n * 99, 100)))}
  end

  @doc "Calls/s of `fun` from `callers` processes, calling it for `seconds`."
  def rate(callers, seconds, fun) do
    until = System.monotonic_time(:millisecond) + seconds * 1000
    parent = self()

    for _ <- 1..callers do
      spawn_link(fn -> send(parent, {:count, loop(fun, until, 0)}) end)
    end

    total = Enum.reduce(1..callers, 0, fn _, acc -> receive(do: ({:count, n} -> acc + n)) end)
    total / seconds
  end

  defp loop(fun, until, n) do
    if rem(n, 64) == 0 and System.monotonic_time(:millisecond) >= until do
      n
    else
      fun.()
      loop(fun, until, n + 1)
    end
  end

  @doc "The median of `n` runs of `fun`, in ms."
  def median_ms(n, fun) do
    samples = for _ <- 1..n, do: elem(:timer.tc(fun), 0)
    Enum.at(Enum.sort(samples), div(n, 2)) / 1000
  end

  ## Paths in turns

  @doc """
  `samplers` are `{name, fn k -> k durations end}`; each runs `rounds`
  blocks, in turns, after a warm-up. Returns the median and p99 in µs of
  each name.
  """
  def alternating_latency(samplers, n, rounds) do
    Enum.each(samplers, fn {_, sample} -> sample.(max(div(n, 10), 1)) end)
    block = max(div(n, rounds), 1)

    Enum.reduce(1..rounds, %{}, fn _, acc ->
      Enum.reduce(samplers, acc, fn {name, sample}, acc ->
        durations = sample.(block)
        Map.update(acc, name, durations, &(durations ++ &1))
      end)
    end)
    |> Map.new(fn {name, durations} -> {name, summary(durations)} end)
  end

  @doc """
  Calls/s of each path at each number of callers, the median of `rounds`
  turns; within a round, the paths follow each other at each count.
  """
  def alternating_rates(calls, counts, ms, rounds) do
    Enum.reduce(1..rounds, %{}, fn _, acc ->
      for callers <- counts, {name, call} <- calls, reduce: acc do
        acc ->
          rate = rate_ms(callers, ms, call)
          Map.update(acc, {name, callers}, [rate], &[rate | &1])
      end
    end)
    |> Map.new(fn {key, rates} -> {key, Enum.at(Enum.sort(rates), div(length(rates), 2))} end)
  end

  @doc "ns per call, of `k` calls of `fun`."
  def durations(k, fun) do
    for _ <- 1..k do
      started = System.monotonic_time(:nanosecond)
      fun.()
      System.monotonic_time(:nanosecond) - started
    end
  end

  @doc "The median and p99, in µs, of durations in ns."
  def summary(durations) do
    sorted = Enum.sort(durations)
    n = length(sorted)
    %{median: Enum.at(sorted, div(n, 2)) / 1000, p99: Enum.at(sorted, div(n * 99, 100)) / 1000}
  end

  @doc """
  Calls/s from `callers` processes for about `ms`, over the time they
  actually took (the last one stops after its call in flight).
  """
  def rate_ms(callers, ms, fun) do
    started = System.monotonic_time(:microsecond)
    until = started + ms * 1000
    parent = self()

    for _ <- 1..callers do
      spawn_link(fn -> send(parent, {:count, call_until(fun, until, 0)}) end)
    end

    total = Enum.reduce(1..callers, 0, fn _, acc -> receive(do: ({:count, n} -> acc + n)) end)
    total * 1_000_000 / (System.monotonic_time(:microsecond) - started)
  end

  defp call_until(fun, until, n) do
    if System.monotonic_time(:microsecond) >= until do
      n
    else
      fun.()
      call_until(fun, until, n + 1)
    end
  end

  ## CPU

  @doc """
  CPU µs per call of each path at each number of callers, in each OS
  process of `os_pids` (this VM's and a peer node's, say; every thread,
  busy waiting included): a list in the order of `os_pids`, each the
  median of `rounds` turns of `n` calls shared by the callers. Within a
  round the paths follow each other at each count.
  """
  def alternating_cpu(calls, counts, n, rounds, os_pids) do
    Enum.reduce(1..rounds, %{}, fn _, acc ->
      for callers <- counts, {name, call} <- calls, reduce: acc do
        acc ->
          each = max(div(n, callers), 1)
          before = Enum.map(os_pids, &cpu_ns/1)
          shared_calls(callers, each, call)
          used = Enum.zip_with(Enum.map(os_pids, &cpu_ns/1), before, &(&1 - &2))
          per_call = Enum.map(used, &(&1 / (each * callers) / 1000))
          Map.update(acc, {name, callers}, [per_call], &[per_call | &1])
      end
    end)
    |> Map.new(fn {key, samples} ->
      medians =
        samples
        |> Enum.zip_with(& &1)
        |> Enum.map(&Enum.at(Enum.sort(&1), div(length(&1), 2)))

      {key, medians}
    end)
  end

  # `callers` processes, each making `each` calls; returns when all are done.
  defp shared_calls(callers, each, fun) do
    1..callers
    |> Enum.map(fn _ -> Task.async(fn -> for _ <- 1..each, do: fun.() end) end)
    |> Task.await_many(:infinity)
  end

  @doc """
  CPU time the OS process `os_pid` has used, in ns: the sum over its
  threads alive now (`/proc/PID/task/*/schedstat`), which is exact where
  `/proc/PID/stat` counts in ticks of 10 ms. A thread that ends between
  two readings takes its time with it: the BEAM's threads and the
  runtime's live as long as the node.
  """
  def cpu_ns(os_pid) do
    Path.wildcard("/proc/#{os_pid}/task/*/schedstat")
    |> Enum.reduce(0, fn path, acc ->
      case File.read(path) do
        {:ok, text} -> acc + (text |> String.split() |> hd() |> String.to_integer())
        {:error, _} -> acc
      end
    end)
  end

  ## Memory

  @doc """
  Starts `n` invocations of `module` that suspend in a WASI sleep; returns
  the RSS while they are all in flight.
  """
  def in_flight(module, n, args \\ %{}) do
    tasks = for _ <- 1..n, do: Task.async(fn -> Runtime.invoke(module, args, timeout: 1_000) end)
    Process.sleep(500)
    resident = rss()
    Task.await_many(tasks, 10_000)
    resident
  end

  @doc """
  Collects every process, then lets the allocators hand back what they
  will, so that the next RSS reading is a settled baseline.
  """
  def collect_all do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    Process.sleep(300)
  end

  @doc "This VM's resident bytes."
  def rss do
    [_size, resident | _] = File.read!("/proc/self/statm") |> String.split()
    String.to_integer(resident) * 4096
  end
end
