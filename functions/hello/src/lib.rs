//! `{"name": N}` gives `{"payload": "Hello N!"}`.
use fl_guest::{fl_function, FlResult};
use serde_json::{json, Value};

fn hello(input: Value) -> FlResult {
    let name = input["name"].as_str().unwrap_or("World");
    Ok(json!({ "payload": format!("Hello {name}!") }))
}

fl_function!(hello);
