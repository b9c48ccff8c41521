import Config

# Defaults live in Worker.Config; config/runtime.exs reads FL_* variables.

config :logger, :console,
  metadata: [:fl_module, :fl_function, :fl_invocation, :fl_outcome, :fl_stream]

# As documented: `info` unless FL_LOG_LEVEL says otherwise (config/runtime.exs).
# At `debug`, every invocation is logged, which costs more than it does.
config :logger, level: :info

if config_env() == :test do
  config :logger, level: :warning
  # no gossip from tests: every address a test uses is on loopback
  config :worker,
    data_dir: Path.expand("../tmp/test_data", __DIR__),
    metrics_port: 0,
    discovery: :none,
    # the suite runs WASI 0.3 components (off by default); worker nodes
    # started by tests get the default unless the test says otherwise
    wasi_p3: true
end
