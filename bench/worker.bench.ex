defmodule Mix.Tasks.Worker.Bench do
  @shortdoc "Measures invocation cost against Wasmtime's own floor"
  @moduledoc """
  Measures the worker and prints one table (markdown), in about a minute
  and a half. Its parts, in this order, each a module of `bench/bench/`:

    * `Worker.Bench.Distribution` - over distribution, as a FunLess Core
      sees the worker: this VM stands in for the Core, and a `:peer` node
      on 127.0.0.1 runs the worker application; the ratios are the targets
      of issue 13;
    * `Worker.Bench.Local` - in this VM: latency per path (the floor,
      `Worker.Runtime.invoke/3`, `:worker`, the FunLess worker's method
      emulated) against the floor, throughput, cold starts and memory,
      with what the BEAM itself costs (`Worker.Bench.Beam`);
    * `Worker.Bench.Components` - each kind of component beside the
      FunLess module of the same function.

  The floor is the `floor` binary of `native/worker_runtime`: the same
  runtime and engine configuration with no BEAM around it
  (`Worker.Bench.Floor`). The functions, built first, are examples from
  `functions/` and test guests from `test/guests/` (`Worker.Bench.Guests`).

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

  alias Worker.Bench.{Components, Distribution, Floor, Guests, Local}

  @impl true
  def run(argv) do
    {opts, _, _} =
      OptionParser.parse(argv,
        strict: [quick: :boolean, dist: :boolean, out: :string, worker_args: :string]
      )

    scale = if opts[:quick], do: 0.1, else: 1.0
    worker_args = String.split(opts[:worker_args] || "")
    Guests.build!()
    dist = Distribution.run(scale, worker_args)
    table = if opts[:dist], do: dist, else: dist <> "\n" <> local(scale)
    IO.puts(table)
    if out = opts[:out], do: File.write!(out, table)
  end

  # The parts in this VM, which runs the worker application on a data
  # directory of its own.
  defp local(scale) do
    data = Path.join(System.tmp_dir!(), "fl-bench-#{System.unique_integer([:positive])}")
    Application.put_env(:worker, :data_dir, data)
    # the runtime's default (WASI 0.3 off), not the test suite's
    Application.delete_env(:worker, :wasi_p3)
    Floor.build!()
    Mix.Task.run("app.start")
    Logger.configure(level: :error)

    iterations = round(20_000 * scale)
    seconds = max(round(2 * scale), 1)
    table = Local.run(iterations, seconds) <> "\n" <> Components.run(iterations)
    File.rm_rf(data)
    table
  end
end
