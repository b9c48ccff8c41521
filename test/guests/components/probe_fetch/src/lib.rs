//! A test guest, not an example: an HTTP component (exports
//! `wasi:http/incoming-handler`) that makes several requests of its own in
//! one invocation through `wasi:http/outgoing-handler`, with wstd's client,
//! for the tests of the outbound policy and its caps across requests
//! (`functions/components/fetch_http` makes one).
//!
//! `{"urls": [U, ...]}` sends `GET U` for each in turn, one at a time, and
//! answers `{"results": [...]}` with, for each, `{"url": U, "status": S,
//! "body": B}` (B the response body as text, invalid UTF-8 replaced) or
//! `{"url": U, "error": E}`, E the Debug form of the wasi:http `error-code`
//! when there is one (such as `ErrorCode::DestinationIpProhibited`), else
//! the error and its causes; one that fails does not stop the others.
use serde_json::{json, Value};
use wstd::http::error::ErrorCode;
use wstd::http::{Body, Client, Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.body_mut().contents().await?;
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);

    let Some(urls) = input.get("urls").and_then(Value::as_array) else {
        return Ok(Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("content-type", "text/plain; charset=utf-8")
            .body("expected {\"urls\": [...]}".into())?);
    };
    let client = Client::new();
    let mut results = Vec::with_capacity(urls.len());
    for url in urls {
        let url = url.as_str().unwrap_or_default();
        results.push(match get(&client, url).await {
            Ok((status, body)) => json!({ "url": url, "status": status, "body": body }),
            Err(err) => json!({ "url": url, "error": describe(&err) }),
        });
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(json!({ "results": results }).to_string().into())?)
}

/// Sends `GET url` and reads the whole response: its status and body.
async fn get(client: &Client, url: &str) -> Result<(u16, String), Error> {
    let request = Request::get(url).body(Body::empty())?;
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
