//! A test guest, not an example: `functions/components/hello_http_p3` (a
//! WASI 0.3 HTTP handler) with the hooks the tests of 0.3 handlers call:
//!
//! * `"Ada"` or `{"name": "Ada"}` answers `{"message": "Hello, Ada!"}`;
//! * `{"status": n, "text": "..."}` answers status n with that body;
//! * `{"error_code": "why"}` returns the error code `internal-error(why)`;
//! * `{"panic": "why"}` panics; `{"exit_code": n}` exits with status n;
//! * `{"spin": true}` loops forever; `{"sleep_ms": n}` waits n ms on the
//!   monotonic clock, then answers `{"slept_ms": n}`;
//! * `{"grow_mb": n}` allocates n MiB, then answers `{"grew_mb": n}`;
//! * `{"body_kb": n}` answers n KiB of `x`, in one write;
//!   `{"endless": true}` answers a body that never ends;
//! * `{"stderr": "..."}` writes that to stderr (through WASI 0.3's
//!   stream), then answers as for a name;
//! * `{"count": true}` answers `{"count": n}`, n the requests this
//!   instance has counted, this one included; with `"sleep_ms": m`, after
//!   waiting m ms;
//! * `{"fetch": url}` sends `GET url` through wasi:http/client@0.3 and
//!   answers `{"status": s, "body": text}`, or `{"error": "..."}`;
//!   `{"fetch": url, "post_kb": n}` sends `POST url` with n KiB of body;
//!   `{"urls": [url, ...]}` sends `GET` to each in turn and answers
//!   `{"results": [...]}`, each as for `fetch`.
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use wasip3::cli::{exit, stderr};
use wasip3::clocks::monotonic_clock;
use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Probe);

struct Probe;

/// Requests counted by this instance (`{"count": true}`).
static COUNTED: AtomicU64 = AtomicU64::new(0);

impl wasip3::exports::http::handler::Guest for Probe {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let (_, read) = wit_future::new(|| Ok(()));
        let (body, _trailers) = Request::consume_body(request, read);
        let input: Value = serde_json::from_slice(&body.collect().await).unwrap_or(Value::Null);

        if input.get("count").and_then(Value::as_bool) == Some(true) {
            let n = COUNTED.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(ms) = input.get("sleep_ms").and_then(Value::as_u64) {
                monotonic_clock::wait_for(ms * 1_000_000).await;
            }
            return answer(200, json!({ "count": n }).to_string().into_bytes());
        }
        if let Some(why) = input.get("error_code").and_then(Value::as_str) {
            return Err(ErrorCode::InternalError(Some(why.to_string())));
        }
        if let Some(why) = input.get("panic").and_then(Value::as_str) {
            panic!("{why}");
        }
        if let Some(code) = input.get("exit_code").and_then(Value::as_u64) {
            exit::exit_with_code(u8::try_from(code).unwrap_or(u8::MAX));
            unreachable!("exit-with-code returned");
        }
        if input.get("spin").and_then(Value::as_bool) == Some(true) {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if let Some(ms) = input.get("sleep_ms").and_then(Value::as_u64) {
            monotonic_clock::wait_for(ms * 1_000_000).await;
            return answer(200, json!({ "slept_ms": ms }).to_string().into_bytes());
        }
        if let Some(mb) = input.get("grow_mb").and_then(Value::as_u64) {
            let block = vec![1u8; usize::try_from(mb << 20).expect("fits")];
            std::hint::black_box(&block);
            return answer(200, json!({ "grew_mb": mb }).to_string().into_bytes());
        }
        if let Some(kb) = input.get("body_kb").and_then(Value::as_u64) {
            return answer(200, vec![b'x'; kb as usize * 1024]);
        }
        if input.get("endless").and_then(Value::as_bool) == Some(true) {
            return endless();
        }
        if let Some(status) = input.get("status").and_then(Value::as_u64) {
            let text = input.get("text").and_then(Value::as_str).unwrap_or("");
            return answer(status as u16, text.as_bytes().to_vec());
        }
        if let Some(urls) = input.get("urls").and_then(Value::as_array) {
            let mut results = Vec::new();
            for url in urls {
                results.push(match fetch(url.as_str().unwrap_or(""), None).await {
                    Ok((status, body)) => json!({ "status": status, "body": body }),
                    Err(error) => json!({ "error": error }),
                });
            }
            return answer(200, json!({ "results": results }).to_string().into_bytes());
        }
        if let Some(url) = input.get("fetch").and_then(Value::as_str) {
            let post_kb = input.get("post_kb").and_then(Value::as_u64);
            let fetched = match fetch(url, post_kb).await {
                Ok((status, body)) => json!({ "status": status, "body": body }),
                Err(error) => json!({ "error": error }),
            };
            return answer(200, fetched.to_string().into_bytes());
        }
        if let Some(text) = input.get("stderr").and_then(Value::as_str) {
            let (mut tx, rx) = wit_stream::new();
            let written = stderr::write_via_stream(rx);
            tx.write_all(format!("{text}\n").into_bytes()).await;
            drop(tx);
            let _ = written.await;
        }
        let name = input.as_str().or(input["name"].as_str()).unwrap_or("World");
        let message = json!({ "message": format!("Hello, {name}!") });
        answer(200, message.to_string().into_bytes())
    }
}

/// A response of `status` whose body, `bytes`, is written in one write
/// once the host reads it.
fn answer(status: u16, bytes: Vec<u8>) -> Result<Response, ErrorCode> {
    let (mut contents, contents_rx) = wit_stream::new();
    let response = response(status, contents_rx)?;
    wit_bindgen::spawn_local(async move {
        contents.write_all(bytes).await;
    });
    Ok(response)
}

/// A 200 whose body is written on, 64 KiB at a time, for ever.
fn endless() -> Result<Response, ErrorCode> {
    let (mut contents, contents_rx) = wit_stream::new();
    let response = response(200, contents_rx)?;
    wit_bindgen::spawn_local(async move {
        loop {
            let left = contents.write_all(vec![b'x'; 64 << 10]).await;
            if !left.is_empty() {
                return;
            }
        }
    });
    Ok(response)
}

fn response(
    status: u16,
    contents: wit_bindgen::rt::async_support::StreamReader<u8>,
) -> Result<Response, ErrorCode> {
    let headers = Fields::new();
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(contents), trailers);
    response
        .set_status_code(status)
        .map_err(|()| ErrorCode::InternalError(Some(format!("bad status {status}"))))?;
    Ok(response)
}

/// `GET url`, or `POST url` with `post_kb` KiB of body: the status and the
/// body as text, or what failed.
async fn fetch(url: &str, post_kb: Option<u64>) -> Result<(u16, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(format!("not an http(s) URL: {url}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (body, method) = match post_kb {
        Some(kb) => {
            let (mut tx, rx) = wit_stream::new();
            wit_bindgen::spawn_local(async move {
                tx.write_all(vec![b'x'; kb as usize * 1024]).await;
            });
            (Some(rx), Method::Post)
        }
        None => (None, Method::Get),
    };
    let (request, _sent) = Request::new(Fields::new(), body, trailers, None);
    let bad = |what: &str| format!("bad {what} in {url}");
    request.set_method(&method).map_err(|()| bad("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| bad("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| bad("authority"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| bad("path"))?;
    let response = client::send(request)
        .await
        .map_err(|code| format!("{code:?}"))?;
    let status = response.get_status_code();
    let (_, read) = wit_future::new(|| Ok(()));
    let (body, _trailers) = Response::consume_body(response, read);
    let body = body.collect().await;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
