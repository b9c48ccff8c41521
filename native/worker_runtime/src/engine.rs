//! The one Wasmtime engine of the process, and what runs beside it.
//!
//! Everything here is created once, by [`configure`], and shared by every
//! module and invocation: the engine (pooling allocator, epoch
//! interruption, async fibers), the epoch ticker, and a small Tokio runtime
//! for outbound HTTP and WASI timers. The linkers belong to the hosts
//! (`core_host`, `component_host`).

use crate::Error;
use crate::limits::{COMPONENT_CORE_INSTANCES, COMPONENT_MEMORIES, COMPONENT_TABLES};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances while guests run, by default. A guest
/// yields at the first tick after it has run for half a tick, so this is
/// about the longest a guest holds the thread that polls it after its
/// first slice (see `store`, and [`FIRST_SLICE`] for the first). The BEAM
/// switches processes every few tens of microseconds of work, so a guest
/// should not hold a scheduler much longer either.
pub const DEFAULT_TICK: Duration = Duration::from_micros(100);

/// The ticker keeps waking this long after the last invocation ends, so
/// that back-to-back invocations never pay for waking it.
const LINGER: Duration = Duration::from_millis(200);

/// How often the ticker looks for a guest running once none has run for
/// this long: the longest a slice that starts then lasts, when the tick is
/// shorter. Most invocations end within their first slice, long before
/// this: while they do, the ticker wakes a tenth as often as it ticks.
/// The BEAM asks a NIF call to return within about a millisecond.
pub const FIRST_SLICE: Duration = Duration::from_millis(1);

/// Process-wide settings, given once by the embedder ([`configure`]): the
/// worker's `Worker.Config` reads them from `FL_*` variables and checks
/// their ranges; [`Settings::default`] is the one place their defaults are
/// written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Instances (and memories, tables, fiber stacks) the pool holds: the
    /// most invocations that can be in flight at once. `FL_POOL_INSTANCES`.
    pub pool_instances: u32,
    /// The most linear memory any function may ever get, whatever its own
    /// limit says, in bytes. `FL_MEMORY_CAP_MB`.
    pub memory_cap: usize,
    /// Largest module accepted by compile, in bytes. `FL_MAX_MODULE_MB`.
    pub max_module_bytes: usize,
    /// Epoch tick. `FL_EPOCH_TICK_US`.
    pub tick: Duration,
    /// Bytes of each pool slot (memory, table, stack) reset in place rather
    /// than returned to the OS. `FL_POOL_KEEP_RESIDENT_KB`.
    pub keep_resident: usize,
    /// WASI 0.3: the component model's async support in the engine, and
    /// WASI 0.3 in the component linker. Off (the default), 0.3 components
    /// are refused, and 0.2 components run faster. `FL_WASI_P3`.
    pub wasi_p3: bool,
    /// How WASI 0.3 HTTP handlers' instances are reused.
    /// `FL_P3_INSTANCE_REQUESTS`, `FL_P3_INSTANCE_CONCURRENCY`,
    /// `FL_P3_INSTANCE_IDLE_MS`.
    pub p3_reuse: Reuse,
}

impl Default for Settings {
    /// 1 000 instances, a 512 MiB memory cap, 64 MiB modules, a 100 µs
    /// tick, and 1 MiB kept resident where the PAGEMAP_SCAN ioctl works
    /// (Linux 6.7 and later, as Wasmtime probes it) and may be used (no
    /// swap, see [`pagemap_scan`]), else 0: without it, Wasmtime would
    /// memset the whole kept range on every reuse.
    fn default() -> Settings {
        Settings {
            pool_instances: 1000,
            memory_cap: 512 << 20,
            max_module_bytes: 64 << 20,
            tick: DEFAULT_TICK,
            keep_resident: if pagemap_scan() == wasmtime::Enabled::Auto
                && PoolingAllocationConfig::is_pagemap_scan_available()
            {
                1 << 20
            } else {
                0
            },
            wasi_p3: false,
            p3_reuse: Reuse::default(),
        }
    }
}

/// How WASI 0.3 handlers' instances are reused (`FL_P3_INSTANCE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves before it is retired; 1 for an
    /// instance per request.
    pub requests: u32,
    /// Requests one instance serves at once.
    pub concurrency: u32,
    /// How long an instance with no request is kept.
    pub idle: Duration,
}

