//! A WASI 0.3 HTTP handler: exports `wasi:http/handler@0.3.0`, whose
//! `handle` is async. It reads the request's body (the arguments, JSON)
//! and answers JSON, as `hello_http` does with WASI 0.2.
//!
//! `"Ada"` or `{"name": "Ada"}` gives `{"message": "Hello, Ada!"}`;
//! anything else `{"message": "Hello, World!"}`.
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (in
//! `functions/components/`): `target/wasm32-wasip2/release/hello_http_p3.wasm`.
use serde_json::{json, Value};
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let (_, read) = wit_future::new(|| Ok(()));
        let (body, _trailers) = Request::consume_body(request, read);
        let input: Value = serde_json::from_slice(&body.collect().await).unwrap_or(Value::Null);
        let name = input.as_str().or(input["name"].as_str()).unwrap_or("World");
        let answer = json!({ "message": format!("Hello, {name}!") }).to_string();

        let headers = Fields::from_list(&[("content-type".into(), b"application/json".to_vec())])
            .map_err(|_| ErrorCode::InternalError(None))?;
        let (mut contents, contents_rx) = wit_stream::new();
        let (_, trailers) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents_rx), trailers);
        // the host reads the body once `handle` has returned the response
        wit_bindgen::spawn_local(async move {
            contents.write_all(answer.into_bytes()).await;
        });
        Ok(response)
    }
}
