//! A test guest, not an example: `functions/hello_command` (a WASI command
//! reading JSON on stdin and printing JSON on stdout) with the hooks the
//! tests of commands call.
//!
//! * `"Ada"` or `{"name": "Ada"}` prints `"Hello Ada!"`; anything else
//!   `"Hello World!"`, as the example does;
//! * `{"exit": n}` writes a line to stderr and exits with status `n`;
//! * `{"panic": "why"}` panics with that message;
//! * `{"text": "..."}` prints that text as it is, not as JSON.
use serde_json::Value;
use std::io::Read;

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
    if let Some(why) = input.get("panic").and_then(Value::as_str) {
        panic!("{why}");
    }
    if let Some(text) = input.get("text").and_then(Value::as_str) {
        println!("{text}");
        return;
    }
    let name = match &input {
        Value::String(name) => name.as_str(),
        other => other.get("name").and_then(Value::as_str).unwrap_or("World"),
    };
    println!("{}", Value::String(format!("Hello {name}!")));
}
