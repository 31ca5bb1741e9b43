//! API key authentication, shared by the API (`Authorization: Bearer`) and the dashboard's
//! sign-in form, with two defences against guessing and hammering invalid keys:
//!
//! * **Failed authentications are limited per client address** (GCRA, `governor`): an address
//!   may fail `AUTH_FAILURE_BURST` times at once and `AUTH_FAILURES_PER_MINUTE` sustained. Past
//!   that, a key this process has not seen valid recently is refused `429`
//!   `too_many_auth_failures` with `Retry-After`, *before* any database lookup. A key that
//!   authenticated recently ([`KNOWN_GOOD_TTL`]) is still looked up and served: an attacker
//!   sharing a partner's address (a NAT, a proxy) cannot lock the partner out.
//! * **Negative lookups are cached** for [`NEGATIVE_TTL`]: the same unknown key sent again is
//!   answered `401` from memory, not from the database. Keys are 256 random bits made by
//!   the service, so a key that was unknown cannot become valid meanwhile; revocation is
//!   unaffected (only absence is cached, and a valid key is looked up on every request).
//!
//! The client address is the TCP peer (`ConnectInfo<SocketAddr>`); behind a proxy listed in
//! `TRUSTED_PROXIES`, the right-most `X-Forwarded-For` entry that is not itself a trusted
//! proxy. IPv6 clients are limited per /64 (one host usually has the whole /64). A request
//! without a known peer address (an in-process call without connect info) is not limited by
//! address; its invalid keys are still cached. The state is per process, like the per-key
//! request limit.

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use sqlx::PgPool;
use uuid::Uuid;

use super::{AppState, Caller};
use crate::api::problem::ApiError;
use crate::crypto;
use crate::db;

/// How long an unknown key is answered from memory.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// How long after its last success a key stays exempt from its address's failure limit.
pub const KNOWN_GOOD_TTL: Duration = Duration::from_secs(3600);
/// Keys (hashes) remembered per cache.
const CACHE_CAPACITY: u64 = 50_000;
/// Forget idle addresses when the failure limiter tracks this many.
const RETAIN_THRESHOLD: usize = 10_000;

/// SHA-256 of an API key.
type KeyHash = [u8; 32];

/// Failed-authentication limits and where the client address comes from.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Failed authentications per client address: sustained per minute, and burst. `None`: not
    /// limited.
    pub failure_limit: Option<(u32, u32)>,
    /// Proxies whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<IpNet>,
}

/// Parses `TRUSTED_PROXIES`: comma-separated addresses or CIDR blocks.
pub fn parse_trusted_proxies(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("`{p}` is not an IP address or CIDR block (e.g. 10.0.0.0/8, ::1)")
                })
        })
        .collect()
}

/// Per-process authentication state (one per [`AppState`]).
pub struct AuthGuard {
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses over their failure limit, and until when.
    blocked: moka::sync::Cache<IpAddr, Instant>,
    /// Keys the database did not know (negative cache).
    unknown: moka::sync::Cache<KeyHash, ()>,
    /// Keys that authenticated recently: exempt from the failure limit (still looked up).
    known_good: moka::sync::Cache<KeyHash, ()>,
    trusted_proxies: Vec<IpNet>,
    clock: DefaultClock,
    database_lookups: AtomicU64,
}

impl std::fmt::Debug for AuthGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthGuard")
            .field("limited", &self.failures.is_some())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

/// The outcome of checking a key before the database.
enum Precheck {
    /// Answered from the negative cache.
    KnownUnknown,
    /// The address is over its failure limit; retry after this long.
    Blocked(Duration),
    /// Look it up.
    Lookup,
}

impl AuthGuard {
    pub fn new(config: &AuthConfig) -> Self {
        let failures = config
            .failure_limit
            .and_then(|(per_minute, burst)| {
                let per_minute = NonZeroU32::new(per_minute)?;
                let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
                Some(Quota::per_minute(per_minute).allow_burst(burst))
            })
            .map(DefaultKeyedRateLimiter::keyed);
        Self {
            failures,
            // Long enough for any wait the limiter names (at most a minute per token, with
            // the `per_minute` floor of 1); each entry also carries its own deadline.
            blocked: cache(Duration::from_secs(3600)),
            unknown: cache(NEGATIVE_TTL),
            known_good: cache(KNOWN_GOOD_TTL),
            trusted_proxies: config.trusted_proxies.clone(),
            clock: DefaultClock::default(),
            database_lookups: AtomicU64::new(0),
        }
    }

    /// How many keys this process looked up in the database (to observe the negative cache).
    pub fn database_lookups(&self) -> u64 {
        self.database_lookups.load(Ordering::Relaxed)
    }

