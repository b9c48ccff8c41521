//! What a function prints: `__console_log` lines and WASI stdout/stderr.
//!
//! Lines are collected in a bounded per-invocation buffer that the embedder
//! drains whenever the invocation hands control back (every time slice), so
//! the guest never waits for anyone. Past the caps, lines are dropped and
//! counted, never buffered.

use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `__console_log`
    Console,
    /// WASI stdout
    Stdout,
    /// WASI stderr
    Stderr,
    /// The worker's own notes about the invocation (a failed HTTP request).
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
}

#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Lines kept per invocation.
    pub max_lines: usize,
    /// Bytes kept per invocation, over all lines.
    pub max_bytes: usize,
    /// Longest single line; longer ones are cut.
    pub max_line_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_lines: 1_000,
            max_bytes: 1 << 20,
            max_line_bytes: 16 << 10,
        }
    }
}

/// What an invocation did, beyond its result, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Lines dropped because a cap was reached.
    pub dropped_lines: u64,
    pub http_ok: u32,
    pub http_failed: u32,
    pub http_refused: u32,
}

#[derive(Default)]
struct State {
    ready: Vec<Line>,
    kept_lines: usize,
    kept_bytes: usize,
    stats: Stats,
    /// Unterminated output per WASI stream (stdout, stderr).
    partial: [Vec<u8>; 2],
}

/// The per-invocation log buffer, shared between the store (writer) and the
/// embedder (reader).
pub struct LogSink {
    limits: LogLimits,
    state: Mutex<State>,
}

impl LogSink {
    pub fn new(limits: LogLimits) -> Arc<Self> {
        Arc::new(LogSink {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records one complete line (a `__console_log` call).
    pub fn line(&self, stream: Stream, text: &[u8]) {
        let mut state = self.lock();
        self.push(&mut state, stream, text);
    }

    fn push(&self, state: &mut State, stream: Stream, text: &[u8]) {
        let text = &text[..text.len().min(self.limits.max_line_bytes)];
        if state.kept_lines >= self.limits.max_lines
            || state.kept_bytes + text.len() > self.limits.max_bytes
        {
            state.stats.dropped_lines += 1;
            return;
        }
        state.kept_lines += 1;
        state.kept_bytes += text.len();
        state.ready.push(Line {
            stream,
            text: String::from_utf8_lossy(text).into_owned(),
        });
    }

    /// Appends raw output from a WASI stream, emitting each complete line.
    pub fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let slot = match stream {
            Stream::Stderr => 1,
            _ => 0,
        };
        let mut state = self.lock();
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = bytes.split_at(nl);
            bytes = &rest[1..];
            if state.partial[slot].is_empty() {
                self.push(&mut state, stream, line);
            } else {
                let mut whole = std::mem::take(&mut state.partial[slot]);
                whole.extend_from_slice(line);
                self.push(&mut state, stream, &whole);
            }
        }
        // Keep at most one line's worth of an unterminated tail.
        let room =
            self.limits.max_line_bytes - state.partial[slot].len().min(self.limits.max_line_bytes);
        let take = bytes.len().min(room);
        state.partial[slot].extend_from_slice(&bytes[..take]);
    }

    /// Takes the lines collected so far.
    pub fn drain(&self) -> Vec<Line> {
        let mut state = self.lock();
        if state.ready.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut state.ready)
    }

    /// Flushes unterminated stdout/stderr output as final lines.
    pub fn finish(&self) {
        let mut state = self.lock();
        for (slot, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let tail = std::mem::take(&mut state.partial[slot]);
            if !tail.is_empty() {
                self.push(&mut state, stream, &tail);
            }
        }
    }

    /// Counts an outbound request: `Ok(())`, or `Err(refused?)`.
    pub fn http(&self, outcome: Result<(), bool>) {
        let mut state = self.lock();
        match outcome {
            Ok(()) => state.stats.http_ok += 1,
            Err(true) => state.stats.http_refused += 1,
            Err(false) => state.stats.http_failed += 1,
        }
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats
    }
}

/// A WASI stdout or stderr that writes into a [`LogSink`].
#[derive(Clone)]
pub struct WasiLog {
    pub sink: Arc<LogSink>,
    pub stream: Stream,
}

impl IsTerminal for WasiLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for WasiLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for WasiLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.write(self.stream, &bytes);
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
impl Pollable for WasiLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for WasiLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.sink.write(self.stream, buf);
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

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn splits_stream_output_into_lines() {
        let sink = LogSink::new(LogLimits::default());
        sink.write(Stream::Stdout, b"hel");
        sink.write(Stream::Stderr, b"oops\n");
        sink.write(Stream::Stdout, b"lo\nwor");
        sink.write(Stream::Stdout, b"ld\n\ntail");
        let lines = sink.drain();
        assert_eq!(texts(&lines), ["oops", "hello", "world", ""]);
        assert_eq!(lines[0].stream, Stream::Stderr);
        assert!(sink.drain().is_empty());
        sink.finish();
        assert_eq!(texts(&sink.drain()), ["tail"]);
    }

    #[test]
    fn drops_and_counts_past_the_caps() {
        let sink = LogSink::new(LogLimits {
            max_lines: 3,
            max_bytes: 100,
            max_line_bytes: 4,
        });
        for i in 0..200_000 {
            sink.line(Stream::Console, format!("line {i}").as_bytes());
        }
        let lines = sink.drain();
        assert_eq!(texts(&lines), ["line", "line", "line"]);
        assert_eq!(sink.stats().dropped_lines, 200_000 - 3);
    }

    #[test]
    fn bounds_an_endless_unterminated_line() {
        let sink = LogSink::new(LogLimits {
            max_lines: 10,
            max_bytes: 1000,
            max_line_bytes: 8,
        });
        for _ in 0..10_000 {
            sink.write(Stream::Stdout, b"xxxxxxxxxxxxxxxx");
        }
        sink.write(Stream::Stdout, b"\n");
        assert_eq!(texts(&sink.drain()), ["xxxxxxxx"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let sink = LogSink::new(LogLimits::default());
        sink.line(Stream::Console, &[0x66, 0xff, 0x6f]);
        assert_eq!(texts(&sink.drain()), ["f\u{fffd}o"]);
    }
}
