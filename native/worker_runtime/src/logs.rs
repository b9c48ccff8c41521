//! What a function prints: `__console_log` lines and WASI stdout/stderr.
//!
//! Lines are collected in a bounded per-invocation buffer that the embedder
//! drains whenever the invocation hands control back (every time slice), so
//! the guest never waits for anyone. Past the caps, lines are dropped and
//! counted, never buffered.
//!
//! # One guest line, one record
//!
//! The embedder writes each [`Line`] as one log record, so [`LogSink`]
//! escapes every line ([`crate::text::escape`]), host notes too, since they
//! quote guest-chosen URLs.
//!
//! # Bounds
//!
//! A line longer than [`LogLimits::max_line_bytes`] is cut to that many
//! *input* bytes before escaping, so its text is at most 4 times that long
//! (`\x00` for each byte). [`LogLimits::max_bytes`] counts the escaped text,
//! so the bytes an invocation keeps are at most `max_bytes`, exactly.
//!
//! Over all invocations of one function, a shared [`LineBudget`] bounds the
//! rate of guest lines (console, stdout, stderr); the worker's own
//! [`Stream::Host`] notes are not charged to it. Lines refused by the
//! budget are dropped and counted like those past the caps.

use crate::limits::{LineBudget, LogLimits};
use crate::text::escape;
use std::sync::{Arc, Mutex, MutexGuard};

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

/// What an invocation did, beyond its result, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Lines dropped because a cap was reached or the function's
    /// [`LineBudget`] was spent.
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
    /// Invocations' worth of lines it may keep ([`LogSink::grant`]).
    grants: usize,
}

/// The per-invocation log buffer, shared between the store (writer) and the
/// embedder (reader).
pub struct LogSink {
    limits: LogLimits,
    /// The function's line budget; `None` for no rate limit.
    budget: Option<Arc<LineBudget>>,
    state: Mutex<State>,
}

impl LogSink {
    /// A sink keeping at most `limits` of one invocation's lines, and guest
    /// lines only as far as `budget` (shared by the function's invocations)
    /// allows.
    pub fn new(limits: LogLimits, budget: Option<Arc<LineBudget>>) -> Arc<Self> {
        Arc::new(LogSink {
            limits,
            budget,
            state: Mutex::new(State {
                grants: 1,
                ..State::default()
            }),
        })
    }

