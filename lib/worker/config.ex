defmodule Worker.Config do
  @moduledoc """
  The worker's settings, and the one owner of every `FL_*` variable: this
  module reads and checks them all (`from_env/1`, from `config/runtime.exs`,
  `log_level/1` for `FL_LOG_LEVEL` and `log_format/1` for `FL_LOG_FORMAT`),
  fills in the defaults when the
  application starts (`apply_defaults/0`), and hands the native runtime its
  settings (`configure_runtime/0`). Nothing else reads the environment; the
  application environment set here is what the rest of the worker reads.

  Every variable, its default and its range are in docs/configuration.md,
  which the tests check against `spec/0`.

  Two more keys come from the environment Kubernetes gives a pod:
  `:k8s_api`, from `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`
  (default `https://kubernetes.default.svc`), and `:k8s_account_dir`, where
  the pod's service account is mounted (the standard
  `/var/run/secrets/kubernetes.io/serviceaccount`; tests point it
  elsewhere).

  **Fairness.** No function may hold more than `:function_share` percent
  (at least one) of the requests being served, of the arguments code
  handlers hold, of the invocations running, or of the admission queue:
  past its share, a request for that function is refused with
  `{:error, :overloaded}` (an invocation past its share of running slots
  waits in the queue instead), and the rest stays for the others. Its
  stores, updates and deletes have room of their own, an eighth of its
  share of the requests (`Worker.Job.admit/1`).

  **Deadlines.** The FunLess Core calls `:worker` with a timeout and does
  not survive it: 60 s for an invocation (`GenServer.call/3` in
  `Core.Adapters.Commands.Worker`), and 5 s for the stores and updates it
  waits on (`Task.async_stream/3`'s default, in
  `Commands.send_to_multiple_workers_sync/3`). So every request is answered
  within its deadline, counted from when `:worker` reads it: an invocation
  (its load, its wait for a slot and its run together) within
  `FL_INVOKE_DEADLINE_MS`, every other request within
  `FL_STORE_DEADLINE_MS`. Past it, the reply is `{:error, :timeout}`.

  A value that is not a number, or out of its range, stops the boot with
  an `ArgumentError` that names the variable; so does an `FL_HTTP_ALLOW`
  entry that does not parse (checked at application start, by the native
  runtime's parser).

  **The native runtime.** The nine keys from `:pool_instances` to
  `:p3_instance_idle_ms` are `Worker.Runtime.Settings`:
  the engine is made with them once per VM, when the application starts,
  and they cannot change while it runs. Their defaults are the native
  runtime's own (`Worker.Runtime.default_settings/0`). Starting the
  application again in the same VM with the same settings is fine; with
  other settings the runtime keeps its first ones, and the refusal is
  logged as an error.

  **Concurrency and the pool.** Every invocation admitted
  (`:max_concurrency`) needs an instance of the pool (`:pool_instances`),
  so the pool is never smaller: when only one is set, the other follows
  (the pool grows to the concurrency, or the default concurrency shrinks
  to the pool); both set with more concurrency than pool stops the boot.
  Instances beyond the concurrency serve invocations outside admission
  (`Worker.Runtime.invoke/3` called directly).
  """

  require Logger

  alias Worker.Runtime.{Invocation, Settings}

  # {key, variable, how to read it}; the order of the table above (its
  # Logger rows are read apart: log_level/1, log_format/1)
  @variables [
    {:data_dir, "FL_DATA_DIR", :string},
    {:max_concurrency, "FL_MAX_CONCURRENCY", {:int, 1, 100_000}},
    {:queue_limit, "FL_QUEUE_LIMIT", {:int, 0, :infinity}},
    {:queue_timeout_ms, "FL_QUEUE_TIMEOUT_MS", {:int, 0, :infinity}},
    {:max_requests, "FL_MAX_REQUESTS", {:int, 0, :infinity}},
    {:function_share, "FL_FUNCTION_SHARE", {:int, 1, 100}},
    {:handler_max_bytes, "FL_HANDLER_MAX_MB", {:mib, 0, :infinity}},
    {:compile_timeout_ms, "FL_COMPILE_TIMEOUT_MS", {:int, 0, :infinity}},
    {:compile_max_mb, "FL_COMPILE_MAX_MB", {:int, 0, :infinity}},
    {:cache_max_entries, "FL_CACHE_MAX_ENTRIES", {:int, 0, :infinity}},
    {:cache_max_bytes, "FL_CACHE_MAX_MB", {:mib, 0, :infinity}},
    {:handler_timeout_ms, "FL_HANDLER_TIMEOUT_MS", {:int, 0, :infinity}},
    {:invoke_deadline_ms, "FL_INVOKE_DEADLINE_MS", {:int, 100, 59_000}},
    {:store_deadline_ms, "FL_STORE_DEADLINE_MS", {:int, 100, 59_000}},
    {:worker_name, "FL_WORKER_NAME", :string},
    {:worker_tag, "FL_WORKER_TAG", :string},
    {:core_nodes, "FL_CORE_NODES", :nodes},
    {:core_dns, "FL_CORE_DNS", :string},
    {:core_basename, "FL_CORE_BASENAME", :string},
    {:core_dns_interval_ms, "FL_CORE_DNS_INTERVAL_MS", {:int, 0, :infinity}},
    {:discovery, "FL_DISCOVERY", {:choice, ~w(gossip kubernetes none)}},
    {:gossip_port, "FL_GOSSIP_PORT", {:int, 1, 65_535}},
    {:gossip_addr, "FL_GOSSIP_ADDR", :ipv4},
    {:gossip_if, "FL_GOSSIP_IF", :ipv4},
    {:k8s_selector, "FL_K8S_SELECTOR", :string},
    {:k8s_namespace, "FL_K8S_NAMESPACE", :string},
    {:k8s_interval_ms, "FL_K8S_INTERVAL_MS", {:int, 100, :infinity}},
    {:invoke_timeout_ms, "FL_INVOKE_TIMEOUT_MS", {:int, 0, Invocation.max_timeout()}},
    {:max_memory_bytes, "FL_MAX_MEMORY_MB", {:mib, 0, :infinity}},
    {:http_allow, "FL_HTTP_ALLOW", :list},
    {:log_lines_per_s, "FL_LOG_LINES_PER_S", {:int, 0, Invocation.max_log_lines_per_s()}},
    {:metrics_port, "FL_METRICS_PORT", {:int, 0, 65_535}},
    {:metrics_addr, "FL_METRICS_ADDR", :address},
    {:metrics_max_functions, "FL_METRICS_MAX_FUNCTIONS", {:int, 0, :infinity}},
    {:pool_instances, "FL_POOL_INSTANCES", {:int, 1, 100_000}},
    {:memory_cap_bytes, "FL_MEMORY_CAP_MB", {:mib, 1, 4_096}},
    {:max_module_bytes, "FL_MAX_MODULE_MB", {:mib, 1, 1_024}},
    {:epoch_tick_us, "FL_EPOCH_TICK_US", {:int, 10, 100_000}},
    {:keep_resident_bytes, "FL_POOL_KEEP_RESIDENT_KB", {:kib, 0, 1_048_576}},
    {:wasi_p3, "FL_WASI_P3", :boolean},
    {:p3_instance_requests, "FL_P3_INSTANCE_REQUESTS", {:int, 1, 1_000_000}},
    {:p3_instance_concurrency, "FL_P3_INSTANCE_CONCURRENCY", {:int, 1, 1_000}},
    {:p3_instance_idle_ms, "FL_P3_INSTANCE_IDLE_MS", {:int, 0, 3_600_000}}
  ]

  # variables the worker read once, and what to set instead
  @removed %{
    "FL_MAX_CAPACITY_MB" =>
      "FL_MEMORY_CAP_MB bounds every function's memory, the Core's capacity included"
  }

  @log_levels ~w(emergency alert critical error warning notice info debug)

  @doc """
  Each `FL_*` variable with its key, how it is read (`{:int, min, max}`,
  `{:mib, min, max}`, `{:kib, min, max}`, `:string`, ...), and its default
  when it is a fixed number (`nil` otherwise), for the documentation's
  table. The Logger's two are not included.
  """
  @spec spec() :: [{atom(), String.t(), term(), integer() | nil}]
  def spec do
    native = Map.from_struct(Worker.Runtime.default_settings())
    defaults = Map.merge(Map.new(defaults()), native)

    for {key, variable, kind} <- @variables do
      default =
        case {kind, defaults[key]} do
          {{:mib, _, _}, bytes} when is_integer(bytes) -> div(bytes, 1024 * 1024)
          {{:kib, _, _}, bytes} when is_integer(bytes) -> div(bytes, 1024)
          {{:int, _, _}, n} when is_integer(n) -> n
          _ -> nil
        end

      {key, variable, kind, default}
    end
  end

  @doc "The `FL_*` variables this module reads, the Logger's included."
  @spec variables() :: [String.t()]
  def variables, do: Enum.map(@variables, &elem(&1, 1)) ++ ["FL_LOG_LEVEL", "FL_LOG_FORMAT"]

  @doc """
  Fills in every setting not already in the application environment, the
  native runtime's included (see the moduledoc). Raises `ArgumentError`
  when `:max_concurrency` is above `:pool_instances`.
  """
  @spec apply_defaults() :: :ok
  def apply_defaults do
    for {key, value} <- defaults(), Application.get_env(:worker, key) == nil do
      Application.put_env(:worker, key, value)
    end

    native = Worker.Runtime.default_settings()

    for {key, value} <- Map.from_struct(native),
        key != :pool_instances,
        Application.get_env(:worker, key) == nil do
      Application.put_env(:worker, key, value)
    end

    {concurrency, pool} =
      concurrency_and_pool(
        Application.get_env(:worker, :max_concurrency),
        Application.get_env(:worker, :pool_instances),
        native.pool_instances
      )

    Application.put_env(:worker, :max_concurrency, concurrency)
    Application.put_env(:worker, :pool_instances, pool)
    check_http_allow!(Application.fetch_env!(:worker, :http_allow))
    refresh()
  end

  # Parsed by the runtime's own parser, once: a bad entry stops the boot
  # instead of failing every invocation.
  defp check_http_allow!(entries) do
    case Worker.Runtime.check_http_allow(entries) do
      :ok -> :ok
      {:error, reason} -> raise ArgumentError, "FL_HTTP_ALLOW: #{reason}"
    end
  end

  # {max_concurrency, pool_instances} from the two settings (nil when
  # unset) and the native default pool
  defp concurrency_and_pool(nil, nil, default_pool) do
    concurrency = 4 * System.schedulers_online()
    {concurrency, max(concurrency, default_pool)}
  end

  defp concurrency_and_pool(nil, pool, _), do: {min(4 * System.schedulers_online(), pool), pool}

  defp concurrency_and_pool(concurrency, nil, default),
    do: {concurrency, max(concurrency, default)}

  defp concurrency_and_pool(concurrency, pool, _) when concurrency > pool do
    raise ArgumentError,
          "FL_MAX_CONCURRENCY (#{concurrency}) is above FL_POOL_INSTANCES (#{pool}): " <>
            "every invocation admitted needs an instance of the pool; " <>
            "raise FL_POOL_INSTANCES or lower FL_MAX_CONCURRENCY"
  end

  defp concurrency_and_pool(concurrency, pool, _), do: {concurrency, pool}

  @doc """
  A setting: the application environment's value, else this module's
  default (for callers that may run before `apply_defaults/0`, such as
  `Worker.Runtime` used as a library).
  """
  @spec get(atom()) :: term()
  def get(key) do
    case Application.fetch_env(:worker, key) do
      {:ok, value} -> value
      :error -> defaults()[key]
    end
  end

  @doc "The native runtime's settings, from the application environment."
  @spec runtime_settings() :: Settings.t()
  def runtime_settings do
    %Settings{
      pool_instances: Application.fetch_env!(:worker, :pool_instances),
      memory_cap_bytes: Application.fetch_env!(:worker, :memory_cap_bytes),
      max_module_bytes: Application.fetch_env!(:worker, :max_module_bytes),
      epoch_tick_us: Application.fetch_env!(:worker, :epoch_tick_us),
      keep_resident_bytes: Application.fetch_env!(:worker, :keep_resident_bytes),
      wasi_p3: Application.fetch_env!(:worker, :wasi_p3),
      p3_instance_requests: Application.fetch_env!(:worker, :p3_instance_requests),
      p3_instance_concurrency: Application.fetch_env!(:worker, :p3_instance_concurrency),
      p3_instance_idle_ms: Application.fetch_env!(:worker, :p3_instance_idle_ms)
    }
  end

  @doc """
  Hands the native runtime its settings (`runtime_settings/0`), at
  application start. A refusal is logged as an error and returned: other
  settings already in force in this VM are kept (the application starts
  with them); an engine that cannot start with these settings
  (`{:runtime_unavailable, _}`) stops the application's start.
  """
  @spec configure_runtime() :: :ok | {:error, term()}
  def configure_runtime do
    settings = runtime_settings()

    case Worker.Runtime.configure(settings) do
      :ok ->
        :ok

      {:error, reason} = error ->
        Logger.error(
          "Worker.Config: the native runtime refused #{inspect(settings)}: #{inspect(reason)}"
        )

        error
    end
  end

  @doc """
  Changes a setting at run time. Use this rather than `Application.put_env/3`
  for the defaults of `Worker.Runtime.invoke/3` and `Worker.Runtime.compile/1`,
  which the runtime keeps. (The native runtime's settings cannot change at
  run time.)
  """
  @spec put(atom(), term()) :: :ok
  def put(key, value) do
    if key == :http_allow, do: check_http_allow!(value)
    Application.put_env(:worker, key, value)
    refresh()
  end

  # Hands the runtime the defaults of its invocations and compiles.
  defp refresh do
    Invocation.put_defaults(
      timeout: get(:invoke_timeout_ms),
      max_memory: get(:max_memory_bytes),
      http_allow: get(:http_allow),
      log_lines_per_s: get(:log_lines_per_s)
    )

    Worker.Runtime.Module.put_compile_limits(
      timeout_ms: get(:compile_timeout_ms),
      max_mb: get(:compile_max_mb)
    )
  end

  # The defaults this module owns; the native runtime's settings come from
  # it, the defaults of invocations and compiles from the runtime's modules,
  # and :max_concurrency follows the pool (see apply_defaults/0).
  defp defaults do
    invoke = Invocation.defaults()
    {compile_timeout_ms, compile_max_mb} = Worker.Runtime.Module.compile_limits()

    [
      data_dir: Path.expand("fl_data"),
      queue_limit: 1_000,
      queue_timeout_ms: 10_000,
      max_requests: 4_096,
      function_share: 75,
      handler_max_bytes: 256 * 1024 * 1024,
      compile_timeout_ms: compile_timeout_ms,
      compile_max_mb: compile_max_mb,
      cache_max_entries: 256,
      cache_max_bytes: 512 * 1024 * 1024,
      handler_timeout_ms: 30_000,
      invoke_deadline_ms: 55_000,
      store_deadline_ms: 4_500,
      core_nodes: [],
      core_basename: "core",
      core_dns_interval_ms: 10_000,
      # gossip, unless FL_CORE_NODES or FL_CORE_DNS is set (Worker.Cluster)
      discovery: :auto,
      gossip_port: Worker.Cluster.Gossip.default_port(),
      gossip_addr: Worker.Cluster.Gossip.default_group(),
      gossip_if: {0, 0, 0, 0},
      k8s_selector: "app=fl-core",
      k8s_interval_ms: 5_000,
      k8s_api: "https://kubernetes.default.svc",
      k8s_account_dir: Worker.Cluster.Kubernetes.default_account_dir(),
      invoke_timeout_ms: invoke[:timeout],
      max_memory_bytes: invoke[:max_memory],
      http_allow: invoke[:http_allow],
      log_lines_per_s: invoke[:log_lines_per_s],
      metrics_port: 4021,
      metrics_addr: :any,
      metrics_max_functions: 1_000
    ]
  end

  @doc """
  Reads the `FL_*` variables into keyword config, for `config/runtime.exs`.
  Unset (or empty) variables are left out, so the defaults apply. Raises
  `ArgumentError`, naming the variable, for a value that is not a number
  or is out of its range, and when both `FL_MAX_CONCURRENCY` and
  `FL_POOL_INSTANCES` are set and the first is above the second.
  """
  @spec from_env(%{String.t() => String.t()}) :: keyword()
  def from_env(env \\ System.get_env()) do
    config =
      for {key, variable, kind} <- @variables,
          text = env[variable],
          text not in [nil, ""],
          do: {key, parse(variable, kind, text)}

    if config[:max_concurrency] && config[:pool_instances] do
      concurrency_and_pool(config[:max_concurrency], config[:pool_instances], nil)
    end

    for {variable, instead} <- @removed, env[variable] not in [nil, ""] do
      IO.warn("#{variable} is no longer read: #{instead}", [])
    end

    config ++ funless_env(config, env)
  end

  # FunLess's own variables: DEPLOY_ENV=kubernetes (its manifests set it)
  # picks Kubernetes discovery unless FL_DISCOVERY says otherwise, and
  # LIBCLUSTER_PORT is the gossip port unless FL_GOSSIP_PORT is set; the API
  # is where Kubernetes tells every pod it is.
  defp funless_env(config, env) do
    discovery =
      if env["DEPLOY_ENV"] == "kubernetes" and not Keyword.has_key?(config, :discovery),
        do: [discovery: :kubernetes],
        else: []

    api =
      case {env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]} do
        {host, port} when host not in [nil, ""] ->
          host = if String.contains?(host, ":"), do: "[#{host}]", else: host
          [k8s_api: "https://#{host}:#{if port in [nil, ""], do: 443, else: port}"]

        _ ->
          []
      end

    port =
      if env["LIBCLUSTER_PORT"] not in [nil, ""] and not Keyword.has_key?(config, :gossip_port),
        do: [gossip_port: parse("LIBCLUSTER_PORT", {:int, 1, 65_535}, env["LIBCLUSTER_PORT"])],
        else: []

    discovery ++ port ++ api
  end

  @doc """
  The Logger level `FL_LOG_LEVEL` names, or `nil` when it is unset (the
  level in `config/config.exs`, `info`, applies). Raises `ArgumentError`
  naming the variable for anything but a Logger level.
  """
  @spec log_level(%{String.t() => String.t()}) :: Logger.level() | nil
  def log_level(env \\ System.get_env()) do
    case env["FL_LOG_LEVEL"] do
      text when text in [nil, ""] ->
        nil

      text ->
        level = String.trim(text)

        unless level in @log_levels do
          raise ArgumentError,
                "FL_LOG_LEVEL: expected one of #{Enum.join(@log_levels, ", ")}, " <>
                  "got #{inspect(text)}"
        end

        String.to_atom(level)
    end
  end

  @doc """
  The text of `FL_LOG_FORMAT`, or `nil` when unset, for
  `Worker.LogFormat.console/1`, which checks it (`text` or `json`; another
  value stops the boot, naming the variable).
  """
  @spec log_format(%{String.t() => String.t()}) :: String.t() | nil
  def log_format(env \\ System.get_env()), do: env["FL_LOG_FORMAT"]

  defp parse(_variable, :string, text), do: text

  defp parse(variable, {:choice, choices}, text) do
    choice = String.trim(text)

    if choice in choices,
      do: String.to_atom(choice),
      else:
        raise(
          ArgumentError,
          "#{variable}: expected one of #{Enum.join(choices, ", ")}, got #{inspect(text)}"
        )
  end

  defp parse(variable, :boolean, text) do
    case String.trim(text) do
      "true" -> true
      "false" -> false
      _ -> raise ArgumentError, "#{variable}: expected true or false, got #{inspect(text)}"
    end
  end

  defp parse(variable, :ipv4, text) do
    case :inet.parse_ipv4strict_address(String.to_charlist(String.trim(text))) do
      {:ok, address} -> address
      {:error, _} -> raise ArgumentError, "#{variable}: not an IPv4 address: #{inspect(text)}"
    end
  end

  defp parse(variable, :address, text) do
    case :inet.parse_address(String.to_charlist(String.trim(text))) do
      {:ok, address} -> address
      {:error, _} -> raise ArgumentError, "#{variable}: not an IP address: #{inspect(text)}"
    end
  end

  defp parse(_variable, :list, text), do: list(text)
  defp parse(_variable, :nodes, text), do: Enum.map(list(text), &String.to_atom/1)
  defp parse(variable, {:mib, min, max}, text), do: int(variable, text, min, max) * 1024 * 1024
  defp parse(variable, {:kib, min, max}, text), do: int(variable, text, min, max) * 1024
  defp parse(variable, {:int, min, max}, text), do: int(variable, text, min, max)

  defp int(variable, text, min, max) do
    case Integer.parse(String.trim(text)) do
      {n, ""} when n >= min and (max == :infinity or n <= max) ->
        n

      _ ->
        range = if max == :infinity, do: "#{min} or more", else: "from #{min} to #{max}"
        raise ArgumentError, "#{variable}: expected an integer #{range}, got #{inspect(text)}"
    end
  end

  defp list(text), do: text |> String.split(",", trim: true) |> Enum.map(&String.trim/1)
end
