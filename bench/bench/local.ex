defmodule Worker.Bench.Local do
  @moduledoc """
  The worker in this VM, against the floor (`Worker.Bench.Floor`) measured
  in the same run. Functions: the examples `hello` and `hello_command` (the
  same greeting as a WASI command, arguments on stdin and result on
  stdout), the test guest `echo`, and a no-op WAT module.

    * latency, µs per invocation (median, p99, × floor), of each path: the
      floor; `Worker.Runtime.invoke/3`, warm, from one process; the Core's
      `{:invoke, ...}` message to the `:worker` process, from a local
      process. For hello, also the floor with Wasmtime's default slot
      reset, and the FunLess worker's method, reproduced: the module
      deserialized for every call, and the host calls as messages to an
      Elixir process (an Agent holding input and response, as the FunLess
      worker does), around the same guest run;
    * throughput of hello at 1, 2, 8 and 64 callers, the FunLess method's
      at 1 and 2;
    * what the BEAM itself costs (`Worker.Bench.Beam`), measured here and
      printed last;
    * cold starts of hello, from an artifact in the store and from scratch;
    * memory: resident bytes per cached module, and per in-flight
      invocation (900 concurrent, suspended in a WASI sleep), on fresh
      pool slots and on warm ones.

  Expects the worker application started and the `floor` binary built.
  """

  import Worker.Bench.Measure
  import Worker.Bench.Report, only: [fmt: 1, info: 1]

  alias Worker.Bench.{Beam, Floor, Guests}
  alias Worker.Runtime

  @in_flight 900

  @doc "Measures, `iterations` invocations per latency and `seconds` per rate; returns the sections."
  def run(iterations, seconds) do
    cases = [
      {"hello", File.read!(Guests.wasm_path("hello")), %{"name" => "FunLess"},
       ~s({"name":"FunLess"})},
      {"echo", File.read!(Guests.wasm_path("echo")), %{"a" => [1, 2, 3], "b" => "text"},
       ~s({"a":[1,2,3],"b":"text"})},
      {"noop", File.read!(Guests.noop()), %{}, "{}"},
      # a WASI command (stdin, stdout) beside the FunLess modules
      {"hello_command", File.read!(Guests.wasm_path("hello_command")), "FunLess", ~s("FunLess")}
    ]

    info("latency: #{iterations} invocations per path")

    latency_rows =
      Enum.flat_map(cases, fn {name, wasm, args, json} ->
        floor = Floor.run!(name, json, iterations, 1)
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

    floor_hello = Floor.run!("hello", hello_json, iterations, 1)
    # The floor as the issue measured it: Wasmtime's default slot reset.
    default_reset =
      Floor.run!("hello", hello_json, iterations, 1, [{"FL_POOL_KEEP_RESIDENT_KB", "0"}])

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
    floor_2 = Floor.run!("hello", hello_json, iterations, 2).ops

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
    beam = Beam.measure(hello, hello_args, iterations, seconds)

    info("cold starts")

    from_artifact =
      median_ms(20, fn ->
        {:ok, art} = Worker.Store.get_artifact(Worker.Store.code_hash(hello_wasm))
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

    report(
      latency_rows,
      throughput,
      {floor_1, floor_2},
      funless_rates,
      {from_artifact, from_scratch},
      {per_module, per_invocation}
    ) <> "\n" <> Beam.report(beam, floor_hello.median)
  end

  ## Paths

  @doc "Stores `wasm` in `:worker` as the function `name`; returns it without its code."
  def store!(name, wasm) do
    fun = %{name: name, module: "bench", hash: :crypto.hash(:sha3_256, wasm), code: wasm}
    :ok = GenServer.call(:worker, {:store_function, fun}, 60_000)
    Map.delete(fun, :code)
  end

  @doc "The Core's `{:invoke, ...}` message to the `:worker` process of this node."
  def server_invoke(fun, args), do: GenServer.call(:worker, {:invoke, fun, args}, 60_000)

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

  ## Memory

  defp memory(artifact, wasm) do
    collect_all()
    before = rss()
    modules = for _ <- 1..100, do: elem(Runtime.load(artifact, byte_size(wasm)), 1)
    per_module = (rss() - before) / 100
    # keep them alive until measured
    _ = length(modules)

    {:ok, sleeper} = Runtime.compile(File.read!(Guests.wasi_sleep()))

    # a first wave on fresh pool slots, then a second on the slots it warmed
    collect_all()
    before = rss()
    fresh = (in_flight(sleeper, @in_flight) - before) / @in_flight
    collect_all()
    before = rss()
    warm = (in_flight(sleeper, @in_flight) - before) / @in_flight
    {per_module, {fresh, warm}}
  end

  ## Report

  defp row(path, function, median, p99, floor), do: {path, function, median, p99, median / floor}

  defp report(
         latency,
         throughput,
         {floor_1, floor_2},
         funless_rates,
         {artifact_ms, scratch_ms},
         {per_module, per_inv}
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
    """
  end
end
