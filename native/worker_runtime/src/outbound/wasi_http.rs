//! Outbound `wasi:http` for components (`wasi:http/outgoing-handler`),
//! under the policy and caps of `__http_request` ([`super::abi`]).
//!
//! Wasmtime's default sender resolves and connects by itself; here the
//! request goes through the worker's connector ([`super::connect`]), one
//! connection per request. A refused request reaches no one: the guest
//! gets `error-code.destination-ip-prohibited`, and the log and
//! `worker_http_requests_total` say it was refused.
//!
//! wasi:http never follows redirects: a guest that follows one sends a new
//! request, checked like the first.

use super::{Destination, Why};
use crate::logs::{LogSink, Stream};
use crate::policy::Policy;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use url::Url;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as Code, RequestOptions, WasiBody, WasiHttpHooks};

/// The largest chunk of a request body a guest's write hands the host.
/// wasi:http buffers one more chunk than it sends, per body, and a guest
/// may open a body per resource: at its default of 1 MiB, a thousand
/// unsent bodies would hold 2 GB.
pub const BODY_CHUNK_BYTES: usize = 16 << 10;

/// One invocation's outbound HTTP: its policy, caps and count.
pub struct Outbound {
    pub policy: Arc<Policy>,
    pub deadline: Instant,
    /// For an instance that serves many requests, what bounds a request's
    /// I/O instead of `deadline`: the latest deadline of the requests it
    /// serves when the request is sent.
    pub until: Option<Arc<dyn Fn() -> Instant + Send + Sync>>,
    /// Requests per invocation.
    pub max_requests: u32,
    /// For an instance that serves many requests, the requests it may
    /// send in all: `max_requests` for each request it took.
    pub allowance: Option<Arc<std::sync::atomic::AtomicU32>>,
    /// Each of a request's URL, headers and body.
    pub max_request_bytes: usize,
    /// A response body.
    pub max_body: usize,
    pub logs: Arc<LogSink>,
    pub requests: u32,
}

/// Why a request got no response: the code the guest sees, whether the
/// policy refused it, and what the log says.
struct Failure {
    code: Code,
    refused: bool,
    reason: String,
}

/// The code a guest sees for a connection that was not made.
impl From<super::Failure> for Failure {
    fn from(failure: super::Failure) -> Failure {
        let code = match failure.why {
            Why::Refused => Code::DestinationIpProhibited,
            Why::BadRequest => Code::HttpRequestUriInvalid,
            Why::Dns => Code::DnsError {
                rcode: Some(failure.reason.clone()),
                info_code: None,
            },
            Why::Unreachable => Code::ConnectionRefused,
            Why::Timeout => Code::ConnectionTimeout,
            Why::Certificate => Code::TlsCertificateError,
            Why::Tls => Code::TlsProtocolError,
            Why::Protocol => Code::HttpProtocolError,
            Why::Internal => Code::InternalError(Some(failure.reason.clone())),
        };
        Failure {
            code,
            refused: failure.why == Why::Refused,
            reason: failure.reason,
        }
    }
}

fn refused(reason: String) -> Failure {
    Failure {
        code: Code::DestinationIpProhibited,
        refused: true,
        reason,
    }
}

fn failed(code: Code, reason: impl Into<String>) -> Failure {
    Failure {
        code,
        refused: false,
        reason: reason.into(),
    }
}

type Response = http::Response<WasiBody>;
type Io = Box<dyn Future<Output = Result<(), Code>> + Send>;

