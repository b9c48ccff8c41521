defmodule Worker.RuntimeTest do
  # The facade: configuring the native runtime, and its live figures.
  use ExUnit.Case, async: true

  import Worker.Test.Fixtures
  alias Worker.Runtime

  describe "configure/1" do
    @tag :tmp_dir
    test "without settings the runtime is unavailable, and says so; the store copes",
         %{tmp_dir: dir} do
      # a VM of its own: the runtime of this one is configured
      script = """
      {:error, {:runtime_unavailable, _}} = Worker.Runtime.fingerprint()
      {:error, {:runtime_unavailable, _}} = Worker.Runtime.compile("(module)")
      Application.put_env(:worker, :data_dir, #{inspect(dir)})
      :error = Worker.Store.get_artifact(Worker.Store.code_hash("code"))
      {:error, {:runtime_unavailable, _}} =
        Worker.Store.put_artifact(Worker.Store.code_hash("code"), "artifact")
      :ok = Worker.Store.prune_artifacts()
      :ok = Worker.Runtime.configure(Worker.Runtime.default_settings())
      {:ok, _} = Worker.Runtime.fingerprint()
      IO.puts("checked")
      """

      ebin = Path.join(:code.lib_dir(:worker), "ebin")
      {output, status} = System.cmd("elixir", ["-pa", ebin, "-e", script], stderr_to_stdout: true)
      assert status == 0, output
      assert output =~ "checked"
    end

    test "the same settings again are fine; others are refused, and the first kept" do
      settings = Worker.Config.runtime_settings()
      assert Runtime.configure(settings) == :ok

      assert {:error, {:runtime_configured, reason}} =
               Runtime.configure(%{settings | epoch_tick_us: settings.epoch_tick_us + 1})

      assert reason =~ "need a restart"
      assert {:ok, _} = Runtime.invoke(compile!("hello"), %{"name" => "x"})
    end
  end

  describe "stats/0" do
    test "counts what is in flight now, and reading changes nothing" do
      assert %{in_flight: in_flight, slice_count: count} = Runtime.stats()
      assert in_flight >= 0
      assert Runtime.stats().slice_count >= count
    end
  end
end
