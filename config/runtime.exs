import Config

# Every FL_* variable the worker reads is read here, through Worker.Config,
# which lists them all with their defaults and ranges (and checks them: a
# bad value stops the boot with a message naming the variable). Set
# variables override config.exs.
if config_env() != :test do
  config :worker, Worker.Config.from_env()

  if level = Worker.Config.log_level() do
    config :logger, level: level
  end
end
