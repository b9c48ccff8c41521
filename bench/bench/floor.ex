defmodule Worker.Bench.Floor do
  @moduledoc """
  The floor: the `floor` binary of `native/worker_runtime`, the same
  runtime and engine configuration as the worker's with no BEAM around it.
  It runs a function a number of times from a number of threads and
  reports its latency (median and p99, µs), its invocations/s, its cold
  start, and for components the same in a default Wasmtime embedding (its
  baseline). Every ratio "× floor" divides by a floor from the same run.
  """

  alias Worker.Bench.Guests
  alias Worker.MixCargo

  @components ~w(hello_cli echo_cli hello_http echo_http)

  @doc "Builds the `floor` binary."
  def build!,
    do: Guests.cargo_build!(Guests.root(), ["--quiet", "-p", "worker_runtime", "--bin", "floor"])

  @doc """
  Runs the function `name` (a module, a component or `"noop"`) on `json`,
  `iterations` times from `threads` threads, with `env` set.
  """
  def run!(name, json, iterations, threads, env \\ []) do
    fields = floor!(name, json, iterations, threads, env)

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

  @doc """
  CPU µs of one invocation of `name` started `gap_us` after the last one
  ended, and of one back to back, in the floor: `{after_gap, back_to_back}`.
  """
  def after_gap!(name, json, gap_us) do
    fields = floor!(name, json, 1_000, 1, [{"FLOOR_GAP_US", Integer.to_string(gap_us)}])
    {String.to_float(fields["after_gap_cpu_us"]), String.to_float(fields["back_to_back_cpu_us"])}
  end

  defp floor!(name, json, iterations, threads, env) do
    path =
      cond do
        name == "noop" -> Guests.noop()
        name in @components -> Guests.component_path(name)
        true -> Guests.wasm_path(name)
      end

    bin = Path.join(MixCargo.release_dir(Guests.root()), "floor")

    {out, 0} =
      System.cmd(bin, [path, json, Integer.to_string(iterations), Integer.to_string(threads)],
        env: env
      )

    out
    |> String.split()
    |> Map.new(fn kv -> List.to_tuple(String.split(kv, "=", parts: 2)) end)
  end
end
