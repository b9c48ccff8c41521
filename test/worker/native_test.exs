defmodule Worker.NativeTest do
  # The NIF library: it loads only with what every NIF relies on running.
  use ExUnit.Case, async: true

  @tag :tmp_dir
  test "a mailer thread that cannot start stops the load, saying why", %{tmp_dir: dir} do
    # A VM of its own, that loads Worker.Native once told to, moved first
    # into a cgroup that lets it make no new thread: the mailer cannot start.
    paths = Enum.flat_map(:code.get_path(), &["-pa", List.to_string(&1)])

    script = ~S"""
    io:format("~s~n", [os:getpid()]),
    _ = io:get_line(""),
    io:format("~p~n", [code:ensure_loaded('Elixir.Worker.Native')]),
    halt().
    """

    port =
      Port.open({:spawn_executable, System.find_executable("erl")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 4096},
        cd: String.to_charlist(dir),
        args: ["-noshell", "+A", "1", "+SDio", "1"] ++ paths ++ ["-eval", script]
      ])

    assert_receive {^port, {:data, {:eol, os_pid}}}, 30_000

    case Worker.Test.Cgroup.freeze_tasks(os_pid) do
      {:unavailable, reason} ->
        Port.command(port, "go\n")
        IO.puts("(skipped: no pids cgroup for the VM: #{inspect(reason)})")

      undo ->
        on_exit(undo)
        Port.command(port, "go\n")
        output = collect(port, "")
        assert output =~ "worker_nif: the fl-mailer thread cannot start"
        assert output =~ "{error,on_load_failure}"
    end
  end

  defp collect(port, acc) do
    receive do
      {^port, {:data, {_, line}}} -> collect(port, acc <> line <> "\n")
      {^port, {:exit_status, _}} -> acc
    after
      30_000 -> flunk("no end: " <> acc)
    end
  end
end
