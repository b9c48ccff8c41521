import Config

# Every FL_* variable the worker reads; see Worker.Config for the list and
# the defaults. Set variables override config.exs.
if config_env() != :test do
  config :worker, Worker.Config.from_env()
end
