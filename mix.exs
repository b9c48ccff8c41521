# The compiler for the Rust NIF is part of this repository (rustler's own
# lives on hex.pm). It must exist before the Elixir compiler loads
# Worker.Native, so it is loaded here rather than compiled from lib/, with
# the cargo lookup it shares with the benchmark and the test fixtures.
Code.require_file("mix/cargo.ex", __DIR__)
Code.require_file("mix/compile.worker_native.ex", __DIR__)

defmodule Worker.MixProject do
  use Mix.Project

  def project do
    [
      app: :worker,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:worker_native] ++ Mix.compilers(),
      deps: [],
      releases: [worker: [include_executables_for: [:unix]]],
      aliases: aliases(),
      test_coverage: [ignore_modules: [Worker.Test.Fixtures]],
      elixirc_paths: elixirc_paths(Mix.env())
    ]
  end

  def application do
    [
      # :ssl for the Kubernetes API (Worker.Cluster.Kubernetes)
      extra_applications: [:logger, :crypto, :inets, :ssl],
      mod: {Worker.Application, []}
    ]
  end

  # bench/ holds `mix worker.bench`, which the release does not ship
  defp elixirc_paths(:test), do: ["lib", "bench", "test/support"]
  defp elixirc_paths(:dev), do: ["lib", "bench"]
  defp elixirc_paths(_), do: ["lib"]

  # CI is defined once, in .ci/run
  defp aliases, do: [ci: &ci/1]

  defp ci(_args) do
    status = Mix.shell().cmd("bash .ci/run")
    if status != 0, do: exit({:shutdown, status})
  end
end
