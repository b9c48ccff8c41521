//! A test guest, not an example: `functions/components/hello_cli` (a
//! command component: reads JSON on stdin, prints JSON on stdout) with the
//! hooks the tests of command components call; those of
//! `test/guests/probe_command`, and more.
//!
//! * `"Ada"` or `{"name": "Ada"}` prints `"Hello Ada!"`; anything else
//!   `"Hello World!"`, as the example does;
//! * `{"exit": n}` writes a line to stderr and exits with status `n`
//!   through std, whose wasi-libc calls wasi:cli/exit's `exit`: the host
//!   sees only a failure (status 1) for any `n` but 0;
//! * `{"exit_code": n}` writes a line to stderr and exits with status `n`
//!   (0 to 255) through `exit-with-code` (WASI 0.2.12), which the host sees;
//! * `{"panic": "why"}` panics with that message (a trap);
//! * `{"text": "..."}` prints that text as it is, not as JSON;
//! * `{"stderr": "..."}` writes that text to stderr, then answers as for a
//!   name;
//! * `{"spin": true}` loops forever without calling the host;
//! * `{"sleep_ms": n}` sleeps n milliseconds, then prints `{"slept_ms": n}`;
//! * `{"grow_mb": n}` allocates and fills n MiB, then prints
//!   `{"grew_mb": n}`;
//! * `{"recurse": true}` recurses until the Wasm call stack runs out (a
//!   stack-overflow trap); `{"recurse": "memory"}` until the stack in
//!   linear memory (1 MiB, below the data) runs out, which traps as an
//!   out-of-bounds memory access instead.
use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;

fn main() {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("stdin is readable");
    let input: Value = serde_json::from_str(&input).unwrap_or(Value::Null);

    if let Some(code) = input.get("exit").and_then(Value::as_i64) {
        eprintln!("exiting with status {code}, as asked");
        std::process::exit(code as i32);
    }
    if let Some(code) = input.get("exit_code").and_then(Value::as_u64) {
        let code = u8::try_from(code).unwrap_or(u8::MAX);
        eprintln!("exiting with status {code}, as asked");
        wasip2::cli::exit::exit_with_code(code);
        unreachable!("exit-with-code returned");
    }
    if let Some(why) = input.get("panic").and_then(Value::as_str) {
        panic!("{why}");
    }
    if let Some(text) = input.get("text").and_then(Value::as_str) {
        println!("{text}");
        return;
    }
    if let Some(text) = input.get("stderr").and_then(Value::as_str) {
        eprintln!("{text}");
    }
    if input.get("spin").and_then(Value::as_bool) == Some(true) {
        spin();
    }
    if let Some(ms) = input.get("sleep_ms").and_then(Value::as_u64) {
        std::thread::sleep(Duration::from_millis(ms));
        println!("{}", json!({ "slept_ms": ms }));
        return;
    }
    if let Some(mb) = input.get("grow_mb").and_then(Value::as_u64) {
        grow(mb);
        println!("{}", json!({ "grew_mb": mb }));
        return;
    }
    match input.get("recurse") {
        Some(Value::Bool(true)) => {
            recurse(0);
        }
        Some(Value::String(how)) if how == "memory" => {
            recurse_in_memory(0);
        }
        _ => {}
    }

    let name = match &input {
        Value::String(name) => name.as_str(),
        other => other.get("name").and_then(Value::as_str).unwrap_or("World"),
    };
    println!("{}", Value::String(format!("Hello {name}!")));
}

/// Runs forever, with no call out of the guest in the loop.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates `mb` MiB and writes to every page of it.
fn grow(mb: u64) {
    let bytes = usize::try_from(mb << 20).expect("fits the address space");
    let block = vec![1u8; bytes];
    std::hint::black_box(&block);
}

/// Recurses until the Wasm call stack overflows: a frame of a few locals,
/// none in linear memory, and a result that cannot be turned into a loop.
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1).rotate_left(1) ^ depth
}

/// Recurses until the stack in linear memory overflows: each frame keeps
/// 1 KiB there.
fn recurse_in_memory(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 128]);
    if frame[0] == u64::MAX {
        return 0;
    }
    recurse_in_memory(depth + 1).wrapping_add(frame[(depth % 128) as usize])
}
