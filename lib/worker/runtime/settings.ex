defmodule Worker.Runtime.Settings do
  @moduledoc """
  The native runtime's process-wide settings: what the Wasmtime engine and
  its pool are made with. They are given once, when the application starts
  (`Worker.Config.configure_runtime/0` calls `Worker.Runtime.configure/1`),
  and cannot change while the VM runs.

  `Worker.Config` reads them from `FL_POOL_INSTANCES`, `FL_MEMORY_CAP_MB`,
  `FL_MAX_MODULE_MB`, `FL_EPOCH_TICK_US`, `FL_POOL_KEEP_RESIDENT_KB`,
  `FL_WASI_P3` and the three `FL_P3_INSTANCE_*`;
  the defaults are the native runtime's own (`Worker.Runtime.default_settings/0`),
  written once, in Rust (`native/worker_runtime/src/engine.rs`).
  """

  @enforce_keys [
    :pool_instances,
    :memory_cap_bytes,
    :max_module_bytes,
    :epoch_tick_us,
    :keep_resident_bytes,
    :wasi_p3,
    :p3_instance_requests,
    :p3_instance_concurrency,
    :p3_instance_idle_ms
  ]
  defstruct @enforce_keys

  @typedoc """
  * `pool_instances` - instances in the pool: the most invocations in
    flight at once, in any process;
  * `memory_cap_bytes` - the most linear memory any function can get;
  * `max_module_bytes` - the largest module `Worker.Runtime.compile/1`
    takes;
  * `epoch_tick_us` - the epoch tick: about the longest slice a guest runs
    before it yields;
  * `keep_resident_bytes` - bytes of each pool slot reset in place rather
    than returned to the OS (0: none);
  * `wasi_p3` - whether WASI 0.3 components run (the engine's
    component-model async support, which costs every component);
  * `p3_instance_requests` - requests one instance of a WASI 0.3 HTTP
    handler serves before it is retired (1: an instance per request);
  * `p3_instance_concurrency` - requests one such instance serves at once;
  * `p3_instance_idle_ms` - how long such an instance is kept with no
    request.
  """
  @type t :: %__MODULE__{
          pool_instances: pos_integer(),
          memory_cap_bytes: pos_integer(),
          max_module_bytes: pos_integer(),
          epoch_tick_us: pos_integer(),
          keep_resident_bytes: non_neg_integer(),
          wasi_p3: boolean(),
          p3_instance_requests: pos_integer(),
          p3_instance_concurrency: pos_integer(),
          p3_instance_idle_ms: non_neg_integer()
        }
end
