//! A guest's WASI stdin, stdout and stderr.
//!
//! One adapter from wasmtime-wasi's stream traits to a [`Sink`] of bytes
//! ([`Output`]), and the sinks: the log ([`WasiLog`]), a command's result
//! ([`Stdout`]) and a stderr that keeps its end for a failure's message
//! ([`Stderr`]). A command (a WASI core command, a command component) reads
//! its arguments on stdin and writes its result on stdout; how its run
//! becomes an [`Outcome`] is [`command_outcome`].
//!
//! Writing more than the response cap to stdout traps: a result is never
//! cut short silently. The end of stderr in a message is escaped as log
//! lines are ([`crate::text`]), so that a guest cannot forge log records
//! through it.

use crate::logs::{self, WasiLog};
use crate::outcome::{GuestFault, Outcome};
use crate::store::Start;
use crate::text::escape;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Where what a guest writes goes.
pub trait Sink: Clone + Send + Sync + Unpin + 'static {
    /// Takes what the guest wrote. An error fails the write: the guest traps
    /// with that message (WASI 0.3 reports it to the guest instead).
    fn put(&self, bytes: &[u8]) -> Result<(), String>;
}

/// Bytes of output the host takes in one write, and between two yields of
/// the invocation: what a [`Sink`] does with them (the log splits, escapes
/// and counts lines) runs on the scheduler that polls the guest, so each
/// slice does a bounded amount of it. A guest that hands over a megabyte
/// at once writes it in 16 KiB steps, the invocation yielding between them.
pub const SLICE_BYTES: usize = 16 << 10;

/// A WASI output stream (stdout or stderr) over a [`Sink`].
#[derive(Clone)]
pub struct Output<S>(pub S);

impl<S: Sink> IsTerminal for Output<S> {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl<S: Sink> StdoutStream for Output<S> {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Stream {
            sink: self.0.clone(),
            taken: 0,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncStream {
            sink: self.0.clone(),
            taken: 0,
            yielded: false,
        })
    }
}

/// The stream a guest writes to: [`SLICE_BYTES`] between two yields of
/// the invocation. Its `check-write` permit is what is left of them, a
/// write past the permit traps (WASI leaves that check to the stream), and
/// once they are spent the stream is ready again only after a yield (WASI
/// preview 1's `fd_write` writes a guest's whole buffer, 4 KiB at a time,
/// inside one host call, waiting for readiness before each).
struct Stream<S> {
    sink: S,
    taken: usize,
}

impl<S: Sink> OutputStream for Stream<S> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let permit = SLICE_BYTES.saturating_sub(self.taken);
        if bytes.len() > permit {
            let message = format!(
                "a write of {} bytes past the permit of {permit}",
                bytes.len()
            );
            return Err(StreamError::Trap(wasmtime::Error::new(GuestFault(message))));
        }
        self.taken += bytes.len();
        self.sink
            .put(&bytes)
            .map_err(|m| StreamError::Trap(wasmtime::Error::new(GuestFault(m))))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(SLICE_BYTES.saturating_sub(self.taken))
    }
}

#[wasmtime_wasi::async_trait]
impl<S: Sink> Pollable for Stream<S> {
    async fn ready(&mut self) {
        if self.taken >= SLICE_BYTES {
            // reset once the yield happened: a wait dropped half-way (a
            // poll that another pollable ended) leaves the budget spent
            YieldNow(false).await;
            self.taken = 0;
        }
    }
}

/// Pending once, having woken its task: the invocation ends its slice (the
/// embedder sees a wake, not a wait) and goes on at its next one.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// The stream a WASI 0.3 guest writes to (its `write-via-stream`): it
/// takes at most [`SLICE_BYTES`] a write, so that a megabyte written at
/// once is taken in steps, the guest running (and its epoch checked)
/// between them; where Wasmtime polls it with the invocation's own waker
/// (a stream the host pipes in, not the guest's writes), it is pending
/// once between two [`SLICE_BYTES`], ending the slice. A sink's refusal
/// (stdout past the response cap) is an I/O error, which WASI 0.3 reports
/// to the guest; [`command_outcome`] fails the command for it all the
/// same.
struct AsyncStream<S> {
    sink: S,
    taken: usize,
    yielded: bool,
}

