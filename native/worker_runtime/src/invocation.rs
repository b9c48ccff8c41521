//! One invocation: a fresh store and instance, `__invoke(len)`, the outcome.
//!
//! An invocation is a future. The guest runs on a Wasmtime fiber with its own
//! stack, so it can be polled from any thread, whatever that thread's stack
//! size. Each epoch tick makes the guest yield, so one `poll` returns within
//! about one epoch tick ([`DEFAULT_TICK`](crate::engine::DEFAULT_TICK)): the embedder decides where and
//! when to poll again. Dropping the invocation at any point frees everything.

use crate::Error;
use crate::command;
use crate::component::{self, ComponentState};
use crate::engine::{Running, runtime};
use crate::host::{GuestFault, HostState};
use crate::logs::{LogLimits, LogSink, Stream, WasiLog};
use crate::module::{Code, CompiledModule, Kind};
use crate::outbound::Outbound;
use crate::policy::Policy;
use crate::stdio::Output;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use wasmtime::{Extern, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

/// Per-invocation limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time for the whole invocation, host calls included.
    pub timeout: Duration,
    /// Linear memory, in bytes.
    pub max_memory: usize,
    /// Input JSON text.
    pub max_input_bytes: usize,
    /// Text passed to `__insert_response` or `__insert_error`.
    pub max_response_bytes: usize,
    /// Outbound HTTP requests.
    pub max_http_requests: u32,
    /// Each of a request's URL, headers and body.
    pub max_http_request_bytes: usize,
    /// A response body.
    pub max_http_body_bytes: usize,
    /// Hosts allowed even though their addresses are not public; `None`
    /// for none (no shared reference count to touch on every invocation).
    pub http_allow: Option<Arc<Policy>>,
    pub log: LogLimits,
    /// The function's guest log line rate, shared by all its invocations;
    /// `None` for no rate limit (see [`LineBudget`](crate::logs::LineBudget)).
    pub log_budget: Option<Arc<crate::logs::LineBudget>>,
}

/// The input cap of every invocation: 4 MiB of JSON text.
pub const MAX_INPUT_BYTES: usize = 4 << 20;

impl Limits {
    /// Limits with `timeout` and `max_memory` (which the embedder chooses:
    /// the worker's are `FL_INVOKE_TIMEOUT_MS` and `FL_MAX_MEMORY_MB`),
    /// and the runtime's own caps for everything else, no allow-list and no
    /// log rate.
    pub fn new(timeout: Duration, max_memory: usize) -> Self {
        Limits {
            timeout,
            max_memory,
            max_input_bytes: MAX_INPUT_BYTES,
            max_response_bytes: 4 << 20,
            max_http_requests: 20,
            max_http_request_bytes: 4 << 20,
            max_http_body_bytes: 8 << 20,
            http_allow: None,
            log: LogLimits::default(),
            log_budget: None,
        }
    }
}

/// The most bytes one WASI `random_get` may ask for; more traps.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `__invoke` returned 0; the bytes passed to `__insert_response`.
    Response(Vec<u8>),
    /// `__invoke` returned 1; the text passed to `__insert_error`.
    ExecError(String),
    /// A Wasm trap, or a host import refusing the guest's arguments.
    Trap(String),
    /// The deadline passed.
    Timeout,
    /// `__invoke` returned 0 without calling `__insert_response`.
    NoResponse,
    /// `__invoke` returned something other than 0 or 1.
    BadReturn(i32),
    /// The guest called WASI `proc_exit`.
    Exit(i32),
    /// Instantiation failed (for example, memory over the limit).
    Instantiate(String),
    /// A WASI command returned (or exited 0); what it printed on stdout,
    /// which the embedder decodes (JSON, else UTF-8 text).
    Output(Vec<u8>),
}

/// Raised by the epoch callback when the deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("invocation deadline reached")]
struct DeadlineReached;

