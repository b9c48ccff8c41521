//! The invocation loop's native half, driven by `Worker.Runtime.invoke/3`.
//!
//! An invocation runs on the calling process's own (normal) scheduler in
//! time slices of about one epoch tick: each NIF call polls the guest once
//! and returns. The Elixir loop then either calls again (`:yield`), waits
//! for a `{:"$fl_wake", id}` message while the guest waits on I/O
//! (`:wait`), or has the result (`:done`). Large responses are decoded on a
//! dirty scheduler (`:decode`). No call holds a scheduler for long, and the
//! guest runs on its own fiber stack, never the scheduler's.
//!
//! If the calling process dies, the resource is collected and dropping it
//! tears the instance down: nothing outlives its owner.

use crate::atoms;
use crate::mailer::{self, Message};
use crate::module::ModuleResource;
use crate::terms;
use rustler::{Encoder, Env, LocalPid, ResourceArc, Term};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use worker_runtime::logs::{Line, LineBudget, Stats, Stream};
use worker_runtime::policy::Policy;
use worker_runtime::{Invocation, Limits, Outcome};

/// Responses larger than this are decoded on a dirty scheduler.
const DIRTY_DECODE_BYTES: usize = 64 << 10;

/// A slice that ran longer than this (a long host call, or one huge bulk
/// memory instruction) moves the rest of the invocation to dirty schedulers.
const HEAVY_SLICE: Duration = Duration::from_millis(2);

enum Stage {
    Running(Box<Invocation>),
    /// Finished with a response too large to decode on a normal scheduler.
    Decode(Vec<u8>),
    Closed,
}

pub struct InvocationResource {
    stage: Mutex<Stage>,
    wake: Arc<WakeState>,
}

#[rustler::resource_impl]
impl rustler::Resource for InvocationResource {}

const POLLING: u8 = 0;
const IDLE: u8 = 1;
const NOTIFIED: u8 = 2;
const CLOSED: u8 = 3;

/// Turns a waker call into at most one message to the owning process, and
/// only when that process is actually waiting (state `IDLE`).
struct WakeState {
    state: AtomicU8,
    pid: LocalPid,
    id: u64,
}

impl Wake for WakeState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current != POLLING && current != IDLE {
                return;
            }
            match self.state.compare_exchange(
                current,
                NOTIFIED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(POLLING) => return,
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        // Went IDLE -> NOTIFIED: the process is waiting for this message.
        mailer::send(self.pid, Message::Wake(self.id));
    }
}

/// Wake ids: unique per invocation, made without a counter that every
/// scheduler thread would write to. Each thread draws a block of ids.
fn next_id() -> u64 {
    static BLOCKS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static RANGE: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    RANGE.with(|range| {
        let (mut next, mut end) = range.get();
        if next == end {
            next = BLOCKS.fetch_add(1, Ordering::Relaxed) * 4096 + 1;
            end = next + 4096;
        }
        range.set((next + 1, end));
        next
    })
}

/// The longest slice since the last `take_max_slice_us`.
static MAX_SLICE_US: AtomicU64 = AtomicU64::new(0);

pub fn take_max_slice_us() -> u64 {
    MAX_SLICE_US.swap(0, Ordering::Relaxed)
}

/// Starts an invocation and runs its first slice, under
/// `{timeout_ms, max_memory, http_allow, log_lines_per_s}`. `arguments` is a term,
/// or with `encoded` the JSON text of one (from `args_encode/2`). A term
/// whose text is too long to encode on a normal scheduler gets `:dirty`:
/// the caller encodes it with `args_encode_dirty/2` and starts again.
#[rustler::nif]
fn invocation_start<'a>(
    env: Env<'a>,
    module: ResourceArc<ModuleResource>,
    arguments: Term<'a>,
    encoded: bool,
    (timeout_ms, max_memory, http_allow, log_lines_per_s): (u64, u64, Vec<String>, u32),
) -> Term<'a> {
    let started = Instant::now();
    let mut limits = match limits(timeout_ms, max_memory, http_allow) {
        Ok(limits) => limits,
        Err(reason) => return invalid_args(env, reason),
    };
    if log_lines_per_s > 0 {
        let budget = module.1.get_or_init(|| LineBudget::new(log_lines_per_s));
        limits.log_budget = Some(budget.clone());
    }
    let input = if encoded {
        match arguments.decode::<rustler::Binary>() {
            Ok(text) if text.len() > limits.max_input_bytes => {
                let reason = format!(
                    "JSON text larger than {} bytes (the input cap)",
                    limits.max_input_bytes
                );
                return invalid_args(env, reason);
            }
            Ok(text) => text.as_slice().to_vec(),
            Err(_) => return invalid_args(env, "encoded arguments must be a binary".into()),
        }
    } else {
        let budget = limits.max_input_bytes.min(terms::NORMAL_ENCODE_BYTES);
        match terms::to_json(arguments, budget) {
            Ok(text) => text,
            Err(terms::ToJsonError::TooLarge(_)) if limits.max_input_bytes > budget => {
                return atoms::dirty().encode(env);
            }
            Err(reason) => return invalid_args(env, reason.to_string()),
        }
    };
    let invocation = match Invocation::new(&module.0, input, limits) {
        Ok(invocation) => invocation,
        Err(reason) => return invalid_args(env, reason),
    };
    let wake = Arc::new(WakeState {
        state: AtomicU8::new(POLLING),
        pid: env.pid(),
        id: next_id(),
    });
    let mut stage = Stage::Running(Box::new(invocation));
    // Most invocations finish in their first slice: only those that do not
    // need a resource to carry them to the next call.
    let reply = match step(env, &mut stage, &wake) {
        Step::Done(term) => (term, false),
        Step::Continue(next) => {
            let resource = ResourceArc::new(InvocationResource {
                stage: Mutex::new(stage),
                wake,
            });
            next.reply(env, &resource)
        }
    };
    account(env, started, reply)
}

