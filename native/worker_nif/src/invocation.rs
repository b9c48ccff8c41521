//! The invocation loop's native half, driven by `Worker.Runtime.invoke/3`:
//! the resource that carries an invocation from one NIF call to the next,
//! and the NIFs that start, resume, decode and cancel it.
//!
//! An invocation runs on the calling process's own (normal) scheduler in
//! time slices of about one epoch tick: each NIF call polls the guest once
//! and returns. The Elixir loop then either calls again (`:yield`), waits
//! for a `{:"$fl_wake", id}` message while the guest waits on I/O
//! (`:wait`, see `wake.rs`), or has the result (`:done`). Large responses
//! are decoded on a dirty scheduler (`:decode`). The replies are in
//! `reply.rs`. No call holds a scheduler for long, and the guest runs on
//! its own fiber stack, never the scheduler's.
//!
//! If the calling process dies, the resource is collected and dropping it
//! tears the instance down: nothing outlives its owner.

use crate::atoms;
use crate::error::{self, Error};
use crate::module::ModuleResource;
use crate::reply;
use crate::stats;
use crate::terms;
use crate::wake::{CLOSED, NOTIFIED, POLLING, WakeState};
use rustler::{Encoder, Env, ResourceArc, Term};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use worker_runtime::limits::LineBudget;
use worker_runtime::policy::Policy;
use worker_runtime::{Invocation, Limits, Outcome};

/// Responses larger than this are decoded on a dirty scheduler.
const DIRTY_DECODE_BYTES: usize = 64 << 10;

/// A slice that ran longer than this (a long host call, or one huge bulk
/// memory instruction) moves the rest of the invocation to dirty schedulers.
const HEAVY_SLICE: Duration = Duration::from_millis(2);

enum Stage {
    Running(Box<Invocation>),
    /// Finished with a response (or output) too large to decode on a
    /// normal scheduler.
    Decode(Outcome),
    Closed,
}

pub struct InvocationResource {
    stage: Mutex<Stage>,
    wake: Arc<WakeState>,
}

#[rustler::resource_impl]
impl rustler::Resource for InvocationResource {}

/// Only a bug in `Worker.Runtime` (two processes driving one invocation,
/// or one driving it after its end) reaches these.
fn misuse() -> Error {
    Error::Panic("the invocation is busy or over".into())
}

/// Starts an invocation and runs its first slice, under
/// `{timeout_ms, max_memory, http_allow, log_lines_per_s}`. `arguments` is
/// a term, or with `encoded` the JSON text of one (from `args_encode/1`).
/// A term whose text is too long to encode on a normal scheduler gets
/// `:dirty`: the caller encodes it with `args_encode_dirty/1` and starts
/// again.
#[rustler::nif]
fn invocation_start<'a>(
    env: Env<'a>,
    module: ResourceArc<ModuleResource>,
    arguments: Term<'a>,
    encoded: bool,
    limits: (u64, u64, Vec<String>, u32),
) -> Term<'a> {
    start(env, module, arguments, encoded, limits)
}

/// `invocation_start/4` on a dirty scheduler, for large encoded arguments:
/// copying them in, and the guest's first slice (which usually copies them
/// into its memory), are not a normal scheduler's work.
#[rustler::nif(schedule = "DirtyCpu")]
fn invocation_start_dirty<'a>(
    env: Env<'a>,
    module: ResourceArc<ModuleResource>,
    arguments: Term<'a>,
    limits: (u64, u64, Vec<String>, u32),
) -> Term<'a> {
    start(env, module, arguments, true, limits)
}

fn start<'a>(
    env: Env<'a>,
    module: ResourceArc<ModuleResource>,
    arguments: Term<'a>,
    encoded: bool,
    (timeout_ms, max_memory, http_allow, log_lines_per_s): (u64, u64, Vec<String>, u32),
) -> Term<'a> {
    let started = Instant::now();
    let mut limits = match limits(timeout_ms, max_memory, http_allow) {
        Ok(limits) => limits,
        Err(error) => return reply::failed(env, error),
    };
    if log_lines_per_s > 0 {
        let budget = module
            .log_budget
            .get_or_init(|| LineBudget::new(log_lines_per_s));
        limits.log_budget = Some(budget.clone());
    }
    let input = if encoded {
        match arguments.decode::<rustler::Binary>() {
            Ok(text) if text.len() > limits.max_input_bytes => {
                let reason = format!(
                    "JSON text larger than {} bytes (the input cap)",
                    limits.max_input_bytes
                );
                return reply::failed(env, Error::InvalidArgs(reason));
            }
            Ok(text) => text.as_slice().to_vec(),
            Err(_) => {
                let reason = "encoded arguments must be a binary".into();
                return reply::failed(env, Error::InvalidArgs(reason));
            }
        }
    } else {
        let budget = limits.max_input_bytes.min(terms::NORMAL_ENCODE_BYTES);
        match terms::to_json(arguments, budget) {
            Ok(text) => text,
            Err(terms::ToJsonError::TooLarge(_)) if limits.max_input_bytes > budget => {
                return atoms::dirty().encode(env);
            }
            Err(reason) => return reply::failed(env, Error::InvalidArgs(reason.to_string())),
        }
    };
    let invocation = match Invocation::new(&module.compiled, input, limits) {
        Ok(invocation) => invocation,
        Err(error) => return reply::failed(env, error.into()),
    };
    let wake = WakeState::new(env.pid());
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

