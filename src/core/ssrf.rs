//! Callback URLs must not reach our own network: only `https`, and only public addresses.
//!
//! The address check happens where it cannot be raced: in the DNS resolver reqwest connects
//! through ([`PublicResolver`]), so the address checked is the address dialled (no window for
//! DNS rebinding between a check and the connect). URLs with a literal IP never reach a
//! resolver, so [`check_url`] refuses private literals up front; redirects are not followed.
//! Both use the one rule [`check_ip`] over the one table [`BLOCKS`] (the IANA special-purpose
//! registries), which also looks inside transition addresses: `2002:7f00:1::` (6to4) and
//! `64:ff9b:1::7f00:1` (NAT64) are 127.0.0.1 in disguise.
//! `ALLOW_PRIVATE_CALLBACKS=true` lifts all of this for tests and local development.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use ipnet::IpNet;
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
    #[error("the host must be a DNS name (letters, digits, hyphens and dots) or an IP address")]
    BadHost,
    #[error("points to a non-public address: {0}")]
    NotPublic(NotPublic),
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
        Some(Host::Domain(d)) if !dns_name(d) => return Err(UrlError::BadHost),
        Some(Host::Domain(_)) => None,
        Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
    };
    if let Some(ip) = ip
        && !allow_private
    {
        check_ip(ip).map_err(UrlError::NotPublic)?;
    }
    Ok(url)
}

/// Whether `host` is a DNS name as a URL sent to a server can carry one: dot-separated
/// labels of ASCII letters, digits and hyphens, the last (the top-level domain) starting with
/// a letter. A URL parser accepts more (`*`, `_`, `!`…), which no public name has.
pub fn dns_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()))
}

/// True for addresses a callback may be delivered to: see [`check_ip`].
pub fn is_public(ip: IpAddr) -> bool {
    check_ip(ip).is_ok()
}

/// An address a callback may not reach, and the block that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotPublic {
    /// The address as given (or resolved).
    pub ip: IpAddr,
    /// For a transition address (6to4, Teredo, NAT64, IPv4-mapped/-compatible): the block of
    /// the address itself; the refusal comes from [`Self::inner`].
    pub via: Option<&'static Block>,
    /// The IPv4 address the packet would really go to, when it is not `ip` itself.
    pub inner: Option<Ipv4Addr>,
    /// The block that refuses it (`None` only for an IPv6 address outside `2000::/3` that no
    /// block names).
    pub block: Option<&'static Block>,
}

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.ip)?;
        if let (Some(via), Some(inner)) = (self.via, self.inner) {
            write!(f, " is {} carrying {inner}, which", via.name)?;
        }
        match self.block {
            Some(b) => write!(f, " is in {} {} ({})", b.cidr, b.name, b.rfc),
            None => write!(
                f,
                " is outside 2000::/3, the only IPv6 space allocated for global unicast"
            ),
        }
    }
}

impl NotPublic {
    /// What kind of address it is, without the address: what a resolved name may reveal to
    /// the partner who gave it (a delivery's error is shown to them).
    pub fn kind(&self) -> String {
        let block = self
            .block
            .map_or("outside 2000::/3 (not global unicast)", |b| b.name);
        match self.via {
            Some(via) => format!("{} carrying a {block} address", via.name),
            None => format!("a {block} address"),
        }
    }
}

/// Whether a callback may be delivered to `ip`: it must be globally reachable.
///
/// The rules are the table [`BLOCKS`]: the most specific block holding the address decides.
/// Addresses no block names are public, except IPv6 outside `2000::/3` (the IANA IPv6 Address
/// Space registry reserves it all but for the blocks listed). Transition addresses that carry an
/// IPv4 address (IPv4-mapped and -compatible, NAT64 with either prefix, 6to4, Teredo) are judged
/// by the IPv4 address(es) the packet would really go to.
pub fn check_ip(ip: IpAddr) -> Result<(), NotPublic> {
    let refuse = |block| NotPublic {
        ip,
        via: None,
        inner: None,
        block,
    };
    let Some(block) = most_specific(ip) else {
        return match ip {
            IpAddr::V6(v6) if v6.segments()[0] & 0xe000 != 0x2000 => Err(refuse(None)),
            _ => Ok(()),
        };
    };
    match (block.rule, ip) {
        (Rule::Allow, _) => Ok(()),
        (Rule::Refuse, _) => Err(refuse(Some(block))),
        (Rule::Embeds(how), IpAddr::V6(v6)) => {
            for inner in how.decode(v6) {
                if let Err(e) = check_ip(IpAddr::V4(inner)) {
                    return Err(NotPublic {
                        ip,
                        via: Some(block),
                        inner: Some(inner),
                        block: e.block,
                    });
                }
            }
            Ok(())
        }
        // No IPv4 block embeds anything.
        (Rule::Embeds(_), IpAddr::V4(_)) => Err(refuse(Some(block))),
    }
}

