//! A test guest, not an example: `functions/components/hello_http` (an HTTP
//! component; the worker sends `POST /` with the arguments, JSON, as the
//! body, and takes the body of a 2xx answer as the result) with the hooks
//! the tests of HTTP components call.
//!
//! * `"Ada"` or `{"name": "Ada"}` answers `{"message": "Hello, Ada!"}`;
//!   anything else `{"message": "Hello, World!"}`, as the example does;
//! * `{"status": n}` answers status `n` with a line of text as the body
//!   (`{"status": n, "body": "..."}` with that text instead);
//! * `{"fail": "why"}` fails the handler: no response, the response-outparam
//!   is set to the error `internal-error("why")`;
//! * `{"panic": "why"}` panics with that message (a trap);
//! * `{"print": "text"}` writes the text to stdout and to stderr, then
//!   answers as for a name;
//! * `{"spin": true}` loops forever without yielding to the host;
//! * `{"sleep_ms": n}` sleeps n milliseconds (asynchronously, on a
//!   monotonic-clock pollable), then answers `{"slept_ms": n}`;
//! * `{"grow_mb": n}` allocates and fills n MiB of memory, then answers
//!   `{"grew_mb": n}`;
//! * `{"recurse": true}` recurses until the Wasm call stack runs out (a
//!   stack-overflow trap); `{"recurse": "memory"}` until the stack in
//!   linear memory (1 MiB, below the data) runs out, which traps as an
//!   out-of-bounds memory access instead.
use serde_json::{json, Value};
use wstd::http::{Body, Error, Request, Response, StatusCode};
use wstd::time::Duration;

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.body_mut().contents().await?;
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);

    if let Some(status) = input.get("status").and_then(Value::as_u64) {
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| Error::msg(format!("not a status: {status}")))?;
        let text = match input.get("body").and_then(Value::as_str) {
            Some(text) => text.to_owned(),
            None => format!("answering with status {}, as asked\n", status.as_u16()),
        };
        return Ok(Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.into())?);
    }
    if let Some(why) = input.get("fail").and_then(Value::as_str) {
        return Err(Error::msg(why.to_owned()));
    }
    if let Some(why) = input.get("panic").and_then(Value::as_str) {
        panic!("{why}");
    }
    if let Some(text) = input.get("print").and_then(Value::as_str) {
        println!("{text}");
        eprintln!("{text}");
    }
    if input.get("spin").and_then(Value::as_bool) == Some(true) {
        spin();
    }
    if let Some(ms) = input.get("sleep_ms").and_then(Value::as_u64) {
        wstd::task::sleep(Duration::from_millis(ms)).await;
        return json_response(&json!({ "slept_ms": ms }));
    }
    if let Some(mb) = input.get("grow_mb").and_then(Value::as_u64) {
        grow(mb);
        return json_response(&json!({ "grew_mb": mb }));
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
    json_response(&json!({ "message": format!("Hello, {name}!") }))
}

fn json_response(value: &Value) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(value.to_string().into())?)
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