/// The invocation's limits. A bad allow-list entry is a bad option.
fn limits(timeout_ms: u64, max_memory: u64, http_allow: Vec<String>) -> Result<Limits, Error> {
    let max_memory = usize::try_from(max_memory).unwrap_or(usize::MAX);
    let mut limits = Limits::new(Duration::from_millis(timeout_ms), max_memory);
    limits.http_allow = allow_list(http_allow)?;
    Ok(limits)
}

/// The HTTP allow-list; the common empty one is no allocation at all.
fn allow_list(entries: Vec<String>) -> Result<Option<Arc<Policy>>, Error> {
    if entries.is_empty() {
        return Ok(None);
    }
    Policy::parse(&entries)
        .map(|policy| Some(Arc::new(policy)))
        .map_err(|e| Error::InvalidOption(format!(":http_allow: {e}")))
}

/// Checks an allow-list as `invocation_start/4` would: `:ok` or
/// `{:error, {:invalid_option, reason}}`. For `Worker.Config`, so that a
/// bad `FL_HTTP_ALLOW` stops the boot rather than every invocation.
#[rustler::nif]
fn invocation_check_allow(env: Env, entries: Vec<String>) -> Term {
    error::status(env, allow_list(entries).map(|_| ()))
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

/// Decodes a large response, on a dirty scheduler: `{:ok, term}` or
/// `{:error, reason}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn invocation_decode<'a>(env: Env<'a>, resource: ResourceArc<InvocationResource>) -> Term<'a> {
    let result = match resource.stage.try_lock() {
        Ok(mut stage) => match std::mem::replace(&mut *stage, Stage::Closed) {
            Stage::Decode(outcome) => reply::result(env, outcome),
            _ => Err(misuse()),
        },
        Err(_) => Err(misuse()),
    };
    result.encode(env)
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
        return (reply::failed(env, misuse()), false);
    };
    match step(env, &mut stage, &resource.wake) {
        Step::Done(term) => (term, false),
        Step::Continue(next) => next.reply(env, resource),
    }
}

/// An invocation that goes on after this reply.
enum Next<'a> {
    /// Preempted at a tick; `dirty` if the slice ran long.
    Yield { lines: Term<'a>, dirty: bool },
    /// Waiting on I/O for the wake message `id`.
    Wait { id: u64, lines: Term<'a> },
    /// Over, with a large response left to decode.
    Decode {
        lines: Term<'a>,
        stats: Option<reply::Stats>,
    },
}

impl<'a> Next<'a> {
    /// The reply naming `resource`, and whether the guest was preempted.
    fn reply(self, env: Env<'a>, resource: &ResourceArc<InvocationResource>) -> (Term<'a>, bool) {
        match self {
            Next::Yield { lines, dirty } => (reply::yielded(env, resource, lines, dirty), true),
            Next::Wait { id, lines } => (reply::waiting(env, resource, id, lines), false),
            Next::Decode { lines, stats } => (reply::decode(env, resource, lines, stats), false),
        }
    }
}

enum Step<'a> {
    /// `{:done, result, lines, stats}`.
    Done(Term<'a>),
    /// The invocation goes on: the reply names it.
    Continue(Next<'a>),
}

/// Polls the invocation once.
fn step<'a>(env: Env<'a>, stage: &mut Stage, wake: &Arc<WakeState>) -> Step<'a> {
    let Stage::Running(invocation) = stage else {
        return Step::Done(reply::failed(env, misuse()));
    };
    wake.set(POLLING);
    let waker = Waker::from(wake.clone());
    let slice_started = Instant::now();
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        invocation.poll(&mut Context::from_waker(&waker))
    }));
    let slice = slice_started.elapsed();
    stats::record_slice(slice.as_micros() as u64);
    let Ok(polled) = polled else {
        *stage = Stage::Closed;
        wake.set(CLOSED);
        let error = Error::Panic("the runtime panicked; see the log".into());
        return Step::Done(reply::failed(env, error));
    };
    let lines = invocation.logs().drain();
    match polled {
        Poll::Ready(outcome) => {
            wake.set(CLOSED);
            let stats = reply::stats(invocation.logs().take_stats());
            match outcome {
                outcome if reply::decoded_bytes(&outcome) > DIRTY_DECODE_BYTES => {
                    *stage = Stage::Decode(outcome);
                    let lines = reply::lines(env, &lines);
                    Step::Continue(Next::Decode { lines, stats })
                }
                outcome => {
                    *stage = Stage::Closed;
                    let result = reply::result(env, outcome);
                    Step::Done(reply::done(env, result, &lines, stats))
                }
            }
        }
        Poll::Pending => {
            let lines = reply::lines(env, &lines);
            Step::Continue(if wake.idle() {
                Next::Wait { id: wake.id, lines }
            } else {
                let dirty = slice > HEAVY_SLICE;
                Next::Yield { lines, dirty }
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