impl Default for Reuse {
    /// `wasmtime serve`'s defaults for WASI 0.3: 128 requests, 16 at once,
    /// 1 s idle.
    fn default() -> Reuse {
        Reuse {
            requests: 128,
            concurrency: 16,
            idle: Duration::from_secs(1),
        }
    }
}

/// Whether a pool slot may be reset by scanning for the pages a guest
/// touched (PAGEMAP_SCAN): only where no swap is configured. Wasmtime
/// 48.0.8's scan misses a touched page that was swapped out, so the next
/// guest in the slot could read what the last one wrote there (fixed in
/// Wasmtime 48.0.11, upstream PR 14357, which the registry cannot
/// resolve here; see SECURITY.md). With swap, kept pages are reset whole.
/// Checked once, at start.
pub fn pagemap_scan() -> wasmtime::Enabled {
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    if swap_listed(&swaps) {
        wasmtime::Enabled::No
    } else {
        wasmtime::Enabled::Auto
    }
}

/// Whether `/proc/swaps` (its text) lists a swap device or file, zram and
/// zswap's backing devices included: any line after the header.
fn swap_listed(swaps: &str) -> bool {
    swaps.lines().skip(1).any(|line| !line.trim().is_empty())
}

pub struct Runtime {
    pub engine: Engine,
    pub settings: Settings,
    pub tokio: tokio::runtime::Runtime,
    ticker: Ticker,
}

static RUNTIME: OnceLock<Result<Runtime, Error>> = OnceLock::new();

/// Starts the shared runtime with `settings`, once per process. Called
/// again with the same settings, it changes nothing and succeeds; with
/// others, it fails with [`Error::Configured`] and the runtime keeps the
/// settings it started with. Creation fails only if the engine refuses the
/// configuration (for example a pool too large for the address space); the
/// reason is kept and returned on every later call.
pub fn configure(settings: Settings) -> Result<&'static Runtime, Error> {
    let rt = RUNTIME
        .get_or_init(|| Runtime::new(settings.clone()))
        .as_ref()
        .map_err(Clone::clone)?;
    if rt.settings != settings {
        return Err(Error::Configured(format!(
            "the native runtime already runs with {:?}; other settings ({:?}) need a restart",
            rt.settings, settings
        )));
    }
    Ok(rt)
}

/// The shared runtime, once [`configure`] has started it.
pub fn runtime() -> Result<&'static Runtime, Error> {
    match RUNTIME.get() {
        Some(rt) => rt.as_ref().map_err(Clone::clone),
        None => Err(Error::Unavailable(
            "the native runtime has no settings yet (configure it first)".into(),
        )),
    }
}

/// The engine configuration every module is compiled for, without the
/// instance allocator: the compiler child (`fl-compile`) builds its engine
/// from this alone (told `wasi_p3`), so its artifacts load in the worker's
/// engine.
pub fn compiler_config(wasi_p3: bool) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // Guests run on fiber stacks of this size, whatever thread polls
        // them: the BEAM's small scheduler stacks never see wasm frames.
        .async_stack_size(2 << 20)
        .max_wasm_stack(512 << 10)
        .wasm_backtrace_max_frames(NonZeroUsize::new(16))
        // No GC types. Wasmtime is built without its `gc` feature, but the
        // proposal was still on, so a module could declare subtypes; a
        // `call_indirect` to a non-final type then reached a libcall that
        // Wasmtime 48.0.8 compiles as an abort without `gc`, taking the
        // whole VM down (GHSA-rc4p-x33f-vpr2, fixed in 48.0.9, which the
        // registry cannot resolve with wasmtime-wasi 48.0.8). Off, such a
        // module is refused when it is compiled. See SECURITY.md.
        .wasm_gc(false)
        // No 64-bit memories: the bulk rewrite (`bulk.rs`), which makes
        // memory.fill and memory.copy preemptible and Spectre-safe, works on
        // 32-bit memories, and a 64-bit one would bypass it. Nothing a
        // FunLess function is built for uses them.
        .wasm_memory64(false)
        // WASI 0.3 components: their async exports, streams and futures.
        // Wasmtime calls this support incomplete, and its fixes after
        // 48.0.8 cannot be had here: see SECURITY.md. It costs every
        // component's store and call (a 0.2 hello command 1.6 to 2.1x in
        // the floor, BENCHMARKS.md), so it is off unless asked for
        // (`Settings::wasi_p3`).
        .wasm_component_model_async(wasi_p3)
        .concurrency_support(wasi_p3);
    config
}

