//! How an invocation ended, whatever its kind, and how Wasmtime's errors
//! become that.
//!
//! A started invocation always ends with an [`Outcome`]: a result, or a
//! failure the embedder reports (a trap, a timeout, an exec error). Why an
//! invocation could not start is an [`Error`](crate::Error) instead.

use crate::memory;
use wasmtime_wasi::I32Exit;

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `__invoke` returned 0; the bytes passed to `__insert_response`.
    Response(Vec<u8>),
    /// `__invoke` returned 1; the text passed to `__insert_error`. For a
    /// command, a non-zero exit status; for an HTTP handler, a status that
    /// is not 2xx.
    ExecError(String),
    /// A Wasm trap, or a host import refusing the guest's arguments.
    Trap(String),
    /// The deadline passed.
    Timeout,
    /// `__invoke` returned 0 without calling `__insert_response`; a command
    /// that wrote nothing but whitespace; a handler that answered 2xx with
    /// an empty body, or never answered.
    NoResponse,
    /// `__invoke` returned something other than 0 or 1.
    BadReturn(i32),
    /// The guest called WASI `proc_exit`.
    Exit(i32),
    /// Instantiation failed (for example, memory over the limit).
    Instantiate(String),
    /// A command returned (or exited 0): what it wrote on stdout, which the
    /// embedder decodes (JSON, else UTF-8 text less one trailing newline,
    /// see `stdio::text`).
    Output(Vec<u8>),
    /// An HTTP handler answered 2xx with a body that is not empty: the body
    /// as sent, which the embedder decodes (JSON, else UTF-8 text, byte
    /// for byte).
    Body(Vec<u8>),
}

/// A guest broke the ABI (a bad pointer, an oversized buffer, a write past
/// its permit, ...). It ends the invocation as a trap carrying this
/// message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GuestFault(pub String);

impl From<memory::OutOfBounds> for GuestFault {
    fn from(e: memory::OutOfBounds) -> Self {
        GuestFault(e.to_string())
    }
}

/// A [`GuestFault`] as the error a host function returns.
pub fn fault(message: String) -> wasmtime::Error {
    wasmtime::Error::new(GuestFault(message))
}

/// Raised by the epoch callback when the deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("invocation deadline reached")]
pub struct DeadlineReached;

/// How a program's call (a command's `_start` or `run`, a handler's
/// `handle`) ended under the deadline's timer: its value, `None` when it
/// exited with status 0 (as good as returning), or the failure.
pub fn ended<T>(
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

/// The outcome a Wasmtime error stands for: the deadline, a WASI exit, a
/// guest fault, a trap (with its backtrace); anything else fails the
/// instantiation (`instantiating`) or traps.
pub fn classify(error: wasmtime::Error, instantiating: bool) -> Outcome {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_they_carry() {
        let deadline = wasmtime::Error::new(DeadlineReached);
        assert_eq!(classify(deadline, false), Outcome::Timeout);
        assert_eq!(
            classify(wasmtime::Error::new(I32Exit(3)), false),
            Outcome::Exit(3)
        );
        assert_eq!(
            classify(fault("bad pointer".into()), false),
            Outcome::Trap("bad pointer".into())
        );
        let other = || wasmtime::Error::msg("no such import");
        assert_eq!(
            classify(other(), true),
            Outcome::Instantiate("no such import".into())
        );
        assert_eq!(
            classify(other(), false),
            Outcome::Trap("no such import".into())
        );
    }

    #[test]
    fn an_exit_with_status_0_ends_a_program_as_returning_does() {
        let exit = |status| Ok(Err(wasmtime::Error::new(I32Exit(status))));
        assert_eq!(ended::<()>(exit(0)), Ok(None));
        assert_eq!(ended::<()>(exit(2)), Err(Outcome::Exit(2)));
        assert_eq!(ended(Ok(Ok(7))), Ok(Some(7)));
    }
}
