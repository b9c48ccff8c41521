//! Outbound HTTP for `__http_request`, performed in Rust with reqwest.
//!
//! The request is bounded in time (whatever the invocation has left) and the
//! response body in size: a lying `Content-Length` or an endless chunked body
//! is cut off and reported as a failed request.

use crate::policy::{Policy, PolicyResolver, Refusal};
use reqwest::Url;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

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

    fn as_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
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

/// Clients by policy: the policy lives in the client's resolver and redirect
/// rule. Allow-lists are few (configuration, not data), so clients are kept
/// and reused, with their connection pools, up to a bound.
fn client(policy: &Arc<Policy>) -> Result<reqwest::Client, String> {
    static CLIENTS: OnceLock<Mutex<HashMap<Arc<Policy>, reqwest::Client>>> = OnceLock::new();
    const MAX_CLIENTS: usize = 64;
    let clients = CLIENTS.get_or_init(Default::default);
    if let Some(client) = clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(policy)
    {
        return Ok(client.clone());
    }
    let client = build_client(policy.clone())?;
    let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
    if clients.len() < MAX_CLIENTS {
        clients.insert(policy.clone(), client.clone());
    }
    Ok(client)
}

fn build_client(policy: Arc<Policy>) -> Result<reqwest::Client, String> {
    // Another component may have installed a provider already; either way
    // one is in place afterwards.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redirects = policy.clone();
    reqwest::Client::builder()
        .user_agent(concat!("funless-worker/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(PolicyResolver(policy))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            // previous() holds the first URL too: it is the redirects so far + 1
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(Refusal(format!("more than {MAX_REDIRECTS} redirects")))
            } else if let Err(refused) = redirects.check_url(attempt.url()) {
                attempt.error(Refusal(format!("redirect refused: {refused}")))
            } else {
                attempt.follow()
            }
        }))
        .no_proxy()
        .pool_max_idle_per_host(4)
        .pool_idle_timeout(std::time::Duration::from_secs(15))
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("http client: {e}"))
}

const MAX_REDIRECTS: usize = 5;

/// Why a request gave no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The policy refused it: address, redirect target, scheme, or limit.
    #[error("refused: {0}")]
    Refused(String),
    /// It was tried and failed: connection, TLS, timeout, body over the cap.
    #[error("{0}")]
    Failed(String),
}

/// Performs `request`, giving up at `deadline`, reading at most `max_body`
/// bytes of response body. Must be polled inside the runtime's Tokio context.
pub async fn perform(
    request: Request,
    policy: &Arc<Policy>,
    deadline: Instant,
    max_body: usize,
) -> Result<Response, Failure> {
    let url = Url::parse(&request.url).map_err(|e| Failure::Failed(format!("bad url: {e}")))?;
    policy.check_url(&url).map_err(Failure::Refused)?;
    let client = client(policy).map_err(Failure::Failed)?;
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Failed("no time left in the invocation".into()));
    }
    match tokio::time::timeout(left, send(&client, url, request, max_body)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Failed(format!(
            "timed out after {} ms",
            left.as_millis()
        ))),
    }
}

async fn send(
    client: &reqwest::Client,
    url: Url,
    request: Request,
    max_body: usize,
) -> Result<Response, Failure> {
    let mut builder = client
        .request(request.method.as_reqwest(), url)
        .body(request.body);
    for (key, value) in &request.headers {
        builder = builder.header(key.as_str(), value.as_str());
    }
    let mut response = builder.send().await.map_err(describe)?;
    let status = response.status().as_u16();
    if let Some(length) = response.content_length() {
        if length > max_body as u64 {
            return Err(Failure::Failed(format!(
                "response body of {length} bytes is over the limit of {max_body}"
            )));
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > max_body {
            return Err(Failure::Failed(format!(
                "response body is over the limit of {max_body} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response { status, body })
}

/// The whole chain of causes; a policy refusal anywhere in it (from the
/// resolver or the redirect rule) makes the failure a refusal.
fn describe(error: reqwest::Error) -> Failure {
    use std::error::Error;
    let mut text = error.to_string();
    let mut refused = false;
    let mut source = error.source();
    while let Some(cause) = source {
        refused |= cause.downcast_ref::<Refusal>().is_some();
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if refused {
        Failure::Refused(text)
    } else {
        Failure::Failed(text)
    }
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
}