impl Runtime {
    fn new(settings: Settings) -> Result<Runtime, Error> {
        let unavailable = |e: String| Error::Unavailable(e);
        if settings.tick.is_zero() || settings.pool_instances == 0 {
            return Err(unavailable(format!(
                "the tick and the pool must be above zero: {settings:?}"
            )));
        }
        // The pool holds `pool_instances` invocations of any kind at once, so
        // that an admitted invocation always finds its slots: a FunLess
        // module or a WASI command takes one core instance, memory and
        // table; a component at most the per-component limits below (a
        // Rust one takes 3 core instances, 1 memory, 2 tables; Python's 14
        // core instances). Core instance and table slots cost little
        // address space; a memory slot reserves its memory's whole range.
        let n = settings.pool_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(COMPONENT_CORE_INSTANCES))
            .total_memories(n.saturating_mul(COMPONENT_MEMORIES))
            .total_tables(n.saturating_mul(COMPONENT_TABLES))
            // With WASI 0.3's async support, a component may run each of its
            // instances' tasks on a fiber of its own: as many stacks as core
            // instances, then (address space only, until used)
            .total_stacks(if settings.wasi_p3 {
                n.saturating_mul(COMPONENT_CORE_INSTANCES)
            } else {
                n
            })
            .max_core_instances_per_component(COMPONENT_CORE_INSTANCES)
            .max_memories_per_component(COMPONENT_MEMORIES)
            .max_tables_per_component(COMPONENT_TABLES)
            .max_memory_size(settings.memory_cap)
            .max_unused_warm_slots(settings.pool_instances.min(64));
        if settings.keep_resident > 0 {
            // Reset a used slot by scanning for the pages the guest touched
            // (Linux's PAGEMAP_SCAN) and restoring just those, instead of
            // madvise: no page faults on reuse, and no TLB shootdowns that
            // stall every other core. 4x faster per invocation here, and
            // what lets two callers scale.
            pool.linear_memory_keep_resident(settings.keep_resident)
                .table_keep_resident(settings.keep_resident)
                .async_stack_keep_resident(settings.keep_resident)
                .pagemap_scan(pagemap_scan());
        }

        let mut config = compiler_config(settings.wasi_p3);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine =
            Engine::new(&config).map_err(|e| unavailable(format!("wasmtime engine: {e:#}")))?;

        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fl-io")
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("tokio runtime: {e}")))?;

        let ticker = Ticker::start(engine.clone(), settings.tick).map_err(unavailable)?;
        Ok(Runtime {
            engine,
            settings,
            tokio,
            ticker,
        })
    }

    /// Invocations that exist right now (started and not yet dropped).
    pub fn in_flight(&self) -> usize {
        self.ticker.active.load(Ordering::Acquire)
    }

    /// Marks one invocation as running; the ticker runs while any is.
    pub fn running(&self) -> Running {
        self.ticker.active.fetch_add(1, Ordering::SeqCst);
        if self.ticker.parked.load(Ordering::SeqCst) {
            self.ticker.thread.unpark();
        }
        Running(self.ticker.active.clone())
    }

    /// Marks a slice as running (a guest polled on this thread) until the
    /// guard is dropped: the epoch advances every tick while any is.
    pub fn slice(&self) -> InSlice<'_> {
        self.ticker.slices.fetch_add(1, Ordering::Relaxed);
        InSlice(&self.ticker.slices)
    }
}

/// A slice in progress ([`Runtime::slice`]).
pub struct InSlice<'a>(&'a AtomicUsize);

