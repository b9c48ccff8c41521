//! A test guest, not an example: a FunLess module that always fails, with
//! `{"message": M}` or a default message (the tests' exec error).
use fl_guest::{fl_function, FlError, FlResult};
use serde_json::Value;

fn fail(input: Value) -> FlResult {
    let message = input["message"].as_str().unwrap_or("something went wrong");
    Err(FlError::ExecError(message.to_string()))
}

fl_function!(fail);
