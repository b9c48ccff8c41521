//! Reused instances of WASI 0.3 HTTP handlers. A 0.3 handler's `handle`
//! is async, so one instance can serve many requests, some at once, as
//! `wasmtime serve` and Spin serve them:
//!
//! * an instance serves up to [`Reuse::requests`] requests of one compiled
//!   handler (one function, one code version: the instances belong to its
//!   compiled module), at most [`Reuse::concurrency`] at once, and only
//!   requests under the same limits (memory, outbound policy and caps,
//!   logs);
//! * while its guests compute (its event loop runs or was woken), it
//!   takes no new request: that goes to another instance, as `wasmtime
//!   serve` leaves a busy worker alone;
//! * it is dropped once it has served its last request, or after
//!   [`Reuse::idle`] with none, or when the callers of the requests it
//!   serves have all gone;
//! * a trap, an exit or a request past its timeout ends it: every request
//!   on it fails, saying why (a trap is the request's own when it was
//!   alone; Wasmtime does not say which of several trapped), and the next
//!   request gets a fresh instance;
//! * memory is limited per instance, time per request; log lines and
//!   outbound requests are one invocation's worth for each request taken.
//!
//! No thread of its own drives an instance: each request's invocation,
//! when polled, polls the instance's event loop (`Instance::driver`) if
//! no other is polling it, so every guest still runs in the embedder's
//! slices. Whatever the loop does wakes every request waiting on it.

use crate::component_host::{self, ComponentState, Linked};
use crate::engine::Reuse;
use crate::kinds::http_component::{self, HandleP3, HandledP3, HandlerP3};
use crate::logs::LogSink;
use crate::outcome::{Outcome, classify};
use crate::stdio::{self, Stderr};
use crate::store::{SliceClock, Start, Started, elsewhere, release};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

/// A WASI 0.3 handler, linked, and its live instances.
pub struct HandlerP3Code {
    pub linked: Linked,
    instances: Mutex<Vec<Arc<Instance>>>,
}

impl HandlerP3Code {
    pub fn new(linked: Linked) -> HandlerP3Code {
        HandlerP3Code {
            linked,
            instances: Mutex::default(),
        }
    }

    /// Starts a request: on an instance that can take it, else on a new
    /// one; with reuse off, on an instance of its own, as for 0.2. Returns
    /// the log the request's output goes to.
    pub fn start(&self, start: Start, reuse: Reuse) -> Started {
        if reuse.requests <= 1 {
            let logs = start.logs.clone();
            return Started::own(logs, http_component::start_p3(&self.linked, start));
        }
        let mut instances = lock(&self.instances);
        instances.retain(|instance| !instance.is_over());
        let joined = instances
            .iter()
            .find_map(|instance| instance.join(&start, reuse));
        let (instance, ticket) = match joined {
            Some(joined) => joined,
            None => {
                let (input, deadline) = (start.input.clone(), start.deadline);
                let max_response = start.limits.max_response_bytes;
                let instance = Instance::new(&self.linked, start, reuse);
                let ticket = instance
                    .take(input, deadline, max_response)
                    .expect("a new instance takes its first request");
                instances.push(instance.clone());
                (instance, ticket)
            }
        };
        drop(instances);
        let logs = instance.logs.clone();
        Started {
            run: Box::pin(ticket),
            logs,
            shared: true,
        }
    }
}

/// One request for an instance.
struct Job {
    id: u64,
    input: Bytes,
    deadline: Instant,
    max_response: usize,
    answer: Option<oneshot::Sender<Outcome>>,
}

/// An instance of a WASI 0.3 handler, serving requests.
struct Instance {
    /// The store's event loop: instantiates, then serves the requests put
    /// in the inbox until the instance is retired or fails. Polled by the
    /// requests' invocations, one at a time; `None` once it has ended.
    driver: Mutex<Option<Driver>>,
    /// Whether a request tried to poll the event loop while another was.
    contended: std::sync::atomic::AtomicBool,
    /// Whether its event loop is running or has work waiting (it was
    /// woken since it was last polled): a new request goes to another
    /// instance rather than queue behind a guest that computes, as
    /// `wasmtime serve` leaves it to another worker.
    busy: std::sync::atomic::AtomicBool,
    /// Wakes of its event loop, counted.
    wakes: AtomicU64,
    /// Outbound requests its guests may send: one invocation's cap for
    /// each request it took.
    allowance: Arc<std::sync::atomic::AtomicU32>,
    inbox: Arc<Inbox>,
    /// The wakers of the requests waiting on the instance.
    waiting: Mutex<Vec<(u64, Waker)>>,
    /// What its event loop is polled with: wakes them all ([`WakeAll`]).
    waker: std::sync::OnceLock<Waker>,
    slice: Arc<SliceClock>,
    logs: Arc<LogSink>,
    reuse: Reuse,
    /// What every request it serves must share.
    limits: crate::limits::Limits,
}