/// An invocation's work; it releases its store before it ends.
type Run = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Core instances, memories and tables one component may have (the pool's
/// per-component limits, and its store's). The memory limit of an
/// invocation bounds all its memories together.
pub const COMPONENT_CORE_INSTANCES: u32 = 16;
pub const COMPONENT_MEMORIES: u32 = 2;
pub const COMPONENT_TABLES: u32 = 4;

/// What the epoch callback of a store needs: the deadline, and when the
/// current slice began.
struct Clock {
    deadline: Instant,
    slice: Arc<SliceClock>,
    half_tick: Duration,
}

impl Clock {
    /// A store for `data`, limited by its [`Limiter`], that yields at each
    /// tick once the slice has run half a tick, and traps at the deadline.
    fn store<T: Limited>(self, engine: &wasmtime::Engine, data: T) -> Store<T> {
        let mut store = Store::new(engine, data);
        store.limiter(|state| state.limiter());
        let Clock {
            deadline,
            slice,
            half_tick,
        } = self;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            let now = Instant::now();
            if now >= deadline {
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

/// Store data with a [`Limiter`].
pub(crate) trait Limited: Send + 'static {
    fn limiter(&mut self) -> &mut Limiter;
}

impl Limited for HostState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

impl Limited for crate::component::ComponentState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

/// The store's limits: how many instances, memories and tables, and
/// `max_memory` bytes of linear memory across all its memories (the linear
/// memory granted so far is counted).
pub struct Limiter {
    limits: StoreLimits,
    max_memory: usize,
    granted: usize,
}

impl Limiter {
    /// A core module's: one instance, memory and table.
    pub fn module(max_memory: usize) -> Limiter {
        Limiter::new(max_memory, 1, 1, 1)
    }

    /// A component's: the pool's per-component limits.
    pub fn component(max_memory: usize) -> Limiter {
        Limiter::new(
            max_memory,
            COMPONENT_CORE_INSTANCES,
            COMPONENT_MEMORIES,
            COMPONENT_TABLES,
        )
    }

    fn new(max_memory: usize, instances: u32, memories: u32, tables: u32) -> Limiter {
        Limiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(max_memory)
                .instances(instances as usize)
                .memories(memories as usize)
                .tables(tables as usize)
                .build(),
            max_memory,
            granted: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        // all memories together, not each on its own
        if self.granted.saturating_add(more) > self.max_memory {
            return Ok(false);
        }
        let grows = self.limits.memory_growing(current, desired, maximum)?;
        if grows {
            self.granted += more;
        }
        Ok(grows)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

pub struct Invocation {
    /// `None` once finished.
    future: Option<Run>,
    logs: Arc<LogSink>,
    slice: Arc<SliceClock>,
    _running: Running,
}

/// When the current slice (poll) began, for the epoch callback.
struct SliceClock {
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
    fn start(&self) {
        let ns = self.origin.elapsed().as_nanos() as u64;
        self.started_ns.store(ns, Ordering::Relaxed);
    }

    fn elapsed(&self, now: Instant) -> Duration {
        let now_ns = now.duration_since(self.origin).as_nanos() as u64;
        Duration::from_nanos(now_ns.saturating_sub(self.started_ns.load(Ordering::Relaxed)))
    }
}

impl Invocation {
    /// Prepares an invocation of `module` with `input` (JSON text). Nothing
    /// runs until the first [`poll`](Self::poll).
    pub fn new(
        module: &CompiledModule,
        input: Vec<u8>,
        limits: Limits,
    ) -> Result<Invocation, Error> {
        let rt = runtime()?;
        if input.len() > limits.max_input_bytes {
            return Err(Error::InvalidArgs(format!(
                "input of {} bytes is over the limit of {} bytes",
                input.len(),
                limits.max_input_bytes
            )));
        }
        let input = bytes::Bytes::from(input);
        let logs = LogSink::new(limits.log, limits.log_budget.clone());
        let log = |stream| WasiLog {
            sink: logs.clone(),
            stream,
        };
        let mut wasi = WasiCtxBuilder::new();
        // random_get fills a host buffer of the asked size before copying
        // it, and traps past this (see README, limits)
        wasi.max_random_size(MAX_RANDOM_BYTES)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let max_memory = limits.max_memory.min(rt.settings.memory_cap);
        let deadline = Instant::now() + limits.timeout;
        let slice = Arc::new(SliceClock::default());
        let clock = Clock {
            deadline,
            slice: slice.clone(),
            half_tick: rt.settings.tick / 2,
        };
        let future: Run = match &module.code {
            Code::Core { pre, entry, memory } => {
                // A command talks over stdio (crate::command); a FunLess
                // function's stdout and stderr are log lines.
                let stdio = match module.kind {
                    Kind::WasiCommand => {
                        let stdout = command::Stdout::new(limits.max_response_bytes);
                        let stderr = command::Stderr::new(log(Stream::Stderr));
                        wasi.stdin(MemoryInputPipe::new(input.clone()))
                            .stdout(Output(stdout.clone()))
                            .stderr(Output(stderr.clone()));
                        Some((stdout, stderr))
                    }
                    _ => {
                        wasi.stdout(Output(log(Stream::Stdout)))
                            .stderr(Output(log(Stream::Stderr)));
                        None
                    }
                };
                let state = HostState {
                    wasi: wasi.build_p1(),
                    limiter: Limiter::module(max_memory),
                    limits,
                    deadline,
                    input,
                    response: None,
                    error: None,
                    logs: logs.clone(),
                    http_requests: 0,
                    memory: None,
                };
                let store = clock.store(&rt.engine, state);
                let entry = Entry {
                    pre: pre.clone(),
                    export: *entry,
                    memory: *memory,
                    stdio,
                };
                Box::pin(run(store, entry))
            }
            Code::Component { pre, entry } => {
                let stderr = command::Stderr::new(log(Stream::Stderr));
                wasi.stderr(Output(stderr.clone()));
                let stdio = match entry {
                    component::Entry::Run(_) => {
                        let stdout = command::Stdout::new(limits.max_response_bytes);
                        wasi.stdin(MemoryInputPipe::new(input.clone()))
                            .stdout(Output(stdout.clone()));
                        component::Stdio::Command(stdout, stderr)
                    }
                    component::Entry::Handle(_) => {
                        wasi.stdout(Output(log(Stream::Stdout)));
                        component::Stdio::Handler(stderr)
                    }
                };
                let outbound = Outbound {
                    policy: limits.http_allow.clone().unwrap_or_else(Policy::none),
                    deadline,
                    max_requests: limits.max_http_requests,
                    max_request_bytes: limits.max_http_request_bytes,
                    max_body: limits.max_http_body_bytes,
                    logs: logs.clone(),
                    requests: 0,
                };
                let limiter = Limiter::component(max_memory);
                let state = ComponentState::new(wasi.build(), outbound, limiter);
                let mut store = clock.store(&rt.engine, state);
                store.set_hostcall_fuel(component::MAX_HOSTCALL_BYTES);
                let max_response = limits.max_response_bytes;
                Box::pin(component::run(
                    store,
                    pre.clone(),
                    *entry,
                    stdio,
                    input,
                    max_response,
                ))
            }
        };
        Ok(Invocation {
            future: Some(future),
            logs,
            slice,
            _running: rt.running(),
        })
    }

    /// Runs the guest for at most about one tick. Must be called with the
    /// runtime's Tokio context entered; [`poll`] does that.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return Poll::Ready(Outcome::Instantiate(e.to_string())),
        };
        let _tokio = rt.tokio.enter();
        self.slice.start();
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(Outcome::Instantiate("the invocation is over".into()));
        };
        match future.as_mut().poll(cx) {
            Poll::Ready(outcome) => {
                self.future = None;
                self.logs.finish();
                Poll::Ready(outcome)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// What the guest printed since the last call.
    pub fn logs(&self) -> &LogSink {
        &self.logs
    }

    /// Runs to completion on the current thread, sleeping while the guest
    /// waits on I/O. For tests, benchmarks and tools outside the BEAM.
    pub fn run_blocking(mut self) -> (Outcome, Vec<crate::logs::Line>) {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut lines = Vec::new();
        loop {
            let polled = self.poll(&mut cx);
            lines.extend(self.logs.drain());
            match polled {
                Poll::Ready(outcome) => return (outcome, lines),
                Poll::Pending => std::thread::park(),
            }
        }
    }
}

/// What an invocation instantiates and calls: the entry point of its
/// kind, and a command's stdout and stderr.
struct Entry {
    pre: wasmtime::InstancePre<HostState>,
    export: wasmtime::ModuleExport,
    memory: wasmtime::ModuleExport,
    stdio: Option<(command::Stdout, command::Stderr)>,
}

async fn run(mut store: Store<HostState>, entry: Entry) -> Outcome {
    let outcome = call(&mut store, entry).await;
    release(store);
    outcome
}

async fn call(store: &mut Store<HostState>, entry: Entry) -> Outcome {
    // The epoch callback enforces the deadline while wasm runs (a start
    // function included); this timer enforces it while the guest is
    // suspended in a host call (a WASI sleep).
    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    let instance =
        match tokio::time::timeout_at(deadline, entry.pre.instantiate_async(&mut *store)).await {
            Ok(Ok(instance)) => instance,
            Ok(Err(e)) => return classify(e, true),
            Err(_) => return Outcome::Timeout,
        };
    let Some(Extern::Memory(memory)) = instance.get_module_export(&mut *store, &entry.memory)
    else {
        return Outcome::Instantiate("exported memory missing".into());
    };
    store.data_mut().memory = Some(memory);
    let func = instance
        .get_module_export(&mut *store, &entry.export)
        .and_then(Extern::into_func);
    if let Some((stdout, stderr)) = &entry.stdio {
        let Some(Ok(start)) = func.map(|f| f.typed::<(), ()>(&*store)) else {
            return Outcome::Instantiate("exported _start missing".into());
        };
        let called = tokio::time::timeout_at(deadline, start.call_async(&mut *store, ())).await;
        return command::outcome(ended(called).map(drop), stdout, stderr);
    }
    let Some(Ok(func)) = func.map(|f| f.typed::<i32, i32>(&*store)) else {
        return Outcome::Instantiate("exported __invoke missing".into());
    };
    let len = store.data().input.len() as i32;
    let call = tokio::time::timeout_at(deadline, func.call_async(&mut *store, len)).await;
    let Ok(call) = call else {
        return Outcome::Timeout;
    };
    match call {
        Ok(0) => match store.data_mut().response.take() {
            Some(response) => Outcome::Response(response),
            None => Outcome::NoResponse,
        },
        Ok(1) => Outcome::ExecError(match store.data_mut().error.take() {
            Some(text) => String::from_utf8_lossy(&text).into_owned(),
            None => "the function failed without an error message".into(),
        }),
        Ok(other) => Outcome::BadReturn(other),
        Err(e) => classify(e, false),
    }
}

/// Memory past this much is returned to the OS when a store is dropped,
/// page by page: for a guest that grew to hundreds of MiB that takes tens
/// of milliseconds, so such stores are dropped on a thread of their own,
/// never on the scheduler that ran the guest.
const RELEASE_ELSEWHERE_BYTES: usize = 16 << 20;

/// Drops a store that has run, elsewhere if its memories are big.
pub(crate) fn release<T: Limited>(mut store: Store<T>) {
    if store.data_mut().limiter().granted > RELEASE_ELSEWHERE_BYTES {
        elsewhere(Box::new(store));
    }
}

/// An invocation dropped before it finished (a timeout in the embedder, a
/// caller that died): its store, whatever its size, is freed elsewhere.
impl Drop for Invocation {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            elsewhere(Box::new(future));
        }
    }
}

/// Drops `value` on the release thread (or here, if it cannot start).
pub(crate) fn elsewhere(value: Box<dyn Send>) {
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

/// How a program's call (a command's `_start` or `run`, a handler's
/// `handle`) ended under the deadline's timer: its value, `None` when it
/// exited with status 0 (as good as returning), or the failure.
pub(crate) fn ended<T>(
    called: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
) -> Result<Option<T>, Outcome> {
    match called {
        Err(_) => Err(Outcome::Timeout),
        Ok(Ok(value)) => Ok(Some(value)),
        Ok(Err(e)) => match classify(e, false) {
            Outcome::Exit(0) => Ok(None),
            failed => Err(failed),
        },
    }
}

pub(crate) fn classify(error: wasmtime::Error, instantiating: bool) -> Outcome {
    if error.is::<DeadlineReached>() {
        return Outcome::Timeout;
    }
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Outcome::Exit(exit.0);
    }
    if let Some(fault) = error.downcast_ref::<GuestFault>() {
        return Outcome::Trap(fault.0.clone());
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| format!("\n{bt}"))
            .unwrap_or_default();
        return Outcome::Trap(format!("{trap}{backtrace}"));
    }
    if instantiating {
        Outcome::Instantiate(format!("{error:#}"))
    } else {
        Outcome::Trap(format!("{error:#}"))
    }
}
