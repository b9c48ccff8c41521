defmodule Functions.SoakTest do
  # Twenty thousand invocations of well-behaved and hostile functions, from
  # several processes at once: afterwards the node is as it was.
  use ExUnit.Case, async: false
  @moduletag :capture_log
  @moduletag timeout: 300_000

  import Worker.Test.Fixtures
  import Worker.Test.Helpers, only: [rss: 0]
  alias Worker.Runtime

  @invocations 20_000
  @callers 8

  defp mix(modules) do
    [
      {modules.hello, %{"name" => "soak"}, [], &match?({:ok, %{"payload" => "Hello soak!"}}, &1)},
      {modules.echo, %{"list" => Enum.to_list(1..50)}, [],
       &match?({:ok, %{"list" => [1 | _]}}, &1)},
      {modules.error, %{"message" => "no"}, [], &match?({:error, {:exec_error, _}}, &1)},
      {modules.trap, %{}, [], &match?({:error, {:trap, _}}, &1)},
      {modules.recursion, %{}, [], &match?({:error, {:trap, _}}, &1)},
      {modules.oob, %{}, [], &match?({:error, {:trap, _}}, &1)},
      {modules.not_json, %{}, [], &match?({:error, {:invalid_response, _}}, &1)},
      {modules.grow, 100, [max_memory: 1024 * 1024], &(&1 == {:ok, -1})},
      {modules.logger, %{"lines" => 2_000}, [], &match?({:ok, %{"logged" => 2_000}}, &1)}
    ]
  end

  defp resources do
    %{
      rss: rss(),
      processes: length(Process.list()),
      threads: length(File.ls!("/proc/self/task")),
      fds: length(File.ls!("/proc/self/fd")),
      ets: length(:ets.all()),
      in_flight: Runtime.stats().in_flight
    }
  end

  defp settle do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    Process.sleep(300)
  end

  defp run(cases, spin, n) do
    cases = List.to_tuple(cases)

    1..@callers
    |> Enum.map(fn caller ->
      Task.async(fn ->
        for i <- 1..div(n, @callers), reduce: 0 do
          bad ->
            {module, args, opts, ok?} =
              if rem(i, 100) == 0,
                do: {spin, %{}, [timeout: 5], &(&1 == {:error, :timeout})},
                else: elem(cases, rem(i + caller, tuple_size(cases)))

            if ok?.(Runtime.invoke(module, args, opts)), do: bad, else: bad + 1
        end
      end)
    end)
    |> Task.await_many(240_000)
    |> Enum.sum()
  end

  test "20,000 mixed invocations on #{@callers} processes leak nothing" do
    modules = %{
      hello: compile!("hello"),
      echo: compile!("echo"),
      error: compile!("error"),
      logger: compile!("logger"),
      trap: compile!({:wat, "trap_unreachable"}),
      recursion: compile!({:wat, "recursion"}),
      oob: compile!({:wat, "response_out_of_bounds"}),
      not_json: compile!({:wat, "not_json"}),
      grow: compile!({:wat, "grow"})
    }

    spin = compile!({:wat, "spin"})
    cases = mix(modules)

    # warm up: pool slots, caches, lazily started threads
    assert run(cases, spin, 2_000) == 0
    settle()
    before = resources()

    assert run(cases, spin, @invocations) == 0
    settle()
    later = resources()

    assert later.in_flight == 0
    # nothing grew (other tests' leftovers may have gone away meanwhile)
    assert later.processes <= before.processes
    assert later.threads <= before.threads
    assert later.fds <= before.fds
    assert later.ets <= before.ets
    # resident memory back to its level within 32 MiB
    assert later.rss - before.rss < 32 * 1024 * 1024,
           "resident memory grew by #{div(later.rss - before.rss, 1024)} KiB"
  end
end
