//! The one way out to the network: where a guest's HTTP request goes is
//! resolved, checked against the invocation's [`Policy`] and connected to
//! here, for both front ends: `__http_request` of FunLess modules
//! ([`abi`]) and outbound `wasi:http` of components ([`wasi_http`]).
//!
//! A check of the host name alone would let a name that resolves to a
//! private address through. So the URL is checked first (scheme, an IP
//! literal, a host allowed only on other ports), then the name is resolved,
//! every address is checked ([`Policy::usable`]), and the connection goes
//! to a checked address, never to the name. A refused request reaches no
//! one. One connect timeout holds for both: [`CONNECT_TIMEOUT`], or less
//! if the guest asks.

pub mod abi;
pub mod wasi_http;

use crate::policy::Policy;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use url::Url;

/// Longest wait for a connection, its TLS handshake included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no connection was made: the kind (each front end tells the guest in
/// its own terms) and the reason (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub why: Why,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The policy refused the destination, or a cap of the invocation.
    Refused,
    /// The request cannot be sent as it is (no host, a bad URL or header).
    BadRequest,
    /// The host name did not resolve.
    Dns,
    /// No address answered.
    Unreachable,
    /// Nothing within the connect timeout.
    Timeout,
    /// The server's certificate was not trusted.
    Certificate,
    /// TLS failed otherwise.
    Tls,
    /// The HTTP handshake failed.
    Protocol,
    /// The host could not set up TLS at all.
    Internal,
}

impl Failure {
    pub fn new(why: Why, reason: impl Into<String>) -> Failure {
        Failure {
            why,
            reason: reason.into(),
        }
    }

    pub fn refused(reason: impl Into<String>) -> Failure {
        Failure::new(Why::Refused, reason)
    }

    pub fn is_refused(&self) -> bool {
        self.why == Why::Refused
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_refused() {
            write!(f, "refused: {}", self.reason)
        } else {
            f.write_str(&self.reason)
        }
    }
}

/// A connection a request may be sent on: TCP, or TLS over it.
pub trait Connection:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// Where a request goes, once its URL has passed the policy: what a
/// connection is made to, and what identifies one for reuse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub https: bool,
    /// As in the URL; an IPv6 literal without its brackets.
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// Checks `url` against `policy` (scheme, IP literal, port) and names
    /// where it goes.
    pub fn of(url: &Url, policy: &Policy) -> Result<Destination, Failure> {
        policy.check_url(url).map_err(Failure::refused)?;
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(Failure::new(Why::BadRequest, format!("no host in {url}")));
        };
        Ok(Destination {
            https: url.scheme() == "https",
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }

    /// The `Host` header's value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Resolves `to`, checks its addresses against `policy`, and connects to
/// the first that answers (with TLS for https), within `within` (at most
/// [`CONNECT_TIMEOUT`]).
pub async fn connect(
    to: &Destination,
    policy: &Policy,
    within: Option<Duration>,
) -> Result<Box<dyn Connection>, Failure> {
    let within = within.unwrap_or(CONNECT_TIMEOUT).min(CONNECT_TIMEOUT);
    let connecting = async {
        let addresses = resolve(policy, &to.host, to.port).await?;
        let stream = tcp(&addresses).await?;
        let connection: Box<dyn Connection> = if to.https {
            Box::new(tls(&to.host, stream).await?)
        } else {
            Box::new(stream)
        };
        Ok(connection)
    };
    tokio::time::timeout(within, connecting)
        .await
        .map_err(|_| {
            Failure::new(
                Why::Timeout,
                format!("no connection within {} ms", within.as_millis()),
            )
        })?
}

/// The addresses of `host` that the policy lets a request reach.
async fn resolve(policy: &Policy, host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        // an IP literal: Destination::of has checked it
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Failure::new(Why::Dns, format!("cannot resolve {host}: {e}")))?
        .collect();
    policy
        .usable(host, &found)
        .map_err(|refusal| Failure::refused(refusal.0))
}

/// Connects to the first address that answers.
async fn tcp(addresses: &[SocketAddr]) -> Result<TcpStream, Failure> {
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(format!("{address}: {e}")),
        }
    }
    Err(Failure::new(
        Why::Unreachable,
        last.unwrap_or_else(|| "no address".into()),
    ))
}

/// TLS to `host`, verified against the platform's roots.
async fn tls(host: &str, stream: TcpStream) -> Result<impl Connection, Failure> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| {
            // another library may have installed a provider already; either
            // way one is in place afterwards
            let _ = rustls::crypto::ring::default_provider().install_default();
            use rustls_platform_verifier::ConfigVerifierExt;
            rustls::ClientConfig::with_platform_verifier()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Failure::new(Why::Internal, e))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| Failure::new(Why::Tls, e.to_string()))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| {
            let why = if e.to_string().contains("certificate") {
                Why::Certificate
            } else {
                Why::Tls
            };
            Failure::new(why, format!("TLS: {e}"))
        })
}

/// A URL as the log shows it: without credentials.
pub fn shown(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(url: &str) -> Result<Destination, Failure> {
        Destination::of(&Url::parse(url).unwrap(), &Policy::default())
    }

    #[test]
    fn a_destination_is_checked_before_anything_is_resolved() {
        assert_eq!(
            destination("https://example.com/x").unwrap(),
            Destination {
                https: true,
                host: "example.com".into(),
                port: 443
            }
        );
        assert!(destination("http://127.0.0.1/").unwrap_err().is_refused());
        assert!(destination("http://[::1]:8080/").unwrap_err().is_refused());
        assert!(destination("file:///etc/passwd").unwrap_err().is_refused());
        let allowed = Policy::parse(&["[::1]:8080"]).unwrap();
        let to = Destination::of(&Url::parse("http://[::1]:8080/").unwrap(), &allowed).unwrap();
        assert_eq!(to.host, "::1");
        assert_eq!(to.authority(), "[::1]:8080");
    }

    #[test]
    fn the_host_header_leaves_out_the_default_port() {
        assert_eq!(
            destination("http://example.com:80/").unwrap().authority(),
            "example.com"
        );
        assert_eq!(
            destination("https://example.com:8443/")
                .unwrap()
                .authority(),
            "example.com:8443"
        );
    }

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            shown("http://user:secret@example.com/a?b"),
            "http://example.com/a?b"
        );
        assert_eq!(shown("not a url"), "not a url");
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_allowed() {
        let to = destination("http://localhost:9/").unwrap();
        let refused = match connect(&to, &Policy::default(), None).await {
            Err(failure) => failure,
            Ok(_) => panic!("connected"),
        };
        assert!(refused.is_refused(), "{refused:?}");
        assert!(refused.reason.contains("no public address"), "{refused:?}");
        // allowed, it is resolved and tried (and nobody listens on port 9)
        let allowed = Policy::parse(&["localhost"]).unwrap();
        let failed = match connect(&to, &allowed, None).await {
            Err(failure) => failure,
            Ok(_) => panic!("connected to the discard port"),
        };
        assert_eq!(failed.why, Why::Unreachable, "{failed:?}");
    }
}
