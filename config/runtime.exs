import Config

# Every FL_* variable the worker reads is read here, through Worker.Config,
# which lists them all with their defaults and ranges (and checks them: a
# bad value stops the boot with a message naming the variable). Set
# variables override config.exs.
if config_env() != :test do
  config :worker, Worker.Config.from_env()

  # FL_LOG_FORMAT: text (the default) or json, one object a line (Worker.LogFormat)
  config :logger, :console, Worker.LogFormat.console(Worker.Config.log_format())

  if level = Worker.Config.log_level() do
    config :logger, level: level
  end
end
