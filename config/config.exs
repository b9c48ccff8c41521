import Config

# Defaults for Worker.Runtime.invoke/3; each can be overridden per call.
config :worker,
  invoke_timeout_ms: 30_000,
  max_memory_bytes: 128 * 1024 * 1024

if config_env() == :test do
  config :logger, level: :warning
end
