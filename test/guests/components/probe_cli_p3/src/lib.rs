//! A test guest, not an example: a WASI 0.3 command. Its arguments come
//! through `wasi:cli/stdin@0.3`'s stream and its result goes out through
//! `wasi:cli/stdout@0.3`'s, as `functions/components/hello_cli_p3` does;
//! with the hooks the tests of WASI 0.3 commands call:
//!
//! * `"Ada"` or `{"name": "Ada"}` prints `"Hello Ada!"`, else
//!   `"Hello World!"`;
//! * `{"fail": "why"}` writes `why` to stderr and returns `err` from `run`;
//! * `{"exit_code": n}` writes a line to stderr and exits with status `n`;
//! * `{"panic": "why"}` panics with that message (a trap);
//! * `{"spin": true}` loops forever without calling the host;
//! * `{"sleep_ms": n}` waits n milliseconds on the monotonic clock (an
//!   async host call), then prints `{"slept_ms": n}`;
//! * `{"grow_mb": n}` allocates and fills n MiB, then prints
//!   `{"grew_mb": n}`;
//! * `{"stderr_lines": n}` writes n short lines to stderr in one write,
//!   then answers as for a name;
//! * `{"stdout_kb": n}` writes n KiB of `x` to stdout in one write;
//!   `{"stdout_forever": true}` writes 64 KiB at a time for ever, whatever
//!   each write gives back.
use serde_json::{json, Value};
use wasip3::cli::{exit, stderr, stdin, stdout};
use wasip3::clocks::monotonic_clock;
use wasip3::wit_stream;

wasip3::cli::command::export!(Probe);

struct Probe;

impl wasip3::exports::cli::run::Guest for Probe {
    async fn run() -> Result<(), ()> {
        let (input, _done) = stdin::read_via_stream();
        let input = input.collect().await;
        let input: Value = serde_json::from_slice(&input).unwrap_or(Value::Null);

        if let Some(why) = input.get("fail").and_then(Value::as_str) {
            write(Stream::Stderr, format!("{why}\n").into_bytes()).await;
            return Err(());
        }
        if let Some(code) = input.get("exit_code").and_then(Value::as_u64) {
            let code = u8::try_from(code).unwrap_or(u8::MAX);
            write(
                Stream::Stderr,
                format!("exiting with status {code}, as asked\n").into_bytes(),
            )
            .await;
            exit::exit_with_code(code);
            unreachable!("exit-with-code returned");
        }
        if let Some(why) = input.get("panic").and_then(Value::as_str) {
            panic!("{why}");
        }
        if input.get("spin").and_then(Value::as_bool) == Some(true) {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if let Some(ms) = input.get("sleep_ms").and_then(Value::as_u64) {
            monotonic_clock::wait_for(ms * 1_000_000).await;
            return answer(json!({ "slept_ms": ms })).await;
        }
        if let Some(mb) = input.get("grow_mb").and_then(Value::as_u64) {
            let block = vec![1u8; usize::try_from(mb << 20).expect("fits")];
            std::hint::black_box(&block);
            return answer(json!({ "grew_mb": mb })).await;
        }
        if let Some(n) = input.get("stderr_lines").and_then(Value::as_u64) {
            write(Stream::Stderr, "a line\n".repeat(n as usize).into_bytes()).await;
        }
        if input.get("stdout_forever").and_then(Value::as_bool) == Some(true) {
            loop {
                write(Stream::Stdout, vec![b'x'; 64 << 10]).await;
            }
        }
        if let Some(kb) = input.get("stdout_kb").and_then(Value::as_u64) {
            write(Stream::Stdout, vec![b'x'; kb as usize * 1024]).await;
            return Ok(());
        }
        let name = match &input {
            Value::String(name) => name.as_str(),
            other => other.get("name").and_then(Value::as_str).unwrap_or("World"),
        };
        answer(Value::String(format!("Hello {name}!"))).await
    }
}

enum Stream {
    Stdout,
    Stderr,
}

/// Writes `bytes` to stdout or stderr in one write, and waits until the
/// host has taken them.
async fn write(to: Stream, bytes: Vec<u8>) {
    let (mut tx, rx) = wit_stream::new();
    let done = match to {
        Stream::Stdout => stdout::write_via_stream(rx),
        Stream::Stderr => stderr::write_via_stream(rx),
    };
    let writing = async {
        let _ = tx.write_all(bytes).await;
        drop(tx);
    };
    let _ = futures_join(writing, async { done.await }).await;
}

/// Both futures to the end, polled in turn (no executor crate needed).
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    use std::pin::pin;
    use std::task::Poll;
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(out) = a.as_mut().poll(cx) {
                ra = Some(out);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(out) = b.as_mut().poll(cx) {
                rb = Some(out);
            }
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (ra.unwrap(), rb.unwrap())
}

async fn answer(value: Value) -> Result<(), ()> {
    write(Stream::Stdout, format!("{value}\n").into_bytes()).await;
    Ok(())
}