type Driver = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What the requests and the event loop share.
struct Inbox {
    state: Mutex<State>,
    arrived: Notify,
    deadlines: Deadlines,
}

#[derive(Default)]
struct State {
    /// Requests not yet taken by the event loop.
    queue: VecDeque<Job>,
    /// Requests given to the instance, ever.
    accepted: u32,
    /// Requests whose invocation is still alive.
    tickets: u32,
    /// Requests the event loop is serving.
    serving: u32,
    /// No more requests: it has served its last or failed.
    retiring: bool,
    /// Why it ended, for the requests it did not answer; `Some` once the
    /// event loop has ended or been dropped.
    ended: Option<Outcome>,
    /// Since when it has had no request.
    idle_since: Option<Instant>,
    /// Whether the idle sweeper watches it.
    watched: bool,
    next_id: u64,
}

impl Instance {
    fn new(linked: &Linked, mut start: Start, reuse: Reuse) -> Arc<Instance> {
        let limits = start.limits.clone();
        // one invocation's worth of lines for each request it accepts
        let logs = LogSink::new(limits.log, limits.log_budget.clone());
        start.logs = logs.clone();
        let stderr = stdio::attach_handler(&mut start);
        let inbox = Arc::new(Inbox {
            state: Mutex::default(),
            arrived: Notify::new(),
            deadlines: Deadlines::default(),
        });
        let slice = start.clock.slice();
        let past = {
            let inbox = Arc::downgrade(&inbox);
            move |now| {
                inbox
                    .upgrade()
                    .is_some_and(|inbox| inbox.deadlines.past(now))
            }
        };
        let until = {
            let inbox = Arc::downgrade(&inbox);
            Arc::new(move || {
                inbox
                    .upgrade()
                    .map_or_else(Instant::now, |inbox| inbox.deadlines.latest())
            })
        };
        let allowance = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let store = component_host::shared_store(start, allowance.clone(), until, past);
        let driver = serve(store, linked.clone(), inbox.clone(), stderr, reuse);
        Arc::new(Instance {
            driver: Mutex::new(Some(Box::pin(driver))),
            contended: Default::default(),
            busy: Default::default(),
            wakes: AtomicU64::new(0),
            allowance,
            inbox,
            waiting: Mutex::default(),
            waker: std::sync::OnceLock::new(),
            slice,
            logs,
            reuse,
            limits,
        })
    }

    /// Whether it serves no more requests and can be forgotten.
    fn is_over(&self) -> bool {
        let state = self.inbox.lock();
        state.ended.is_some() || (state.retiring && state.tickets == 0)
    }

    /// Takes `job` if it can: same limits, not retiring, room for one more.
    fn join(self: &Arc<Self>, start: &Start, reuse: Reuse) -> Option<(Arc<Instance>, Ticket)> {
        if reuse != self.reuse || !same_limits(&self.limits, &start.limits) {
            return None;
        }
        let max_response = start.limits.max_response_bytes;
        self.take(start.input.clone(), start.deadline, max_response)
            .map(|ticket| (self.clone(), ticket))
    }

    /// Takes a request if there is room and no guest computing.
    fn take(
        self: &Arc<Self>,
        input: Bytes,
        deadline: Instant,
        max_response: usize,
    ) -> Option<Ticket> {
        let mut state = self.inbox.lock();
        let started = state.serving as usize + state.queue.len();
        if state.retiring
            || state.ended.is_some()
            || (started > 0 && self.busy.load(Ordering::Acquire))
            || started >= self.reuse.concurrency.max(1) as usize
            || state.accepted >= self.reuse.requests
        {
            return None;
        }
        let (answer, answered) = oneshot::channel();
        let id = state.next_id;
        state.next_id += 1;
        state.accepted += 1;
        state.tickets += 1;
        state.retiring = state.accepted >= self.reuse.requests;
        state.idle_since = None;
        state.queue.push_back(Job {
            id,
            input,
            deadline,
            max_response,
            answer: Some(answer),
        });
        self.inbox.deadlines.add(id, deadline);
        if id > 0 {
            self.logs.grant();
        }
        self.allowance
            .fetch_add(self.limits.max_http_requests, Ordering::AcqRel);
        drop(state);
        self.inbox.arrived.notify_one();
        Some(Ticket {
            instance: self.clone(),
            id,
            deadline,
            answered,
            unanswered: false,
            timer: None,
        })
    }

