//! A test guest, not an example: a FunLess module that returns its input
//! unchanged. The tests' and the benchmark's echo (with
//! `components/echo_cli` and `components/echo_http`, the same in each kind
//! of component).
use fl_guest::{fl_function, FlResult};
use serde_json::Value;

fn echo(input: Value) -> FlResult {
    Ok(input)
}

fl_function!(echo);
