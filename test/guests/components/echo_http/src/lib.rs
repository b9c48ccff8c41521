//! A test guest, not an example: an HTTP component that answers each
//! request with its own body, as JSON (the benchmark's echo, beside
//! `test/guests/echo`).
use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.body_mut().contents().await?.to_vec();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(body.into())?)
}