    /// Lets the sink keep one more invocation's worth of lines: the sink
    /// of an instance that serves many requests gets one for each.
    pub fn grant(&self) {
        self.lock().grants += 1;
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
        // Escaping never shortens a line: a line over the caps before
        // escaping is dropped before it costs the budget or an allocation.
        let (max_lines, max_bytes) = self.caps(state);
        if state.kept_lines >= max_lines || state.kept_bytes + text.len() > max_bytes {
            state.stats.dropped_lines += 1;
            return;
        }
        // The worker's own notes are not the guest's to spend.
        let budget = self.budget.as_deref().filter(|_| stream != Stream::Host);
        if budget.is_some_and(|budget| !budget.take()) {
            state.stats.dropped_lines += 1;
            return;
        }
        let text = escape(text);
        if state.kept_bytes + text.len() > max_bytes {
            if let Some(budget) = budget {
                budget.give_back();
            }
            state.stats.dropped_lines += 1;
            return;
        }
        state.kept_lines += 1;
        state.kept_bytes += text.len();
        state.ready.push(Line { stream, text });
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

    /// The lines and bytes it may keep, over all its grants.
    fn caps(&self, state: &State) -> (usize, usize) {
        (
            self.limits.max_lines.saturating_mul(state.grants),
            self.limits.max_bytes.saturating_mul(state.grants),
        )
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

    /// The stats counted since the last call: what each request of an
    /// instance that serves many reports as its own.
    pub fn take_stats(&self) -> Stats {
        std::mem::take(&mut self.lock().stats)
    }
}

/// A WASI stdout or stderr that writes into a [`LogSink`] (through
/// `stdio::Output`).
#[derive(Clone)]
pub struct WasiLog {
    pub sink: Arc<LogSink>,
    pub stream: Stream,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn splits_stream_output_into_lines() {
        let sink = LogSink::new(LogLimits::default(), None);
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
        let sink = LogSink::new(
            LogLimits {
                max_lines: 3,
                max_bytes: 100,
                max_line_bytes: 4,
            },
            None,
        );
        for i in 0..200_000 {
            sink.line(Stream::Console, format!("line {i}").as_bytes());
        }
        let lines = sink.drain();
        assert_eq!(texts(&lines), ["line", "line", "line"]);
        assert_eq!(sink.stats().dropped_lines, 200_000 - 3);
    }

    #[test]
    fn bounds_an_endless_unterminated_line() {
        let sink = LogSink::new(
            LogLimits {
                max_lines: 10,
                max_bytes: 1000,
                max_line_bytes: 8,
            },
            None,
        );
        for _ in 0..10_000 {
            sink.write(Stream::Stdout, b"xxxxxxxxxxxxxxxx");
        }
        sink.write(Stream::Stdout, b"\n");
        assert_eq!(texts(&sink.drain()), ["xxxxxxxx"]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let sink = LogSink::new(LogLimits::default(), None);
        sink.line(Stream::Console, &[0x66, 0xff, 0x6f]);
        assert_eq!(texts(&sink.drain()), ["f\u{fffd}o"]);
    }

    /// No character a terminal or log viewer could act on.
    fn assert_inert(text: &str) {
        for c in text.chars() {
            assert!(
                !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}'),
                "{c:?} in {text:?}"
            );
        }
    }

    #[test]
    fn a_console_line_is_one_escaped_line() {
        let sink = LogSink::new(LogLimits::default(), None);
        let forged = "ok\n[error] Worker.Server: forged\r\x1b[31mred\x00\x7f\u{85}nel\u{2028}ls\u{2029}\t\\x1b\u{202e}";
        sink.line(Stream::Console, forged.as_bytes());
        sink.line(Stream::Host, b"http request failed: http://a/\n\x1b[2J");
        let lines = sink.drain();
        assert_eq!(lines.len(), 2);
        for line in &lines {
            assert_inert(&line.text);
        }
        assert_eq!(
            lines[0].text,
            r"ok\n[error] Worker.Server: forged\r\x1b[31mred\x00\x7f\u{85}nel\u{2028}ls\u{2029}\t\\x1b\u{202e}"
        );
        assert_eq!(lines[1].text, r"http request failed: http://a/\n\x1b[2J");
        // Every C0 and C1 control, and non-ASCII text kept as is.
        let all: String = (0u32..0xa0)
            .filter_map(char::from_u32)
            .chain("é日本\u{1f600}".chars())
            .collect();
        sink.line(Stream::Console, all.as_bytes());
        let lines = sink.drain();
        assert_eq!(lines.len(), 1);
        assert_inert(&lines[0].text);
        assert!(lines[0].text.starts_with(r"\x00\x01"));
        assert!(lines[0].text.contains(r"\x1f !"));
        assert!(lines[0].text.ends_with("\\x7f\\u{80}\\u{81}\\u{82}\\u{83}\\u{84}\\u{85}\\u{86}\\u{87}\\u{88}\\u{89}\\u{8a}\\u{8b}\\u{8c}\\u{8d}\\u{8e}\\u{8f}\\u{90}\\u{91}\\u{92}\\u{93}\\u{94}\\u{95}\\u{96}\\u{97}\\u{98}\\u{99}\\u{9a}\\u{9b}\\u{9c}\\u{9d}\\u{9e}\\u{9f}é日本\u{1f600}"));
    }

    #[test]
    fn stream_output_is_escaped_within_its_lines() {
        let sink = LogSink::new(LogLimits::default(), None);
        sink.write(Stream::Stdout, b"progress 10%\rprogress 20%\r\x1b[2K");
        sink.write(Stream::Stderr, b"\x1b]0;title\x07 \\ \xc2");
        sink.write(Stream::Stdout, b"done\n");
        sink.write(Stream::Stderr, b"\x85 \xe2\x80\xa8 \xff\n");
        let lines = sink.drain();
        assert_eq!(
            texts(&lines),
            [
                r"progress 10%\rprogress 20%\r\x1b[2Kdone",
                "\\x1b]0;title\\x07 \\\\ \\u{85} \\u{2028} \u{fffd}",
            ]
        );
        for line in &lines {
            assert_inert(&line.text);
        }
    }

    #[test]
    fn escaped_text_is_what_counts_against_max_bytes() {
        let sink = LogSink::new(
            LogLimits {
                max_lines: 100,
                max_bytes: 10,
                max_line_bytes: 100,
            },
            None,
        );
        sink.line(Stream::Console, b"\x00\x00"); // 8 bytes escaped
        sink.line(Stream::Console, b"\x00"); // 4 more: over
        sink.line(Stream::Console, b"ab"); // 2 more: fits
        assert_eq!(texts(&sink.drain()), [r"\x00\x00", "ab"]);
        assert_eq!(sink.stats().dropped_lines, 1);
    }

    #[test]
    fn the_budget_bounds_lines_over_all_sinks() {
        let budget = LineBudget::new(100);
        let sinks: Vec<_> = (0..4)
            .map(|_| LogSink::new(LogLimits::default(), Some(budget.clone())))
            .collect();
        let kept =
            |sinks: &[Arc<LogSink>]| -> usize { sinks.iter().map(|s| s.drain().len()).sum() };
        let dropped =
            |sinks: &[Arc<LogSink>]| -> u64 { sinks.iter().map(|s| s.stats().dropped_lines).sum() };
        std::thread::scope(|scope| {
            for sink in &sinks {
                scope.spawn(move || {
                    for i in 0..2_500 {
                        sink.line(Stream::Console, format!("line {i}").as_bytes());
                    }
                });
            }
        });
        let first = kept(&sinks);
        assert!((100..=110).contains(&first), "{first}");
        assert_eq!(dropped(&sinks), 10_000 - first as u64);
        // Host notes are not charged, and not refused.
        sinks[0].line(Stream::Host, b"note");
        assert_eq!(texts(&sinks[0].drain()), ["note"]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        for i in 0..1_000 {
            sinks[i % 4].write(Stream::Stdout, b"more\n");
        }
        let more = kept(&sinks);
        assert!((10..=40).contains(&more), "{more}");
        assert_eq!(dropped(&sinks), 11_000 - (first + more) as u64);
    }

    #[test]
    fn a_zero_budget_never_refuses() {
        let budget = LineBudget::new(0);
        assert!((0..1_000_000).all(|_| budget.take()));
        let sink = LogSink::new(LogLimits::default(), Some(budget));
        for _ in 0..1_000 {
            sink.line(Stream::Console, b"x");
        }
        assert_eq!(sink.drain().len(), 1_000);
        assert_eq!(sink.stats().dropped_lines, 0);
    }
}
