//! The invocation loop's replies to `Worker.Runtime`, as terms:
//!
//! * `{:done, result, lines, stats}`: over; `result` is `{:ok, term}` or
//!   `{:error, reason}` ([`Error`]), `stats` a `%Worker.Runtime.Stats{}`,
//!   or `nil` when every figure is 0 (most invocations: nothing to build);
//! * `{:yield, invocation, lines}` and `{:yield_dirty, invocation, lines}`:
//!   the guest was preempted; resume it (on a dirty scheduler for the
//!   second);
//! * `{:wait, invocation, id, lines}`: the guest waits on I/O; resume it
//!   when `{:"$fl_wake", id}` arrives;
//! * `{:decode, invocation, lines, stats}`: over, with a response large
//!   enough to decode on a dirty scheduler (`invocation_decode/1`);
//! * `:dirty` (from `invocation_start/4` only): the arguments are too large
//!   to encode on a normal scheduler.
//!
//! `lines` is `[{stream, text}]`, what the guest logged since the last reply.

use crate::atoms;
use crate::error::Error;
use crate::terms;
use rustler::{Encoder, Env, NifStruct, Term};
use worker_runtime::Outcome;
use worker_runtime::logs::{self, Line};

/// `%Worker.Runtime.Stats{}`: what an invocation did besides its result.
#[derive(NifStruct, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[module = "Worker.Runtime.Stats"]
pub struct Stats {
    dropped_lines: u64,
    http_ok: u32,
    http_failed: u32,
    http_refused: u32,
}

/// The stats to send: `None` (`nil`) when all are 0.
pub fn stats(stats: logs::Stats) -> Option<Stats> {
    let stats = Stats {
        dropped_lines: stats.dropped_lines,
        http_ok: stats.http_ok,
        http_failed: stats.http_failed,
        http_refused: stats.http_refused,
    };
    (stats != Stats::default()).then_some(stats)
}

/// `{:done, result, lines, stats}`.
pub fn done<'a>(
    env: Env<'a>,
    result: Result<Term<'a>, Error>,
    lines: &[Line],
    stats: Option<Stats>,
) -> Term<'a> {
    (atoms::done(), result, self::lines(env, lines), stats).encode(env)
}

/// `{:done, {:error, reason}, [], nil}`: it never ran.
pub fn failed(env: Env, error: Error) -> Term {
    done(env, Err(error), &[], None)
}

/// The invocation's result: the response (or a WASI command's output)
/// decoded, or how it failed.
pub fn result(env: Env, outcome: Outcome) -> Result<Term, Error> {
    match outcome {
        Outcome::Response(bytes) => response(env, &bytes),
        Outcome::Output(bytes) => output(env, &bytes, worker_runtime::stdio::text),
        Outcome::Body(bytes) => output(env, &bytes, |body| std::str::from_utf8(body).ok()),
        ended => Err(Error::Ended(ended)),
    }
}

/// Bytes of the response or output an outcome carries, to decode.
pub fn decoded_bytes(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Response(bytes) | Outcome::Output(bytes) | Outcome::Body(bytes) => bytes.len(),
        _ => 0,
    }
}

/// A response's JSON text decoded into terms.
fn response<'a>(env: Env<'a>, bytes: &[u8]) -> Result<Term<'a>, Error> {
    terms::from_json(env, bytes).map_err(Error::InvalidResponse)
}

/// A command's output or a handler's body: JSON decoded (with the same
/// decoder as a response), else its UTF-8 `text` as a binary (a command's
/// less one trailing newline, a body as sent).
fn output<'a>(
    env: Env<'a>,
    bytes: &[u8],
    text: fn(&[u8]) -> Option<&str>,
) -> Result<Term<'a>, Error> {
    match terms::from_json(env, bytes) {
        Ok(term) => Ok(term),
        Err(_) => match text(bytes) {
            Some(text) => Ok(text.encode(env)),
            None => Err(Error::InvalidResponse(
                "the output (or body) is neither JSON nor UTF-8 text".into(),
            )),
        },
    }
}

/// `{:yield, invocation, lines}`, or `{:yield_dirty, invocation, lines}`
/// when `dirty`.
pub fn yielded<'a>(
    env: Env<'a>,
    invocation: impl Encoder,
    lines: Term<'a>,
    dirty: bool,
) -> Term<'a> {
    let tag = if dirty {
        atoms::yield_dirty()
    } else {
        atoms::r#yield()
    };
    (tag, invocation, lines).encode(env)
}

/// `{:wait, invocation, id, lines}`.
pub fn waiting<'a>(env: Env<'a>, invocation: impl Encoder, id: u64, lines: Term<'a>) -> Term<'a> {
    (atoms::wait(), invocation, id, lines).encode(env)
}

/// `{:decode, invocation, lines, stats}`.
pub fn decode<'a>(
    env: Env<'a>,
    invocation: impl Encoder,
    lines: Term<'a>,
    stats: Option<Stats>,
) -> Term<'a> {
    (atoms::decode(), invocation, lines, stats).encode(env)
}

/// `[{stream, text}]`.
pub fn lines<'a>(env: Env<'a>, lines: &[Line]) -> Term<'a> {
    let list: Vec<Term<'a>> = lines
        .iter()
        .map(|line| {
            let stream = match line.stream {
                logs::Stream::Console => atoms::console(),
                logs::Stream::Stdout => atoms::stdout(),
                logs::Stream::Stderr => atoms::stderr(),
                logs::Stream::Host => atoms::host(),
            };
            (stream, line.text.as_str()).encode(env)
        })
        .collect();
    list.encode(env)
}