fn invalid_args(env: Env, reason: String) -> Term {
    let reply = error(env, (atoms::invalid_args(), reason));
    done(env, reply, &[], Stats::default())
}

/// The invocation's limits; an error is a reason for `{:invalid_args, _}`.
fn limits(timeout_ms: u64, max_memory: u64, http_allow: Vec<String>) -> Result<Limits, String> {
    Ok(Limits {
        timeout: Duration::from_millis(timeout_ms),
        max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
        http_allow: allow_list(http_allow)?,
        ..Limits::default()
    })
}

/// The HTTP allow-list; the common empty one is no allocation at all.
fn allow_list(entries: Vec<String>) -> Result<Option<Arc<Policy>>, String> {
    if entries.is_empty() {
        return Ok(None);
    }
    Policy::parse(&entries)
        .map(|policy| Some(Arc::new(policy)))
        .map_err(|e| format!("http_allow: {e}"))
}

/// Runs the next slice of an invocation.
#[rustler::nif]
fn invocation_resume<'a>(env: Env<'a>, resource: ResourceArc<InvocationResource>) -> Term<'a> {
    let started = Instant::now();
    account(env, started, resume(env, &resource))
}

/// Runs the next slice on a dirty scheduler, for invocations whose slices
/// have proved too long for a normal one.
#[rustler::nif(schedule = "DirtyCpu")]
fn invocation_resume_dirty<'a>(
    env: Env<'a>,
    resource: ResourceArc<InvocationResource>,
) -> Term<'a> {
    resume(env, &resource).0
}

/// Decodes a large response, on a dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn invocation_decode<'a>(env: Env<'a>, resource: ResourceArc<InvocationResource>) -> Term<'a> {
    let Ok(mut stage) = resource.stage.try_lock() else {
        return error(env, atoms::busy());
    };
    match std::mem::replace(&mut *stage, Stage::Closed) {
        Stage::Decode(bytes) => decode_response(env, &bytes),
        _ => error(env, atoms::busy()),
    }
}

/// Abandons an invocation (the caller gave up waiting). Returns
/// `:wake_pending` if a wake message is on its way and must be flushed.
#[rustler::nif]
fn invocation_cancel(resource: ResourceArc<InvocationResource>) -> rustler::Atom {
    let previous = resource.wake.state.swap(CLOSED, Ordering::AcqRel);
    if let Ok(mut stage) = resource.stage.lock() {
        *stage = Stage::Closed;
    }
    if previous == NOTIFIED {
        atoms::wake_pending()
    } else {
        atoms::ok()
    }
}

/// Runs the next slice of an invocation held in a resource. The flag says
/// whether the guest was preempted at a tick.
fn resume<'a>(env: Env<'a>, resource: &ResourceArc<InvocationResource>) -> (Term<'a>, bool) {
    let Ok(mut stage) = resource.stage.try_lock() else {
        return (
            done(env, error(env, atoms::busy()), &[], Stats::default()),
            false,
        );
    };
    match step(env, &mut stage, &resource.wake) {
        Step::Done(term) => (term, false),
        Step::Continue(next) => next.reply(env, resource),
    }
}

enum Step<'a> {
    /// `{:done, result, lines}`.
    Done(Term<'a>),
    /// The invocation goes on: the reply names it.
    Continue(Next<'a>),
}

struct Next<'a> {
    tag: rustler::Atom,
    /// The wake message's id, for `:wait`.
    wait: Option<u64>,
    lines: Term<'a>,
    preempted: bool,
}

impl<'a> Next<'a> {
    fn reply(self, env: Env<'a>, resource: &ResourceArc<InvocationResource>) -> (Term<'a>, bool) {
        let term = match self.wait {
            Some(id) => (self.tag, resource.clone(), id, self.lines).encode(env),
            None => (self.tag, resource.clone(), self.lines).encode(env),
        };
        (term, self.preempted)
    }
}

