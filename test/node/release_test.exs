defmodule WorkerNode.ReleaseTest do
  # The BEAM release, built with `MIX_ENV=prod mix release`: started with
  # `bin/worker daemon`, configured by RELEASE_* and FL_* variables, and
  # driven over distribution like a real Core would; and started as the
  # container image starts it (the Dockerfile's CMD, with the Dockerfile's
  # environment and the compose file's), joining a Core through gossip on
  # loopback. The compose file, the Prometheus configuration and the
  # Kubernetes manifest are read with real parsers (PyYAML, promtool).
  use ExUnit.Case, async: false

  import Worker.Test.Fixtures
  import Worker.Test.Helpers, only: [eventually: 3, free_port: 0]

  @moduletag :tmp_dir
  @moduletag timeout: 300_000

  @root Path.expand("../..", __DIR__)

  setup_all do
    Worker.Test.Cluster.ensure_distributed!()
    dir = Path.join(System.tmp_dir!(), "fl-release-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm_rf!(dir) end)
    release = Path.join(dir, "rel")

    {output, status} =
      System.cmd("mix", ["release", "--overwrite", "--path", release],
        cd: @root,
        # a MIX_BUILD_PATH for this suite's build must not get prod's
        env: [{"MIX_ENV", "prod"}, {"MIX_BUILD_PATH", nil}],
        stderr_to_stdout: true
      )

    assert status == 0, output
    %{release: release}
  end

  test "the release carries the NIF, reads FL_* variables and serves the Core",
       %{release: release, tmp_dir: dir} do
    assert File.exists?(
             Path.join([release, "lib", "worker-0.1.0", "priv", "native", "worker_nif.so"])
           )

    # the benchmark is compiled in dev and test only
    assert Path.wildcard(Path.join([release, "**", "Elixir.Mix.Tasks.Worker.Bench.beam"])) == []

    node = :"release#{System.unique_integer([:positive])}@127.0.0.1"

    env = [
      {"RELEASE_NODE", Atom.to_string(node)},
      {"RELEASE_DISTRIBUTION", "name"},
      {"RELEASE_COOKIE", Atom.to_string(Node.get_cookie())},
      {"FL_DATA_DIR", Path.join(dir, "data")},
      {"FL_DISCOVERY", "none"},
      {"FL_WORKER_TAG", "from-env"},
      {"FL_MAX_CONCURRENCY", "3"},
      {"FL_METRICS_PORT", "0"}
    ]

    bin = Path.join([release, "bin", "worker"])
    {_, 0} = System.cmd(bin, ["daemon"], env: env)
    on_exit(fn -> System.cmd(bin, ["stop"], env: env) end)

    assert wait_for_worker(node, 100)
    assert GenServer.call({:worker, node}, :get_info) == {:ok, Atom.to_string(node), "from-env"}
    assert :erpc.call(node, Application, :get_env, [:worker, :max_concurrency]) == 3

    wasm = wasm!("hello")
    fun = %{name: "hello", module: "rel", hash: :crypto.hash(:sha3_256, wasm), code: wasm}
    assert GenServer.call({:worker, node}, {:store_function, fun}) == :ok

    assert GenServer.call({:worker, node}, {:invoke, %{fun | code: nil}, %{"name" => "release"}}) ==
             {:ok, %{"payload" => "Hello release!"}}

    assert File.ls!(Path.join([dir, "data", "functions"])) != []
  end

  test "the image's entrypoint, with the image's and the compose file's environment, " <>
         "names the node from NODE_IP and joins a Core heard through gossip",
       %{release: release, tmp_dir: dir} do
    image = dockerfile!(Path.join(@root, "Dockerfile"))
    assert image.cmd == ["bin/run"]
    assert image.user == "funless"
    assert image.env["FL_METRICS_PORT"] == "4021"
    assert Enum.sort(image.expose) == ["4021", "4369", "45892/udp"]

    compose = yaml!(Path.join(@root, "deploy/docker-compose.yml"))
    worker_service = compose["services"]["worker"]
    # the cookie must be given: never a default
    assert worker_service["environment"]["RELEASE_COOKIE"] =~ ~r/^\$\{RELEASE_COOKIE:\?/
    # the image is this repository's Dockerfile
    assert File.exists?(
             Path.join([@root, "deploy", worker_service["build"]["context"], "Dockerfile"])
           )

    # a loopback address of its own
    ip = "127.#{:rand.uniform(200) + 20}.#{:rand.uniform(250)}.#{:rand.uniform(250)}"

    # the node is named worker@NODE_IP (releases/*/env.sh, sourced by
    # every command), as FunLess's are
    env_sh = Path.join([release, "releases", "0.1.0", "env.sh"])
    naming = ~s(. "$0"; echo "$RELEASE_NODE $RELEASE_DISTRIBUTION")

    unset = [{"RELEASE_NODE", nil}, {"RELEASE_DISTRIBUTION", nil}]

    assert System.cmd("sh", ["-c", naming, env_sh], env: [{"NODE_IP", ip} | unset]) ==
             {"worker@#{ip} name\n", 0}

    # and nothing but an address or a host name: it ends in the VM's command line
    assert {output, 64} =
             System.cmd("sh", ["-c", naming, env_sh],
               env: [{"NODE_IP", "1.2.3.4 --eval x"} | unset],
               stderr_to_stdout: true
             )

    assert output =~ "NODE_IP must be an address"

    # A container has an epmd of its own; on this host, epmd knows one
    # node by the name "worker" at most. Another one running here (a
    # developer's) makes this run name its node itself.
    {:ok, names} = :erl_epmd.names()

    {node, naming_env} =
      if List.keymember?(names, ~c"worker", 0) do
        IO.puts("(a node named worker runs on this host: the release gets RELEASE_NODE)")
        node = :"worker#{System.unique_integer([:positive])}@#{ip}"
        {node, %{"RELEASE_NODE" => Atom.to_string(node)}}
      else
        {:"worker@#{ip}", %{}}
      end

    # gossip: the worker listens on its address, and sends to 127.0.0.1,
    # where this test listens
    {:ok, socket} = :gen_udp.open(0, [:binary, active: true, ip: {127, 0, 0, 1}])
    {:ok, gossip_port} = :inet.port(socket)

    env =
      image.env
      |> Map.merge(worker_env(worker_service["environment"]))
      |> Map.merge(%{
        "NODE_IP" => ip,
        "RELEASE_COOKIE" => Atom.to_string(Node.get_cookie()),
        # what cannot be the image's here: the data directory, a free port,
        # and gossip on loopback
        "FL_DATA_DIR" => Path.join(dir, "data"),
        "FL_METRICS_PORT" => Integer.to_string(free_port()),
        "FL_GOSSIP_IF" => ip,
        "FL_GOSSIP_ADDR" => "127.0.0.1",
        "FL_GOSSIP_PORT" => Integer.to_string(gossip_port)
      })
      |> Map.merge(naming_env)

    worker = run!(release, image.cmd, env, dir)

    # its heartbeats name it worker@NODE_IP, as the Core's Gossip reads them
    assert_receive {:udp, ^socket, _, ^gossip_port, "heartbeat::" <> term}, 60_000
    assert :erlang.binary_to_term(term) == %{node: node}

    # a Core's heartbeat, and the worker connects to it
    refute node in Node.list()
    {:ok, ip_tuple} = :inet.parse_address(String.to_charlist(ip))
    :ok = :gen_udp.send(socket, ip_tuple, gossip_port, Worker.Cluster.Gossip.encode(node()))
    assert eventually(fn -> node in Node.list() end, 10_000, 50), output(worker)

    assert GenServer.call({:worker, node}, :get_info) ==
             {:ok, Atom.to_string(node), Atom.to_string(node)}

    # docker stop: SIGTERM, and the VM stops cleanly
    System.cmd("kill", ["-TERM", "#{worker.os_pid}"])
    assert_receive {_, {:exit_status, 0}}, 30_000
  end

  test "the image's entrypoint will not start without RELEASE_COOKIE", %{
    release: release,
    tmp_dir: dir
  } do
    image = dockerfile!(Path.join(@root, "Dockerfile"))
    worker = run!(release, image.cmd, image.env, dir)
    assert_receive {_, {:exit_status, 64}}, 10_000
    assert output(worker) =~ "set RELEASE_COOKIE"
  end

  test "the Kubernetes manifest: FunLess's names and labels, and an environment that " <>
         "picks Kubernetes discovery" do
    [daemon_set] = yaml_documents!(Path.join(@root, "deploy/kubernetes/worker.yml"))
    assert daemon_set["kind"] == "DaemonSet"
    # what the Core's libcluster selector and FunLess's service account expect
    assert daemon_set["metadata"]["namespace"] == "fl"
    assert daemon_set["spec"]["template"]["metadata"]["labels"] == %{"app" => "fl-worker"}
    spec = daemon_set["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "fl-svc-account"
    assert spec["securityContext"]["runAsUser"] == 1000
    [container] = spec["containers"]

    env =
      Map.new(container["env"], fn
        %{"name" => name, "value" => value} -> {name, value}
        %{"name" => name, "valueFrom" => from} -> {name, from}
      end)

    assert env["NODE_IP"] == %{"fieldRef" => %{"fieldPath" => "status.podIP"}}
    assert %{"secretKeyRef" => %{"name" => _, "key" => _}} = env["RELEASE_COOKIE"]
    # the variables as the worker reads them
    plain = for {name, value} when is_binary(value) <- env, into: %{}, do: {name, value}
    assert Worker.Config.from_env(plain)[:discovery] == :kubernetes

    ports = for p <- container["ports"], into: %{}, do: {p["name"], p["containerPort"]}
    image = dockerfile!(Path.join(@root, "Dockerfile"))
    assert ports["metrics"] == String.to_integer(image.env["FL_METRICS_PORT"])
    assert ports["epmd"] == 4369
    assert container["readinessProbe"]["httpGet"] == %{"path" => "/readyz", "port" => "metrics"}
    assert container["livenessProbe"]["httpGet"] == %{"path" => "/healthz", "port" => "metrics"}

    mount = for m <- container["volumeMounts"], do: m["mountPath"]
    assert image.env["FL_DATA_DIR"] in mount
  end

  test "the compose file's Prometheus scrapes the worker as FunLess's does, and promtool " <>
         "takes its configuration" do
    compose = yaml!(Path.join(@root, "deploy/docker-compose.yml"))
    services = compose["services"]
    assert Map.has_key?(services, services["core"]["environment"]["PROMETHEUS_HOST"])

    [config_mount | _] = services["prometheus"]["volumes"]
    [source, "/etc/prometheus/prometheus.yml" <> _] = String.split(config_mount, ":", parts: 2)
    config = Path.join([@root, "deploy", source])

    {output, status} = System.cmd("promtool", ["check", "config", config], stderr_to_stdout: true)
    assert status == 0, output

    jobs = yaml!(config)["scrape_configs"]
    image = dockerfile!(Path.join(@root, "Dockerfile"))
    target = "worker:" <> image.env["FL_METRICS_PORT"]
    [job] = for j <- jobs, target in hd(j["static_configs"])["targets"], do: j
    # no relabelling: the node label comes from the page itself
    refute Map.has_key?(job, "relabel_configs")
    refute Map.has_key?(job, "metric_relabel_configs")
  end

  # -- the image ---------------------------------------------------------------

  # The final stage of a Dockerfile: its environment, user, exposed ports
  # and command.
  defp dockerfile!(path) do
    instructions =
      path
      |> File.read!()
      |> String.replace(~r/\\\n\s*/, " ")
      |> String.split("\n")
      |> Enum.reject(&(String.trim(&1) == "" or String.starts_with?(String.trim(&1), "#")))
      |> Enum.map(&(&1 |> String.trim() |> String.split(" ", parts: 2)))

    final =
      instructions |> Enum.reverse() |> Enum.take_while(&(hd(&1) != "FROM")) |> Enum.reverse()

    env =
      for ["ENV", pairs] <- final,
          pair <- String.split(pairs),
          [key, value] = String.split(pair, "=", parts: 2),
          into: %{},
          do: {key, value}

    [cmd] = for ["CMD", json] <- final, do: json
    {:ok, cmd} = Worker.JSON.decode(cmd)

    %{
      env: env,
      cmd: cmd,
      user: List.last(for ["USER", user] <- final, do: user),
      expose: for(["EXPOSE", ports] <- final, port <- String.split(ports), do: port)
    }
  end

  # A compose file's environment: a map, `${VAR:-default}` read as its
  # default; a required `${VAR:?...}` is left for the caller to give.
  defp worker_env(env) do
    for {name, value} <- env, not String.starts_with?(value, "${#{name}:?"), into: %{} do
      {name, String.replace(value, ~r/\$\{\w+:-([^}]*)\}/, "\\1")}
    end
  end

  # Starts the release's `cmd` (relative to its root) with exactly `env`
  # (and PATH, HOME), as a container would; the port gets its stdout and
  # stderr, and its exit status.
  defp run!(release, [cmd], env, dir) do
    env = Map.merge(%{"PATH" => System.get_env("PATH"), "HOME" => dir}, env)
    args = ["-i"] ++ for({k, v} <- env, do: "#{k}=#{v}") ++ [Path.join(release, cmd)]

    port =
      Port.open({:spawn_executable, System.find_executable("env")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        cd: String.to_charlist(dir),
        args: args
      ])

    # nil when the program has already exited (the entrypoint refusing to
    # start does so at once): its output and exit status are in the mailbox
    os_pid =
      case Port.info(port, :os_pid) do
        {:os_pid, os_pid} -> os_pid
        nil -> nil
      end

    if os_pid do
      on_exit(fn -> System.cmd("kill", ["-9", "#{os_pid}"], stderr_to_stdout: true) end)
    end

    %{port: port, os_pid: os_pid}
  end

  defp output(%{port: port}) do
    receive do
      {^port, {:data, data}} -> data <> output(%{port: port})
    after
      0 -> ""
    end
  end

  # -- YAML, with PyYAML (Debian's python3-yaml) ----------------------------------

  defp yaml!(path) do
    [document] = yaml_documents!(path)
    document
  end

  defp yaml_documents!(path) do
    script =
      "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"

    {json, 0} = System.cmd("/usr/bin/python3", ["-c", script, path])
    {:ok, documents} = Worker.JSON.decode(json)
    documents
  end

  defp wait_for_worker(_node, 0), do: false

  defp wait_for_worker(node, tries) do
    if Node.connect(node) == true and :erpc.call(node, Process, :whereis, [:worker]) != nil do
      true
    else
      Process.sleep(100)
      wait_for_worker(node, tries - 1)
    end
  end
end