    /// Polls the event loop if no other request is polling it; when it
    /// ends, the requests it did not answer are told why.
    ///
    /// A request that finds it being polled returns, and is woken when
    /// that poll is over: what the loop did may have been meant for it.
    fn drive(self: &Arc<Self>) {
        // set before trying, so that the holder, which looks after
        // releasing, cannot miss it
        self.contended.store(true, Ordering::Release);
        let mut driver = match self.driver.try_lock() {
            Ok(driver) => driver,
            Err(std::sync::TryLockError::WouldBlock) => return,
            // a panic while it was polled: the instance cannot go on
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                let running = poisoned.into_inner().take();
                let why = ended_before("the host panicked while serving another request");
                self.end(Outcome::Trap(why), running);
                return;
            }
        };
        self.contended.store(false, Ordering::Release);
        let Some(running) = driver.as_mut() else {
            return;
        };
        self.slice.start();
        let waker = self
            .waker
            .get_or_init(|| Waker::from(Arc::new(WakeAll(Arc::downgrade(self)))));
        let wakes = self.wakes.load(Ordering::Acquire);
        self.busy.store(true, Ordering::Release);
        let polled = running.as_mut().poll(&mut Context::from_waker(waker));
        // not woken while polled: every task waits on something outside
        if self.wakes.load(Ordering::Acquire) == wakes {
            self.busy.store(false, Ordering::Release);
        }
        if let Poll::Ready(ended) = polled {
            let running = driver.take();
            drop(driver);
            self.end(ended, running);
            return;
        }
        drop(driver);
        if self.contended.swap(false, Ordering::AcqRel) {
            self.wake_all();
        }
    }

    /// Ends the instance: `why` is what the requests still waiting get;
    /// the event loop (and the store in it) is dropped elsewhere.
    fn end(&self, why: Outcome, running: Option<Driver>) {
        let queued = {
            let mut state = self.inbox.lock();
            state.retiring = true;
            state.ended.get_or_insert(why);
            std::mem::take(&mut state.queue)
        };
        // the requests it never started are told so; those it was serving
        // read `ended` when their senders go with the event loop
        for mut job in queued {
            if let Some(answer) = job.answer.take() {
                let why = "the instance this request waited for ended before it started; \
                           a new request gets a fresh instance";
                let _ = answer.send(Outcome::Trap(why.into()));
            }
        }
        if let Some(running) = running {
            elsewhere(Box::new(running));
        }
        self.wake_all();
    }

    /// Ends an instance no request waits on (`state` is its inbox's,
    /// locked): marked ended before the lock goes, so that no request
    /// joins it; no one polls its event loop, which is taken at once.
    fn end_unwaited(&self, mut state: MutexGuard<'_, State>, why: &str) {
        let why = Outcome::Trap(ended_before(why));
        state.retiring = true;
        state.ended.get_or_insert(why.clone());
        drop(state);
        let running = lock(&self.driver).take();
        self.end(why, running);
    }

    fn wake_all(&self) {
        for (_, waker) in lock(&self.waiting).iter() {
            waker.wake_by_ref();
        }
    }
}

/// An instance dropped with its function's code (the cache let it go):
/// its store goes elsewhere, as a request's does.
impl Drop for Instance {
    fn drop(&mut self) {
        let running = self
            .driver
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(running) = running {
            elsewhere(Box::new(running));
        }
    }
}

/// Wakes every request waiting on an instance: the waker its event loop
/// is polled with.
struct WakeAll(Weak<Instance>);

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(instance) = self.0.upgrade() {
            instance.wakes.fetch_add(1, Ordering::AcqRel);
            instance.busy.store(true, Ordering::Release);
            instance.wake_all();
        }
    }
}