/// The most specific block of [`BLOCKS`] holding `ip`.
fn most_specific(ip: IpAddr) -> Option<&'static Block> {
    let nets = &*NETS;
    BLOCKS
        .iter()
        .zip(nets)
        .filter(|(_, net)| net.contains(&ip))
        .max_by_key(|(_, net)| net.prefix_len())
        .map(|(block, _)| block)
}

static NETS: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    BLOCKS
        .iter()
        .map(|b| b.cidr.parse().expect("BLOCKS holds valid CIDR blocks"))
        .collect()
});

/// What a block means for a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Not globally reachable (or no address a packet may be sent to): refused.
    Refuse,
    /// Globally reachable (the registry says so), even inside a larger refused block.
    Allow,
    /// Carries IPv4 address(es) the packet really goes to: judged by them.
    Embeds(Embedding),
}

/// Where a transition address carries its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// The last 32 bits: IPv4-mapped and IPv4-compatible (RFC 4291 §2.5.5), and NAT64 in the
    /// /96 layout of RFC 6052 §2.2 (the one DNS64 synthesises; for the local-use prefix the
    /// operator may pick a shorter layout, which this does not decode).
    Last32,
    /// 6to4 (RFC 3056 §2): `2002:V4ADDR::/48`, the IPv4 address in bits 16..48.
    SixToFour,
    /// Teredo (RFC 4380 §4): the server's IPv4 address in bits 32..64 and the client's, every
    /// bit inverted, in the last 32 bits. Both must be public.
    Teredo,
}

impl Embedding {
    fn decode(self, ip: Ipv6Addr) -> Vec<Ipv4Addr> {
        let bits = u128::from(ip);
        let at = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
        match self {
            Embedding::Last32 => vec![at(0)],
            Embedding::SixToFour => vec![at(80)],
            Embedding::Teredo => vec![at(64), Ipv4Addr::from(!(bits as u32))],
        }
    }
}

/// One special-purpose address block.
#[derive(Debug, PartialEq, Eq)]
pub struct Block {
    pub cidr: &'static str,
    /// The registry's name for it.
    pub name: &'static str,
    pub rfc: &'static str,
    pub rule: Rule,
}

const fn block(cidr: &'static str, name: &'static str, rfc: &'static str, rule: Rule) -> Block {
    Block {
        cidr,
        name,
        rfc,
        rule,
    }
}

use Embedding::{Last32, SixToFour, Teredo};
use Rule::{Allow, Embeds, Refuse};

