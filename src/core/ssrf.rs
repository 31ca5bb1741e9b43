//! Callback URLs must not reach our own network: only `https`, and only public addresses.
//!
//! The address check happens where it cannot be raced: in the DNS resolver reqwest connects
//! through ([`PublicResolver`]), so the address checked is the address dialled (no window for
//! DNS rebinding between a check and the connect). URLs with a literal IP never reach a
//! resolver, so [`check_url`] refuses private literals up front; redirects are not followed.
//! `ALLOW_PRIVATE_CALLBACKS=true` lifts all of this for tests and local development.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL: {0}")]
    Malformed(String),
    #[error("must use https")]
    NotHttps,
    #[error("must not contain a user name or password")]
    Credentials,
    #[error("must name a host")]
    NoHost,
    #[error("points to a non-public address ({0})")]
    NotPublic(IpAddr),
}

/// Validates a callback URL as given by a client (at creation, and again before each delivery).
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, UrlError> {
    let url = Url::parse(raw).map_err(|e| UrlError::Malformed(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return Err(UrlError::NotHttps),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let ip = match url.host() {
        None => return Err(UrlError::NoHost),
        Some(Host::Domain(_)) => None,
        Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
    };
    if let Some(ip) = ip
        && !allow_private
        && !is_public(ip)
    {
        return Err(UrlError::NotPublic(ip));
    }
    Ok(url)
}

/// True for addresses on the public internet: not loopback, private (RFC 1918, ULA), shared
/// (CGNAT, which also holds some clouds' metadata services), link-local (169.254/16 with the
/// common cloud metadata address; fe80::/10), unspecified, broadcast, multicast, documentation,
/// benchmarking or reserved ranges. IPv4-mapped and NAT64 IPv6 addresses are judged by the
/// IPv4 address inside.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0                                   // "this network"
        || (a == 100 && (64..128).contains(&b))     // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0)           // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))       // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00                // unique local (fc00::/7)
        || (s[0] & 0xffc0) == 0xfe80                // link-local (fe80::/10)
        || (s[0] & 0xffc0) == 0xfec0                // site-local, deprecated (fec0::/10)
        || (s[0] == 0x2001 && s[1] == 0x0db8)       // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only (100::/64)
        || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated) and other ::/96
}

/// A DNS resolver that only returns public addresses, and fails when a name has none.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicResolver;

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let shown = all.first().map(|a| a.ip().to_string()).unwrap_or_default();
                return Err(format!(
                    "callback host resolves to no public address (e.g. {shown}); set ALLOW_PRIVATE_CALLBACKS=true for local development"
                )
                .into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.10",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            "ff02::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip(s)), "{s} must not be public");
        }
    }

    #[test]
    fn public_addresses_are_public() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "157.240.1.35",
            "172.32.0.1",
            "100.128.0.1",
            "2a03:2880:f10c:83:face:b00c::25de",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(s)), "{s} must be public");
        }
    }

    #[test]
    fn urls_must_be_https_without_credentials_or_private_literals() {
        assert!(check_url("https://hooks.example.com/x?token=1", false).is_ok());
        assert_eq!(
            check_url("http://hooks.example.com/x", false),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            check_url("ftp://hooks.example.com/x", true),
            Err(UrlError::NotHttps)
        );
        assert_eq!(
            check_url("https://u:p@hooks.example.com/", false),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            check_url("https://169.254.169.254/latest/meta-data", false),
            Err(UrlError::NotPublic(ip("169.254.169.254")))
        );
        assert_eq!(
            check_url("https://[::1]:8443/", false),
            Err(UrlError::NotPublic(ip("::1")))
        );
        assert!(matches!(
            check_url("not a url", false),
            Err(UrlError::Malformed(_))
        ));
        // Local development may use plain http on loopback.
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_only_to_private_addresses() {
        let err = PublicResolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost must be refused");
        assert!(err.to_string().contains("no public address"), "{err}");
    }
}