/// Whether two requests' limits let them share an instance: all but the
/// timeout, which is each request's own.
fn same_limits(a: &crate::limits::Limits, b: &crate::limits::Limits) -> bool {
    let same_arc = |a: &Option<Arc<_>>, b: &Option<Arc<_>>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    a.max_memory == b.max_memory
        && a.max_input_bytes == b.max_input_bytes
        && a.max_response_bytes == b.max_response_bytes
        && a.max_http_requests == b.max_http_requests
        && a.max_http_request_bytes == b.max_http_request_bytes
        && a.max_http_body_bytes == b.max_http_body_bytes
        && a.http_allow.as_deref() == b.http_allow.as_deref()
        && a.log.max_lines == b.log.max_lines
        && a.log.max_bytes == b.log.max_bytes
        && a.log.max_line_bytes == b.log.max_line_bytes
        && same_arc(&a.log_budget, &b.log_budget)
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A request on an instance: the future its invocation polls.
struct Ticket {
    instance: Arc<Instance>,
    id: u64,
    deadline: Instant,
    answered: oneshot::Receiver<Outcome>,
    /// Its answer will not come (the receiver must not be polled again).
    unanswered: bool,
    /// Wakes it at its deadline, made at its first poll (in the runtime's
    /// Tokio context): one still queued then times out on its own.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for Ticket {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        {
            let mut waiting = lock(&self.instance.waiting);
            match waiting.iter_mut().find(|(id, _)| *id == self.id) {
                Some((_, waker)) => waker.clone_from(cx.waker()),
                None => waiting.push((self.id, cx.waker().clone())),
            }
        }
        if self.unanswered {
            return self.unanswered();
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if timer.as_mut().poll(cx).is_ready() && self.leave_queue() {
            return Poll::Ready(Outcome::Timeout);
        }
        let mut answered = Pin::new(&mut self.answered).poll(cx);
        if answered.is_pending() {
            self.instance.drive();
            answered = Pin::new(&mut self.answered).poll(cx);
        }
        match answered {
            Poll::Ready(Ok(outcome)) => Poll::Ready(outcome),
            Poll::Ready(Err(_)) => {
                self.unanswered = true;
                self.unanswered()
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Ticket {
    /// Takes its job out of the queue, if the instance has not started it.
    fn leave_queue(&self) -> bool {
        let inbox = &self.instance.inbox;
        let mut state = inbox.lock();
        let Some(at) = state.queue.iter().position(|job| job.id == self.id) else {
            return false;
        };
        state.queue.remove(at);
        drop(state);
        inbox.deadlines.remove(self.id);
        true
    }

    /// The outcome of a request the instance will not answer: its timeout
    /// if its deadline has passed, else why the instance ended, once that
    /// is known (the instance wakes its requests when it is).
    fn unanswered(&self) -> Poll<Outcome> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(Outcome::Timeout);
        }
        match &self.instance.inbox.lock().ended {
            Some(why) => Poll::Ready(why.clone()),
            None => Poll::Pending,
        }
    }
}

/// The request goes: when no other waits on the instance, an instance
/// still serving (callers that are gone) or retiring is dropped now, an
/// idle one when it has been idle long enough.
impl Drop for Ticket {
    fn drop(&mut self) {
        let instance = &self.instance;
        lock(&instance.waiting).retain(|(id, _)| *id != self.id);
        let mut watch = false;
        let mut state = instance.inbox.lock();
        let drop_now = {
            state.tickets -= 1;
            if state.tickets > 0 || state.ended.is_some() {
                false
            } else if state.serving > 0 || !state.queue.is_empty() || state.retiring {
                true
            } else {
                state.idle_since = Some(Instant::now());
                watch = !std::mem::replace(&mut state.watched, true);
                false
            }
        };
        if drop_now {
            instance.end_unwaited(state, "no caller waits on it");
        } else {
            drop(state);
            if watch {
                idle::watch(instance);
            }
        }
    }
}

fn ended_before(why: &str) -> String {
    format!("the instance serving this request ended before it answered: {why}")
}

/// The event loop of an instance: instantiates it, then serves each
/// request of its inbox (at most `reuse.concurrency` at once) until it is
/// retired and has answered them all, or one of them ends it. Returns what
/// the requests it did not answer get.
async fn serve(
    store: wasmtime::Store<ComponentState>,
    linked: Linked,
    inbox: Arc<Inbox>,
    stderr: Stderr,
    reuse: Reuse,
) -> Outcome {
    let (mut store, instance) = match component_host::instantiate(store, &linked.pre).await {
        Ok(instantiated) => instantiated,
        Err(failed) => return stderr.explain(failed),
    };
    let func = match instance.get_typed_func::<HandleP3, HandledP3>(&mut store, linked.export) {
        Ok(func) => func,
        Err(e) => {
            release(store);
            return Outcome::Instantiate(format!("{e:#}"));
        }
    };
    let (inbox_, stderr_) = (inbox.clone(), stderr.clone());
    let served = store
        .run_concurrent(async move |accessor| {
            serve_requests(accessor, func, &inbox_, &stderr_, reuse).await
        })
        .await;
    release(store);
    match served {
        Ok(why) => why,
        // A guest's trap or exit ends the event loop, whichever request
        // it was serving: alone, the request gets it as its own.
        Err(e) => {
            let failed = classify(e, false);
            let alone = inbox.lock().serving <= 1;
            match failed {
                Outcome::Timeout => Outcome::Trap(ended_by(&Outcome::Timeout)),
                Outcome::Exit(status) if alone => {
                    stderr.exec_error(format!("exited with status {status}"))
                }
                failed @ Outcome::Trap(_) if alone => stderr.explain(failed),
                failed => {
                    let Outcome::Trap(explained) = stderr.explain(failed.clone()) else {
                        return Outcome::Trap(ended_by(&failed));
                    };
                    Outcome::Trap(format!(
                        "the instance serving this request and others trapped in one of them: {explained}"
                    ))
                }
            }
        }
    }
}

/// What the other requests get when one of them ended the instance with
/// `outcome`.
fn ended_by(outcome: &Outcome) -> String {
    let what = match outcome {
        Outcome::Timeout => "another request on it ran past its timeout".to_string(),
        Outcome::Exit(status) => format!("another request on it exited with status {status}"),
        Outcome::Trap(message) => format!(
            "another request on it trapped: {}",
            message.lines().next().unwrap_or_default()
        ),
        other => format!("another request on it ended it: {other:?}"),
    };
    ended_before(&what)
}

/// The loop inside the store's event loop.
async fn serve_requests(
    accessor: &wasmtime::component::Accessor<ComponentState>,
    func: HandlerP3,
    inbox: &Inbox,
    stderr: &Stderr,
    reuse: Reuse,
) -> Outcome {
    let mut serving = FuturesUnordered::new();
    loop {
        {
            let mut state = inbox.lock();
            while serving.len() < reuse.concurrency as usize {
                let Some(job) = state.queue.pop_front() else {
                    break;
                };
                state.serving += 1;
                serving.push(exchange(accessor, func, job, inbox, stderr));
            }
            if serving.is_empty() && state.queue.is_empty() && state.retiring {
                return Outcome::Trap(ended_before("it was retired"));
            }
        }
        tokio::select! {
            biased;
            Some(ended) = serving.next() => {
                if let Some(why) = ended {
                    return why;
                }
            }
            _ = inbox.arrived.notified() => {}
        }
    }
}

/// Serves one request under its own deadline; `Some` (what the others get)
/// if its end must end the instance: a trap, an exit, its timeout.
async fn exchange(
    accessor: &wasmtime::component::Accessor<ComponentState>,
    func: HandlerP3,
    mut job: Job,
    inbox: &Inbox,
    stderr: &Stderr,
) -> Option<Outcome> {
    let deadline = tokio::time::Instant::from_std(job.deadline);
    let exchanged = tokio::time::timeout_at(
        deadline,
        http_component::exchange_p3(accessor, func, job.input.clone(), job.max_response),
    )
    .await;
    let (outcome, why) = match exchanged {
        Err(_) => (Outcome::Timeout, Some(Outcome::Timeout)),
        Ok(Ok(outcome)) => (outcome, None),
        Ok(Err(Outcome::Exit(status))) => (
            stderr.exec_error(format!("exited with status {status}")),
            Some(Outcome::Exit(status)),
        ),
        Ok(Err(failed @ (Outcome::Trap(_) | Outcome::Timeout | Outcome::Instantiate(_)))) => {
            (stderr.explain(failed.clone()), Some(failed))
        }
        // an error status or code: the instance is sound
        Ok(Err(failed)) => (failed, None),
    };
    inbox.lock().serving -= 1;
    inbox.deadlines.remove(job.id);
    if let Some(answer) = job.answer.take() {
        let _ = answer.send(outcome);
    }
    why.map(|why| Outcome::Trap(ended_by(&why)))
}

/// The deadlines of the requests an instance serves: its store traps once
/// the earliest has passed (a guest that spins never lets the event loop
/// see its timers).
struct Deadlines {
    set: Mutex<Vec<(u64, Instant)>>,
    /// The earliest, in nanoseconds after `ORIGIN`; `u64::MAX` for none.
    earliest: AtomicU64,
    /// The latest, likewise; 0 for none.
    latest: AtomicU64,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            set: Mutex::default(),
            earliest: AtomicU64::new(u64::MAX),
            latest: AtomicU64::new(0),
        }
    }
}

