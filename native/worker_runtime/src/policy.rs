//! Where a function may send HTTP requests.
//!
//! Public addresses are allowed. Loopback, private, link-local, unique-local,
//! multicast, unspecified and other special-purpose addresses are refused,
//! unless the host (or host and port) is on the invocation's allow-list.
//! Names are checked on the addresses they resolve to, at connect time
//! (`outbound`), so a name pointing at a private address is
//! refused too, and so is every redirect target.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use url::Url;

/// A request (or a redirect, or a resolved address) the policy refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Policy {
    allow: Vec<Allowed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Allowed {
    /// Lowercase, IPv6 without brackets, IPs in canonical form.
    host: String,
    port: Option<u16>,
}

fn normalize_host(host: &str) -> String {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host,
    }
}

impl Policy {
    /// Parses allow-list entries: `host`, `host:port`, `[ipv6]` or
    /// `[ipv6]:port`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Policy, String> {
        let mut allow = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.as_ref().trim();
            let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
                let (host, after) = rest
                    .split_once(']')
                    .ok_or_else(|| format!("bad allow-list entry {entry:?}"))?;
                match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if after.is_empty() => (host, None),
                    None => return Err(format!("bad allow-list entry {entry:?}")),
                }
            } else if entry.matches(':').count() == 1 {
                let (host, port) = entry.split_once(':').expect("one colon");
                (host, Some(port))
            } else {
                (entry, None)
            };
            if host.is_empty() {
                return Err(format!("bad allow-list entry {entry:?}"));
            }
            let port = port
                .map(|p| {
                    p.parse::<u16>()
                        .map_err(|_| format!("bad port in allow-list entry {entry:?}"))
                })
                .transpose()?;
            allow.push(Allowed {
                host: normalize_host(host),
                port,
            });
        }
        Ok(Policy { allow })
    }

    /// Is `host:port` on the allow-list?
    fn allows(&self, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        self.allow
            .iter()
            .any(|a| a.host == host && a.port.is_none_or(|p| p == port))
    }

    /// Is `host` on the allow-list with any port?
    fn names(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.allow.iter().any(|a| a.host == host)
    }

    /// Checks a URL before it is requested (and each redirect target). IP
    /// literals are checked here; names are checked on the addresses they resolve to ([`Policy::usable`]).
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("only http and https are allowed: {url}"));
        }
        let port = url.port_or_known_default().unwrap_or(0);
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(name)) => {
                // A host allowed only on other ports is refused outright: its
                // addresses would otherwise pass the resolver unchecked.
                return if self.names(name) && !self.allows(name, port) {
                    Err(format!("{name}:{port} is not on the allow-list"))
                } else {
                    Ok(())
                };
            }
            None => return Err(format!("no host in {url}")),
        };
        if is_global(ip) || self.allows(&ip.to_string(), port) {
            Ok(())
        } else {
            Err(format!(
                "address {ip} is not public and not on the allow-list"
            ))
        }
    }

    /// The empty allow-list, shared (no allocation per invocation).
    pub fn none() -> Arc<Policy> {
        static NONE: std::sync::OnceLock<Arc<Policy>> = std::sync::OnceLock::new();
        NONE.get_or_init(Arc::default).clone()
    }

    /// The addresses `host` resolved to that a request may connect to:
    /// the public ones, or all of them if the name is on the allow-list.
    /// None left is a refusal naming what was found.
    pub fn usable(&self, host: &str, found: &[SocketAddr]) -> Result<Vec<SocketAddr>, Refusal> {
        let allowed = self.names(host);
        let usable: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|a| allowed || is_global(a.ip()))
            .collect();
        if usable.is_empty() {
            let shown: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
            return Err(Refusal(format!(
                "{host} resolves to no public address ({}) and is not on the allow-list",
                shown.join(", ")
            )));
        }
        Ok(usable)
    }
}

/// Is this an address on the public Internet?
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_global_v4(ip),
        IpAddr::V6(ip) => is_global_v6(ip),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", including 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_global_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return is_global_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 (RFC 8215)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn public_addresses_are_global() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ] {
            assert!(is_global(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn special_addresses_are_not() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn loopback_spellings_are_all_refused() {
        let policy = Policy::default();
        for text in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:8080/",
            "https://[fe80::1]/",
        ] {
            assert!(policy.check_url(&url(text)).is_err(), "{text}");
        }
        assert!(policy.check_url(&url("http://93.184.216.34/")).is_ok());
        assert!(policy.check_url(&url("https://example.com/")).is_ok());
        assert!(policy.check_url(&url("ftp://example.com/")).is_err());
    }

    #[test]
    fn allow_list_by_host_and_by_host_and_port() {
        let policy = Policy::parse(&["127.0.0.1:8080", "[::1]", "Internal.Example"]).unwrap();
        assert!(policy.check_url(&url("http://127.0.0.1:8080/")).is_ok());
        assert!(policy.check_url(&url("http://127.1:8080/")).is_ok());
        assert!(policy.check_url(&url("http://127.0.0.1:8081/")).is_err());
        assert!(policy.check_url(&url("http://[::1]:9/")).is_ok());
        assert!(policy.check_url(&url("http://internal.example/")).is_ok());
        let ported = Policy::parse(&["svc.local:9000"]).unwrap();
        assert!(ported.check_url(&url("http://svc.local:9000/")).is_ok());
        assert!(ported.check_url(&url("http://svc.local/")).is_err());
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(Policy::parse(&["host:port"]).is_err());
        assert!(Policy::parse(&["[::1"]).is_err());
        assert!(Policy::parse(&[""]).is_err());
        assert!(Policy::parse(&[":80"]).is_err());
    }
}
