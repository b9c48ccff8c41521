import Config

# Defaults live in Worker.Config; config/runtime.exs reads FL_* variables.

config :logger, :console,
  metadata: [:fl_module, :fl_function, :fl_invocation, :fl_outcome, :fl_stream]

# CPU and memory figures for /metrics; the disk and OS-message supervisors
# are not needed.
config :os_mon, start_disksup: false, start_os_sup: false

if config_env() == :test do
  config :logger, level: :warning
  config :worker, data_dir: Path.expand("../tmp/test_data", __DIR__), metrics_port: 0
end
