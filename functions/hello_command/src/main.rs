//! A WASI command, as any Rust program for wasm32-wasip1 is one: reads its
//! arguments (JSON) on stdin and prints its result (JSON) on stdout. No
//! FunLess wrapper.
//!
//! `"Ada"` or `{"name": "Ada"}` prints `"Hello Ada!"`; anything else
//! `"Hello World!"`.
//!
//! Build it with `cargo build --release --target wasm32-wasip1` (in
//! `functions/`): `target/wasm32-wasip1/release/hello_command.wasm`.
use serde_json::Value;
use std::io::Read;

fn main() {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("stdin is readable");
    let input: Value = serde_json::from_str(&input).unwrap_or(Value::Null);

    let name = match &input {
        Value::String(name) => name.as_str(),
        other => other.get("name").and_then(Value::as_str).unwrap_or("World"),
    };
    println!("{}", Value::String(format!("Hello {name}!")));
}
