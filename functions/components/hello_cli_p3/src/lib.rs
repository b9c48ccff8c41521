//! A WASI 0.3 command component: exports `wasi:cli/run@0.3.0`, whose `run`
//! is async. It reads its arguments (JSON) from stdin's stream and writes
//! its result (JSON) to stdout's, as `hello_cli` does with WASI 0.2.
//!
//! `"Ada"` or `{"name": "Ada"}` gives `"Hello Ada!"`; anything else
//! `"Hello World!"`.
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (in
//! `functions/components/`): `target/wasm32-wasip2/release/hello_cli_p3.wasm`.
use serde_json::Value;
use wasip3::cli::{stdin, stdout};
use wasip3::wit_stream;

wasip3::cli::command::export!(Hello);

struct Hello;

impl wasip3::exports::cli::run::Guest for Hello {
    async fn run() -> Result<(), ()> {
        let (input, _) = stdin::read_via_stream();
        let input: Value = serde_json::from_slice(&input.collect().await).unwrap_or(Value::Null);
        let name = input.as_str().or(input["name"].as_str()).unwrap_or("World");
        let greeting = Value::from(format!("Hello {name}!")).to_string();
        let (mut tx, rx) = wit_stream::new();
        let written = stdout::write_via_stream(rx);
        tx.write_all(greeting.into_bytes()).await;
        drop(tx);
        written.await.map_err(|_| ())
    }
}
