defmodule Worker.ConfigTest do
  # Every FL_* variable is read, checked and documented by Worker.Config,
  # and the native runtime gets its settings from there.
  use ExUnit.Case, async: false

  alias Worker.Config
  alias Worker.Test.Cluster

  @mib 1024 * 1024

  @every %{
    "FL_DATA_DIR" => "/var/lib/fl",
    "FL_MAX_CONCURRENCY" => "12",
    "FL_QUEUE_LIMIT" => "10",
    "FL_QUEUE_TIMEOUT_MS" => "11",
    "FL_MAX_REQUESTS" => "13",
    "FL_FUNCTION_SHARE" => "36",
    "FL_HANDLER_MAX_MB" => "14",
    "FL_COMPILE_TIMEOUT_MS" => "15",
    "FL_COMPILE_MAX_MB" => "16",
    "FL_CACHE_MAX_ENTRIES" => "17",
    "FL_CACHE_MAX_MB" => "18",
    "FL_HANDLER_TIMEOUT_MS" => "20",
    "FL_INVOKE_DEADLINE_MS" => "3200",
    "FL_STORE_DEADLINE_MS" => "3300",
    "FL_WORKER_NAME" => "w",
    "FL_WORKER_TAG" => "t",
    "FL_CORE_NODES" => "core@10.0.0.5, core@10.0.0.6",
    "FL_CORE_DNS" => "core.svc",
    "FL_CORE_BASENAME" => "fl",
    "FL_CORE_DNS_INTERVAL_MS" => "21",
    "FL_DISCOVERY" => "kubernetes",
    "FL_GOSSIP_PORT" => "34",
    "FL_GOSSIP_ADDR" => "239.1.2.3",
    "FL_GOSSIP_IF" => "127.0.0.1",
    "FL_K8S_SELECTOR" => "app=core",
    "FL_K8S_NAMESPACE" => "funless",
    "FL_K8S_INTERVAL_MS" => "350",
    "FL_INVOKE_TIMEOUT_MS" => "22",
    "FL_MAX_MEMORY_MB" => "23",
    "FL_HTTP_ALLOW" => "127.0.0.1:8080, [::1]",
    "FL_LOG_LINES_PER_S" => "24",
    "FL_METRICS_PORT" => "25",
    "FL_METRICS_ADDR" => "127.0.0.1",
    "FL_METRICS_MAX_FUNCTIONS" => "26",
    "FL_POOL_INSTANCES" => "27",
    "FL_MEMORY_CAP_MB" => "28",
    "FL_MAX_MODULE_MB" => "29",
    "FL_EPOCH_TICK_US" => "30",
    "FL_POOL_KEEP_RESIDENT_KB" => "31",
    "FL_WASI_P3" => "false",
    "FL_P3_INSTANCE_REQUESTS" => "32",
    "FL_P3_INSTANCE_CONCURRENCY" => "33",
    "FL_P3_INSTANCE_IDLE_MS" => "34",
    "FL_LOG_LEVEL" => "debug",
    "FL_LOG_FORMAT" => "json"
  }

  test "from_env reads every variable" do
    assert Config.from_env(@every) == [
             data_dir: "/var/lib/fl",
             max_concurrency: 12,
             queue_limit: 10,
             queue_timeout_ms: 11,
             max_requests: 13,
             function_share: 36,
             handler_max_bytes: 14 * @mib,
             compile_timeout_ms: 15,
             compile_max_mb: 16,
             cache_max_entries: 17,
             cache_max_bytes: 18 * @mib,
             handler_timeout_ms: 20,
             invoke_deadline_ms: 3200,
             store_deadline_ms: 3300,
             worker_name: "w",
             worker_tag: "t",
             core_nodes: [:"core@10.0.0.5", :"core@10.0.0.6"],
             core_dns: "core.svc",
             core_basename: "fl",
             core_dns_interval_ms: 21,
             discovery: :kubernetes,
             gossip_port: 34,
             gossip_addr: {239, 1, 2, 3},
             gossip_if: {127, 0, 0, 1},
             k8s_selector: "app=core",
             k8s_namespace: "funless",
             k8s_interval_ms: 350,
             invoke_timeout_ms: 22,
             max_memory_bytes: 23 * @mib,
             http_allow: ["127.0.0.1:8080", "[::1]"],
             log_lines_per_s: 24,
             metrics_port: 25,
             metrics_addr: {127, 0, 0, 1},
             metrics_max_functions: 26,
             pool_instances: 27,
             memory_cap_bytes: 28 * @mib,
             max_module_bytes: 29 * @mib,
             epoch_tick_us: 30,
             keep_resident_bytes: 31 * 1024,
             wasi_p3: false,
             p3_instance_requests: 32,
             p3_instance_concurrency: 33,
             p3_instance_idle_ms: 34
           ]

    assert Config.log_level(@every) == :debug
    assert Config.log_format(@every) == "json"
    assert Enum.sort(Config.variables()) == Enum.sort(Map.keys(@every))
  end

  test "unset and empty variables are left out, for the defaults" do
    assert Config.from_env(%{}) == []
    assert Config.from_env(%{"FL_POOL_INSTANCES" => "", "FL_DATA_DIR" => ""}) == []
    assert Config.log_level(%{}) == nil
    assert Config.log_level(%{"FL_LOG_LEVEL" => ""}) == nil
  end

  test "a value that is not a number stops the boot, naming the variable" do
    for {variable, value} <- @every, match?({_, ""}, Integer.parse(value)) do
      error = assert_raise ArgumentError, fn -> Config.from_env(%{variable => "abc"}) end
      assert error.message =~ variable
      assert error.message =~ ~s("abc")
    end

    error = assert_raise ArgumentError, fn -> Config.log_level(%{"FL_LOG_LEVEL" => "loud"}) end
    assert error.message =~ "FL_LOG_LEVEL"
    assert error.message =~ "info"
  end

  test "a value out of its range stops the boot, naming the variable and the range" do
    for {variable, value, range} <- [
          {"FL_POOL_INSTANCES", "0", "from 1 to 100000"},
          {"FL_POOL_INSTANCES", "100001", "from 1 to 100000"},
          {"FL_MEMORY_CAP_MB", "4097", "from 1 to 4096"},
          {"FL_MAX_MODULE_MB", "1025", "from 1 to 1024"},
          {"FL_EPOCH_TICK_US", "9", "from 10 to 100000"},
          {"FL_EPOCH_TICK_US", "100001", "from 10 to 100000"},
          {"FL_POOL_KEEP_RESIDENT_KB", "1048577", "from 0 to 1048576"},
          {"FL_MAX_CONCURRENCY", "0", "from 1 to 100000"},
          {"FL_METRICS_PORT", "65536", "from 0 to 65535"},
          {"FL_QUEUE_LIMIT", "-1", "0 or more"},
          {"FL_INVOKE_DEADLINE_MS", "60000", "from 100 to 59000"},
          {"FL_STORE_DEADLINE_MS", "99", "from 100 to 59000"},
          {"FL_GOSSIP_PORT", "0", "from 1 to 65535"},
          {"FL_FUNCTION_SHARE", "0", "from 1 to 100"},
          {"FL_FUNCTION_SHARE", "101", "from 1 to 100"}
        ] do
      error = assert_raise ArgumentError, fn -> Config.from_env(%{variable => value}) end
      assert error.message =~ variable
      assert error.message =~ range
    end
  end

  test "a value that is not one of its choices, or not an IPv4 address, stops the boot" do
    for {variable, value, expected} <- [
          {"FL_DISCOVERY", "libcluster", "gossip, kubernetes, none"},
          {"FL_GOSSIP_ADDR", "::1", "not an IPv4 address"},
          {"FL_GOSSIP_IF", "localhost", "not an IPv4 address"},
          {"FL_WASI_P3", "yes", "expected true or false"}
        ] do
      error = assert_raise ArgumentError, fn -> Config.from_env(%{variable => value}) end
      assert error.message =~ variable
      assert error.message =~ expected
    end
  end

  test "FunLess's own variables: DEPLOY_ENV=kubernetes, and the API's address" do
    assert Config.from_env(%{"DEPLOY_ENV" => "kubernetes"}) == [discovery: :kubernetes]
    # FL_DISCOVERY says otherwise
    assert Config.from_env(%{"DEPLOY_ENV" => "kubernetes", "FL_DISCOVERY" => "none"}) ==
             [discovery: :none]

    assert Config.from_env(%{"DEPLOY_ENV" => "docker"}) == []

    assert Config.from_env(%{
             "KUBERNETES_SERVICE_HOST" => "10.96.0.1",
             "KUBERNETES_SERVICE_PORT" => "6443"
           }) == [k8s_api: "https://10.96.0.1:6443"]

    assert Config.from_env(%{"KUBERNETES_SERVICE_HOST" => "fd00::1"}) ==
             [k8s_api: "https://[fd00::1]:443"]

    assert Config.from_env(%{"LIBCLUSTER_PORT" => "45999"}) == [gossip_port: 45_999]

    assert Config.from_env(%{"LIBCLUSTER_PORT" => "45999", "FL_GOSSIP_PORT" => "46000"}) ==
             [gossip_port: 46_000]

    error = assert_raise ArgumentError, fn -> Config.from_env(%{"LIBCLUSTER_PORT" => "x"}) end
    assert error.message =~ "LIBCLUSTER_PORT"
  end

  test "a variable no longer read is warned about, saying what to set instead" do
    warned =
      ExUnit.CaptureIO.capture_io(:stderr, fn ->
        refute Keyword.has_key?(
                 Config.from_env(%{"FL_MAX_CAPACITY_MB" => "19"}),
                 :max_capacity_mb
               )
      end)

    assert warned =~ "FL_MAX_CAPACITY_MB is no longer read: FL_MEMORY_CAP_MB bounds"
  end

  test "more concurrency than pool instances stops the boot, naming both" do
    env = %{"FL_MAX_CONCURRENCY" => "20", "FL_POOL_INSTANCES" => "10"}
    error = assert_raise ArgumentError, fn -> Config.from_env(env) end
    assert error.message =~ "FL_MAX_CONCURRENCY (20)"
    assert error.message =~ "FL_POOL_INSTANCES (10)"

    assert Config.from_env(%{env | "FL_MAX_CONCURRENCY" => "10"})[:pool_instances] == 10
  end

  test "an allow-list entry that does not parse is refused, naming FL_HTTP_ALLOW" do
    assert Worker.Runtime.check_http_allow(["127.0.0.1:8080", "[::1]", "example.com"]) == :ok
    assert {:error, reason} = Worker.Runtime.check_http_allow(["host:port"])
    assert reason =~ "http_allow"
    assert {:error, _} = Worker.Runtime.check_http_allow("127.0.0.1")

    error = assert_raise ArgumentError, fn -> Config.put(:http_allow, ["host:port"]) end
    assert error.message =~ "FL_HTTP_ALLOW"
    assert Application.fetch_env!(:worker, :http_allow) == []
  end

  # docs/configuration.md's table: {variable, default, range} by variable
  defp documented do
    page = File.read!(Path.expand("../../docs/configuration.md", __DIR__))
    [_, section] = String.split(page, "\n## Settings\n", parts: 2)
    [table | _] = String.split(section, "\n## ", parts: 2)

    for [_, variable, default, range] <-
          Regex.scan(~r/^\| `(FL_[A-Z0-9_]+)` \| ([^|]*) \| ([^|]*) \|/m, table),
        into: %{},
        do: {variable, {String.trim(default), String.trim(range)}}
  end

  # 65535 as the table writes it: 65 535
  defp number(n) when n < 1_000, do: Integer.to_string(n)

  defp number(n),
    do: number(div(n, 1_000)) <> " " <> String.pad_leading("#{rem(n, 1_000)}", 3, "0")

  test "docs/configuration.md's table lists every variable, and only those" do
    assert Enum.sort(Map.keys(documented())) == Enum.sort(Config.variables())
  end

  test "docs/configuration.md's table gives each number's range and default as Worker.Config has them" do
    table = documented()

    for {_key, variable, kind, default} <- Config.spec() do
      {documented_default, documented_range} = table[variable]

      case kind do
        {_, min, :infinity} when is_integer(min) ->
          assert documented_range == "#{number(min)} and up", variable

        {_, min, max} when is_integer(min) ->
          assert documented_range == "#{number(min)} to #{number(max)}", variable

        _ ->
          :ok
      end

      # a fixed default is written first, grouped or not (a port is not); a
      # computed one, in words
      if default && documented_default =~ ~r/^[0-9]/ do
        assert String.starts_with?(documented_default, number(default)) or
                 String.starts_with?(documented_default, Integer.to_string(default)),
               variable
      end
    end
  end

  test "the native runtime runs with the settings Worker.Config gave it" do
    settings = Config.runtime_settings()
    assert settings.pool_instances >= Application.fetch_env!(:worker, :max_concurrency)
    # given again, the same settings are fine; others are refused, and kept out
    assert Worker.Runtime.configure(settings) == :ok

    assert {:error, {:runtime_configured, reason}} =
             Worker.Runtime.configure(%{settings | pool_instances: settings.pool_instances + 1})

    assert reason =~ "need a restart"
    assert Worker.Runtime.configure(settings) == :ok
  end

  @tag :tmp_dir
  test "settings reach the native runtime of a node, and the pool follows them",
       %{tmp_dir: dir} do
    env = [pool_instances: 2, max_module_bytes: 1 * @mib, memory_cap_bytes: 2 * @mib]
    {peer, node} = Cluster.start_worker!(dir, env)
    on_exit(fn -> Cluster.stop(peer) end)

    # the default concurrency shrinks to the pool
    assert :erpc.call(node, Application, :fetch_env!, [:worker, :max_concurrency]) == 2

    # a module over FL_MAX_MODULE_MB there, and only there
    big = :binary.copy(<<0>>, 3 * div(@mib, 2))
    assert {:error, {:invalid_module, reason}} = :erpc.call(node, Worker.Runtime, :compile, [big])
    assert reason =~ "over the limit of #{@mib} bytes (FL_MAX_MODULE_MB)"
    assert {:error, {:invalid_module, reason}} = Worker.Runtime.compile(big)
    refute reason =~ "FL_MAX_MODULE_MB"

    # a module that starts with more memory than FL_MEMORY_CAP_MB there
    three_mib = """
    (module (memory (export "memory") 48)
      (func (export "__invoke") (param i32) (result i32) (i32.const 0)))
    """

    assert {:error, {:invalid_module, _}} =
             :erpc.call(node, Worker.Runtime, :compile, [three_mib])

    assert {:ok, _} = Worker.Runtime.compile(three_mib)

    # the application started again in that VM: the same settings are fine
    :ok = :erpc.call(node, Application, :stop, [:worker])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:worker])
    assert :erpc.call(node, Worker.Config, :configure_runtime, []) == :ok
  end
end
