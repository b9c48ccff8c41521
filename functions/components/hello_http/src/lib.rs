//! An HTTP component (exports `wasi:http/incoming-handler`), written with
//! wstd: the worker sends `POST /` with the arguments (JSON) as the body,
//! and takes the body of a 2xx answer as the result.
//!
//! `"Ada"` or `{"name": "Ada"}` answers `{"message": "Hello, Ada!"}`;
//! anything else `{"message": "Hello, World!"}`.
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (in
//! `functions/components/`): `target/wasm32-wasip2/release/hello_http.wasm`.
use serde_json::{json, Value};
use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.body_mut().contents().await?;
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);

    let name = match &input {
        Value::String(name) => name.as_str(),
        other => other.get("name").and_then(Value::as_str).unwrap_or("World"),
    };
    let answer = json!({ "message": format!("Hello, {name}!") });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(answer.to_string().into())?)
}