/// Polls the invocation once.
fn step<'a>(env: Env<'a>, stage: &mut Stage, wake: &Arc<WakeState>) -> Step<'a> {
    let Stage::Running(invocation) = stage else {
        return Step::Done(done(env, error(env, atoms::busy()), &[], Stats::default()));
    };
    wake.state.store(POLLING, Ordering::Release);
    let waker = Waker::from(wake.clone());
    let slice_started = Instant::now();
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        invocation.poll(&mut Context::from_waker(&waker))
    }));
    // Read first: most slices are short, and a write to this shared line on
    // every invocation would slow every scheduler down.
    let slice_us = slice_started.elapsed().as_micros() as u64;
    if slice_us > MAX_SLICE_US.load(Ordering::Relaxed) {
        MAX_SLICE_US.fetch_max(slice_us, Ordering::Relaxed);
    }
    let Ok(polled) = polled else {
        *stage = Stage::Closed;
        wake.state.store(CLOSED, Ordering::Release);
        let reply = error(env, (atoms::panic(), "the runtime panicked; see the log"));
        return Step::Done(done(env, reply, &[], Stats::default()));
    };
    let lines = invocation.logs().drain();
    match polled {
        Poll::Ready(outcome) => {
            wake.state.store(CLOSED, Ordering::Release);
            let stats = invocation.logs().stats();
            match outcome {
                Outcome::Response(bytes) if bytes.len() > DIRTY_DECODE_BYTES => {
                    *stage = Stage::Decode(bytes);
                    Step::Continue(Next {
                        tag: atoms::decode(),
                        wait: None,
                        lines: logs(env, &lines, stats),
                        preempted: false,
                    })
                }
                outcome => {
                    *stage = Stage::Closed;
                    let result = result(env, outcome);
                    Step::Done(done(env, result, &lines, stats))
                }
            }
        }
        Poll::Pending => {
            let waiting = wake
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            let lines = logs(env, &lines, Stats::default());
            Step::Continue(if waiting {
                Next {
                    tag: atoms::wait(),
                    wait: Some(wake.id),
                    lines,
                    preempted: false,
                }
            } else {
                let heavy = slice_started.elapsed() > HEAVY_SLICE;
                Next {
                    tag: if heavy {
                        atoms::yield_dirty()
                    } else {
                        atoms::r#yield()
                    },
                    wait: None,
                    lines,
                    preempted: true,
                }
            })
        }
    }
}

/// Tells the VM how much of the process's time slice the call used. A guest
/// that was preempted at a tick has used a whole slice, as a busy Erlang
/// process would have: the VM should now let other processes run. Otherwise
/// the call counts in proportion to its time, 1% per 10 us.
fn account<'a>(env: Env<'a>, started: Instant, (reply, preempted): (Term<'a>, bool)) -> Term<'a> {
    let percent = if preempted {
        100
    } else {
        (started.elapsed().as_micros() / 10).clamp(1, 100) as i32
    };
    rustler::schedule::consume_timeslice(env, percent);
    reply
}

fn error<'a>(env: Env<'a>, reason: impl Encoder) -> Term<'a> {
    (atoms::error(), reason).encode(env)
}

fn done<'a>(env: Env<'a>, result: Term<'a>, lines: &[Line], stats: Stats) -> Term<'a> {
    (atoms::done(), result, logs(env, lines, stats)).encode(env)
}

fn decode_response<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    match terms::from_json(env, bytes) {
        Ok(term) => (atoms::ok(), term).encode(env),
        Err(reason) => error(env, (atoms::invalid_response(), reason)),
    }
}

fn result<'a>(env: Env<'a>, outcome: Outcome) -> Term<'a> {
    match outcome {
        Outcome::Response(bytes) => decode_response(env, &bytes),
        Outcome::ExecError(message) => error(env, (atoms::exec_error(), message)),
        Outcome::Trap(message) => error(env, (atoms::trap(), message)),
        Outcome::Timeout => error(env, atoms::timeout()),
        Outcome::NoResponse => error(env, atoms::no_response()),
        Outcome::BadReturn(code) => error(env, (atoms::bad_return(), code)),
        Outcome::Exit(code) => error(env, (atoms::exit(), code)),
        Outcome::Instantiate(message) => error(env, (atoms::instantiate(), message)),
    }
}

/// `[{stream, text}]`, then, at the end of an invocation that dropped log
/// lines or made HTTP requests,
/// `{:stats, dropped_lines, http_ok, http_failed, http_refused}`.
fn logs<'a>(env: Env<'a>, lines: &[Line], stats: Stats) -> Term<'a> {
    let mut list: Vec<Term<'a>> = lines
        .iter()
        .map(|line| {
            let stream = match line.stream {
                Stream::Console => atoms::console(),
                Stream::Stdout => atoms::stdout(),
                Stream::Stderr => atoms::stderr(),
                Stream::Host => atoms::host(),
            };
            (stream, line.text.as_str()).encode(env)
        })
        .collect();
    if stats != Stats::default() {
        let Stats {
            dropped_lines,
            http_ok,
            http_failed,
            http_refused,
        } = stats;
        let entry = (
            atoms::stats(),
            dropped_lines,
            http_ok,
            http_failed,
            http_refused,
        );
        list.push(entry.encode(env));
    }
    list.encode(env)
}
