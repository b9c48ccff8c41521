//! What a function prints: `__console_log` lines and WASI stdout/stderr.
//!
//! Lines are collected in a bounded per-invocation buffer that the embedder
//! drains whenever the invocation hands control back (every time slice), so
//! the guest never waits for anyone. Past the caps, lines are dropped and
//! counted, never buffered.
//!
//! # One guest line, one record
//!
//! The embedder writes each [`Line`] as one log record, so a line's text
//! never holds a character that a terminal or log viewer could act on:
//! [`LogSink`] escapes, in every line (host notes too, since they quote
//! guest-chosen URLs):
//!
//! | input | written as |
//! |---|---|
//! | `\` (backslash) | `\\`, so an escape can't be forged |
//! | newline, carriage return, tab | `\n`, `\r`, `\t` |
//! | any other C0 control (U+0000-U+001F) and DEL (U+007F) | `\xNN`, two lowercase hex digits: NUL is `\x00`, ESC is `\x1b` |
//! | C1 controls (U+0080-U+009F, NEL U+0085 among them), the line and paragraph separators U+2028/U+2029, the bidirectional embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069 | Rust's `\u{N}`, lowercase hex without leading zeros: `\u{85}`, `\u{2028}` |
//!
//! That is every character for which [`char::is_control`] holds, plus the
//! Unicode line breakers that are not controls (VT, FF, CR, LF and NEL are
//! controls) and the characters that reorder text on display. Invalid UTF-8
//! becomes U+FFFD, one per invalid sequence, as `String::from_utf8_lossy`
//! does. Everything else, other non-ASCII text included, is kept as is.
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

use crate::stdio::Sink;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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
    /// Bytes kept per invocation, over all lines, counted after escaping.
    pub max_bytes: usize,
    /// Longest single line, in bytes before escaping; longer ones are cut.
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
    /// Lines dropped because a cap was reached or the function's
    /// [`LineBudget`] was spent.
    pub dropped_lines: u64,
    pub http_ok: u32,
    pub http_failed: u32,
    pub http_refused: u32,
}

/// A per-function rate limit on guest log lines, shared by all of the
/// function's invocations: a token bucket refilled continuously at
/// `lines_per_second`, holding at most one second's worth.
///
/// Lock-free (GCRA, "virtual scheduling"): one atomic holds the clock
/// reading, in nanoseconds since `origin`, at which the bucket would be
/// full again. A line is allowed when taking it leaves that time at most one
/// second ahead of now. An allowed line costs a clock read, a load and a
/// compare-exchange; a refused one a clock read and a load, and writes
/// nothing shared.
#[derive(Debug)]
pub struct LineBudget {
    origin: Instant,
    /// Nanoseconds of refill per line; 0 for unlimited.
    interval: u64,
    /// `interval` times the burst, `lines_per_second` lines.
    burst: u64,
    /// When the bucket is full again, in nanoseconds since `origin`.
    full_at: AtomicU64,
}

impl LineBudget {
    /// A full bucket of `lines_per_second` lines. `0` is unlimited, and so,
    /// in effect, is any rate over 10^9 lines a second (rates that don't
    /// divide a second evenly refill a little faster than asked, never
    /// slower).
    pub fn new(lines_per_second: u32) -> Arc<LineBudget> {
        let interval = 1_000_000_000u64
            .checked_div(u64::from(lines_per_second))
            .unwrap_or(0);
        Arc::new(LineBudget {
            origin: Instant::now(),
            interval,
            burst: interval * u64::from(lines_per_second),
            full_at: AtomicU64::new(0),
        })
    }

    /// Takes one line from the bucket; `false` if it is empty.
    pub fn take(&self) -> bool {
        if self.interval == 0 {
            return true;
        }
        let now = self.now();
        let limit = now.saturating_add(self.burst);
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(self.interval);
            if next > limit {
                return false;
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => full_at = actual,
            }
        }
    }

    /// Returns a line taken but not kept after all.
    fn give_back(&self) {
        if self.interval == 0 {
            return;
        }
        let _ = self
            .full_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |full_at| {
                Some(full_at.saturating_sub(self.interval))
            });
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Whether `c` is written as an escape (see the module doc).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\\' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Decodes `bytes` as UTF-8 (invalid sequences becoming U+FFFD) and escapes
/// it as the module doc says. The result is never shorter than `bytes`.
pub(crate) fn escape(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let mut start = 0;
        for (i, c) in valid.char_indices() {
            if !needs_escape(c) {
                continue;
            }
            out.push_str(&valid[start..i]);
            start = i + c.len_utf8();
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_ascii() => {
                    let b = c as u8;
                    out.push_str("\\x");
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
                c => out.extend(c.escape_unicode()),
            }
        }
        out.push_str(&valid[start..]);
        if !chunk.invalid().is_empty() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    out
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
        // Escaping never shortens a line: a line over the caps before
        // escaping is dropped before it costs the budget or an allocation.
        if state.kept_lines >= self.limits.max_lines
            || state.kept_bytes + text.len() > self.limits.max_bytes
        {
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
        if state.kept_bytes + text.len() > self.limits.max_bytes {
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

/// A WASI stdout or stderr that writes into a [`LogSink`] (through
/// [`crate::stdio::Output`]).
#[derive(Clone)]
pub struct WasiLog {
    pub sink: Arc<LogSink>,
    pub stream: Stream,
}

impl Sink for WasiLog {
    fn put(&self, bytes: &[u8]) -> Result<(), String> {
        self.sink.write(self.stream, bytes);
        Ok(())
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

    #[test]
    fn a_budget_refills_at_its_rate_up_to_one_second() {
        let budget = LineBudget::new(1_000);
        assert_eq!((0..5_000).filter(|_| budget.take()).count(), 1_000);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let refilled = (0..5_000).filter(|_| budget.take()).count();
        assert!((40..=200).contains(&refilled), "{refilled}");
        // Idle time past one second fills the bucket, no more.
        let small = LineBudget::new(3);
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        assert_eq!((0..100).filter(|_| small.take()).count(), 3);
    }
}
