//! `__http_request` of FunLess modules: one request with its whole body,
//! its response's whole body back, redirects followed.
//!
//! The request is bounded in time (whatever the invocation has left) and the
//! response body in size: a lying `Content-Length` or an endless chunked body
//! is cut off and reported as a failed request. Up to [`MAX_REDIRECTS`]
//! redirects are followed, each target checked and connected to as the
//! first ([`super::connect`]); as browsers do, a 301, 302 or 303 turns a
//! request other than GET or HEAD into a GET without a body, and
//! credentials are not sent to another origin.
//!
//! Connections are kept for reuse between requests (of any invocation
//! under the same policy), a few per destination, for
//! [`IDLE_TIMEOUT`] at most.

use super::{Destination, Failure, Why};
use crate::policy::Policy;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use url::Url;
use wasmtime_wasi_http::io::TokioIo;

/// Redirects followed, at most; one more is refused.
pub const MAX_REDIRECTS: usize = 5;

/// How long a kept connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Connections kept per destination and policy, and destinations kept.
const IDLE_PER_DESTINATION: usize = 4;
const KEPT_DESTINATIONS: usize = 64;

const USER_AGENT: &str = concat!("funless-worker/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    /// The ABI's encoding: 0..3 for GET, POST, PUT and DELETE.
    pub fn from_abi(code: i32) -> Option<Method> {
        match code {
            0 => Some(Method::Get),
            1 => Some(Method::Post),
            2 => Some(Method::Put),
            3 => Some(Method::Delete),
            _ => None,
        }
    }

    fn as_http(self) -> http::Method {
        match self {
            Method::Get => http::Method::GET,
            Method::Post => http::Method::POST,
            Method::Put => http::Method::PUT,
            Method::Delete => http::Method::DELETE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Request {
    /// Builds a request from the guest's raw arguments.
    pub fn parse(
        method: i32,
        url: &[u8],
        headers: &[u8],
        body: Vec<u8>,
    ) -> Result<Request, String> {
        let method =
            Method::from_abi(method).ok_or_else(|| format!("unknown method code {method}"))?;
        let url = std::str::from_utf8(url)
            .map_err(|_| "url is not UTF-8".to_string())?
            .trim()
            .to_string();
        let headers =
            std::str::from_utf8(headers).map_err(|_| "headers are not UTF-8".to_string())?;
        Ok(Request {
            method,
            url,
            headers: parse_headers(headers)?,
            body,
        })
    }
}

/// Headers are `Key:Value` pairs separated by `\n`, each split at its first
/// `:`. Blank lines are skipped; surrounding whitespace is trimmed.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
        .map(|line| match line.split_once(':') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), value.trim().to_string()))
            }
            _ => Err(format!("malformed header line {line:?}")),
        })
        .collect()
}

/// Performs `request` under `policy`, giving up at `deadline`, reading at
/// most `max_body` bytes of response body. Must be polled inside the
/// runtime's Tokio context.
pub async fn perform(
    request: Request,
    policy: &Arc<Policy>,
    deadline: Instant,
    max_body: usize,
) -> Result<Response, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::new(Why::Timeout, "no time left in the invocation"));
    }
    match tokio::time::timeout(left, follow(request, policy, max_body)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::new(
            Why::Timeout,
            format!("timed out after {} ms", left.as_millis()),
        )),
    }
}

