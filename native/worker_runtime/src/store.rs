//! What every kind of function starts from ([`Start`]), the store it runs
//! in, and how that store ends.
//!
//! A store yields at each epoch tick once its slice has run half a tick, so
//! one poll of an invocation returns within about one tick
//! ([`DEFAULT_TICK`](crate::engine::DEFAULT_TICK)), or the ticker's first
//! look ([`FIRST_SLICE`](crate::engine::FIRST_SLICE)), and traps at the
//! deadline. Its [`Limiter`] bounds its instances, tables and memories. A
//! store that grew big is dropped on a thread of its own ([`release`]),
//! never on the thread that polled the guest.

use crate::limits::{Limiter, Limits};
use crate::logs::{LogSink, Stream, WasiLog};
use crate::outcome::{DeadlineReached, Outcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

/// A started function's work, to poll until its outcome; it releases its
/// store before it ends.
pub type Run = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A started invocation: its work, and the log its output goes to.
pub struct Started {
    pub run: Run,
    pub logs: Arc<LogSink>,
    /// Whether the store is shared with other invocations (a reused
    /// instance's): the log is not this invocation's alone to finish, and
    /// the work holds no store of its own, so it is dropped in place, at
    /// once, when the invocation is.
    pub shared: bool,
}

impl Started {
    /// `run`, whose output goes to its own log.
    pub fn own(logs: Arc<LogSink>, run: Run) -> Started {
        Started {
            run,
            logs,
            shared: false,
        }
    }
}

/// What a kind of function gets to start an invocation: the arguments (JSON
/// text), the limits, the log, and a WASI context with no filesystem,
/// environment or sockets, whose stdio the kind sets.
pub struct Start {
    pub input: bytes::Bytes,
    pub limits: Limits,
    /// The memory limit, under the runtime's cap.
    pub max_memory: usize,
    pub deadline: Instant,
    pub logs: Arc<LogSink>,
    pub wasi: WasiCtxBuilder,
    /// Makes the invocation's store.
    pub clock: Clock,
}

impl Start {
    /// A start for `input` under `limits`, with the runtime's engine, tick
    /// and memory cap.
    pub fn new(
        engine: &'static Engine,
        tick: Duration,
        memory_cap: usize,
        input: bytes::Bytes,
        limits: Limits,
        slice: Arc<SliceClock>,
    ) -> Start {
        let logs = LogSink::new(limits.log, limits.log_budget.clone());
        let mut wasi = WasiCtxBuilder::new();
        // random_get fills a host buffer of the asked size before copying
        // it, and traps past this (docs/functions.md, limits)
        wasi.max_random_size(crate::limits::MAX_RANDOM_BYTES)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let deadline = Instant::now() + limits.timeout;
        Start {
            input,
            max_memory: limits.max_memory.min(memory_cap),
            limits,
            deadline,
            logs,
            wasi,
            clock: Clock {
                engine,
                deadline,
                slice,
                half_tick: tick / 2,
            },
        }
    }

    /// A stdout or stderr that goes to the log.
    pub fn log(&self, stream: Stream) -> WasiLog {
        WasiLog {
            sink: self.logs.clone(),
            stream,
        }
    }
}

/// The engine, the deadline, and when the current slice began: what makes
/// an invocation's store.
pub struct Clock {
    engine: &'static Engine,
    deadline: Instant,
    slice: Arc<SliceClock>,
    half_tick: Duration,
}

impl Clock {
    /// The store for `data`, limited by its [`Limiter`], that yields at
    /// each tick once the slice has run half a tick, and traps at the
    /// deadline.
    pub fn store<T: Limited>(self, data: T) -> Store<T> {
        let deadline = self.deadline;
        self.store_until(data, move |now| now >= deadline)
    }

    /// The slice clock the store's epoch callback reads.
    pub fn slice(&self) -> Arc<SliceClock> {
        self.slice.clone()
    }

    /// As [`store`](Self::store), trapping when `past` says a deadline has
    /// passed (an instance that serves many requests has one for each).
    pub fn store_until<T: Limited>(
        self,
        data: T,
        past: impl Fn(Instant) -> bool + Send + Sync + 'static,
    ) -> Store<T> {
        let Clock {
            engine,
            slice,
            half_tick,
            ..
        } = self;
        let mut store = Store::new(engine, data);
        store.limiter(|state| state.limiter());
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            let now = Instant::now();
            if past(now) {
                Err(wasmtime::Error::new(DeadlineReached))
            } else if slice.elapsed(now) < half_tick {
                // The slice began just before this tick: keep going.
                Ok(UpdateDeadline::Continue(1))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

/// When the current slice (poll) began, for the epoch callback.
pub struct SliceClock {
    origin: Instant,
    started_ns: AtomicU64,
}

impl Default for SliceClock {
    fn default() -> Self {
        SliceClock {
            origin: Instant::now(),
            started_ns: AtomicU64::new(0),
        }
    }
}

impl SliceClock {
    /// A slice begins now.
    pub fn start(&self) {
        let ns = self.origin.elapsed().as_nanos() as u64;
        self.started_ns.store(ns, Ordering::Relaxed);
    }

    fn elapsed(&self, now: Instant) -> Duration {
        let now_ns = now.duration_since(self.origin).as_nanos() as u64;
        Duration::from_nanos(now_ns.saturating_sub(self.started_ns.load(Ordering::Relaxed)))
    }
}

/// Store data with a [`Limiter`].
pub trait Limited: Send + 'static {
    fn limiter(&mut self) -> &mut Limiter;
}

/// Memory past this much is returned to the OS when a store is dropped,
/// page by page: for a guest that grew to hundreds of MiB that takes tens
/// of milliseconds, so such stores are dropped on a thread of their own,
/// never on the scheduler that ran the guest.
const RELEASE_ELSEWHERE_BYTES: usize = 16 << 20;

/// Drops a store that has run, elsewhere if its memories are big.
pub fn release<T: Limited>(mut store: Store<T>) {
    if store.data_mut().limiter().granted() > RELEASE_ELSEWHERE_BYTES {
        elsewhere(Box::new(store));
    }
}

/// Drops `value` on the release thread (or here, if it cannot start).
pub fn elsewhere(value: Box<dyn Send>) {
    type Releaser = std::sync::mpsc::Sender<Box<dyn Send>>;
    static RELEASER: std::sync::OnceLock<Option<Releaser>> = std::sync::OnceLock::new();
    let releaser = RELEASER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn Send>>();
        std::thread::Builder::new()
            .name("fl-release".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    if let Some(releaser) = releaser {
        // If the thread is gone, the value comes back and drops here.
        let _ = releaser.send(value);
    }
}
