//! A FunLess function that makes an HTTP request through the host (the
//! wrapper's `http::request`, fl-wasm-rs's `__http_request`):
//! `{"url": U, "method": "GET"|"POST"|"PUT"|"DELETE", "headers": {..}, "body": B}`
//! (all but `url` optional; GET by default) performs the request and gives
//! `{"status": S, "body": B}`, status 0 when it failed or was refused. A
//! missing url or an unknown method is the function's error.
//!
//! Build it with `cargo build --release --target wasm32-wasip1` (in
//! `functions/`): `target/wasm32-wasip1/release/http.wasm`.
use fl_guest::http::{self, Method};
use fl_guest::{fl_function, FlError, FlResult};
use serde_json::{json, Value};

fn call(input: Value) -> FlResult {
    let url = input["url"]
        .as_str()
        .ok_or_else(|| FlError::ExecError("missing url".into()))?;
    let method = match input["method"].as_str().unwrap_or("GET") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => return Err(FlError::ExecError(format!("unknown method {other}"))),
    };
    let headers: Vec<(String, String)> = input["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body = input["body"].as_str().unwrap_or("");
    let response = http::request(method, url, &headers, body);
    Ok(json!({ "status": response.status, "body": response.body }))
}

fl_function!(call);
