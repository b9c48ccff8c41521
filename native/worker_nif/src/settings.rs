//! `Worker.Runtime.Settings`: the native runtime's process-wide settings,
//! given once by `Worker.Config` when the application starts.

use crate::error::{self, Error};
use rustler::{Env, NifStruct, Term};
use std::time::Duration;
use worker_runtime::Reuse;

/// The Elixir struct, field for field; sizes in bytes, the tick in µs.
#[derive(NifStruct, Debug, Clone)]
#[module = "Worker.Runtime.Settings"]
pub struct Settings {
    pub pool_instances: u32,
    pub memory_cap_bytes: u64,
    pub max_module_bytes: u64,
    pub epoch_tick_us: u64,
    pub keep_resident_bytes: u64,
    pub wasi_p3: bool,
    pub p3_instance_requests: u32,
    pub p3_instance_concurrency: u32,
    pub p3_instance_idle_ms: u64,
}

impl From<worker_runtime::Settings> for Settings {
    fn from(s: worker_runtime::Settings) -> Settings {
        Settings {
            pool_instances: s.pool_instances,
            memory_cap_bytes: s.memory_cap as u64,
            max_module_bytes: s.max_module_bytes as u64,
            epoch_tick_us: s.tick.as_micros() as u64,
            keep_resident_bytes: s.keep_resident as u64,
            wasi_p3: s.wasi_p3,
            p3_instance_requests: s.p3_reuse.requests,
            p3_instance_concurrency: s.p3_reuse.concurrency,
            p3_instance_idle_ms: s.p3_reuse.idle.as_millis() as u64,
        }
    }
}

impl From<Settings> for worker_runtime::Settings {
    fn from(s: Settings) -> worker_runtime::Settings {
        let size = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
        worker_runtime::Settings {
            pool_instances: s.pool_instances,
            memory_cap: size(s.memory_cap_bytes),
            max_module_bytes: size(s.max_module_bytes),
            tick: Duration::from_micros(s.epoch_tick_us),
            keep_resident: size(s.keep_resident_bytes),
            wasi_p3: s.wasi_p3,
            p3_reuse: Reuse {
                requests: s.p3_instance_requests,
                concurrency: s.p3_instance_concurrency,
                idle: Duration::from_millis(s.p3_instance_idle_ms),
            },
        }
    }
}

/// The runtime's defaults (`worker_runtime::Settings::default`), the one
/// place they are written; the default kept-resident size depends on
/// whether this kernel has the PAGEMAP_SCAN ioctl.
#[rustler::nif]
fn runtime_defaults() -> Settings {
    worker_runtime::Settings::default().into()
}

/// Starts the runtime with `settings`: `:ok`, also when it already runs
/// with these;
/// `{:error, {:runtime_configured, reason}}` when it runs with others;
/// `{:error, {:runtime_unavailable, reason}}` when the engine refused them.
/// Starting the engine takes a few milliseconds: a dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn runtime_configure(env: Env, settings: Settings) -> Term {
    let configured = worker_runtime::configure(settings.into());
    error::status(env, configured.map(|_| ()).map_err(Error::from))
}
