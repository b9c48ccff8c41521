import Config

# Defaults live in Worker.Config; config/runtime.exs reads FL_* variables.

config :logger, :console, metadata: [:fl_module, :fl_function, :fl_stream]

if config_env() == :test do
  config :logger, level: :warning
  config :worker, data_dir: Path.expand("../tmp/test_data", __DIR__)
end