impl WasiHttpHooks for Outbound {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn p3_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _done: Box<dyn Future<Output = Result<(), Code>> + Send>,
    ) -> Box<dyn Future<Output = Result<(Response, Io), Code>> + Send> {
        // a refused request takes nothing from what is allowed
        let over = match &self.allowance {
            None => (self.requests >= self.max_requests).then(|| {
                format!("more than {} requests in one invocation", self.max_requests)
            }),
            Some(allowance) => {
                let allowed = allowance.load(std::sync::atomic::Ordering::Acquire);
                (self.requests >= allowed).then(|| {
                    format!(
                        "more than {allowed} requests from one instance ({} for each request it took)",
                        self.max_requests
                    )
                })
            }
        }
        .map(refused);
        if over.is_none() {
            self.requests += 1;
        }
        let policy = self.policy.clone();
        let logs = self.logs.clone();
        let deadline = self.until.as_ref().map_or(self.deadline, |until| until());
        let caps = (deadline, self.max_request_bytes, self.max_body);
        Box::new(async move {
            let uri = shown(request.uri());
            let sent = match over {
                Some(failure) => {
                    // as for any request refused before it is sent (see send)
                    let left = caps.0.saturating_duration_since(Instant::now());
                    let _ =
                        tokio::time::timeout(left, drain(&mut request.into_body(), caps.1)).await;
                    Err(failure)
                }
                None => send(request, options, &policy, caps).await,
            };
            match &sent {
                Ok(_) => logs.http(Ok(())),
                Err(failure) => {
                    logs.http(Err(failure.refused));
                    let text = format!("http request failed: {uri}: {}", failure.reason);
                    logs.line(Stream::Host, text.as_bytes());
                }
            }
            sent.map_err(|failure| failure.code)
        })
    }
}

async fn send(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    policy: &Policy,
    (deadline, max_request, max_body): (Instant, usize, usize),
) -> Result<(Response, Io), Failure> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let (mut parts, mut body) = request.into_parts();
    let head = parts.method == http::Method::HEAD;
    let (mut sender, connection) = match connect_for(&parts, options, policy, max_request).await {
        Ok(connected) => connected,
        Err(failure) => {
            // The guest may still be writing the body: take it (and drop
            // it), so that what it sees is why the request failed, not a
            // closed stream.
            let _ = tokio::time::timeout(left(), drain(&mut body, max_request)).await;
            return Err(failure);
        }
    };
    // The connection's I/O runs beside the exchange, and stops when the
    // response is dropped (WASI 0.2: with the invocation's store) or at the
    // invocation's deadline (WASI 0.3 runs it in a task of its own, which
    // the store does not own).
    let connection = wasmtime_wasi::runtime::spawn(connection);
    let until = tokio::time::Instant::from_std(deadline);

    // Sent in origin form: the scheme and authority are for proxies.
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path
        .parse()
        .map_err(|_| failed(Code::HttpRequestUriInvalid, "bad path"))?;
    let body = Outgoing(
        Some(Capped {
            inner: body,
            left: max_request,
            over: Code::HttpRequestBodySize,
        }),
        until,
    );
    let request = http::Request::from_parts(parts, body);

    // The invocation's deadline bounds the exchange (its timer drops the
    // store, and with it this request); the guest may ask for less.
    let exchange = sender.send_request(request);
    let response = match options.and_then(|o| o.first_byte_timeout) {
        Some(within) => tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| failed(Code::HttpResponseTimeout, "no response in time"))?,
        None => exchange.await,
    }
    .map_err(|e| failed(Code::from(e), "the exchange failed"))?;
    // HEAD, 204 and 304 answers have no body, whatever their length says
    let bodiless = head
        || matches!(
            response.status(),
            http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED
        );
    if let Some(length) = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|&length| !bodiless && length > max_body as u64)
    {
        return Err(failed(
            Code::HttpResponseBodySize(Some(length)),
            format!("response body of {length} bytes is over the limit of {max_body}"),
        ));
    }
    let response = response.map(|incoming| {
        Capped {
            inner: incoming.map_err(Code::from),
            left: max_body,
            over: Code::HttpResponseBodySize,
        }
        .boxed_unsync()
    });
    let io: Io = Box::new(async move {
        match tokio::time::timeout_at(until, connection).await {
            Ok(ended) => ended.map_err(Code::from),
            // dropped, the connection's task is aborted
            Err(_) => Err(Code::ConnectionTerminated),
        }
    });
    Ok((response, io))
}

