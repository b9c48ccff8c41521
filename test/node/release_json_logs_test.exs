defmodule WorkerNode.ReleaseJSONLogsTest do
  # The release started as an operator starts it (`bin/worker start`, in
  # the foreground), with FL_LOG_FORMAT=json: every line of its real
  # stdout and stderr is read and decoded as JSON. The same run checks
  # FL_METRICS_ADDR, read from the environment by config/runtime.exs.
  use ExUnit.Case, async: false

  import Worker.Test.{Fixtures, Helpers}
  import Worker.Test.Core, only: [call: 2, invoke: 3]
  alias Worker.Test.{Cluster, Core}

  @moduletag :tmp_dir
  @moduletag timeout: 300_000

  setup_all do
    Cluster.ensure_distributed!()
    dir = Path.join(System.tmp_dir!(), "fl-json-logs-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(dir) end)
    %{bin: build_release!(Path.join(dir, "rel"))}
  end

  test "with FL_LOG_FORMAT=json, every line the worker writes is one JSON object",
       %{bin: bin, tmp_dir: dir} do
    metrics_port = free_port()

    worker =
      start!(bin, dir, [
        {"FL_LOG_FORMAT", "json"},
        {"FL_LOG_LEVEL", "debug"},
        {"FL_METRICS_PORT", Integer.to_string(metrics_port)},
        {"FL_METRICS_ADDR", "127.0.0.1"}
      ])

    node = worker.node
    assert eventually(fn -> worker_up?(node) end, 60_000, 100), output(worker)
    # the port's OS process is the VM (so on_exit's kill reaches it)
    assert :erpc.call(node, :os, :getpid, []) == ~c"#{worker.os_pid}"

    # guest text with quotes, a backslash, a newline and a control
    # character, under a function name with a quote and a newline
    logger = Core.function(~s(log "q"\nline), wasm!("logger"), module: "json")
    error = Core.function("error", wasm!("error"), module: "json")
    assert call(node, {:store_function, logger}) == :ok
    assert call(node, {:store_function, error}) == :ok
    message = ~s(say "hi" \\ back\nnext\x01 é)
    assert {:ok, %{"logged" => 3}} = invoke(node, logger, %{"lines" => 3, "message" => message})
    assert {:error, {:exec_error, _}} = invoke(node, error, %{})
    # a stray message (a warning), and a crash report of many lines
    send({:worker, node}, :stray)
    {:ok, agent} = :erpc.call(node, Agent, :start, [Map, :new, []])
    # its log goes to its group leader's node: make that the worker's own
    true =
      :erpc.call(node, Process, :group_leader, [
        agent,
        :erpc.call(node, Process, :whereis, [:user])
      ])

    :ok = :erpc.call(node, Agent, :cast, [agent, Map, :fetch!, [:missing]])

    # FL_METRICS_ADDR: bound to 127.0.0.1 only
    assert {:ok, socket} = :gen_tcp.connect({127, 0, 0, 1}, metrics_port, [], 5_000)
    :gen_tcp.close(socket)
    assert {:error, :econnrefused} = :gen_tcp.connect({127, 0, 0, 2}, metrics_port, [], 5_000)

    assert eventually(fn -> output(worker) =~ "KeyError" end, 10_000, 50)
    {stdout, stderr} = stop!(worker)

    lines = decode_lines!(stdout)
    assert decode_lines!(stderr) == []

    for line <- lines do
      assert %{"time" => time, "level" => level, "message" => text} = line
      assert time =~ ~r/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/
      assert level in ~w(debug info notice warning error critical alert emergency)
      assert is_binary(text)
    end

    # the guest's lines, escaped by the runtime, then as JSON: the same text
    guest = for %{"fl_stream" => "console"} = line <- lines, do: line
    assert length(guest) == 3
    escaped = ~s(say "hi" \\\\ back\\nnext\\x01 é)

    for {line, i} <- Enum.with_index(guest) do
      assert line["message"] == "#{escaped} #{i}"
      assert line["level"] == "info"
      assert line["fl_module"] == "json"
      assert line["fl_function"] == ~s(log "q"\nline)
      assert is_integer(line["fl_invocation"])
      assert line["pid"] =~ "#PID<"
    end

    # the guest's stderr: a line per line it wrote
    assert for(%{"fl_stream" => "stderr"} = l <- lines, do: {l["level"], l["message"]}) == [
             {"warning", ~s(stderr: say "hi" \\\\ back)},
             {"warning", ~s(next\\x01 é)}
           ]

    # the end of each invocation, with its outcome (debug: every one)
    assert Enum.any?(lines, &match?(%{"fl_outcome" => "ok", "fl_module" => "json"}, &1))
    assert Enum.any?(lines, &match?(%{"fl_outcome" => "exec_error", "level" => "info"}, &1))
    assert Enum.any?(lines, &(&1["level"] == "warning" and &1["message"] =~ ":stray"))

    assert [crash] = Enum.filter(lines, &(&1["message"] =~ "terminating"))
    assert crash["level"] == "error"
    assert crash["message"] =~ "** (KeyError) key :missing not found"
    assert crash["message"] =~ "\nLast message"
    assert crash["crash_reason"] =~ "** (KeyError)"
  end

  test "a bad FL_LOG_FORMAT, FL_METRICS_ADDR or other FL_* value stops the boot, naming the variable",
       %{bin: bin, tmp_dir: dir} do
    for {variable, value} <-
          [{"FL_LOG_FORMAT", "yaml"}, {"FL_METRICS_ADDR", "localhost"}] ++
            [{"FL_LOG_LEVEL", "loud"}, {"FL_POOL_INSTANCES", "abc"}, {"FL_EPOCH_TICK_US", "5"}] do
      worker = start!(bin, dir, [{variable, value}])
      {status, out} = wait_exit!(worker)
      assert status != 0
      assert out =~ "(ArgumentError) #{variable}: "
      assert out =~ inspect(value)
      refute worker_up?(worker.node)
    end
  end

  test "settings the engine cannot start with stop the boot, naming them", %{
    bin: bin,
    tmp_dir: dir
  } do
    # each value in its range; together, a pool of 100,000 memories of 4 GiB
    # reserves more address space than there is
    env = [{"FL_POOL_INSTANCES", "100000"}, {"FL_MEMORY_CAP_MB", "4096"}]
    worker = start!(bin, dir, env)
    {status, out} = wait_exit!(worker)
    assert status != 0
    assert out =~ "the native runtime cannot start with these settings"
    assert out =~ "FL_POOL_INSTANCES"
    refute worker_up?(worker.node)
  end

  # -- the release ---------------------------------------------------------------

  defp build_release!(path) do
    # the prod build goes where the release test puts it, or beside this
    # suite's own MIX_BUILD_PATH (never into it)
    build_path =
      case System.get_env("MIX_BUILD_PATH") do
        nil -> nil
        suite -> suite <> "_prod"
      end

    {output, status} =
      System.cmd("mix", ["release", "--overwrite", "--path", path],
        cd: Path.expand("../..", __DIR__),
        env: [{"MIX_ENV", "prod"}, {"MIX_BUILD_PATH", build_path}],
        stderr_to_stdout: true
      )

    assert status == 0, output
    Path.join([path, "bin", "worker"])
  end

  # `bin/worker start` in the foreground, under sh, which sends stderr to
  # a file of its own, so that both streams are read. The port gets
  # stdout; the OS process is killed when the test ends, if still alive.
  defp start!(bin, dir, env) do
    node = :"json_logs#{System.unique_integer([:positive])}@127.0.0.1"
    stderr = Path.join(dir, "stderr-#{System.unique_integer([:positive])}")

    env =
      [
        {"RELEASE_NODE", Atom.to_string(node)},
        {"RELEASE_DISTRIBUTION", "name"},
        {"RELEASE_COOKIE", Atom.to_string(Node.get_cookie())},
        {"FL_DATA_DIR", Path.join(dir, "data")},
        {"FL_DISCOVERY", "none"},
        {"ERL_CRASH_DUMP", Path.join(dir, "erl_crash.dump")}
      ] ++ env

    port =
      Port.open({:spawn_executable, System.find_executable("sh")}, [
        :binary,
        :exit_status,
        cd: String.to_charlist(dir),
        env: for({k, v} <- env, do: {String.to_charlist(k), String.to_charlist(v)}),
        args: ["-c", ~s(exec "$0" start 2>"$1"), bin, stderr]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    # sh and the release's scripts exec the VM: the same OS process
    on_exit(fn -> System.cmd("kill", ["-9", "#{os_pid}"], stderr_to_stdout: true) end)
    {:ok, agent} = Agent.start_link(fn -> %{out: "", status: nil} end)
    %{port: port, os_pid: os_pid, node: node, stderr: stderr, agent: agent}
  end

  # What the release wrote to stdout so far (this process owns the port).
  defp output(worker) do
    drain(worker)
    Agent.get(worker.agent, & &1.out)
  end

  defp drain(worker) do
    port = worker.port

    receive do
      {^port, {:data, data}} ->
        Agent.update(worker.agent, &%{&1 | out: &1.out <> data})
        drain(worker)

      {^port, {:exit_status, status}} ->
        Agent.update(worker.agent, &%{&1 | status: status})
        drain(worker)
    after
      0 -> :ok
    end
  end

  defp wait_exit!(worker) do
    assert eventually(
             fn ->
               drain(worker)
               Agent.get(worker.agent, & &1.status) != nil
             end,
             60_000,
             50
           ),
           "the release did not exit: " <> output(worker)

    {Agent.get(worker.agent, & &1.status), output(worker) <> File.read!(worker.stderr)}
  end

  # Stops the node as `bin/worker stop` would, and returns what it wrote.
  defp stop!(worker) do
    :ok = :erpc.call(worker.node, System, :stop, [])
    {0, _} = wait_exit!(worker)
    {output(worker), File.read!(worker.stderr)}
  end

  defp worker_up?(node) do
    Node.connect(node) == true and :erpc.call(node, Process, :whereis, [:worker]) != nil
  catch
    _, _ -> false
  end

  defp decode_lines!(text) do
    text
    |> String.split("\n", trim: true)
    |> Enum.map(fn line ->
      case Worker.JSON.decode(line) do
        {:ok, %{} = object} -> object
        _ -> flunk("not a JSON object: #{inspect(line)}")
      end
    end)
  end
end