impl Drop for InSlice<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Advances the engine epoch while guests run, and sleeps once no
/// invocation has existed for [`LINGER`], so an idle worker costs nothing.
///
/// A guest yields at the first epoch after it has run half a tick (see
/// `store`). The ticker looks for a slice in progress every
/// [`FIRST_SLICE`]; once it has seen one, it ticks every tick until
/// [`FIRST_SLICE`] has passed without one. So a slice that starts after a
/// quiet millisecond lasts up to [`FIRST_SLICE`] (or a tick, if longer),
/// and every slice of a guest that keeps running, yielding in between,
/// about a tick; the invocations that end within their first slice,
/// nearly all, cost the ticker a wake-up a millisecond, not one a tick.
struct Ticker {
    active: Arc<AtomicUsize>,
    slices: Arc<AtomicUsize>,
    parked: Arc<AtomicBool>,
    thread: Thread,
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> Result<Ticker, String> {
        let active = Arc::new(AtomicUsize::new(0));
        let slices = Arc::new(AtomicUsize::new(0));
        let parked = Arc::new(AtomicBool::new(false));
        let (seen, in_slice, parking) = (active.clone(), slices.clone(), parked.clone());
        let look = tick.max(FIRST_SLICE);
        let handle = thread::Builder::new()
            .name("fl-epoch".into())
            .spawn(move || {
                raise_priority();
                let mut last_active = Instant::now();
                // Ticks until this instant, and looks after it.
                let mut tick_until = Instant::now();
                loop {
                    if seen.load(Ordering::SeqCst) > 0 {
                        last_active = Instant::now();
                    } else if last_active.elapsed() > LINGER {
                        // Dekker-style handshake with `running`: either
                        // it sees `parked` and unparks us, or we see its
                        // increment and do not park.
                        parking.store(true, Ordering::SeqCst);
                        if seen.load(Ordering::SeqCst) == 0 {
                            thread::park();
                        }
                        parking.store(false, Ordering::SeqCst);
                        last_active = Instant::now();
                    }
                    let ticking = Instant::now() < tick_until;
                    thread::sleep(if ticking { tick } else { look });
                    if in_slice.load(Ordering::Relaxed) > 0 {
                        engine.increment_epoch();
                        tick_until = Instant::now() + look;
                    }
                }
            })
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(Ticker {
            active,
            slices,
            parked,
            thread: handle.thread().clone(),
        })
    }
}

/// Asks the OS to run the ticker ahead of ordinary threads. When every
/// core is busy running guests, a ticker at ordinary priority can wait
/// milliseconds for a CPU, and every slice in flight lasts that much longer.
/// Real-time priority needs CAP_SYS_NICE; without it, the ticker keeps
/// ordinary priority, and slices stretch under full load.
fn raise_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain libc calls on the current thread with a valid struct.
    unsafe {
        let param = libc::sched_param { sched_priority: 1 };
        if libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, -10);
        }
    }
}

/// Held by an invocation while it exists.
pub struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_is_listed_after_the_header_only() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!swap_listed(""));
        assert!(!swap_listed(header));
        assert!(!swap_listed(&format!("{header}\n  \n")));
        assert!(swap_listed(&format!(
            "{header}/dev/zram0                              partition\t4194300\t\t0\t\t100\n"
        )));
        assert!(swap_listed(&format!(
            "{header}/swapfile                               file\t\t1048572\t\t0\t\t-2\n"
        )));
    }

    #[test]
    fn memory64_is_refused_when_compiled() {
        // a 64-bit memory's bulk operations would bypass the bulk rewrite:
        // one libcall, not preemptible, without the Spectre masking
        let engine = Engine::new(&compiler_config(true)).unwrap();
        let wat = r#"(module (memory i64 1)
            (func (export "f") (memory.fill (i64.const 0) (i32.const 0) (i64.const 8))))"#;
        let binary = wat::parse_str(wat).unwrap();
        let error = wasmtime::Module::new(&engine, binary).unwrap_err();
        assert!(format!("{error:#}").contains("memory64"), "{error:#}");
    }

    #[test]
    fn gc_types_are_refused_when_compiled() {
        // GHSA-rc4p-x33f-vpr2: a call through a GC subtype aborts Wasmtime
        // 48.0.8 built without `gc`; the engine must refuse the module
        let engine = Engine::new(&compiler_config(true)).unwrap();
        let wat = r#"(module
            (type $a (sub (func (result i32))))
            (type $b (sub $a (func (result i32))))
            (table 1 funcref)
            (elem (i32.const 0) func $f)
            (func $f (type $b) i32.const 7)
            (func (export "run") (result i32) (call_indirect (type $a) (i32.const 0))))"#;
        let binary = wat::parse_str(wat).unwrap();
        let error = wasmtime::Module::new(&engine, binary).unwrap_err();
        assert!(
            format!("{error:#}").contains("gc proposal must be enabled"),
            "{error:#}"
        );
    }
}
