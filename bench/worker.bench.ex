defmodule Mix.Tasks.Worker.Bench do
  @shortdoc "Measures invocation cost against Wasmtime's own floor"
  @moduledoc """
  Measures the worker and prints one table (markdown), in about a minute
  and a half:

    * **over distribution** - as a FunLess Core sees the worker: this VM
      stands in for the Core, and a `:peer` node on 127.0.0.1 runs the
      worker application (`:worker` registered). In turns, in the same
      run: a bare `GenServer.call` to a process on the worker node that
      replies at once (the link's own cost), the same from a process that
      spawns a process per call to reply (`:worker`'s shape with no work),
      the Core's `{:invoke, ...}` of hello, and the same request from a
      process on the worker node; then calls/s at 1, 2, 8 and 64 Core
      callers. The ratios are the targets of issue 13;
    * **floor** - the `floor` binary of `native/worker_runtime`: the same
      runtime and engine configuration with no BEAM around it;
    * **runtime** - `Worker.Runtime.invoke/3`, warm, from one process;
    * **server** - the Core's `{:invoke, ...}` message to the `:worker`
      process, from a local process;
    * **funless method** - the FunLess worker's method, reproduced: the
      module deserialized for every call, and the host calls as messages to
      an Elixir process (an Agent holding input and response, as the FunLess
      worker does), around the same guest run;
    * throughput at 1, 2, 8 and 64 callers, cold starts, and memory;
    * what the BEAM itself costs on this machine, with no worker code: a
      `GenServer.call`, a call to a bare process that runs the runtime
      itself (the least any `:worker` design costs), message round trips
      within and across schedulers, and how a bare process that spawns per
      request scales.

  Each latency is µs per invocation (median and p99) and its ratio to the
  floor measured in the same run. Functions: the examples `hello` and
  `hello_command` (the same greeting as a WASI command, arguments on stdin
  and result on stdout) from `functions/`, the test guest `echo` from
  `test/guests/`, and a no-op WAT module; then the components `hello_cli`
  and `hello_http` (examples, `functions/components/`), `echo_cli`,
  `echo_http` and the sleeper `probe_cli` (test guests,
  `test/guests/components/`).

      mix worker.bench [--quick] [--dist] [--worker-args "+sbwt none"] [--out FILE]

    * `--quick` runs a tenth of the iterations, for a smoke test (CI runs
      it); the distribution part then takes a few seconds;
    * `--dist` runs the distribution part alone;
    * `--worker-args` passes emulator flags to the worker node, to measure
      VM flags; the worker node also reads the `FL_*` variables, as a
      release does (both are printed with the table);
    * `--out` writes the table to a file as well.
  """
  use Mix.Task

  alias Worker.{MixCargo, Runtime}

  @root Path.expand("..", __DIR__)
  # the examples (functions/) and the test guests (test/guests/), each a
  # wasm32-wasip1 workspace with a wasm32-wasip2 one in components/
  @functions Path.join(@root, "functions")
  @guests Path.join([@root, "test", "guests"])
  @guest_names ~w(echo echo_cli echo_http probe_cli)
  @noop Path.join(@root, "test/fixtures/noop.wat")
  @in_flight 900
  @components ~w(hello_cli echo_cli hello_http echo_http)
  @in_flight_components 200

  @impl true
  def run(argv) do
    {opts, _, _} =
      OptionParser.parse(argv,
        strict: [quick: :boolean, dist: :boolean, out: :string, worker_args: :string]
      )

    scale = if opts[:quick], do: 0.1, else: 1.0
    worker_args = String.split(opts[:worker_args] || "")
    build_functions!()
    dist = distribution(scale, worker_args)
    table = if opts[:dist], do: dist, else: dist <> "\n" <> local(scale)
    IO.puts(table)
    if out = opts[:out], do: File.write!(out, table)
  end

  defp local(scale) do
    data = Path.join(System.tmp_dir!(), "fl-bench-#{System.unique_integer([:positive])}")
    Application.put_env(:worker, :data_dir, data)
    build_floor!()
    Mix.Task.run("app.start")
    Logger.configure(level: :error)

    iterations = round(20_000 * scale)
    seconds = max(round(2 * scale), 1)

    cases = [
      {"hello", File.read!(wasm_path("hello")), %{"name" => "FunLess"}, ~s({"name":"FunLess"})},
      {"echo", File.read!(wasm_path("echo")), %{"a" => [1, 2, 3], "b" => "text"},
       ~s({"a":[1,2,3],"b":"text"})},
      {"noop", File.read!(@noop), %{}, "{}"},
      # a WASI command (stdin, stdout) beside the FunLess modules
      {"hello_command", File.read!(wasm_path("hello_command")), "FunLess", ~s("FunLess")}
    ]

    info("latency: #{iterations} invocations per path")

    latency_rows =
      Enum.flat_map(cases, fn {name, wasm, args, json} ->
        floor = floor!(name, json, iterations, 1)
        {:ok, module} = Runtime.compile(wasm)
        fun = store!(name, wasm)
        runtime = latency(iterations, fn -> {:ok, _} = Runtime.invoke(module, args) end)
        server = latency(iterations, fn -> {:ok, _} = server_invoke(fun, args) end)

        [
          row("floor (Rust, no BEAM)", name, floor.median, floor.p99, floor.median),
          row("Worker.Runtime.invoke/3", name, runtime.median, runtime.p99, floor.median),
          row(":worker {:invoke, ...}", name, server.median, server.p99, floor.median)
        ]
      end)

    {"hello", hello_wasm, hello_args, hello_json} = hd(cases)
    {:ok, hello} = Runtime.compile(hello_wasm)
    hello_fun = store!("hello", hello_wasm)
    {:ok, artifact} = Runtime.serialize(hello)

    funless =
      latency(div(iterations, 4), fn ->
        {:ok, _} = funless_method(artifact, hello_wasm, hello_args)
      end)

    floor_hello = floor!("hello", hello_json, iterations, 1)
    # The floor as the issue measured it: Wasmtime's default slot reset.
    default_reset =
      floor!("hello", hello_json, iterations, 1, [{"FL_POOL_KEEP_RESIDENT_KB", "0"}])

    latency_rows =
      latency_rows ++
        [
          row(
            "floor, Wasmtime's default slot reset",
            "hello",
            default_reset.median,
            default_reset.p99,
            floor_hello.median
          ),
          row(
            "FunLess method (emulated)",
            "hello",
            funless.median,
            funless.p99,
            floor_hello.median
          )
        ]

    info("throughput: #{seconds} s per point")
    floor_1 = floor_hello.ops
    floor_2 = floor!("hello", hello_json, iterations, 2).ops

    throughput =
      for callers <- [1, 2, 8, 64] do
        {callers, rate(callers, seconds, fn -> {:ok, _} = Runtime.invoke(hello, hello_args) end),
         rate(callers, seconds, fn -> {:ok, _} = server_invoke(hello_fun, hello_args) end)}
      end

    funless_rates =
      for callers <- [1, 2] do
        {callers,
         rate(callers, seconds, fn ->
           {:ok, _} = funless_method(artifact, hello_wasm, hello_args)
         end)}
      end

    info("what the BEAM itself costs")
    beam = beam_costs(hello, hello_args, iterations, seconds)

    info("cold starts")

    from_artifact =
      median_ms(20, fn ->
        {:ok, art} = Worker.Store.get_artifact(hello_wasm)
        {:ok, module} = Runtime.load(art, byte_size(hello_wasm))
        {:ok, _} = Runtime.invoke(module, hello_args)
      end)

    from_scratch =
      median_ms(10, fn ->
        {:ok, module} = Runtime.compile(hello_wasm)
        {:ok, _} = Runtime.invoke(module, hello_args)
      end)

    info("memory")
    {per_module, per_invocation} = memory(artifact, hello_wasm)

    table =
      report(
        latency_rows,
        throughput,
        {floor_1, floor_2},
        funless_rates,
        {from_artifact, from_scratch},
        {per_module, per_invocation},
        {beam, floor_hello.median}
      )

    table = table <> "\n" <> components(iterations)
    File.rm_rf(data)
    table
  end

  ## Components

  # Each kind of component beside the FunLess module of the same function:
  # the floor, the same component in a default Wasmtime embedding (the
  # floor binary's baseline), Worker.Runtime.invoke/3 and :worker; then
  # cold starts from an artifact and memory.
  defp components(iterations) do
    info("components")
    hello = {%{"name" => "FunLess"}, ~s({"name":"FunLess"})}
    echo = {%{"a" => [1, 2, 3], "b" => "text"}, ~s({"a":[1,2,3],"b":"text"})}

    cases = [
      {"hello", "funless", File.read!(wasm_path("hello")), hello},
      {"hello_cli", "cli_component", File.read!(component_path("hello_cli")), hello},
      {"hello_http", "http_component", File.read!(component_path("hello_http")), hello},
      {"echo", "funless", File.read!(wasm_path("echo")), echo},
      {"echo_cli", "cli_component", File.read!(component_path("echo_cli")), echo},
      {"echo_http", "http_component", File.read!(component_path("echo_http")), echo}
    ]

    measured =
      for {name, kind, wasm, {args, json}} <- cases do
        floor = floor!(name, json, iterations, 1)
        {:ok, module} = Runtime.compile(wasm)
        fun = store!(name, wasm)
        runtime = latency(iterations, fn -> {:ok, _} = Runtime.invoke(module, args) end)
        server = latency(iterations, fn -> {:ok, _} = server_invoke(fun, args) end)

        from_artifact =
          median_ms(20, fn ->
            {:ok, art} = Worker.Store.get_artifact(wasm)
            {:ok, module} = Runtime.load(art, byte_size(wasm))
            {:ok, _} = Runtime.invoke(module, args)
          end)

        %{
          name: name,
          kind: kind,
          floor: floor,
          runtime: runtime,
          server: server,
          artifact_ms: from_artifact
        }
      end

    {per_component, per_invocation} = component_memory()

    rows =
      Enum.map_join(measured, "\n", fn m ->
        baseline =
          case m.floor.baseline do
            nil -> "-"
            b -> "#{fmt(b.median)} (floor #{fmt(m.floor.median / b.median)}×)"
          end

        "| #{m.name} | #{m.kind} | #{fmt(m.floor.median)} | #{baseline} | " <>
          "#{fmt(m.runtime.median)} (#{fmt(m.runtime.median / m.floor.median)}×) | " <>
          "#{fmt(m.server.median)} (#{fmt(m.server.median / m.floor.median)}×) | " <>
          "#{fmt(m.floor.cold_us / 1000)} | #{fmt(m.artifact_ms)} |"
      end)

    """
    ### Components beside FunLess modules (median µs per invocation, warm)

    | function | kind | floor | default Wasmtime pooling | Worker.Runtime.invoke/3 (× floor) | :worker {:invoke, ...} (× floor) | cold start in the floor, ms | cold start from the store, ms |
    |---|---|---:|---:|---:|---:|---:|---:|
    #{rows}

    - default Wasmtime pooling: the same component in the floor binary's baseline, `Config::new()` with the default pooling allocator and wasmtime-wasi's own WASI and wasi:http, a fresh store per invocation, in the same run;
    - cold start: loading the artifact and the first invocation (in the floor: from bytes in memory; from the store: read, verify, load, invoke, as a restarted worker does);
    - memory: #{round(per_component)} bytes resident per cached component (hello_http, loaded from an artifact); per in-flight component invocation (probe_cli, hello_cli with a hook to sleep, #{@in_flight_components} concurrent, each asleep in a WASI 0.2 sleep), #{round(elem(per_invocation, 0))} bytes on fresh pool slots, #{round(elem(per_invocation, 1))} reusing warm ones.
    """
  end

  defp component_memory do
    wasm = File.read!(component_path("hello_http"))
    {:ok, module} = Runtime.compile(wasm)
    {:ok, artifact} = Runtime.serialize(module)
    collect_all()
    before = rss()
    modules = for _ <- 1..100, do: elem(Runtime.load(artifact, byte_size(wasm)), 1)
    per_component = (rss() - before) / 100
    _ = length(modules)

    # the test guest probe_cli: hello_cli with a hook to sleep
    {:ok, sleeper} = Runtime.compile(File.read!(component_path("probe_cli")))
    sleep = %{"sleep_ms" => 800}
    n = @in_flight_components
    # a first wave on fresh pool slots, then a second on the slots it warmed
    collect_all()
    before = rss()
    fresh = (in_flight(sleeper, n, sleep) - before) / n
    collect_all()
    before = rss()
    warm = (in_flight(sleeper, n, sleep) - before) / n
    {per_component, {fresh, warm}}
  end

  ## Over distribution

  # The Core's view, as a FunLess Core sees the worker: this VM stands in
  # for the Core, and a `:peer` node on loopback runs the worker
  # application, `:worker` registered, as a worker node does. Every path is
  # measured in turns with the others (blocks of each, round after round),
  # so that the drift of a shared machine hits them alike.
  defp distribution(scale, worker_args) do
    Mix.Task.run("compile")
    started_here = ensure_distributed!()
    {peer, node, data} = start_worker_node!(worker_args)

    try do
      measure_distribution(node, scale, worker_args)
    after
      :peer.stop(peer)
      File.rm_rf(data)
      if started_here, do: :net_kernel.stop()
    end
  end

  defp measure_distribution(node, scale, worker_args) do
    wasm = File.read!(wasm_path("hello"))
    args = %{"name" => "FunLess"}
    function = core_function("hello", wasm)
    worker = {:worker, node}
    :ok = GenServer.call(worker, {:store_function, %{function | code: wasm}}, 60_000)

    bare = Node.spawn(node, fn -> bare_loop(fn request -> request end) end)
    spawner = Node.spawn(node, fn -> bare_loop({:spawn, fn request -> request end}) end)
    invoke = fn -> {:ok, _} = GenServer.call(worker, {:invoke, function, args}, 60_000) end

    calls = [
      bare: fn -> :ping = GenServer.call(bare, :ping) end,
      spawner: fn -> :ping = GenServer.call(spawner, :ping) end,
      invoke: invoke
    ]

    # the same request, from a process on the worker node: no distribution
    in_vm = fn k ->
      :erpc.call(node, fn -> durations(k, fn -> {:ok, _} = server_invoke(function, args) end) end)
    end

    n = round(10_000 * scale)
    info("over distribution: #{n} calls per path, in turns, to #{node}")
    samplers = Enum.map(calls, fn {name, call} -> {name, &durations(&1, call)} end)
    latency = alternating_latency(samplers ++ [in_vm: in_vm], n, 10)

    ms = if scale < 1, do: 150, else: 500
    rounds = if scale < 1, do: 2, else: 3
    info("over distribution: throughput, #{ms} ms per point, #{rounds} rounds")
    rates = alternating_rates(calls, [1, 2, 8, 64], ms, rounds)

    {:ok, reply} = GenServer.call(worker, {:invoke, function, args}, 60_000)

    sizes = %{
      request: :erlang.external_size({:invoke, function, args}),
      reply: :erlang.external_size({:ok, reply})
    }

    Process.exit(bare, :kill)
    Process.exit(spawner, :kill)
    dist_report(latency, rates, sizes, worker_args)
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

  # `samplers` are `{name, fn k -> k durations end}`; each runs `rounds`
  # blocks, in turns, after a warm-up.
  defp alternating_latency(samplers, n, rounds) do
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

  # Calls/s of each path at each number of callers, the median of `rounds`
  # turns; within a round, the paths follow each other at each count.
  defp alternating_rates(calls, counts, ms, rounds) do
    Enum.reduce(1..rounds, %{}, fn _, acc ->
      for callers <- counts, {name, call} <- calls, reduce: acc do
        acc ->
          rate = rate_ms(callers, ms, call)
          Map.update(acc, {name, callers}, [rate], &[rate | &1])
      end
    end)
    |> Map.new(fn {key, rates} -> {key, Enum.at(Enum.sort(rates), div(length(rates), 2))} end)
  end

  # ns per call, of k calls
  defp durations(k, fun) do
    for _ <- 1..k do
      started = System.monotonic_time(:nanosecond)
      fun.()
      System.monotonic_time(:nanosecond) - started
    end
  end

  defp summary(durations) do
    sorted = Enum.sort(durations)
    n = length(sorted)
    %{median: Enum.at(sorted, div(n, 2)) / 1000, p99: Enum.at(sorted, div(n * 99, 100)) / 1000}
  end

  # Calls/s from `callers` processes for about `ms`, over the time they
  # actually took (the last one stops after its call in flight).
  defp rate_ms(callers, ms, fun) do
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

  defp dist_report(latency, rates, sizes, worker_args) do
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

    - sequential invocation / bare call: #{fmt(sequential)}× (target at most 1.3×: #{met(sequential <= 1.3)})
    - invocations / bare calls at 64 callers: #{fmt(at_64)}× (target at least 0.75×: #{met(at_64 >= 0.75)})
    - what crosses the link (external term format): the request #{sizes.request} bytes, the reply #{sizes.reply} bytes
    """
  end

  defp met(true), do: "met"
  defp met(false), do: "not met"

  ## Paths

  defp store!(name, wasm) do
    fun = %{name: name, module: "bench", hash: :crypto.hash(:sha3_256, wasm), code: wasm}
    :ok = GenServer.call(:worker, {:store_function, fun}, 60_000)
    Map.delete(fun, :code)
  end

  defp server_invoke(fun, args), do: GenServer.call(:worker, {:invoke, fun, args}, 60_000)

  # The FunLess worker (Wasmex) deserializes the module on every call and
  # serves each host call in an Elixir process: here an Agent holds the
  # input and takes the response, as its runner does, around our guest run.
  defp funless_method(artifact, wasm, args) do
    {:ok, agent} = Agent.start_link(fn -> %{input: args, response: nil} end)
    {:ok, module} = Runtime.load(artifact, byte_size(wasm))
    input = Agent.get(agent, & &1.input)
    {:ok, response} = Runtime.invoke(module, input)
    :ok = Agent.update(agent, &%{&1 | response: response})
    result = Agent.get(agent, & &1.response)
    Agent.stop(agent)
    {:ok, result}
  end

  ## The BEAM's own costs

  # Bounds that no design of the `:worker` path can beat on this machine:
  # the call itself, the call around an invocation with no request
  # handling at all, a message round trip within and across schedulers, and
  # how a process that spawns per request scales.
  defp beam_costs(module, args, iterations, seconds) do
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

  defp bare_loop({:spawn, fun} = handler) do
    receive do
      {:"$gen_call", from, request} ->
        spawn(fn -> GenServer.reply(from, fun.(request)) end)
        bare_loop(handler)
    end
  end

  defp bare_loop(fun) do
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

  ## Measuring

  defp latency(n, fun) do
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

  defp rate(callers, seconds, fun) do
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

  defp median_ms(n, fun) do
    samples = for _ <- 1..n, do: elem(:timer.tc(fun), 0)
    Enum.at(Enum.sort(samples), div(n, 2)) / 1000
  end

  defp memory(artifact, wasm) do
    collect_all()
    before = rss()
    modules = for _ <- 1..100, do: elem(Runtime.load(artifact, byte_size(wasm)), 1)
    per_module = (rss() - before) / 100
    # keep them alive until measured
    _ = length(modules)

    {:ok, sleeper} = Runtime.compile(File.read!(Path.join(@root, "test/fixtures/wasi_sleep.wat")))

    # a first wave on fresh pool slots, then a second on the slots it warmed
    collect_all()
    before = rss()
    fresh = (in_flight(sleeper, @in_flight) - before) / @in_flight
    collect_all()
    before = rss()
    warm = (in_flight(sleeper, @in_flight) - before) / @in_flight
    {per_module, {fresh, warm}}
  end

  # Starts n invocations that suspend in a WASI sleep; returns the RSS while
  # they are all in flight.
  defp in_flight(module, n, args \\ %{}) do
    tasks = for _ <- 1..n, do: Task.async(fn -> Runtime.invoke(module, args, timeout: 1_000) end)
    Process.sleep(500)
    resident = rss()
    Task.await_many(tasks, 10_000)
    resident
  end

  # Collects every process, then lets the allocators hand back what they
  # will, so that the next RSS reading is a settled baseline.
  defp collect_all do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    Process.sleep(300)
  end

  defp rss do
    [_size, resident | _] = File.read!("/proc/self/statm") |> String.split()
    String.to_integer(resident) * 4096
  end

  ## Floor

  defp floor!(name, json, iterations, threads, env \\ []) do
    path =
      cond do
        name == "noop" -> @noop
        name in @components -> component_path(name)
        true -> wasm_path(name)
      end

    bin = Path.join(MixCargo.release_dir(@root), "floor")

    {out, 0} =
      System.cmd(bin, [path, json, Integer.to_string(iterations), Integer.to_string(threads)],
        env: env
      )

    fields =
      out
      |> String.split()
      |> Map.new(fn kv -> List.to_tuple(String.split(kv, "=", parts: 2)) end)

    %{
      median: String.to_float(fields["median_us"]),
      p99: String.to_float(fields["p99_us"]),
      ops: String.to_integer(fields["ops_per_s"]),
      cold_us: String.to_integer(fields["cold_us"]),
      baseline:
        fields["baseline_median_us"] &&
          %{
            median: String.to_float(fields["baseline_median_us"]),
            p99: String.to_float(fields["baseline_p99_us"])
          }
    }
  end

  defp build_floor!,
    do: cargo_build!(@root, ["--quiet", "-p", "worker_runtime", "--bin", "floor"])

  defp build_functions! do
    for workspace <- [@functions, @guests] do
      cargo_build!(workspace, ["--quiet", "--target", "wasm32-wasip1"])
      cargo_build!(Path.join(workspace, "components"), ["--quiet", "--target", "wasm32-wasip2"])
    end
  end

  defp workspace(name) when name in @guest_names, do: @guests
  defp workspace(_example), do: @functions

  defp wasm_path(name),
    do: Path.join(MixCargo.release_dir(workspace(name), "wasm32-wasip1"), name <> ".wasm")

  defp component_path(name),
    do:
      Path.join(
        MixCargo.release_dir(Path.join(workspace(name), "components"), "wasm32-wasip2"),
        name <> ".wasm"
      )

  defp cargo_build!(workspace, args) do
    {_, status} =
      System.cmd(MixCargo.cargo!(), ["build", "--release" | args],
        cd: workspace,
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0, do: Mix.raise("cargo build failed in #{workspace} (exit status #{status})")
  end

  ## Report

  defp row(path, function, median, p99, floor), do: {path, function, median, p99, median / floor}

  defp report(
         latency,
         throughput,
         {floor_1, floor_2},
         funless_rates,
         {artifact_ms, scratch_ms},
         {per_module, per_inv},
         {beam, floor}
       ) do
    {_, runtime_1, server_1} = List.keyfind(throughput, 1, 0)
    {_, runtime_2, server_2} = List.keyfind(throughput, 2, 0)
    {_, funless_2} = List.keyfind(funless_rates, 2, 0)

    """
    ### Latency (µs per invocation, warm)

    | path | function | median | p99 | × floor |
    |---|---|---:|---:|---:|
    #{Enum.map_join(latency, "\n", fn {p, f, m, p99, r} -> "| #{p} | #{f} | #{fmt(m)} | #{fmt(p99)} | #{fmt(r)} |" end)}

    ### Throughput (hello, invocations/s)

    | callers | Worker.Runtime.invoke/3 | :worker {:invoke, ...} |
    |---:|---:|---:|
    #{Enum.map_join(throughput, "\n", fn {c, r, s} -> "| #{c} | #{round(r)} | #{round(s)} |" end)}

    - scaling, 2 callers / 1: runtime #{fmt(runtime_2 / runtime_1)}×, server #{fmt(server_2 / server_1)}× (floor, 2 threads / 1: #{fmt(floor_2 / floor_1)}×)
    - FunLess method (emulated): #{Enum.map_join(funless_rates, ", ", fn {c, r} -> "#{round(r)}/s with #{c} caller#{if c > 1, do: "s"}" end)}
    - :worker path vs FunLess method, 2 callers: #{fmt(server_2 / funless_2)}×

    ### Cold start (hello, to the first result)

    | from | ms |
    |---|---:|
    | precompiled artifact on disk (read, verify, load, invoke) | #{fmt(artifact_ms)} |
    | Wasm, compiled from scratch | #{fmt(scratch_ms)} |

    ### Memory

    | what | resident bytes |
    |---|---:|
    | per cached module (hello, loaded from an artifact) | #{round(per_module)} |
    | per in-flight invocation, fresh pool slots (#{@in_flight} concurrent, suspended in a WASI sleep) | #{round(elem(per_inv, 0))} |
    | per in-flight invocation, reusing warm slots | #{round(elem(per_inv, 1))} |

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

  defp fmt_us(nil), do: "n/a"
  defp fmt_us(us), do: "#{fmt(us)} µs"

  defp fmt(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 2)
  defp fmt(x), do: to_string(x)

  defp info(text), do: Mix.shell().info("==> " <> text)
end