type Connected = (
    hyper::client::conn::http1::SendRequest<Outgoing>,
    hyper::client::conn::http1::Connection<TokioIo<Box<dyn super::Connection>>, Outgoing>,
);

/// Checks the request against the caps, then connects through the
/// worker's connector (the policy, the addresses, TLS for https).
async fn connect_for(
    parts: &http::request::Parts,
    options: Option<RequestOptions>,
    policy: &Policy,
    max_request: usize,
) -> Result<Connected, Failure> {
    let uri = parts.uri.to_string();
    if uri.len() > max_request {
        return Err(failed(
            Code::HttpRequestUriTooLong,
            format!("the URL is over the limit of {max_request} bytes"),
        ));
    }
    let headers: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers > max_request {
        return Err(failed(
            Code::HttpRequestHeaderSectionSize(u32::try_from(headers).ok()),
            format!("the headers are over the limit of {max_request} bytes"),
        ));
    }
    let url = Url::parse(&uri).map_err(|e| failed(Code::HttpRequestUriInvalid, e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        // they would go to the server in the Host header
        return Err(failed(
            Code::HttpRequestUriInvalid,
            "credentials in the URL are not supported (send an Authorization header)",
        ));
    }
    let to = Destination::of(&url, policy)?;
    let within = options.and_then(|o| o.connect_timeout);
    let connection = super::connect(&to, policy, within).await?;
    hyper::client::conn::http1::handshake(TokioIo::new(connection))
        .await
        .map_err(|e| failed(Code::HttpProtocolError, e.to_string()))
}

/// A request's URI as the log shows it: without credentials.
fn shown(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.authority().map_or("", |a| a.host());
    let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{host}{port}{path}")
}

/// Reads a body to its end, or to `max` bytes, and drops what it read.
async fn drain(body: &mut WasiBody, max: usize) {
    let mut taken = 0;
    while let Some(Ok(frame)) = body.frame().await {
        taken += frame.data_ref().map_or(0, Bytes::len);
        if taken > max {
            return;
        }
    }
}

/// The guest's request body, as hyper sends it. A server may answer (and
/// close) before the guest has finished writing the body; hyper then drops
/// it, and the guest's next write would fail with a closed stream instead
/// of reading the response. So a body dropped before its end is read to its
/// end (at most its cap) on a task of its own, which ends at the latest
/// with the guest's store or at the invocation's deadline (the second
/// field).
struct Outgoing(Option<Capped<WasiBody>>, tokio::time::Instant);

impl Body for Outgoing {
    type Data = Bytes;
    type Error = Code;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Code>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let Some(body) = self.0.take().filter(|b| !b.is_end_stream()) else {
            return;
        };
        if let Ok(tokio) = tokio::runtime::Handle::try_current() {
            let Capped {
                mut inner, left, ..
            } = body;
            let until = self.1;
            tokio.spawn(async move {
                let _ = tokio::time::timeout_at(until, drain(&mut inner, left)).await;
            });
        }
    }
}

/// A body cut off with an error once it passes `left` bytes.
struct Capped<B> {
    inner: B,
    left: usize,
    over: fn(Option<u64>) -> Code,
}

impl<B: Body<Data = Bytes, Error = Code> + Unpin> Body for Capped<B> {
    type Data = Bytes;
    type Error = Code;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Code>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let len = data.map_or(0, Bytes::len);
            if len > self.left {
                return Poll::Ready(Some(Err((self.over)(None))));
            }
            self.left -= len;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LogLimits;
    use http_body_util::{Empty, Full};

    fn empty() -> WasiBody {
        Empty::new()
            .map_err(|never: std::convert::Infallible| -> Code { match never {} })
            .boxed_unsync()
    }

