defmodule Worker.Config do
  @moduledoc """
  The worker's settings: application environment first (set from `FL_*`
  environment variables by `config/runtime.exs`), then these defaults.

  | key | variable | default |
  |---|---|---|
  | `:data_dir` | `FL_DATA_DIR` | `./fl_data` |
  | `:max_concurrency` | `FL_MAX_CONCURRENCY` | 4 x schedulers |
  | `:queue_limit` | `FL_QUEUE_LIMIT` | 1 000 |
  | `:queue_timeout_ms` | `FL_QUEUE_TIMEOUT_MS` | 10 000 |
  | `:max_requests` | `FL_MAX_REQUESTS` | 4 096 |
  | `:handler_max_bytes` | `FL_HANDLER_MAX_MB` | 256 MiB |
  | `:compile_timeout_ms` | `FL_COMPILE_TIMEOUT_MS` | 60 000 |
  | `:compile_max_mb` | `FL_COMPILE_MAX_MB` | 2 048 |
  | `:cache_max_entries` | `FL_CACHE_MAX_ENTRIES` | 256 |
  | `:cache_max_bytes` | `FL_CACHE_MAX_MB` | 512 MiB |
  | `:max_capacity_mb` | `FL_MAX_CAPACITY_MB` | 512 |
  | `:handler_timeout_ms` | `FL_HANDLER_TIMEOUT_MS` | 30 000 |
  | `:worker_name` | `FL_WORKER_NAME` | the node name |
  | `:worker_tag` | `FL_WORKER_TAG` | the long name |
  | `:core_nodes` | `FL_CORE_NODES` | none |
  | `:core_dns` | `FL_CORE_DNS` | none |
  | `:core_basename` | `FL_CORE_BASENAME` | `core` |
  | `:core_dns_interval_ms` | `FL_CORE_DNS_INTERVAL_MS` | 10 000 |
  | `:invoke_timeout_ms` | `FL_INVOKE_TIMEOUT_MS` | 30 000 |
  | `:max_memory_bytes` | `FL_MAX_MEMORY_MB` | 128 MiB |
  | `:http_allow` | `FL_HTTP_ALLOW` (comma-separated) | none |
  | `:log_lines_per_s` | `FL_LOG_LINES_PER_S` (0: no limit) | 1 000 per function |
  | `:metrics_port` | `FL_METRICS_PORT` (0 disables) | 4021 |
  | `:metrics_addr` | `FL_METRICS_ADDR` (IPv4 or IPv6) | `:any`: every IPv4 interface |
  | `:metrics_max_functions` | `FL_METRICS_MAX_FUNCTIONS` | 1 000 |
  """

  @doc "Fills in every setting not already in the application environment."
  def apply_defaults do
    for {key, value} <- defaults(), Application.get_env(:worker, key) == nil do
      Application.put_env(:worker, key, value)
    end

    refresh()
  end

  @doc """
  Changes a setting at run time. Use this rather than `Application.put_env/3`
  for the defaults of `Worker.Runtime.invoke/3`, which are cached.
  """
  @spec put(atom(), term()) :: :ok
  def put(key, value) do
    Application.put_env(:worker, key, value)
    refresh()
  end

  @doc """
  `{timeout_ms, max_memory_bytes, http_allow, log_lines_per_s}`: the defaults of
  `Worker.Runtime.invoke/3`, read on every invocation, so kept in
  `:persistent_term` rather than looked up in the application environment.
  """
  @spec invoke_defaults() ::
          {non_neg_integer(), non_neg_integer(), [String.t()], non_neg_integer()}
  def invoke_defaults do
    case :persistent_term.get({__MODULE__, :invoke}, nil) do
      nil ->
        refresh()
        :persistent_term.get({__MODULE__, :invoke})

      defaults ->
        defaults
    end
  end

  defp refresh do
    builtin = defaults()
    get = fn key -> Application.get_env(:worker, key, builtin[key]) end

    defaults =
      {get.(:invoke_timeout_ms), get.(:max_memory_bytes), get.(:http_allow),
       get.(:log_lines_per_s)}

    if :persistent_term.get({__MODULE__, :invoke}, nil) != defaults do
      :persistent_term.put({__MODULE__, :invoke}, defaults)
    end

    :ok
  end

  defp defaults do
    [
      data_dir: Path.expand("fl_data"),
      max_concurrency: 4 * System.schedulers_online(),
      queue_limit: 1_000,
      queue_timeout_ms: 10_000,
      max_requests: 4_096,
      handler_max_bytes: 256 * 1024 * 1024,
      compile_timeout_ms: 60_000,
      compile_max_mb: 2_048,
      cache_max_entries: 256,
      cache_max_bytes: 512 * 1024 * 1024,
      max_capacity_mb: 512,
      handler_timeout_ms: 30_000,
      core_nodes: [],
      core_basename: "core",
      core_dns_interval_ms: 10_000,
      invoke_timeout_ms: 30_000,
      max_memory_bytes: 128 * 1024 * 1024,
      http_allow: [],
      log_lines_per_s: 1_000,
      metrics_port: 4021,
      metrics_addr: :any,
      metrics_max_functions: 1_000
    ]
  end

  @doc """
  Reads the `FL_*` variables into keyword config, for `config/runtime.exs`.
  Unset variables are left out, so the defaults above apply.
  """
  @spec from_env(%{String.t() => String.t()}) :: keyword()
  def from_env(env \\ System.get_env()) do
    [
      data_dir: env["FL_DATA_DIR"],
      max_concurrency: int(env["FL_MAX_CONCURRENCY"]),
      queue_limit: int(env["FL_QUEUE_LIMIT"]),
      queue_timeout_ms: int(env["FL_QUEUE_TIMEOUT_MS"]),
      max_requests: int(env["FL_MAX_REQUESTS"]),
      handler_max_bytes: mb(env["FL_HANDLER_MAX_MB"]),
      compile_timeout_ms: int(env["FL_COMPILE_TIMEOUT_MS"]),
      compile_max_mb: int(env["FL_COMPILE_MAX_MB"]),
      cache_max_entries: int(env["FL_CACHE_MAX_ENTRIES"]),
      cache_max_bytes: mb(env["FL_CACHE_MAX_MB"]),
      max_capacity_mb: int(env["FL_MAX_CAPACITY_MB"]),
      handler_timeout_ms: int(env["FL_HANDLER_TIMEOUT_MS"]),
      worker_name: env["FL_WORKER_NAME"],
      worker_tag: env["FL_WORKER_TAG"],
      core_nodes: nodes(env["FL_CORE_NODES"]),
      core_dns: env["FL_CORE_DNS"],
      core_basename: env["FL_CORE_BASENAME"],
      core_dns_interval_ms: int(env["FL_CORE_DNS_INTERVAL_MS"]),
      invoke_timeout_ms: int(env["FL_INVOKE_TIMEOUT_MS"]),
      max_memory_bytes: mb(env["FL_MAX_MEMORY_MB"]),
      http_allow: list(env["FL_HTTP_ALLOW"]),
      log_lines_per_s: int(env["FL_LOG_LINES_PER_S"]),
      metrics_port: int(env["FL_METRICS_PORT"]),
      metrics_addr: address(env["FL_METRICS_ADDR"], "FL_METRICS_ADDR"),
      metrics_max_functions: int(env["FL_METRICS_MAX_FUNCTIONS"])
    ]
    |> Enum.reject(fn {_, v} -> v in [nil, ""] end)
  end

  defp int(nil), do: nil

  defp int(text) do
    case Integer.parse(String.trim(text)) do
      {n, ""} when n >= 0 -> n
      _ -> raise ArgumentError, "expected a non-negative integer, got #{inspect(text)}"
    end
  end

  defp mb(text), do: if(n = int(text), do: n * 1024 * 1024)

  defp list(nil), do: nil
  defp list(text), do: text |> String.split(",", trim: true) |> Enum.map(&String.trim/1)

  defp nodes(nil), do: nil

  defp nodes(text) do
    text |> String.split(",", trim: true) |> Enum.map(&String.to_atom(String.trim(&1)))
  end

  # an IPv4 or IPv6 address, as :inet takes it; unset or blank: nil
  defp address(text, variable) do
    case String.trim(text || "") do
      "" ->
        nil

      trimmed ->
        case :inet.parse_address(String.to_charlist(trimmed)) do
          {:ok, address} -> address
          {:error, _} -> raise ArgumentError, "#{variable}: not an IP address: #{inspect(text)}"
        end
    end
  end
end