/// Every entry of the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890, as of
/// their 2025-10 revisions: <https://www.iana.org/assignments/iana-ipv4-special-registry/> and
/// <https://www.iana.org/assignments/iana-ipv6-special-registry/>), with the registry's name and
/// RFC, and the few blocks of the address-space registries a callback must not reach either
/// (marked "not in the special-purpose registry").
///
/// The rule follows the registry's "Globally Reachable" column: `False` refuses, `True` allows
/// (it matters where the block sits inside a refused one, e.g. `192.0.0.9/32` in
/// `192.0.0.0/24`), and the transition blocks whose column is `N/A` (6to4, Teredo) or that map
/// IPv4 (IPv4-mapped, NAT64) are judged by the IPv4 address they carry. Terminated entries
/// (`192.88.99.0/24`, `2001:10::/28`) are refused.
#[rustfmt::skip]
pub const BLOCKS: &[Block] = &[
    // IPv4 Special-Purpose Address Registry
    block("0.0.0.0/8",          "\"This network\"",                              "RFC 791 §3.2",             Refuse),
    block("0.0.0.0/32",         "\"This host on this network\"",                 "RFC 1122 §3.2.1.3",        Refuse),
    block("10.0.0.0/8",         "Private-Use",                                    "RFC 1918",                 Refuse),
    block("100.64.0.0/10",      "Shared Address Space",                           "RFC 6598",                 Refuse),
    block("127.0.0.0/8",        "Loopback",                                       "RFC 1122 §3.2.1.3",        Refuse),
    block("169.254.0.0/16",     "Link Local",                                     "RFC 3927",                 Refuse),
    block("172.16.0.0/12",      "Private-Use",                                    "RFC 1918",                 Refuse),
    block("192.0.0.0/24",       "IETF Protocol Assignments",                      "RFC 6890 §2.1",            Refuse),
    block("192.0.0.0/29",       "IPv4 Service Continuity Prefix",                 "RFC 7335",                 Refuse),
    block("192.0.0.8/32",       "IPv4 dummy address",                             "RFC 7600",                 Refuse),
    block("192.0.0.9/32",       "Port Control Protocol Anycast",                  "RFC 7723",                 Allow),
    block("192.0.0.10/32",      "Traversal Using Relays around NAT Anycast",      "RFC 8155",                 Allow),
    block("192.0.0.170/32",     "NAT64/DNS64 Discovery",                          "RFC 8880, RFC 7050 §2.2",  Refuse),
    block("192.0.0.171/32",     "NAT64/DNS64 Discovery",                          "RFC 8880, RFC 7050 §2.2",  Refuse),
    block("192.0.2.0/24",       "Documentation (TEST-NET-1)",                     "RFC 5737",                 Refuse),
    block("192.31.196.0/24",    "AS112-v4",                                       "RFC 7535",                 Allow),
    block("192.52.193.0/24",    "AMT",                                            "RFC 7450",                 Allow),
    block("192.88.99.0/24",     "Deprecated (6to4 Relay Anycast)",                "RFC 7526",                 Refuse),
    block("192.88.99.2/32",     "6a44-relay anycast address",                     "RFC 6751",                 Refuse),
    block("192.168.0.0/16",     "Private-Use",                                    "RFC 1918",                 Refuse),
    block("192.175.48.0/24",    "Direct Delegation AS112 Service",                "RFC 7534",                 Allow),
    block("198.18.0.0/15",      "Benchmarking",                                   "RFC 2544",                 Refuse),
    block("198.51.100.0/24",    "Documentation (TEST-NET-2)",                     "RFC 5737",                 Refuse),
    block("203.0.113.0/24",     "Documentation (TEST-NET-3)",                     "RFC 5737",                 Refuse),
    block("240.0.0.0/4",        "Reserved",                                       "RFC 1112 §4",              Refuse),
    block("255.255.255.255/32", "Limited Broadcast",                              "RFC 8190, RFC 919 §7",     Refuse),
    // IPv4, not in the special-purpose registry (IANA IPv4 Multicast Address Space)
    block("224.0.0.0/4",        "Multicast",                                      "RFC 5771",                 Refuse),
    // IPv6 Special-Purpose Address Registry
    block("::1/128",            "Loopback Address",                               "RFC 4291",                 Refuse),
    block("::/128",             "Unspecified Address",                            "RFC 4291",                 Refuse),
    block("::ffff:0:0/96",      "IPv4-mapped Address",                            "RFC 4291",                 Embeds(Last32)),
    block("64:ff9b::/96",       "IPv4-IPv6 Translat.",                            "RFC 6052",                 Embeds(Last32)),
    block("64:ff9b:1::/48",     "IPv4-IPv6 Translat. (local use)",                "RFC 8215",                 Embeds(Last32)),
    block("100::/64",           "Discard-Only Address Block",                     "RFC 6666",                 Refuse),
    block("100:0:0:1::/64",     "Dummy IPv6 Prefix",                              "RFC 9780",                 Refuse),
    block("2001::/23",          "IETF Protocol Assignments",                      "RFC 2928",                 Refuse),
    block("2001::/32",          "TEREDO",                                         "RFC 4380, RFC 8190",       Embeds(Teredo)),
    block("2001:1::1/128",      "Port Control Protocol Anycast",                  "RFC 7723",                 Allow),
    block("2001:1::2/128",      "Traversal Using Relays around NAT Anycast",      "RFC 8155",                 Allow),
    block("2001:1::3/128",      "DNS-SD Service Registration Protocol Anycast",   "RFC 9665",                 Allow),
    block("2001:2::/48",        "Benchmarking",                                   "RFC 5180",                 Refuse),
    block("2001:3::/32",        "AMT",                                            "RFC 7450",                 Allow),
    block("2001:4:112::/48",    "AS112-v6",                                       "RFC 7535",                 Allow),
    block("2001:10::/28",       "Deprecated (previously ORCHID)",                 "RFC 4843",                 Refuse),
    block("2001:20::/28",       "ORCHIDv2",                                       "RFC 7343",                 Allow),
    block("2001:30::/28",       "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374",             Allow),
    block("2001:db8::/32",      "Documentation",                                  "RFC 3849",                 Refuse),
    block("2002::/16",          "6to4",                                           "RFC 3056",                 Embeds(SixToFour)),
    block("2620:4f:8000::/48",  "Direct Delegation AS112 Service",                "RFC 7534",                 Allow),
    block("3fff::/20",          "Documentation",                                  "RFC 9637",                 Refuse),
    block("5f00::/16",          "Segment Routing (SRv6) SIDs",                    "RFC 9602",                 Refuse),
    block("fc00::/7",           "Unique-Local",                                   "RFC 4193, RFC 8190",       Refuse),
    block("fe80::/10",          "Link-Local Unicast",                             "RFC 4291",                 Refuse),
    // IPv6, not in the special-purpose registry (IANA IPv6 Address Space)
    block("::/96",              "IPv4-compatible Address (deprecated)",           "RFC 4291 §2.5.5.1",        Embeds(Last32)),
    block("fec0::/10",          "Site-Local (deprecated)",                        "RFC 3879",                 Refuse),
    block("ff00::/8",           "Multicast",                                      "RFC 4291 §2.7",            Refuse),
];

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
                // The kind of address, never the address: the partner reads this error, and
                // the name may be one of our internal hosts.
                let shown = match all.first() {
                    Some(a) => check_ip(a.ip()).err().map(|e| e.kind()).unwrap_or_default(),
                    None => "no address at all".into(),
                };
                return Err(format!(
                    "callback host resolves to no public address ({shown}); set ALLOW_PRIVATE_CALLBACKS=true for local development"
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

    /// The IANA IPv4 Special-Purpose Address Registry, written out again independently of
    /// [`BLOCKS`]: each entry, an address inside it, and whether a callback may go there.
    const IPV4_REGISTRY: &[(&str, &str, bool)] = &[
        ("0.0.0.0/8", "0.1.2.3", false),
        ("0.0.0.0/32", "0.0.0.0", false),
        ("10.0.0.0/8", "10.1.2.3", false),
        ("100.64.0.0/10", "100.100.100.200", false),
        ("127.0.0.0/8", "127.0.0.1", false),
        ("169.254.0.0/16", "169.254.169.254", false),
        ("172.16.0.0/12", "172.31.255.255", false),
        ("192.0.0.0/24", "192.0.0.100", false),
        ("192.0.0.0/29", "192.0.0.1", false),
        ("192.0.0.8/32", "192.0.0.8", false),
        ("192.0.0.9/32", "192.0.0.9", true),
        ("192.0.0.10/32", "192.0.0.10", true),
        ("192.0.0.170/32", "192.0.0.170", false),
        ("192.0.0.171/32", "192.0.0.171", false),
        ("192.0.2.0/24", "192.0.2.10", false),
        ("192.31.196.0/24", "192.31.196.1", true),
        ("192.52.193.0/24", "192.52.193.1", true),
        ("192.88.99.0/24", "192.88.99.1", false),
        ("192.88.99.2/32", "192.88.99.2", false),
        ("192.168.0.0/16", "192.168.1.1", false),
        ("192.175.48.0/24", "192.175.48.1", true),
        ("198.18.0.0/15", "198.19.255.1", false),
        ("198.51.100.0/24", "198.51.100.7", false),
        ("203.0.113.0/24", "203.0.113.9", false),
        ("240.0.0.0/4", "240.0.0.1", false),
        ("255.255.255.255/32", "255.255.255.255", false),
    ];

    /// The IANA IPv6 Special-Purpose Address Registry, likewise. Blocks that carry an IPv4
    /// address appear twice: carrying a public one, and a private one.
    const IPV6_REGISTRY: &[(&str, &str, bool)] = &[
        ("::1/128", "::1", false),
        ("::/128", "::", false),
        ("::ffff:0:0/96", "::ffff:8.8.8.8", true),
        ("::ffff:0:0/96", "::ffff:127.0.0.1", false),
        ("64:ff9b::/96", "64:ff9b::808:808", true),
        ("64:ff9b::/96", "64:ff9b::a9fe:a9fe", false),
        ("64:ff9b:1::/48", "64:ff9b:1::808:808", true),
        ("64:ff9b:1::/48", "64:ff9b:1::7f00:1", false),
        ("100::/64", "100::1", false),
        ("100:0:0:1::/64", "100:0:0:1::1", false),
        ("2001::/23", "2001:100::1", false),
        // Teredo: server 65.54.227.120, client 8.8.8.8 (inverted: f7f7:f7f7).
        ("2001::/32", "2001:0:4136:e378:8000:63bf:f7f7:f7f7", true),
        // ... client 127.0.0.1 (80ff:fffe), or 192.0.2.45 (RFC 4380's own example).
        ("2001::/32", "2001:0:4136:e378:8000:63bf:80ff:fffe", false),
        ("2001::/32", "2001:0:4136:e378:8000:63bf:3fff:fdd2", false),
        // ... server 10.0.0.1, client 8.8.8.8.
        ("2001::/32", "2001:0:a00:1:8000:63bf:f7f7:f7f7", false),
        ("2001:1::1/128", "2001:1::1", true),
        ("2001:1::2/128", "2001:1::2", true),
        ("2001:1::3/128", "2001:1::3", true),
        ("2001:2::/48", "2001:2::1", false),
        ("2001:3::/32", "2001:3::1", true),
        ("2001:4:112::/48", "2001:4:112::1", true),
        ("2001:10::/28", "2001:10::1", false),
        ("2001:20::/28", "2001:20::1", true),
        ("2001:30::/28", "2001:30::1", true),
        ("2001:db8::/32", "2001:db8::1", false),
        ("2002::/16", "2002:808:808::1", true),
        ("2002::/16", "2002:7f00:1::", false),
        ("2002::/16", "2002:a9fe:a9fe::", false),
        ("2620:4f:8000::/48", "2620:4f:8000::1", true),
        ("3fff::/20", "3fff::1", false),
        ("5f00::/16", "5f00::1", false),
        ("fc00::/7", "fd00:ec2::254", false),
        ("fe80::/10", "fe80::1", false),
    ];

    #[test]
    fn every_special_purpose_registry_entry_is_decided_as_the_registry_says() {
        for &(cidr, addr, public) in IPV4_REGISTRY.iter().chain(IPV6_REGISTRY) {
            let net: IpNet = cidr.parse().unwrap();
            assert!(net.contains(&ip(addr)), "{addr} is not in {cidr}");
            let verdict = check_ip(ip(addr));
            assert_eq!(verdict.is_ok(), public, "{addr} ({cidr}): {verdict:?}");
            assert_eq!(is_public(ip(addr)), public, "{addr}");
            // A refusal names the block that refused it: this one, or the IPv4 block of the
            // address it carries.
            if let Err(e) = verdict {
                let named = e.via.or(e.block).map(|b| b.cidr);
                assert_eq!(named, Some(cidr), "{addr}: {e}");
            }
        }
    }

    #[test]
    fn the_table_holds_exactly_the_registries_and_the_listed_extras() {
        let mut registry: Vec<&str> = IPV4_REGISTRY
            .iter()
            .chain(IPV6_REGISTRY)
            .map(|r| r.0)
            .collect();
        registry.dedup();
        let extras = ["224.0.0.0/4", "::/96", "fec0::/10", "ff00::/8"];
        let mut expected: Vec<&str> = registry.iter().copied().chain(extras).collect();
        let mut table: Vec<&str> = BLOCKS.iter().map(|b| b.cidr).collect();
        expected.sort_unstable();
        table.sort_unstable();
        assert_eq!(table, expected);
        // Every block parses and names a network, not a host inside one.
        assert_eq!(NETS.len(), BLOCKS.len());
        for (b, net) in BLOCKS.iter().zip(NETS.iter()) {
            assert_eq!(net.trunc(), *net, "{} has host bits set", b.cidr);
        }
    }

    #[test]
    fn addresses_outside_the_registries() {
        for (s, public) in [
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("157.240.1.35", true),
            ("172.32.0.1", true),
            ("100.128.0.1", true),
            ("2a03:2880:f10c:83:face:b00c::25de", true),
            // Outside 2001::/23 although it starts with 2001.
            ("2001:4860:4860::8888", true),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("ff02::1", false),
            ("fec0::1", false),
            // IPv4-compatible (deprecated): judged by the IPv4 address inside.
            ("::127.0.0.1", false),
            ("::10.0.0.1", false),
            ("::8.8.8.8", true),
            // IPv4-translated (RFC 2765) and the rest outside 2000::/3.
            ("::ffff:0:808:808", false),
            ("1::1", false),
            ("4000::1", false),
            ("e000::1", false),
        ] {
            assert_eq!(is_public(ip(s)), public, "{s}: {:?}", check_ip(ip(s)));
        }
    }

    #[test]
    fn refusals_say_which_block_and_which_inner_address() {
        let e = check_ip(ip("2002:7f00:1::")).unwrap_err();
        assert_eq!(e.inner, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            e.to_string(),
            "2002:7f00:1:: is 6to4 carrying 127.0.0.1, which is in 127.0.0.0/8 Loopback (RFC 1122 §3.2.1.3)"
        );
        let e = check_ip(ip("64:ff9b:1::7f00:1")).unwrap_err();
        assert!(e.to_string().contains("carrying 127.0.0.1"), "{e}");
        assert_eq!(
            check_ip(ip("4000::1")).unwrap_err().to_string(),
            "4000::1 is outside 2000::/3, the only IPv6 space allocated for global unicast"
        );
    }

    #[test]
    fn urls_must_be_https_without_credentials_or_private_literals() {
        assert!(check_url("https://hooks.example.com/x?token=1", false).is_ok());
        for bad in [
            "https://A*",
            "https://hooks_x.example.com/",
            "https://a..b/",
            "https://example.1x/",
        ] {
            assert_eq!(check_url(bad, true), Err(UrlError::BadHost), "{bad}");
        }
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
        for (url, refused) in [
            (
                "https://169.254.169.254/latest/meta-data",
                "169.254.169.254",
            ),
            ("https://[::1]:8443/", "::1"),
            ("https://[2002:7f00:1::]/", "2002:7f00:1::"),
            ("https://[64:ff9b:1::7f00:1]/", "64:ff9b:1::7f00:1"),
            (
                "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
            ),
            // Other spellings of loopback that WHATWG URL parsing turns into 127.0.0.1.
            ("https://2130706433/", "127.0.0.1"),
            ("https://0x7f.1/", "127.0.0.1"),
        ] {
            match check_url(url, false) {
                Err(UrlError::NotPublic(e)) => assert_eq!(e.ip, ip(refused), "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(check_url("https://[2002:808:808::1]/hook", false).is_ok());
        assert!(matches!(
            check_url("not a url", false),
            Err(UrlError::Malformed(_))
        ));
        // Local development may use plain http on loopback.
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
        assert!(check_url("https://[2002:7f00:1::]/", true).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_only_to_private_addresses() {
        let err = PublicResolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost must be refused");
        let err = err.to_string();
        assert!(err.contains("no public address"), "{err}");
        // Says what kind, never which: the name may be an internal host's.
        assert!(err.contains("Loopback address"), "{err}");
        assert!(!err.contains("127.0.0.1") && !err.contains("::1"), "{err}");
    }
}