impl<S: Sink> tokio::io::AsyncWrite for AsyncStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.taken >= SLICE_BYTES {
            if !this.yielded {
                // as YieldNow: pending once, woken
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.taken = 0;
            this.yielded = false;
        }
        let n = buf.len().min(SLICE_BYTES - this.taken);
        this.taken += n;
        Poll::Ready(
            this.sink
                .put(&buf[..n])
                .map(|()| n)
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Sink for WasiLog {
    /// Into the log, line by line.
    fn put(&self, bytes: &[u8]) -> Result<(), String> {
        self.sink.write(self.stream, bytes);
        Ok(())
    }
}

/// Bytes of stderr kept for a failure's message.
const STDERR_TAIL: usize = 1024;

/// What Rust prints after a panic's text.
const RUST_HINT: &str = "note: run with `RUST_BACKTRACE";

/// The command's stdout, kept up to a cap: its result.
#[derive(Clone)]
pub struct Stdout {
    bytes: Arc<Mutex<Vec<u8>>>,
    max: usize,
    over: Arc<std::sync::atomic::AtomicBool>,
}

impl Stdout {
    pub fn new(max: usize) -> Stdout {
        Stdout {
            bytes: Arc::default(),
            max,
            over: Arc::default(),
        }
    }

    /// What was written.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut lock(&self.bytes))
    }

    /// Whether a write was refused for passing the cap.
    pub fn overflowed(&self) -> bool {
        self.over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The refusal of a write past the cap, if there was one.
    fn overflow(&self) -> Option<String> {
        self.overflowed().then(|| self.over_cap())
    }

    fn over_cap(&self) -> String {
        format!("the output is over the response cap of {} bytes", self.max)
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

    /// The end of what was written, as text, trimmed: from the first
    /// whole character, and Rust's closing hint about `RUST_BACKTRACE`
    /// (after a panic's text) left out.
    fn tail(&self) -> String {
        let bytes = lock(&self.tail);
        let start = bytes.iter().take_while(|&&b| b & 0xC0 == 0x80).count();
        let text = String::from_utf8_lossy(&bytes[start..]);
        let text = text.trim();
        let text = match text.rsplit_once('\n') {
            Some((before, last)) if last.starts_with(RUST_HINT) => before,
            None if text.starts_with(RUST_HINT) => "",
            _ => text,
        };
        text.trim().to_string()
    }

    /// The end of what was written, escaped as a log line is (one line).
    fn escaped_tail(&self) -> Option<String> {
        let tail = self.tail();
        (!tail.is_empty()).then(|| escape(tail.as_bytes()))
    }

    /// An exec error: `message`, then the end of stderr.
    pub fn exec_error(&self, message: String) -> Outcome {
        Outcome::ExecError(match self.escaped_tail() {
            Some(tail) => format!("{message}: {tail}"),
            None => message,
        })
    }

    /// A trap's message, after the end of stderr (a panic's text); any
    /// other outcome as it is.
    pub fn explain(&self, outcome: Outcome) -> Outcome {
        match (outcome, self.escaped_tail()) {
            (Outcome::Trap(message), Some(tail)) => Outcome::Trap(format!("{tail}\n{message}")),
            (other, _) => other,
        }
    }
}

fn lock(bytes: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    bytes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Gives a command (a WASI core command, a command component) its stdio:
/// the arguments on stdin, a stdout that keeps the result up to the
/// response cap, and a stderr to the log that keeps its end. The two are
/// read by [`command_outcome`] when the command ends.
pub fn attach_command(start: &mut Start) -> (Stdout, Stderr) {
    let stdout = Stdout::new(start.limits.max_response_bytes);
    let stderr = Stderr::new(start.log(logs::Stream::Stderr));
    start
        .wasi
        .stdin(MemoryInputPipe::new(start.input.clone()))
        .stdout(Output(stdout.clone()))
        .stderr(Output(stderr.clone()));
    (stdout, stderr)
}

/// Gives an HTTP handler its stdio: stdout to the log, and a stderr to
/// the log that keeps its end, for a trap's message.
pub fn attach_handler(start: &mut Start) -> Stderr {
    let stdout = start.log(logs::Stream::Stdout);
    let stderr = Stderr::new(start.log(logs::Stream::Stderr));
    start
        .wasi
        .stdout(Output(stdout))
        .stderr(Output(stderr.clone()));
    stderr
}

/// How a command's run ended (a WASI command's `_start`, a component's
/// `run`): `ended` is `Ok` when it returned or exited with status 0, else
/// the outcome of the failure.
///
/// | the command | outcome |
/// |---|---|
/// | returns, or exits 0, having written something | `Output` (the bytes; the embedder decodes them as JSON, else as UTF-8 text, see [`text`]) |
/// | the same, having written nothing but whitespace | `NoResponse` |
/// | exits with a status from 1 to 125 (or its `run` returns `err`) | `ExecError`, with the status and the end of stderr |
/// | traps (a Rust panic is a trap; so is `proc_exit` with a status of 126 or more) | `Trap`, after the end of stderr (a panic's text) |
/// | wrote past the response cap, and went on (WASI 0.3 reports the refused write to the guest) | `Trap`, as the write itself does in WASI 0.2 and preview 1 |
pub fn command_outcome(ended: Result<(), Outcome>, stdout: &Stdout, stderr: &Stderr) -> Outcome {
    let ended = match (ended, stdout.overflow()) {
        (Ok(()) | Err(Outcome::Exit(_) | Outcome::ExecError(_)), Some(over)) => {
            Err(Outcome::Trap(over))
        }
        (ended, _) => ended,
    };
    match ended {
        Ok(()) => {
            let output = stdout.take();
            if output.iter().all(u8::is_ascii_whitespace) {
                Outcome::NoResponse
            } else {
                Outcome::Output(output)
            }
        }
        Err(Outcome::Exit(status)) => stderr.exec_error(format!("exited with status {status}")),
        Err(Outcome::ExecError(message)) => stderr.exec_error(message),
        Err(other) => stderr.explain(other),
    }
}

/// What a command's output is as text, when it is not JSON: UTF-8, less
/// one trailing newline; `None` if it is not UTF-8.
pub fn text(output: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(output).ok()?;
    Some(
        text.strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(text),
    )
}

impl Sink for Stdout {
    fn put(&self, bytes: &[u8]) -> Result<(), String> {
        let mut kept = lock(&self.bytes);
        if kept.len() + bytes.len() > self.max {
            self.over.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(self.over_cap());
        }
        kept.extend_from_slice(bytes);
        Ok(())
    }
}

impl Sink for Stderr {
    /// To the log, as every function's stderr; the last bytes kept.
    fn put(&self, bytes: &[u8]) -> Result<(), String> {
        self.log.put(bytes)?;
        let mut tail = lock(&self.tail);
        tail.extend_from_slice(&bytes[bytes.len().saturating_sub(STDERR_TAIL)..]);
        let excess = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..excess);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LogLimits;
    use crate::logs::{LogSink, Stream};

    fn stderr() -> Stderr {
        Stderr::new(WasiLog {
            sink: LogSink::new(LogLimits::default(), None),
            stream: Stream::Stderr,
        })
    }

    fn ok(stdout: &[u8]) -> Outcome {
        let out = Stdout::new(64);
        out.put(stdout).unwrap();
        command_outcome(Ok(()), &out, &stderr())
    }

    #[test]
    fn output_is_left_to_the_embedder_unless_blank() {
        assert_eq!(ok(b"{\"a\":1}\n"), Outcome::Output(b"{\"a\":1}\n".to_vec()));
        assert_eq!(ok(b"\xff\xfe"), Outcome::Output(b"\xff\xfe".to_vec()));
        assert_eq!(ok(b"  \n"), Outcome::NoResponse);
        assert_eq!(ok(b""), Outcome::NoResponse);
    }

    #[test]
    fn text_is_utf8_less_one_trailing_newline() {
        assert_eq!(text(b"Hello \"x\"\n"), Some("Hello \"x\""));
        assert_eq!(text(b"two\r\n"), Some("two"));
        assert_eq!(text(b"two\n\n"), Some("two\n"));
        assert_eq!(text(b"\xff"), None);
    }

    #[test]
    fn output_over_the_cap_is_refused() {
        let out = Stdout::new(4);
        assert!(out.put(b"1234").is_ok());
        assert!(
            out.put(b"5")
                .unwrap_err()
                .contains("over the response cap of 4 bytes")
        );
        // a command that went on after the refusal, and returned, fails
        let outcome = command_outcome(Ok(()), &out, &stderr());
        assert!(
            matches!(&outcome, Outcome::Trap(m) if m.contains("over the response cap of 4 bytes")),
            "{outcome:?}"
        );
        let fine = Stdout::new(4);
        assert!(fine.put(b"1234").is_ok());
        assert!(matches!(
            command_outcome(Ok(()), &fine, &stderr()),
            Outcome::Output(_)
        ));
    }

    #[test]
    fn failures_carry_stderr_escaped() {
        let err = stderr();
        err.put(b"starting\n").unwrap();
        err.put(b"thread 'main' panicked at src/main.rs:3:5:\nboom \x1b[31m\n")
            .unwrap();
        err.put(b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n")
            .unwrap();
        let out = Stdout::new(64);
        assert_eq!(
            command_outcome(Err(Outcome::Trap("wasm trap: unreachable".into())), &out, &err),
            Outcome::Trap(
                "starting\\nthread 'main' panicked at src/main.rs:3:5:\\nboom \\x1b[31m\nwasm trap: unreachable"
                    .into()
            )
        );
        assert_eq!(
            command_outcome(Err(Outcome::Trap("t".into())), &out, &stderr()),
            Outcome::Trap("t".into())
        );
        match command_outcome(Err(Outcome::Exit(2)), &out, &err) {
            Outcome::ExecError(m) => {
                assert!(m.starts_with("exited with status 2: starting"), "{m}");
                assert!(m.contains("boom"), "{m}");
                assert!(!m.contains('\n') && !m.contains('\x1b'), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            command_outcome(Err(Outcome::Exit(1)), &out, &stderr()),
            Outcome::ExecError("exited with status 1".into())
        );
        assert_eq!(
            command_outcome(Err(Outcome::Timeout), &out, &err),
            Outcome::Timeout
        );
    }

    #[test]
    fn the_hint_goes_only_when_it_is_last() {
        let err = stderr();
        err.put(b"note: run with `RUST_BACKTRACE=1`\nthen more\n")
            .unwrap();
        assert_eq!(err.tail(), "note: run with `RUST_BACKTRACE=1`\nthen more");
        let err = stderr();
        err.put(b"note: run with `RUST_BACKTRACE=1`\n").unwrap();
        assert_eq!(err.tail(), "");
    }

    #[test]
    fn only_the_end_of_stderr_is_kept_from_a_whole_character() {
        let err = stderr();
        err.put(&[b'a'; 5000]).unwrap();
        err.put(b"last").unwrap();
        let tail = err.tail();
        assert_eq!(tail.len(), STDERR_TAIL);
        assert!(tail.ends_with("last"));

        // "é" is two bytes: a cut between them starts at the next one
        let err = stderr();
        let mut bytes = "é".repeat(600).into_bytes();
        bytes.push(b'!');
        err.put(&bytes).unwrap();
        let tail = err.tail();
        assert!(!tail.contains('\u{fffd}'), "{tail}");
        assert!(tail.ends_with("é!"));
    }
}
