//! A test guest, not an example: a FunLess module for the tests of guest
//! logs and their caps. `{"lines": N, "message": M}` logs M N times through
//! `__console_log`, once to stdout and once to stderr, and gives
//! `{"logged": N}`.
use fl_guest::{console_log, fl_function, FlResult};
use serde_json::{json, Value};

fn log(input: Value) -> FlResult {
    let lines = input["lines"].as_u64().unwrap_or(1);
    let message = input["message"].as_str().unwrap_or("hello from the logger");
    for i in 0..lines {
        console_log(&format!("{message} {i}"));
    }
    println!("stdout: {message}");
    eprintln!("stderr: {message}");
    Ok(json!({ "logged": lines }))
}

fl_function!(log);