impl Deadlines {
    fn add(&self, id: u64, at: Instant) {
        let mut set = lock(&self.set);
        set.push((id, at));
        self.update(&set);
    }

    fn remove(&self, id: u64) {
        let mut set = lock(&self.set);
        set.retain(|(other, _)| *other != id);
        self.update(&set);
    }

    fn update(&self, set: &[(u64, Instant)]) {
        let at = || set.iter().map(|(_, at)| nanos(*at));
        self.earliest
            .store(at().min().unwrap_or(u64::MAX), Ordering::Relaxed);
        self.latest
            .store(at().max().unwrap_or(0), Ordering::Relaxed);
    }

    /// The latest deadline of the requests in flight; now if none is.
    fn latest(&self) -> Instant {
        match self.latest.load(Ordering::Relaxed) {
            0 => Instant::now(),
            latest => origin() + Duration::from_nanos(latest),
        }
    }

    fn past(&self, now: Instant) -> bool {
        nanos(now) >= self.earliest.load(Ordering::Relaxed)
    }
}

fn nanos(at: Instant) -> u64 {
    at.saturating_duration_since(origin()).as_nanos() as u64
}

fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Instances with no request, dropped once idle for their [`Reuse::idle`].
mod idle {
    use super::*;

    static WATCHED: Mutex<Vec<Weak<Instance>>> = Mutex::new(Vec::new());

