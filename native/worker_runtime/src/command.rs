//! WASI commands: core modules that export `_start` instead of `__invoke`,
//! and talk over stdio.
//!
//! A command reads its arguments, as JSON text, on stdin, and writes its
//! result on stdout. Its stderr goes to the log, as every function's does,
//! and its last bytes are kept for the message of a failure. How its run
//! becomes an [`Outcome`]:
//!
//! | the command | outcome |
//! |---|---|
//! | returns from `_start`, or exits 0, having written JSON | `Response` (that JSON) |
//! | the same, having written other UTF-8 text | `Response` (the text as a JSON string, less one trailing newline) |
//! | the same, having written bytes that are not UTF-8 | `InvalidResponse` |
//! | the same, having written nothing | `NoResponse` |
//! | exits with another status | `ExecError`, with the status and the end of stderr |
//! | traps (a Rust panic is a trap) | `Trap`, after the end of stderr (a panic's text) |
//!
//! Writing more than the response cap to stdout traps: a result is never
//! cut short silently.

use crate::invocation::Outcome;
use crate::logs::WasiLog;
use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The export that makes a core module a WASI command.
pub const START: &str = "_start";

/// Bytes of stderr kept for a failure's message.
const STDERR_TAIL: usize = 1024;

/// The command's stdout, kept up to a cap: its result.
#[derive(Clone)]
pub struct Stdout {
    bytes: Arc<Mutex<Vec<u8>>>,
    max: usize,
}

impl Stdout {
    pub fn new(max: usize) -> Stdout {
        Stdout {
            bytes: Arc::default(),
            max,
        }
    }

    /// What was written.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut lock(&self.bytes))
    }

    fn push(&self, bytes: &[u8]) -> Result<(), String> {
        let mut kept = lock(&self.bytes);
        if kept.len() + bytes.len() > self.max {
            return Err(format!(
                "the output is over the response cap of {} bytes",
                self.max
            ));
        }
        kept.extend_from_slice(bytes);
        Ok(())
    }
}

/// The command's stderr: to the log, with its last bytes kept.
#[derive(Clone)]
pub struct Stderr {
    log: WasiLog,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl Stderr {
    pub fn new(log: WasiLog) -> Stderr {
        Stderr {
            log,
            tail: Arc::default(),
        }
    }

    fn push(&self, bytes: &[u8]) {
        self.log.sink.write(self.log.stream, bytes);
        let mut tail = lock(&self.tail);
        tail.extend_from_slice(&bytes[bytes.len().saturating_sub(STDERR_TAIL)..]);
        let excess = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..excess);
    }

    /// The end of what was written, as text, trimmed.
    fn tail(&self) -> String {
        String::from_utf8_lossy(&lock(&self.tail))
            .trim()
            .to_string()
    }

    /// The end of what was written, for a trap's message: Rust's hint
    /// about `RUST_BACKTRACE`, which follows a panic's text, left out.
    fn before_trap(&self) -> Option<String> {
        let tail = self.tail();
        let text = match tail.rfind("\nnote: run with `RUST_BACKTRACE") {
            Some(at) => &tail[..at],
            None if tail.starts_with("note: run with `RUST_BACKTRACE") => "",
            None => &tail,
        };
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    }
}