    fn outbound(policy: Policy, max_requests: u32) -> Outbound {
        Outbound {
            policy: Arc::new(policy),
            deadline: Instant::now() + std::time::Duration::from_secs(5),
            until: None,
            max_requests,
            allowance: None,
            max_request_bytes: 64,
            max_body: 64,
            logs: LogSink::new(LogLimits::default(), None),
            requests: 0,
        }
    }

    /// What the guest sees, and what the log and the counts say.
    async fn sent(hooks: &mut Outbound, uri: &str) -> Result<(), Code> {
        let request = http::Request::builder().uri(uri).body(empty()).unwrap();
        let future = hooks.send_request(request, None, Box::new(async { Ok(()) }));
        Box::into_pin(future).await.map(drop)
    }

    #[tokio::test]
    async fn requests_are_checked_before_anything_leaves() {
        let mut hooks = outbound(Policy::default(), 10);
        let refused = [
            ("http://127.0.0.1:9/", "not public"),
            ("http://[::1]:9/", "not public"),
            ("http://localhost:9/", "no public address"),
        ];
        for (uri, why) in refused {
            assert!(matches!(
                sent(&mut hooks, uri).await,
                Err(Code::DestinationIpProhibited)
            ));
            let line = hooks.logs.drain().pop().expect("a line").text;
            assert!(line.contains(why), "{uri}: {line}");
        }
        let long = format!("http://example.com/{}", "x".repeat(64));
        assert!(matches!(
            sent(&mut hooks, &long).await,
            Err(Code::HttpRequestUriTooLong)
        ));
        assert!(matches!(
            sent(&mut hooks, "http://user:pw@example.com/").await,
            Err(Code::HttpRequestUriInvalid)
        ));
        let line = hooks.logs.drain().pop().expect("a line").text;
        assert!(!line.contains("pw"), "credentials logged: {line}");
        let stats = hooks.logs.stats();
        assert_eq!((stats.http_refused, stats.http_failed), (3, 2));
    }

    #[tokio::test]
    async fn past_its_count_an_invocation_sends_nothing_more() {
        let mut hooks = outbound(Policy::parse(&["127.0.0.1"]).unwrap(), 1);
        // the first is allowed (and fails: nobody listens on port 9)
        assert!(!matches!(
            sent(&mut hooks, "http://127.0.0.1:9/").await,
            Err(Code::DestinationIpProhibited)
        ));
        assert!(matches!(
            sent(&mut hooks, "http://127.0.0.1:9/").await,
            Err(Code::DestinationIpProhibited)
        ));
        let line = hooks.logs.drain().pop().expect("a line").text;
        assert!(
            line.contains("more than 1 requests in one invocation"),
            "{line}"
        );
    }

    #[tokio::test]
    async fn a_body_is_cut_off_past_its_cap() {
        let body = Full::new(Bytes::from_static(b"0123456789"))
            .map_err(|never: std::convert::Infallible| -> Code { match never {} });
        let mut capped = Capped {
            inner: body,
            left: 4,
            over: Code::HttpResponseBodySize,
        };
        let frame = capped.frame().await.expect("a frame");
        assert!(matches!(frame, Err(Code::HttpResponseBodySize(None))));

        let body = Full::new(Bytes::from_static(b"0123"))
            .map_err(|never: std::convert::Infallible| -> Code { match never {} });
        let capped = Capped {
            inner: body,
            left: 4,
            over: Code::HttpResponseBodySize,
        };
        let bytes = capped.collect().await.expect("within the cap").to_bytes();
        assert_eq!(&bytes[..], b"0123");
    }

    #[test]
    fn the_log_shows_a_uri_without_credentials() {
        let uri: http::Uri = "https://user:pw@example.com:8443/a?b=c".parse().unwrap();
        assert_eq!(shown(&uri), "https://example.com:8443/a?b=c");
    }
}
