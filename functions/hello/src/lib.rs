//! A FunLess function, on the wrapper in `functions/fl_guest` (fl-wasm-rs's
//! ABI): `{"name": "Ada"}` gives `{"payload": "Hello Ada!"}`; without a
//! name, `{"payload": "Hello World!"}`.
//!
//! Build it with `cargo build --release --target wasm32-wasip1` (in
//! `functions/`): `target/wasm32-wasip1/release/hello.wasm`.
use fl_guest::{fl_function, FlResult};
use serde_json::{json, Value};

fn hello(input: Value) -> FlResult {
    let name = input["name"].as_str().unwrap_or("World");
    Ok(json!({ "payload": format!("Hello {name}!") }))
}

fl_function!(hello);