fn lock(bytes: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    bytes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a command's run ended: `ended` is `Ok` when `_start` returned or
/// the command exited with status 0, else the outcome of the failure.
pub fn outcome(ended: Result<(), Outcome>, stdout: &Stdout, stderr: &Stderr) -> Outcome {
    match ended {
        Ok(()) => result(stdout.take()),
        Err(Outcome::Exit(status)) => {
            let tail = stderr.tail();
            Outcome::ExecError(if tail.is_empty() {
                format!("exited with status {status}")
            } else {
                format!("exited with status {status}: {tail}")
            })
        }
        Err(Outcome::Trap(message)) => match stderr.before_trap() {
            Some(text) => Outcome::Trap(format!("{text}\n{message}")),
            None => Outcome::Trap(message),
        },
        Err(other) => other,
    }
}

fn result(output: Vec<u8>) -> Outcome {
    if output.iter().all(u8::is_ascii_whitespace) {
        return Outcome::NoResponse;
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&output).is_ok() {
        return Outcome::Response(output);
    }
    match String::from_utf8(output) {
        Ok(text) => {
            let text = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            Outcome::Response(serde_json::to_vec(text).expect("a string encodes"))
        }
        Err(_) => Outcome::InvalidResponse("the output is not UTF-8 text".into()),
    }
}

impl IsTerminal for Stdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl IsTerminal for Stderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Stdout {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl StdoutStream for Stderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Stdout {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes).map_err(|m| StreamError::trap(&m))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

impl OutputStream for Stderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stdout {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl Pollable for Stderr {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Stdout {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(
            self.push(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Stderr {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LogLimits, LogSink, Stream};

    fn stderr() -> Stderr {
        Stderr::new(WasiLog {
            sink: LogSink::new(LogLimits::default(), None),
            stream: Stream::Stderr,
        })
    }

    fn ok(stdout: &[u8]) -> Outcome {
        let out = Stdout::new(64);
        out.push(stdout).unwrap();
        outcome(Ok(()), &out, &stderr())
    }

    #[test]
    fn results() {
        assert_eq!(
            ok(b"{\"a\":1}\n"),
            Outcome::Response(b"{\"a\":1}\n".to_vec())
        );
        assert_eq!(ok(b"\"Hello!\""), Outcome::Response(b"\"Hello!\"".to_vec()));
        assert_eq!(
            ok(b"Hello \"x\"\n"),
            Outcome::Response(b"\"Hello \\\"x\\\"\"".to_vec())
        );
        assert_eq!(ok(b"two\r\n"), Outcome::Response(b"\"two\"".to_vec()));
        assert_eq!(ok(b"  \n"), Outcome::NoResponse);
        assert_eq!(ok(b""), Outcome::NoResponse);
        assert!(matches!(ok(b"\xff\xfe"), Outcome::InvalidResponse(_)));
    }

    #[test]
    fn output_over_the_cap_is_refused() {
        let out = Stdout::new(4);
        assert!(out.push(b"1234").is_ok());
        assert!(
            out.push(b"5")
                .unwrap_err()
                .contains("over the response cap of 4 bytes")
        );
    }

    #[test]
    fn failures_carry_stderr() {
        let err = stderr();
        err.push(b"starting\n");
        err.push(b"thread 'main' panicked at src/main.rs:3:5:\nboom\n");
        err.push(
            b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        );
        let out = Stdout::new(64);
        assert_eq!(
            outcome(Err(Outcome::Trap("wasm trap: unreachable".into())), &out, &err),
            Outcome::Trap(
                "starting\nthread 'main' panicked at src/main.rs:3:5:\nboom\nwasm trap: unreachable"
                    .into()
            )
        );
        assert_eq!(
            outcome(Err(Outcome::Trap("t".into())), &out, &stderr()),
            Outcome::Trap("t".into())
        );
        match outcome(Err(Outcome::Exit(2)), &out, &err) {
            Outcome::ExecError(m) => {
                assert!(m.starts_with("exited with status 2: starting"), "{m}");
                assert!(m.contains("boom"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            outcome(Err(Outcome::Exit(1)), &out, &stderr()),
            Outcome::ExecError("exited with status 1".into())
        );
        assert_eq!(outcome(Err(Outcome::Timeout), &out, &err), Outcome::Timeout);
    }

    #[test]
    fn only_the_end_of_stderr_is_kept() {
        let err = stderr();
        err.push(&vec![b'a'; 5000]);
        err.push(b"last");
        let tail = err.tail();
        assert_eq!(tail.len(), STDERR_TAIL);
        assert!(tail.ends_with("last"));
    }
}