    /// The client's address: the TCP peer, or behind a trusted proxy the right-most
    /// `X-Forwarded-For` entry that is not a trusted proxy. `None` without a peer address.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.ip().to_canonical();
        if !self.trusted(peer) {
            return Some(peer);
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in forwarded.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Not written by a trusted proxy: stop at the last address one vouched for.
                break;
            };
            client = ip;
            if !self.trusted(ip) {
                break;
            }
        }
        Some(client)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    fn precheck(&self, client: Option<IpAddr>, key: &KeyHash) -> Precheck {
        if self.failures.is_some()
            && let Some(until) = client.and_then(|ip| self.blocked.get(&bucket(ip)))
            && !self.known_good.contains_key(key)
        {
            let now = Instant::now();
            if until > now {
                return Precheck::Blocked(until - now);
            }
        }
        if self.unknown.contains_key(key) {
            Precheck::KnownUnknown
        } else {
            Precheck::Lookup
        }
    }

    /// Counts a failed authentication from `client`; `Err(wait)` once it is over its limit.
    fn failed(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let (Some(limiter), Some(ip)) = (&self.failures, client) else {
            return Ok(());
        };
        let ip = bucket(ip);
        if limiter.len() > RETAIN_THRESHOLD {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            self.blocked.insert(ip, Instant::now() + wait);
            wait
        })
    }
}

fn cache<K, V>(ttl: Duration) -> moka::sync::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(CACHE_CAPACITY)
        .time_to_live(ttl)
        .build()
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The limiter's key for an address: IPv4 as is, IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The client address of a request (see [`AuthGuard::client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(ClientIp(state.auth.client_ip(peer, &parts.headers)))
    }
}

/// Who the API key with this hash ([`crypto::hash_api_key`]) is, for a request from `client`. Errors: `401` `unauthorized`
/// (unknown or revoked key; `WWW-Authenticate` with `error="invalid_token"`), `429`
/// `too_many_auth_failures` (the address is over its failure limit), or the database's.
pub async fn authenticate(
    state: &AppState,
    client: Option<IpAddr>,
    key_hash: &[u8],
) -> Result<Caller, ApiError> {
    let (caller, ()) = authenticate_and(state, client, key_hash, |hash| {
        partner_of(&state.pool, hash)
    })
    .await?;
    Ok(caller)
}

/// [`authenticate`] for an API request: a key that authenticated is then held to its request
/// limit (`RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST`). Only valid keys are counted, so a
/// stranger cannot exhaust a partner's budget. `429` `rate_limited` with `Retry-After` when
/// over it.
pub async fn authenticate_request(
    state: &AppState,
    client: Option<IpAddr>,
    key_hash: &[u8],
) -> Result<Caller, ApiError> {
    let caller = authenticate(state, client, key_hash).await?;
    within_rate_limit(state, key_hash)?;
    Ok(caller)
}

/// [`authenticate_request`] with the key looked up by `lookup`, a statement that also reads
/// what the request asked for (see `authenticate_and`).
pub async fn authenticate_request_and<T, Fut>(
    state: &AppState,
    client: Option<IpAddr>,
    key_hash: &[u8],
    lookup: impl FnOnce(KeyHash) -> Fut,
) -> Result<(Caller, T), ApiError>
where
    T: Default,
    Fut: Future<Output = Result<Option<(Uuid, T)>, db::Error>>,
{
    let found = authenticate_and(state, client, key_hash, lookup).await?;
    within_rate_limit(state, key_hash)?;
    Ok(found)
}

/// The lookup of a plain [`authenticate`]: the partner of the live key with this hash.
async fn partner_of(pool: &PgPool, hash: KeyHash) -> Result<Option<(Uuid, ())>, db::Error> {
    Ok(db::partners::partner_for_key_hash(pool, &hash)
        .await?
        .map(|partner| (partner, ())))
}

/// [`authenticate`], with a partner key looked up by `lookup`: a statement that also reads what
/// the request asked for, to save it a round trip. `lookup` returns the key's partner and what
/// it read, or `None` for no live key with this hash. The admin key is recognised without
/// `lookup`, so what it read is then `T::default()`, and the caller reads it as the admin.
async fn authenticate_and<T, Fut>(
    state: &AppState,
    client: Option<IpAddr>,
    key_hash: &[u8],
    lookup: impl FnOnce(KeyHash) -> Fut,
) -> Result<(Caller, T), ApiError>
where
    T: Default,
    Fut: Future<Output = Result<Option<(Uuid, T)>, db::Error>>,
{
    let hash: KeyHash = key_hash
        .try_into()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("an API key hash is not 32 bytes")))?;
    let guard = &state.auth;
    let known_unknown = match guard.precheck(client, &hash) {
        Precheck::Blocked(wait) => {
            crate::metrics::api_key_lookup("refused");
            return Err(too_many_failures(wait));
        }
        Precheck::KnownUnknown => true,
        Precheck::Lookup => false,
    };
    // The admin key only past the block: an operator chose it (a partner key is 256 random
    // bits), so a blocked address must not learn that a guess was right.
    if let Some(admin) = &state.admin_key_hash
        && crypto::constant_time_eq(admin, key_hash)
    {
        return Ok((Caller::Admin, T::default()));
    }
    if known_unknown {
        crate::metrics::api_key_lookup("cached_not_found");
    } else {
        guard.database_lookups.fetch_add(1, Ordering::Relaxed);
        if let Some((partner, read)) = lookup(hash).await? {
            crate::metrics::api_key_lookup("found");
            // Re-inserted on every success: the hour counts from the key's last use.
            guard.known_good.insert(hash, ());
            return Ok((Caller::Partner(partner), read));
        }
        crate::metrics::api_key_lookup("not_found");
        guard.unknown.insert(hash, ());
    }
    guard.failed(client).map_err(too_many_failures)?;
    Err(ApiError::invalid_token())
}

