defmodule Worker.Bench.Components do
  @moduledoc """
  Each kind of component beside the FunLess module of the same function:
  hello and echo as FunLess modules, as WASI CLI components (`hello_cli`,
  `echo_cli`) and as wasi:http components (`hello_http`, `echo_http`).
  For each, median µs per invocation, warm: the floor, the same function
  in a default Wasmtime embedding (the floor binary's baseline),
  `Worker.Runtime.invoke/3` and `:worker`, the last two × floor; then cold
  starts, in the floor and from the store. Memory: resident bytes per
  cached component (`hello_http`, loaded from an artifact), and per
  in-flight component invocation (the test guest `probe_cli`, 200
  concurrent, each asleep in a WASI 0.2 sleep) on fresh pool slots and on
  warm ones.

  Expects the worker application started and the `floor` binary built.
  """

  import Worker.Bench.Measure
  import Worker.Bench.Report, only: [fmt: 1, info: 1]

  alias Worker.Bench.{Floor, Guests, Local}
  alias Worker.Runtime

  @in_flight_components 200

  @doc "Measures, `iterations` invocations per latency; returns the section."
  def run(iterations) do
    info("components")
    hello = {%{"name" => "FunLess"}, ~s({"name":"FunLess"})}
    echo = {%{"a" => [1, 2, 3], "b" => "text"}, ~s({"a":[1,2,3],"b":"text"})}

    cases = [
      {"hello", "funless", File.read!(Guests.wasm_path("hello")), hello},
      {"hello_cli", "cli_component", File.read!(Guests.component_path("hello_cli")), hello},
      {"hello_http", "http_component", File.read!(Guests.component_path("hello_http")), hello},
      {"echo", "funless", File.read!(Guests.wasm_path("echo")), echo},
      {"echo_cli", "cli_component", File.read!(Guests.component_path("echo_cli")), echo},
      {"echo_http", "http_component", File.read!(Guests.component_path("echo_http")), echo}
    ]

    measured =
      for {name, kind, wasm, {args, json}} <- cases do
        floor = Floor.run!(name, json, iterations, 1)
        {:ok, module} = Runtime.compile(wasm)
        fun = Local.store!(name, wasm)
        runtime = latency(iterations, fn -> {:ok, _} = Runtime.invoke(module, args) end)
        server = latency(iterations, fn -> {:ok, _} = Local.server_invoke(fun, args) end)

        from_artifact =
          median_ms(20, fn ->
            {:ok, art} = Worker.Store.get_artifact(Worker.Store.code_hash(wasm))
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

    {per_component, per_invocation} = memory()

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

  defp memory do
    wasm = File.read!(Guests.component_path("hello_http"))
    {:ok, module} = Runtime.compile(wasm)
    {:ok, artifact} = Runtime.serialize(module)
    collect_all()
    before = rss()
    modules = for _ <- 1..100, do: elem(Runtime.load(artifact, byte_size(wasm)), 1)
    per_component = (rss() - before) / 100
    _ = length(modules)

    # the test guest probe_cli: hello_cli with a hook to sleep
    {:ok, sleeper} = Runtime.compile(File.read!(Guests.component_path("probe_cli")))
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
end
