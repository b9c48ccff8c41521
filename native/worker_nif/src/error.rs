//! The NIF's one error type, and the one place errors become terms.
//!
//! Every variant is one of the Elixir error shapes documented in
//! `Worker.Runtime` (`{:trap, message}`, `{:invalid_module, reason}`, ...),
//! so a NIF returns `Result<T, Error>` (`{:ok, t} | {:error, reason}`) or
//! puts a `Result` in its reply, and nothing else builds an error tuple.

use crate::atoms;
use rustler::{Encoder, Env, Term};
use worker_runtime::Outcome;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `{:invalid_module, reason}`
    InvalidModule(String),
    /// `{:runtime_unavailable, reason}`
    RuntimeUnavailable(String),
    /// `{:runtime_configured, reason}`: settings other than those the
    /// runtime already runs with.
    RuntimeConfigured(String),
    /// `{:serialize, reason}`
    Serialize(String),
    /// `{:invalid_args, reason}`: the arguments have no JSON form, or are
    /// over the input cap.
    InvalidArgs(String),
    /// `{:invalid_option, reason}`: an option the runtime cannot use (an
    /// allow-list entry that does not parse); `Worker.Runtime` raises it
    /// as an `ArgumentError`, like every other bad option.
    InvalidOption(String),
    /// `{:invalid_response, reason}`
    InvalidResponse(String),
    /// `{:panic, reason}`: a bug in the worker; the runtime stays usable.
    Panic(String),
    /// How an invocation that gave no response ended (never
    /// `Outcome::Response`): `{:exec_error, message}`, `{:trap, message}`,
    /// `:timeout`, `:no_response`, `{:bad_return, code}`, `{:exit, code}`
    /// or `{:instantiate, reason}`.
    Ended(Outcome),
    /// A bare reason string, for `Worker.JSON` and `Worker.Store`.
    Reason(String),
}

impl From<worker_runtime::Error> for Error {
    fn from(e: worker_runtime::Error) -> Error {
        use worker_runtime::Error as E;
        match e {
            E::InvalidModule(m) => Error::InvalidModule(m),
            E::Unavailable(m) => Error::RuntimeUnavailable(m),
            E::Configured(m) => Error::RuntimeConfigured(m),
            E::Serialize(m) => Error::Serialize(m),
            E::InvalidArgs(m) => Error::InvalidArgs(m),
            E::Panic(m) => Error::Panic(m),
        }
    }
}

impl Encoder for Error {
    /// The reason alone: `Result<T, Error>` adds the `{:error, _}`.
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let tagged = |tag: rustler::Atom, text: &str| (tag, text).encode(env);
        match self {
            Error::InvalidModule(m) => tagged(atoms::invalid_module(), m),
            Error::RuntimeUnavailable(m) => tagged(atoms::runtime_unavailable(), m),
            Error::RuntimeConfigured(m) => tagged(atoms::runtime_configured(), m),
            Error::Serialize(m) => tagged(atoms::serialize(), m),
            Error::InvalidArgs(m) => tagged(atoms::invalid_args(), m),
            Error::InvalidOption(m) => tagged(atoms::invalid_option(), m),
            Error::InvalidResponse(m) => tagged(atoms::invalid_response(), m),
            Error::Panic(m) => tagged(atoms::panic(), m),
            Error::Ended(outcome) => match outcome {
                Outcome::ExecError(m) => tagged(atoms::exec_error(), m),
                Outcome::Trap(m) => tagged(atoms::trap(), m),
                Outcome::Timeout => atoms::timeout().encode(env),
                Outcome::NoResponse => atoms::no_response().encode(env),
                Outcome::BadReturn(code) => (atoms::bad_return(), code).encode(env),
                Outcome::Exit(code) => (atoms::exit(), code).encode(env),
                Outcome::Instantiate(m) => tagged(atoms::instantiate(), m),
                // not made by reply::result; a response is no error
                Outcome::Response(_) | Outcome::Output(_) | Outcome::Body(_) => {
                    tagged(atoms::panic(), "a response reported as an error")
                }
            },
            Error::Reason(m) => m.encode(env),
        }
    }
}

/// `:ok` or `{:error, reason}`, for NIFs that return nothing else.
pub fn status(env: Env, result: Result<(), Error>) -> Term {
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(error) => (atoms::error(), error).encode(env),
    }
}
