defmodule Worker.Bench.Distribution do
  @moduledoc """
  The worker as a FunLess Core sees it: this VM stands in for the Core,
  and a `:peer` node on 127.0.0.1 runs the worker application (`:worker`
  registered), as a worker node does. Latency (median and p99 µs, × bare
  call) of a bare `GenServer.call` to a process on the worker node that
  replies at once (the link's own cost), the same from a process that
  spawns a process per call to reply (`:worker`'s shape with no work), the
  Core's `{:invoke, ...}` of hello, and the same request from a process on
  the worker node; then calls/s of the first three at 1, 2, 8 and 64 Core
  callers, and the bytes of the request and reply. Every path is measured
  in turns with the others (blocks of each, round after round), so that
  the drift of a shared machine hits them alike. The ratios are the
  targets of issue 13.

  The worker node reads the `FL_*` variables, as a release does, and takes
  extra emulator flags (`--worker-args`); both are printed with the table.
  """

  import Worker.Bench.Measure,
    only: [alternating_cpu: 5, alternating_latency: 3, alternating_rates: 4, durations: 2]

  import Worker.Bench.Report, only: [fmt: 1, info: 1, met: 1]

  alias Worker.Bench.{Beam, Floor, Guests, Local}

  @doc "Measures at `scale` (1.0, or 0.1 for `--quick`); returns the section."
  def run(scale, worker_args) do
    Mix.Task.run("compile")
    started_here = ensure_distributed!()
    {peer, node, data} = start_worker_node!(worker_args)

    try do
      measure(node, scale, worker_args)
    after
      :peer.stop(peer)
      File.rm_rf(data)
      if started_here, do: :net_kernel.stop()
    end
  end

  defp measure(node, scale, worker_args) do
    wasm = File.read!(Guests.wasm_path("hello"))
    args = %{"name" => "FunLess"}
    function = core_function("hello", wasm)
    worker = {:worker, node}
    :ok = GenServer.call(worker, {:store_function, %{function | code: wasm}}, 60_000)

    bare = Node.spawn(node, fn -> Beam.bare_loop(fn request -> request end) end)
    spawner = Node.spawn(node, fn -> Beam.bare_loop({:spawn, fn request -> request end}) end)
    invoke = fn -> {:ok, _} = GenServer.call(worker, {:invoke, function, args}, 60_000) end

    calls = [
      bare: fn -> :ping = GenServer.call(bare, :ping) end,
      spawner: fn -> :ping = GenServer.call(spawner, :ping) end,
      invoke: invoke
    ]

    # the same request, from a process on the worker node: no distribution
    in_vm = fn k ->
      :erpc.call(node, fn ->
        durations(k, fn -> {:ok, _} = Local.server_invoke(function, args) end)
      end)
    end

    n = round(10_000 * scale)
    info("over distribution: #{n} calls per path, in turns, to #{node}")
    samplers = Enum.map(calls, fn {name, call} -> {name, &durations(&1, call)} end)
    latency = alternating_latency(samplers ++ [in_vm: in_vm], n, 10)

    ms = if scale < 1, do: 150, else: 500
    rounds = if scale < 1, do: 2, else: 3
    info("over distribution: throughput, #{ms} ms per point, #{rounds} rounds")
    rates = alternating_rates(calls, [1, 2, 8, 64], ms, rounds)

    info("over distribution: CPU of both nodes, #{n} calls per path and count, #{rounds} rounds")
    os_pids = [System.pid(), :erpc.call(node, System, :pid, [])]
    cpu_calls = Keyword.take(calls, [:bare, :invoke])
    cpu = alternating_cpu(cpu_calls, [1, 64], n, rounds, os_pids)

    # the floor's own invocation after the idle gap a sequential Core leaves
    gap_us = round(latency.invoke.median)
    info("the floor: hello #{gap_us} µs after the last invocation, and back to back")
    Floor.build!()
    floor_gap = {gap_us, Floor.after_gap!("hello", ~s({"name":"FunLess"}), gap_us)}

    {:ok, reply} = GenServer.call(worker, {:invoke, function, args}, 60_000)

    sizes = %{
      request: :erlang.external_size({:invoke, function, args}),
      reply: :erlang.external_size({:ok, reply})
    }

    Process.exit(bare, :kill)
    Process.exit(spawner, :kill)
    report(latency, rates, cpu, floor_gap, sizes, worker_args)
  end

  # The function as the Core sends it to invoke: its `%Data.FunctionStruct{}`
  # with metadata and without code (the Core's modules need not exist here:
  # a struct is a map).
  defp core_function(name, wasm) do
    %{
      __struct__: Data.FunctionStruct,
      name: name,
      module: "bench",
      hash: :crypto.hash(:sha3_256, wasm),
      code: nil,
      metadata: %{
        __struct__: Data.FunctionMetadata,
        tag: "default",
        capacity: -1,
        params: [],
        main_func: nil,
        miniSL_services: [],
        miniSL_equation: {}
      }
    }
  end

  # true when this call made this VM a distributed node
  defp ensure_distributed! do
    if Node.alive?() do
      false
    else
      {_, 0} = System.cmd("epmd", ["-daemon"])
      {:ok, _} = :net_kernel.start([:"fl_bench_core_#{System.pid()}@127.0.0.1", :longnames])
      true
    end
  end

  # A worker node, booted as test/support/cluster.ex boots one: this VM's
  # code path, the application environment set before the application
  # starts, from this environment's `FL_*` variables as a release reads
  # them (`FL_EPOCH_TICK_US=1000 mix worker.bench --dist`, say), but its
  # own data directory. `worker_args` are extra emulator flags.
  defp start_worker_node!(worker_args) do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, peer, node} =
      :peer.start(%{
        name: :"fl_bench_worker_#{System.pid()}",
        host: ~c"127.0.0.1",
        longnames: true,
        args: Enum.map(worker_args, &String.to_charlist/1) ++ paths
      })

    data = Path.join(System.tmp_dir!(), "fl-bench-node-#{System.unique_integer([:positive])}")
    :ok = :erpc.call(node, Application, :load, [:worker])

    # no gossip: the Core is this VM, and nothing leaves loopback
    for {key, value} <-
          Worker.Config.from_env() ++ [data_dir: data, metrics_port: 0, discovery: :none] do
      :ok = :erpc.call(node, Application, :put_env, [:worker, key, value])
    end

    :ok = :erpc.call(node, Application, :put_env, [:logger, :level, :error])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:worker])
    {peer, node, data}
  end

  defp report(latency, rates, cpu, {gap_us, {after_gap, steady}}, sizes, worker_args) do
    bare = latency.bare.median
    sequential = latency.invoke.median / bare
    at_64 = rates[{:invoke, 64}] / rates[{:bare, 64}]
    flags = if worker_args == [], do: "none", else: "`#{Enum.join(worker_args, " ")}`"

    variables =
      case for({k, v} <- System.get_env(), String.starts_with?(k, "FL_"), do: "#{k}=#{v}") do
        [] -> "none"
        set -> "`#{Enum.join(Enum.sort(set), " ")}`"
      end

    rows = [
      {"bare call: `GenServer.call` to a process on the worker node that replies at once",
       latency.bare},
      {"bare call, replied by a process spawned per call (`:worker`'s shape, no work)",
       latency.spawner},
      {"`:worker {:invoke, ...}` from the Core (hello)", latency.invoke},
      {"`:worker {:invoke, ...}` from a process on the worker node (no distribution)",
       latency.in_vm}
    ]

    """
    ### Over distribution (a Core node calls a worker node on loopback)

    This VM stands in for the Core; a `:peer` node on 127.0.0.1 runs the
    worker application (extra emulator flags on the worker node: #{flags};
    `FL_*` variables: #{variables}).

    | path | median µs | p99 µs | × bare call |
    |---|---:|---:|---:|
    #{Enum.map_join(rows, "\n", fn {path, l} -> "| #{path} | #{fmt(l.median)} | #{fmt(l.p99)} | #{fmt(l.median / bare)} |" end)}

    | Core callers | bare calls/s | spawn-and-reply calls/s | invocations/s | invocations / bare calls |
    |---:|---:|---:|---:|---:|
    #{Enum.map_join([1, 2, 8, 64], "\n", fn c -> "| #{c} | #{round(rates[{:bare, c}])} | #{round(rates[{:spawner, c}])} | #{round(rates[{:invoke, c}])} | #{fmt(rates[{:invoke, c}] / rates[{:bare, c}])} |" end)}

    CPU seconds per 10,000 calls, in the Core's VM + the worker's (every
    thread, the BEAM's busy waiting included):

    | Core callers | bare calls | invocations | invocations / bare calls |
    |---:|---:|---:|---:|
    #{Enum.map_join([1, 64], "\n", fn c -> "| #{c} | #{cpu_cell(cpu[{:bare, c}])} | #{cpu_cell(cpu[{:invoke, c}])} | #{fmt(Enum.sum(cpu[{:invoke, c}]) / Enum.sum(cpu[{:bare, c}]))} |" end)}

    - the floor (no BEAM) of hello, one invocation #{gap_us} µs after the last (the gap of a sequential Core): #{fmt(after_gap)} µs of the calling thread's CPU, #{fmt(after_gap / steady)}× one back to back (#{fmt(steady)} µs)
    - sequential invocation / bare call: #{fmt(sequential)}× (target at most 1.3×: #{met(sequential <= 1.3)})
    - invocations / bare calls at 64 callers: #{fmt(at_64)}× (target at least 0.75×: #{met(at_64 >= 0.75)})
    - what crosses the link (external term format): the request #{sizes.request} bytes, the reply #{sizes.reply} bytes
    """
  end

  # CPU µs per call in each VM, as seconds per 10,000 calls: "total (core + worker)"
  defp cpu_cell([core, worker]) do
    s = fn us -> fmt(us * 10_000 / 1_000_000) end
    "#{s.(core + worker)} (#{s.(core)} + #{s.(worker)})"
  end
end
