//! Returns its input unchanged.
use fl_guest::{fl_function, FlResult};
use serde_json::Value;

fn echo(input: Value) -> FlResult {
    Ok(input)
}

fl_function!(echo);
