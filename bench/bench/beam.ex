defmodule Worker.Bench.Beam do
  @moduledoc """
  What the BEAM itself costs on this machine, with no worker code unless
  named: bounds that no design of the `:worker` path can beat. A
  `GenServer.call` to a process that replies at once; a call to a bare
  process that runs `Worker.Runtime.invoke/3` itself (the least any
  `:worker` design costs); a message round trip between two processes on
  one scheduler and on two; and how a bare process that spawns a process
  per request to invoke scales from 1 to 2 callers.
  """

  import Worker.Bench.Measure, only: [latency: 2, rate: 3]
  import Worker.Bench.Report, only: [fmt: 1, fmt_us: 1]

  alias Worker.Runtime

  @doc "Measures the costs around invocations of `module` on `args`."
  def measure(module, args, iterations, seconds) do
    echo = bare_server(fn request -> request end)
    inline = bare_server(fn request -> Runtime.invoke(module, request) end)
    spawner = bare_server({:spawn, fn request -> Runtime.invoke(module, request) end})

    costs = %{
      echo: latency(iterations, fn -> GenServer.call(echo, :ping) end),
      inline: latency(iterations, fn -> {:ok, _} = GenServer.call(inline, args) end),
      local_rtt: round_trip(1, 1, iterations),
      remote_rtt: round_trip(1, 2, iterations),
      spawner_1: rate(1, seconds, fn -> {:ok, _} = GenServer.call(spawner, args) end),
      spawner_2: rate(2, seconds, fn -> {:ok, _} = GenServer.call(spawner, args) end)
    }

    Enum.each([echo, inline, spawner], &Process.exit(&1, :kill))
    costs
  end

  defp bare_server(handler), do: spawn(fn -> bare_loop(handler) end)

  @doc """
  A bare process that answers `GenServer.call`s with `fun.(request)`, or
  from a process spawned per call with `{:spawn, fun}`.
  """
  def bare_loop({:spawn, fun} = handler) do
    receive do
      {:"$gen_call", from, request} ->
        spawn(fn -> GenServer.reply(from, fun.(request)) end)
        bare_loop(handler)
    end
  end

  def bare_loop(fun) do
    receive do
      {:"$gen_call", from, request} ->
        GenServer.reply(from, fun.(request))
        bare_loop(fun)
    end
  end

  # µs per round trip between a process on scheduler `a` and one on `b`,
  # or nil where processes cannot be placed (one scheduler; the
  # `:scheduler` spawn option is not documented and may go away).
  defp round_trip(a, b, n) do
    if b > :erlang.system_info(:schedulers_online), do: throw(:unsupported)
    parent = self()
    echo = :erlang.spawn_opt(fn -> echo_loop() end, [{:scheduler, b}])

    :erlang.spawn_opt(
      fn ->
        {us, :ok} = :timer.tc(fn -> ping(echo, n) end)
        send(parent, {:round_trip, us / n})
      end,
      [{:scheduler, a}]
    )

    receive do
      {:round_trip, us} ->
        Process.exit(echo, :kill)
        us
    end
  catch
    _, _ -> nil
  end

  defp echo_loop do
    receive do
      {from, n} ->
        send(from, n)
        echo_loop()
    end
  end

  defp ping(_echo, 0), do: :ok

  defp ping(echo, n) do
    send(echo, {self(), n})

    receive do
      ^n -> ping(echo, n - 1)
    end
  end

  @doc "The section of `costs`, beside the floor's median µs (hello)."
  def report(beam, floor) do
    """
    ### What the BEAM itself costs here (no worker code unless named)

    | measure | figure |
    |---|---:|
    | `GenServer.call` to a process that replies at once | #{fmt(beam.echo.median)} µs |
    | `GenServer.call` to a bare process that runs `Worker.Runtime.invoke/3` itself (hello): the least any `:worker` design costs | #{fmt(beam.inline.median)} µs, #{fmt(beam.inline.median / floor)}× floor |
    | message round trip, two processes on one scheduler | #{fmt_us(beam.local_rtt)} |
    | message round trip, two processes on two schedulers | #{fmt_us(beam.remote_rtt)} |
    | a bare process that spawns a process per request to run `Worker.Runtime.invoke/3` (hello), 1 → 2 callers | #{round(beam.spawner_1)}/s → #{round(beam.spawner_2)}/s, #{fmt(beam.spawner_2 / beam.spawner_1)}× |
    """
  end
end