/// The per-key request limit of [`authenticate_request`].
fn within_rate_limit(state: &AppState, key_hash: &[u8]) -> Result<(), ApiError> {
    if let Some(limiter) = &state.rate_limiter
        && let Err(wait) = limiter.check(key_hash)
    {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests with this API key; retry after the time in Retry-After.",
        )
        .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u64));
    }
    Ok(())
}

fn too_many_failures(wait: Duration) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_auth_failures",
        "Too many requests with invalid API keys from your address; retry after the time in Retry-After with a valid key.",
    )
    .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u64)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn guard(trusted: &str) -> AuthGuard {
        AuthGuard::new(&AuthConfig {
            failure_limit: Some((1, 3)),
            trusted_proxies: parse_trusted_proxies(trusted).unwrap(),
        })
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let g = guard("10.0.0.0/8, 192.0.2.7");
        let spoofed = xff(&["198.51.100.1"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            g.client_ip(peer("203.0.113.9"), &spoofed),
            ip("203.0.113.9")
        );
        // Behind trusted proxies: the right-most entry that is not one of them.
        let chain = xff(&["198.51.100.1, 203.0.113.5", "10.1.2.3"]);
        assert_eq!(g.client_ip(peer("192.0.2.7"), &chain), ip("203.0.113.5"));
        // Ports and IPv4-mapped IPv6 are read; an unreadable entry stops the walk.
        let odd = xff(&["garbage, [::ffff:203.0.113.6]:443"]);
        assert_eq!(g.client_ip(peer("10.0.0.1"), &odd), ip("203.0.113.6"));
        let junk = xff(&["203.0.113.5, not-an-ip"]);
        assert_eq!(g.client_ip(peer("10.0.0.1"), &junk), ip("10.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(
            g.client_ip(peer("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        assert_eq!(g.client_ip(None, &chain), None);
        // By default nothing is trusted.
        assert_eq!(
            guard("").client_ip(peer("10.0.0.1"), &chain),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_proxies_must_parse() {
        assert_eq!(parse_trusted_proxies(" ").unwrap(), vec![]);
        assert_eq!(parse_trusted_proxies("::1,10.0.0.0/8").unwrap().len(), 2);
        let err = parse_trusted_proxies("10.0.0.0/8,proxy.local").unwrap_err();
        assert!(err.contains("proxy.local"), "{err}");
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        assert_eq!(
            bucket(ip("2001:db8:1:2:aaaa::1").unwrap()),
            ip("2001:db8:1:2::").unwrap()
        );
        assert_eq!(
            bucket(ip("::ffff:192.0.2.1").unwrap()),
            ip("192.0.2.1").unwrap()
        );
        let g = guard("");
        for _ in 0..3 {
            assert!(g.failed(ip("2001:db8:1:2::1")).is_ok());
        }
        assert!(g.failed(ip("2001:db8:1:2::ffff")).is_err());
        assert!(g.failed(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn a_blocked_address_is_refused_before_lookup_except_for_known_good_keys() {
        let g = guard("");
        let client = ip("203.0.113.9");
        let (bad, good) = ([1; 32], [2; 32]);
        g.known_good.insert(good, ());
        for _ in 0..3 {
            assert!(matches!(g.precheck(client, &bad), Precheck::Lookup));
            assert!(g.failed(client).is_ok());
        }
        let wait = g.failed(client).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(matches!(g.precheck(client, &bad), Precheck::Blocked(_)));
        assert!(matches!(g.precheck(client, &[3; 32]), Precheck::Blocked(_)));
        assert!(matches!(g.precheck(client, &good), Precheck::Lookup));
        // Another address, and requests without one, are not affected.
        assert!(matches!(
            g.precheck(ip("203.0.113.10"), &bad),
            Precheck::Lookup
        ));
        assert!(matches!(g.precheck(None, &bad), Precheck::Lookup));
        assert!(g.failed(None).is_ok());
    }

    #[test]
    fn without_a_limit_nothing_is_blocked() {
        let g = AuthGuard::new(&AuthConfig::default());
        for _ in 0..100 {
            assert!(g.failed(ip("203.0.113.9")).is_ok());
        }
    }
}