/// The request, then each redirect it is answered with.
async fn follow(
    request: Request,
    policy: &Arc<Policy>,
    max_body: usize,
) -> Result<Response, Failure> {
    let bad = |reason: String| Failure::new(Why::BadRequest, reason);
    let mut url = Url::parse(&request.url).map_err(|e| bad(format!("bad url: {e}")))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(format!("bad header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| bad(format!("bad value for header {name}")))?;
        headers.append(name, value);
    }
    // credentials in the URL go as basic authentication, never in the URL
    if !url.username().is_empty() || url.password().is_some() {
        if !headers.contains_key(header::AUTHORIZATION) {
            let pair = format!("{}:{}", url.username(), url.password().unwrap_or(""));
            let value = format!("Basic {}", base64(pair.as_bytes()));
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    for (name, value) in [(header::USER_AGENT, USER_AGENT), (header::ACCEPT, "*/*")] {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    let mut method = request.method.as_http();
    let mut body = Bytes::from(request.body);
    let mut redirects = 0;
    loop {
        let to = Destination::of(&url, policy).map_err(|failure| match failure.why {
            Why::Refused if redirects > 0 => {
                Failure::refused(format!("redirect refused: {}", failure.reason))
            }
            _ => failure,
        })?;
        let (status, response_headers, response) =
            exchange(&to, policy, &method, &url, &headers, body.clone()).await?;
        let Some(next) = redirect(status, &response_headers, &url) else {
            return Ok(Response {
                status: status.as_u16(),
                body: read(response, &response_headers, max_body).await?,
            });
        };
        if redirects == MAX_REDIRECTS {
            return Err(Failure::refused(format!(
                "more than {MAX_REDIRECTS} redirects"
            )));
        }
        redirects += 1;
        if matches!(status.as_u16(), 301..=303) {
            body = Bytes::new();
            for name in [
                header::CONTENT_TYPE,
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
                header::TRANSFER_ENCODING,
            ] {
                headers.remove(name);
            }
            if method != http::Method::GET && method != http::Method::HEAD {
                method = http::Method::GET;
            }
        }
        if next.origin() != url.origin() {
            for name in [
                header::AUTHORIZATION,
                header::COOKIE,
                header::PROXY_AUTHORIZATION,
                header::WWW_AUTHENTICATE,
            ] {
                headers.remove(name);
            }
        }
        url = next;
    }
}

/// Where a redirect goes: a 301, 302, 303, 307 or 308 with a `Location`.
fn redirect(status: http::StatusCode, headers: &HeaderMap, url: &Url) -> Option<Url> {
    if !matches!(status.as_u16(), 301..=303 | 307 | 308) {
        return None;
    }
    let location = headers.get(header::LOCATION)?.to_str().ok()?;
    url.join(location).ok()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The response to one request: its status, headers, and the body still to
/// read, with the connection it came on (kept once the body is read).
async fn exchange(
    to: &Destination,
    policy: &Arc<Policy>,
    method: &http::Method,
    url: &Url,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(http::StatusCode, HeaderMap, Incoming), Failure> {
    let key = (policy.clone(), to.clone());
    let mut sender = match Pool::get().take(&key).await {
        Some(sender) => sender,
        None => connect(to, policy).await?,
    };
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(if path.is_empty() { "/" } else { path })
        .body(Full::new(body))
        .map_err(|e| Failure::new(Why::BadRequest, e.to_string()))?;
    *request.headers_mut() = headers.clone();
    if !request.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(&to.authority())
            .map_err(|_| Failure::new(Why::BadRequest, "bad host"))?;
        request.headers_mut().insert(header::HOST, host);
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::new(Why::Protocol, format!("the exchange failed: {e}")))?;
    let (parts, body) = response.into_parts();
    Ok((
        parts.status,
        parts.headers,
        Incoming {
            body,
            connection: Some((key, sender)),
        },
    ))
}

/// A response body, and the connection to keep once it is read to its end.
struct Incoming {
    body: hyper::body::Incoming,
    connection: Option<(Key, Sender)>,
}

/// Reads a response body, at most `max` bytes; then keeps its connection.
async fn read(mut incoming: Incoming, headers: &HeaderMap, max: usize) -> Result<Vec<u8>, Failure> {
    let over = |what: String| Failure::new(Why::Protocol, what);
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|&length| length > max as u64)
    {
        return Err(over(format!(
            "response body of {length} bytes is over the limit of {max}"
        )));
    }
    let mut body = Vec::new();
    while let Some(frame) = incoming.body.frame().await {
        let frame = frame.map_err(|e| over(format!("the response body failed: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if body.len() + data.len() > max {
                return Err(over(format!(
                    "response body is over the limit of {max} bytes"
                )));
            }
            body.extend_from_slice(data);
        }
    }
    if let Some((key, sender)) = incoming.connection.take() {
        Pool::get().keep(key, sender);
    }
    Ok(body)
}

/// A new connection to `to`; its I/O runs on a task of its own, which ends
/// when the connection is dropped from the pool, or closed by the server.
async fn connect(to: &Destination, policy: &Policy) -> Result<Sender, Failure> {
    let connection = super::connect(to, policy, None).await?;
    let (sender, io) = hyper::client::conn::http1::handshake(TokioIo::new(connection))
        .await
        .map_err(|e| Failure::new(Why::Protocol, e.to_string()))?;
    tokio::spawn(async move {
        let _ = io.await;
    });
    Ok(sender)
}

/// What a kept connection is kept for: the policy it was checked under,
/// and where it goes.
type Key = (Arc<Policy>, Destination);

/// Idle connections, each with when it was kept.
type Idle = HashMap<Key, Vec<(Sender, Instant)>>;

/// Idle connections by policy and destination.
struct Pool {
    idle: Mutex<Idle>,
}

impl Pool {
    fn get() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool {
            idle: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept connection to `key` that is ready for a request, if any.
    async fn take(&self, key: &Key) -> Option<Sender> {
        loop {
            let (mut sender, since) = {
                let mut idle = self.lock();
                let kept = idle.get_mut(key)?;
                let taken = kept.pop();
                if kept.is_empty() {
                    idle.remove(key);
                }
                taken?
            };
            if since.elapsed() > IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            // a closed connection says so at once; one still finishing its
            // last response is ready within moments
            let ready = tokio::time::timeout(Duration::from_millis(100), sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                return Some(sender);
            }
        }
    }

    /// Keeps a connection whose response was read to its end, dropping the
    /// expired and closed ones first.
    fn keep(&self, key: Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        idle.retain(|_, kept| {
            kept.retain(|(sender, since)| since.elapsed() <= IDLE_TIMEOUT && !sender.is_closed());
            !kept.is_empty()
        });
        if !idle.contains_key(&key) && idle.len() >= KEPT_DESTINATIONS {
            return;
        }
        let kept = idle.entry(key).or_default();
        if kept.len() < IDLE_PER_DESTINATION {
            kept.push((sender, Instant::now()));
        }
    }
}

/// Standard base64, with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_split_at_the_first_colon() {
        assert_eq!(
            parse_headers("Content-Type: application/json\nX-Url:http://a:1/b\r\n\n").unwrap(),
            vec![
                ("Content-Type".to_string(), "application/json".to_string()),
                ("X-Url".to_string(), "http://a:1/b".to_string()),
            ]
        );
        assert_eq!(parse_headers("").unwrap(), vec![]);
        assert!(parse_headers("no colon here").is_err());
        assert!(parse_headers(":value").is_err());
    }

    #[test]
    fn methods_follow_the_abi() {
        assert_eq!(Method::from_abi(0), Some(Method::Get));
        assert_eq!(Method::from_abi(3), Some(Method::Delete));
        assert_eq!(Method::from_abi(4), None);
        assert_eq!(Method::from_abi(-1), None);
    }

    #[test]
    fn requests_need_a_known_method_and_text() {
        assert!(Request::parse(0, b"http://example.com/", b"", vec![]).is_ok());
        assert!(Request::parse(0, &[0xff, 0xfe], b"", vec![]).is_err());
        assert!(Request::parse(0, b"http://a/", &[0xff], vec![]).is_err());
        assert!(Request::parse(9, b"http://example.com/", b"", vec![]).is_err());
    }

    #[test]
    fn a_redirect_needs_its_status_and_a_location() {
        let url = Url::parse("http://example.com/a/b?c").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, HeaderValue::from_static("../x"));
        let found = |code| redirect(http::StatusCode::from_u16(code).unwrap(), &headers, &url);
        assert_eq!(found(302).unwrap().as_str(), "http://example.com/x");
        assert_eq!(found(308).unwrap().as_str(), "http://example.com/x");
        assert_eq!(found(200), None);
        assert_eq!(found(304), None);
        let none = HeaderMap::new();
        assert_eq!(redirect(http::StatusCode::FOUND, &none, &url), None);
    }

    #[test]
    fn base64_is_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:secret"), "dXNlcjpzZWNyZXQ=");
    }

    /// A loopback server that answers each request with `answer(n, head)`
    /// (n counts from 0 over every connection) and keeps every request's
    /// head and body.
    async fn server(
        answer: impl Fn(usize, &str) -> String + Send + Sync + 'static,
    ) -> (u16, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (answer, kept) = (Arc::new(answer), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (answer, kept) = (answer.clone(), kept.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                        while buffer.len() < end + 4 + length {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buffer[end + 4..end + 4 + length].to_vec();
                        buffer.drain(..end + 4 + length);
                        let n = {
                            let mut kept = kept.lock().unwrap();
                            kept.push((head.clone(), body));
                            kept.len() - 1
                        };
                        let reply = answer(n, &head);
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    fn redirect_to(status: &str, location: &str) -> String {
        format!("HTTP/1.1 {status}\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
    }

    #[tokio::test]
    async fn redirects_keep_credentials_at_home_and_drop_the_body_where_browsers_do() {
        let (other, elsewhere) =
            server(|_, _| "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone".to_string()).await;
        let (home, seen) = server(move |n, _| match n {
            0 => redirect_to("302 Found", "/same"),
            _ => redirect_to(
                "307 Temporary Redirect",
                &format!("http://127.0.0.1:{other}/far"),
            ),
        })
        .await;
        let request = Request::parse(
            1,
            format!("http://user:secret@127.0.0.1:{home}/start").as_bytes(),
            b"Content-Type: text/plain\nCookie: c=1",
            b"payload".to_vec(),
        )
        .unwrap();
        let policy = Arc::new(Policy::parse(&["127.0.0.1"]).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        let response = perform(request, &policy, deadline, 1024).await.unwrap();
        assert_eq!(
            (response.status, response.body.as_slice()),
            (200, &b"done"[..])
        );

        let seen = seen.lock().unwrap().clone();
        let (first, body) = &seen[0];
        // credentials from the URL go as basic authentication, not in the URL
        assert!(first.starts_with("post /start http/1.1"), "{first}");
        assert!(
            first.contains("authorization: basic dxnlcjpzzwnyzxq="),
            "{first}"
        );
        assert!(!first.contains("secret"), "{first}");
        assert_eq!(body, b"payload");
        // a 302 turns a POST into a GET without its body, at the same origin
        // with its credentials and cookies
        let (second, body) = &seen[1];
        assert!(second.starts_with("get /same http/1.1"), "{second}");
        assert!(!second.contains("content-type"), "{second}");
        assert!(second.contains("authorization: basic"), "{second}");
        assert!(second.contains("cookie: c=1"), "{second}");
        assert!(body.is_empty());
        // another origin (another port) gets neither
        let far = &elsewhere.lock().unwrap()[0].0;
        assert!(far.starts_with("get /far http/1.1"), "{far}");
        assert!(!far.contains("authorization"), "{far}");
        assert!(!far.contains("cookie"), "{far}");
    }

    #[tokio::test]
    async fn a_307_keeps_the_method_and_body_and_the_sixth_redirect_is_refused() {
        let (port, seen) =
            server(|n, _| redirect_to("307 Temporary Redirect", &format!("/{}", n + 1))).await;
        let request = Request::parse(
            1,
            format!("http://127.0.0.1:{port}/0").as_bytes(),
            b"",
            b"payload".to_vec(),
        )
        .unwrap();
        let policy = Arc::new(Policy::parse(&["127.0.0.1"]).unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = perform(request, &policy, deadline, 1024).await.unwrap_err();
        assert!(refused.is_refused(), "{refused:?}");
        assert!(
            refused.reason.contains("more than 5 redirects"),
            "{refused:?}"
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), MAX_REDIRECTS + 1);
        for (n, (head, body)) in seen.iter().enumerate() {
            assert!(head.starts_with(&format!("post /{n} http/1.1")), "{head}");
            assert_eq!(body, b"payload");
        }
    }
}
