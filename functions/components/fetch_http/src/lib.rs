//! An HTTP component (exports `wasi:http/incoming-handler`) that makes a
//! request of its own through `wasi:http/outgoing-handler`, with wstd's
//! client. The worker allows only what its outbound policy allows (public
//! addresses, or those on its allow-list).
//!
//! * `{"url": U}` sends `GET U` and answers `{"status": S, "body": B}`, B
//!   the response body as text (invalid UTF-8 replaced); when the request
//!   fails, it answers status 502 with the error as text: the Debug form of
//!   the wasi:http `error-code` when there is one (such as
//!   `ErrorCode::DestinationIpProhibited`), else the error and its causes;
//! * `"method"` (default `GET`) and `"body"` (text) shape that request, and
//!   `"timeout_ms"` sets its connect and first-byte timeouts.
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (in
//! `functions/components/`): `target/wasm32-wasip2/release/fetch_http.wasm`.
use serde_json::{json, Value};
use wstd::http::error::ErrorCode;
use wstd::http::{Body, Client, Error, Method, Request, Response, StatusCode};
use wstd::time::Duration;

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.body_mut().contents().await?;
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);

    let mut client = Client::new();
    if let Some(ms) = input.get("timeout_ms").and_then(Value::as_u64) {
        client.set_connect_timeout(Duration::from_millis(ms));
        client.set_first_byte_timeout(Duration::from_millis(ms));
    }

    let Some(url) = input.get("url").and_then(Value::as_str) else {
        return answer(StatusCode::BAD_REQUEST, "expected {\"url\": ...}".into());
    };
    let method = input.get("method").and_then(Value::as_str).unwrap_or("GET");
    let body = input.get("body").and_then(Value::as_str);
    match fetch(&client, method, url, body).await {
        Ok((status, body)) => answer(
            StatusCode::OK,
            json!({ "status": status, "body": body }).to_string(),
        ),
        Err(err) => answer(StatusCode::BAD_GATEWAY, describe(&err)),
    }
}

/// Sends one request and reads the whole response: its status and body.
async fn fetch(
    client: &Client,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<(u16, String), Error> {
    let method = Method::from_bytes(method.as_bytes())?;
    let request = Request::builder().method(method).uri(url);
    let request = match body {
        Some(text) => request.body(Body::from(text))?,
        None => request.body(Body::empty())?,
    };
    let mut response = client.send(request).await?;
    let status = response.status().as_u16();
    let body = response.body_mut().contents().await?;
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// The wasi:http error code, if the error is one, else the error with its
/// causes.
fn describe(err: &Error) -> String {
    match err.downcast_ref::<ErrorCode>() {
        Some(code) => format!("{code:?}"),
        None => format!("{err:#}"),
    }
}

fn answer(status: StatusCode, body: String) -> Result<Response<Body>, Error> {
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body.into())?)
}