    /// Watches `instance` until it has a request again or is dropped.
    pub(super) fn watch(instance: &Arc<Instance>) {
        lock(&WATCHED).push(Arc::downgrade(instance));
        static SWEEPER: std::sync::Once = std::sync::Once::new();
        SWEEPER.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("fl-idle".into())
                .spawn(|| {
                    loop {
                        std::thread::sleep(Duration::from_millis(50));
                        sweep(Instant::now());
                    }
                });
        });
    }

    /// Ends the watched instances idle since before `now` less their idle
    /// time, and forgets those no longer idle.
    pub(super) fn sweep(now: Instant) {
        let mut expired = Vec::new();
        lock(&WATCHED).retain(|watched| {
            let Some(instance) = watched.upgrade() else {
                return false;
            };
            let mut state = instance.inbox.lock();
            let keep = match state.idle_since {
                _ if state.ended.is_some() || state.tickets > 0 => false,
                None => false,
                Some(since) if now.saturating_duration_since(since) >= instance.reuse.idle => {
                    drop(state);
                    expired.push(instance);
                    return false;
                }
                Some(_) => true,
            };
            state.watched = keep;
            keep
        });
        for instance in expired {
            let mut state = instance.inbox.lock();
            if state.tickets > 0 || state.ended.is_some() {
                // it has a request again: watched afresh when idle again
                state.watched = false;
                continue;
            }
            instance.end_unwaited(state, "it was idle");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    #[test]
    fn the_earliest_deadline_of_the_requests_in_flight_is_the_one_that_counts() {
        let deadlines = Deadlines::default();
        let now = Instant::now();
        assert!(!deadlines.past(now + Duration::from_secs(3600)));
        deadlines.add(1, now + Duration::from_secs(10));
        deadlines.add(2, now + Duration::from_secs(1));
        assert!(!deadlines.past(now));
        assert!(deadlines.past(now + Duration::from_secs(2)));
        deadlines.remove(2);
        assert!(!deadlines.past(now + Duration::from_secs(2)));
        assert!(deadlines.past(now + Duration::from_secs(10)));
        deadlines.remove(1);
        assert!(!deadlines.past(now + Duration::from_secs(3600)));
    }

    #[test]
    fn requests_share_an_instance_only_under_the_same_limits_but_their_timeouts() {
        let limits = Limits::new(Duration::from_secs(1), 64 << 20);
        let mut other = limits.clone();
        other.timeout = Duration::from_secs(5);
        assert!(same_limits(&limits, &other));
        other.max_memory = 32 << 20;
        assert!(!same_limits(&limits, &other));
        let mut other = limits.clone();
        other.http_allow = Some(Arc::new(
            crate::policy::Policy::parse(&["127.0.0.1".to_string()]).unwrap(),
        ));
        assert!(!same_limits(&limits, &other));
        let mut other = limits.clone();
        other.log_budget = Some(crate::limits::LineBudget::new(10));
        assert!(!same_limits(&limits, &other));
    }
}
