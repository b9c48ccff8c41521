import Config

# Every FL_* variable the worker reads; see Worker.Config for the list and
# the defaults. Set variables override config.exs.
if config_env() != :test do
  config :worker, Worker.Config.from_env()

  # FL_LOG_FORMAT: text (the default) or json, one object a line (Worker.LogFormat)
  config :logger, :console, Worker.LogFormat.console(System.get_env("FL_LOG_FORMAT"))

  if level = System.get_env("FL_LOG_LEVEL") do
    config :logger, level: String.to_existing_atom(level)
  end
end
