//! The end client's page: a capability link per migration (README "Send this link to your
//! client").
//!
//! **The token.** 24 bytes (192 bits) derived from the fingerprint key (kept in the database
//! sealed under `ENCRYPTION_KEY`, so a key rotation keeps links valid), the migration id and the
//! link's generation ([`Cipher::derived_secrets`]), written base64url. It is never stored:
//! the API shows the link again by deriving it, and `client_pages` keeps only its SHA-256, to
//! find the migration a presented token belongs to. A rotation bumps the generation, so the
//! previous token no longer hashes to anything. A presented token is compared with the one
//! derived for the row it found, in constant time.
//!
//! **Validity.** A link works until its `expires_at` (`CLIENT_PAGE_TTL_SECONDS` after it was
//! issued), and no longer once the migration is cancelled. Once the migration completes or
//! fails, the page shows that outcome for `CLIENT_PAGE_LINGER_SECONDS` (a client watching it
//! sees "done"), and accepts nothing; then the link is no longer valid. A `retry` of a failed
//! migration makes it active again, and the link with it (if not expired).
//!
//! **Acting.** The page submits codes and resend requests through the same commands as the
//! API, as the migration's partner, recorded with `source: "client_page"`. Submissions are
//! limited per link and per client address; failed lookups count against the address too.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{AppState, Caller, auth};
use crate::api::Migration;
use crate::api::migration::ClientPage;
use crate::api::problem::ApiError;
use crate::crypto::{self, Cipher};
use crate::db::client_pages::{self as store, ClientPageRow};
use crate::db::events::NewEvent;
use crate::db::migrations::{self as migrations, MigrationRow};
use crate::domain::{EventType, MigrationState};

/// Bytes of a token: 192 bits.
const TOKEN_BYTES: usize = 24;

/// What the derivation is for (never reused for another purpose).
const PURPOSE: &str = "client-page-token/v1";

/// Submissions (codes, resend requests) one link may send at once, then per minute.
pub const TOKEN_BURST: u32 = 8;
pub const TOKEN_PER_MINUTE: u32 = 2;
/// Submissions and failed lookups one client address may make at once, then per minute.
pub const ADDRESS_BURST: u32 = 10;
pub const ADDRESS_PER_MINUTE: u32 = 6;

/// Forget idle keys of a limiter when this many are tracked.
const RETAIN_THRESHOLD: usize = 10_000;

/// The client page's settings (`CLIENT_PAGE_*`, `PUBLIC_BASE_URL`).
#[derive(Debug, Clone)]
pub struct ClientPageConfig {
    /// Where clients reach the service: links are `{public_base_url}/c/{token}`.
    pub public_base_url: url::Url,
    /// How long a link works after it was issued.
    pub ttl: Duration,
    /// How long a completed or failed migration's page still shows its outcome.
    pub linger: Duration,
}

impl ClientPageConfig {
    /// The path `PUBLIC_BASE_URL` puts before the page's own (`/migrate` of
    /// `https://example.com/migrate`; empty without one): the page's links, forms and redirects
    /// start with it, so that they work behind a proxy that serves the service under it.
    /// One leading slash, whatever the setting has (`//migrate` would make the page's
    /// links protocol-relative: to host `migrate`, with the token).
    pub fn root(&self) -> String {
        match self.public_base_url.path().trim_matches('/') {
            "" => String::new(),
            path => format!("/{path}"),
        }
    }
}

impl Default for ClientPageConfig {
    fn default() -> Self {
        Self {
            public_base_url: url::Url::parse("http://127.0.0.1:8080").expect("static URL"),
            ttl: Duration::from_secs(7 * 24 * 3600),
            linger: Duration::from_secs(15 * 60),
        }
    }
}

/// Per-link and per-address submission limits (per process, like the API's key limits).
pub struct PageLimits {
    per_token: DefaultKeyedRateLimiter<Uuid>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl std::fmt::Debug for PageLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageLimits").finish_non_exhaustive()
    }
}

impl Default for PageLimits {
    fn default() -> Self {
        let quota = |per_minute: u32, burst: u32| {
            Quota::per_minute(NonZeroU32::new(per_minute).expect("non-zero"))
                .allow_burst(NonZeroU32::new(burst).expect("non-zero"))
        };
        Self {
            per_token: DefaultKeyedRateLimiter::keyed(quota(TOKEN_PER_MINUTE, TOKEN_BURST)),
            per_address: DefaultKeyedRateLimiter::keyed(quota(ADDRESS_PER_MINUTE, ADDRESS_BURST)),
            clock: DefaultClock::default(),
        }
    }
}

impl PageLimits {
    /// Counts one request from `client` against its address budget; `Err(wait)` past it.
    pub fn address(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let Some(ip) = client else { return Ok(()) };
        if self.per_address.len() > RETAIN_THRESHOLD {
            self.per_address.retain_recent();
        }
        self.per_address
            .check_key(&bucket(ip))
            .map_err(|n| n.wait_time_from(self.clock.now()))
    }

    /// Counts one submission through the link of `migration_id`; `Err(wait)` past its budget.
    pub fn token(&self, migration_id: Uuid) -> Result<(), Duration> {
        if self.per_token.len() > RETAIN_THRESHOLD {
            self.per_token.retain_recent();
        }
        self.per_token
            .check_key(&migration_id)
            .map_err(|n| n.wait_time_from(self.clock.now()))
    }
}

/// IPv4 as is, IPv6 by its /64 (one subscriber).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The tokens of generation `generation` of a migration's link, one per key (primary first).
fn tokens(cipher: &Cipher, migration_id: Uuid, generation: i32) -> Vec<String> {
    let mut input = migration_id.as_bytes().to_vec();
    input.extend_from_slice(&generation.to_be_bytes());
    cipher
        .derived_secrets(PURPOSE, &input)
        .into_iter()
        .map(|secret| URL_SAFE_NO_PAD.encode(&secret[..TOKEN_BYTES]))
        .collect()
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The token of the link as it is now: the one (of the keys') whose hash is stored.
fn current_token(cipher: &Cipher, page: &ClientPageRow) -> String {
    let all = tokens(cipher, page.migration_id, page.generation);
    all.iter()
        .find(|t| crypto::constant_time_eq(&token_hash(t), &page.token_hash))
        .unwrap_or(&all[0])
        .clone()
}

/// A token can only be what [`tokens`] writes: base64url, 32 characters.
fn well_formed(token: &str) -> bool {
    token.len() == 32
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The link's URL.
fn url(config: &ClientPageConfig, token: &str) -> String {
    format!(
        "{}/c/{token}",
        config.public_base_url.as_str().trim_end_matches('/')
    )
}

/// The migration's state as its client sees it: once the number moved (`completed_at`), the
/// move is done for the client, also while a key rotation runs (`generating_api_key` again)
/// or after one failed: nothing is left for the client to do.
pub fn state_for_client(row: &MigrationRow) -> MigrationState {
    if row.completed_at.is_some() {
        MigrationState::Completed
    } else {
        row.state()
    }
}

fn linger(config: &ClientPageConfig) -> chrono::Duration {
    chrono::Duration::from_std(config.linger).unwrap_or_default()
}

/// When the link stops working: its own expiry, or earlier once the migration ended.
pub fn effective_expiry(
    config: &ClientPageConfig,
    row: &MigrationRow,
    page: &ClientPageRow,
) -> DateTime<Utc> {
    let ended = row.state_entered_at;
    match state_for_client(row) {
        MigrationState::Cancelled => page.expires_at.min(ended),
        MigrationState::Completed => page
            .expires_at
            .min(row.completed_at.unwrap_or(ended) + linger(config)),
        MigrationState::Failed => page.expires_at.min(ended + linger(config)),
        _ => page.expires_at,
    }
}

/// Whether the link of `row` may be replaced now: not once the client has nothing left to do
/// (cancelled; the number moved, a key rotation included), nor while the migration has been
/// failed longer than the linger, when a new link would be dead on arrival (a retry brings the
/// link back: then replace it if need be). The API answers 409 `invalid_state` with the reason;
/// the dashboard hides its button.
pub fn replaceable(
    config: &ClientPageConfig,
    row: &MigrationRow,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(ApiError::conflict("invalid_state", why).with_extra(json!({ "state": row.state })))
    };
    match state_for_client(row) {
        MigrationState::Cancelled | MigrationState::Completed => refuse(format!(
            "The migration {}: its client has nothing left to do, so there is no link to replace.",
            if row.completed_at.is_some() {
                "completed (the number moved)"
            } else {
                "was cancelled"
            },
        )),
        MigrationState::Failed if row.state_entered_at + linger(config) <= now => refuse(format!(
            "The migration failed at {}: a link shows a failure for {} s only, so a new one would not work. Retry the migration (`POST /v1/migrations/{}/retry`); its link works again while it runs.",
            row.state_entered_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            config.linger.as_secs(),
            row.id,
        )),
        _ => Ok(()),
    }
}

/// The link as its owner sees it (the `client_page` field).
pub fn present(state: &AppState, row: &MigrationRow, page: &ClientPageRow) -> ClientPage {
    ClientPage {
        url: url(&state.client_page, &current_token(&state.cipher, page)),
        expires_at: effective_expiry(&state.client_page, row, page),
        opened_at: page.opened_at,
        submissions: page.submissions,
    }
}

/// Issues the first link of a new migration, in the create's transaction.
pub async fn issue(
    conn: &mut PgConnection,
    state: &AppState,
    migration_id: Uuid,
) -> Result<ClientPageRow, ApiError> {
    let token = &tokens(&state.cipher, migration_id, 1)[0];
    let expires_at = Utc::now() + ttl(&state.client_page);
    Ok(store::insert(&mut *conn, migration_id, &token_hash(token), expires_at).await?)
}

/// Issues the first links of many new migrations (a batch), in the create's transaction.
pub async fn issue_many(
    conn: &mut PgConnection,
    state: &AppState,
    migration_ids: &[Uuid],
) -> Result<Vec<ClientPageRow>, ApiError> {
    let hashes: Vec<Vec<u8>> = migration_ids
        .iter()
        .map(|id| token_hash(&tokens(&state.cipher, *id, 1)[0]))
        .collect();
    let expires_at = Utc::now() + ttl(&state.client_page);
    Ok(store::insert_many(&mut *conn, migration_ids, &hashes, expires_at).await?)
}

fn ttl(config: &ClientPageConfig) -> chrono::Duration {
    chrono::Duration::from_std(config.ttl).unwrap_or(chrono::Duration::days(7))
}

/// Fills the `client_page` field of migrations the caller (owner or admin) may see.
pub async fn attach(
    state: &AppState,
    rows: &[MigrationRow],
    out: &mut [Migration],
) -> Result<(), ApiError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let pages = store::get_many(&state.pool, &ids).await?;
    for (row, m) in rows.iter().zip(out.iter_mut()) {
        let page = pages.iter().find(|p| p.migration_id == row.id);
        m.client_page = Some(page.map(|p| present(state, row, p)));
    }
    Ok(())
}

/// `GET /v1/migrations/{id}`: the migration as `caller` may see it (another tenant's is 404),
/// with its `client_page`, read in one statement.
pub async fn fetch_with_page(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<Migration, ApiError> {
    match store::migration_with_page(&state.pool, id, caller.scope()).await {
        Ok((row, page)) => Ok(with_its_page(state, &row, page.as_ref())),
        Err(crate::db::Error::NotFound) => Err(ApiError::not_found("migration")),
        Err(e) => Err(e.into()),
    }
}

/// [`fetch_with_page`] for the API key with this hash, authenticated
/// ([`auth::authenticate_request_and`]) by the statement that reads the migration: a partner's poll
/// costs one statement, not two.
pub async fn fetch_with_page_for_key(
    state: &AppState,
    client: Option<IpAddr>,
    key_hash: &[u8],
    id: Uuid,
) -> Result<Migration, ApiError> {
    let pool = &state.pool;
    let (caller, read) =
        auth::authenticate_request_and(state, client, key_hash, |hash| async move {
            Ok(store::migration_with_page_for_key(pool, &hash, id)
                .await?
                .map(|(partner, found)| (partner, Some(found))))
        })
        .await?;
    match read {
        Some(Some((row, page))) => Ok(with_its_page(state, &row, page.as_ref())),
        Some(None) => Err(ApiError::not_found("migration")),
        // The admin key: nothing was read with it.
        None => fetch_with_page(state, caller, id).await,
    }
}

fn with_its_page(state: &AppState, row: &MigrationRow, page: Option<&ClientPageRow>) -> Migration {
    let mut m = Migration::from(row);
    m.client_page = Some(page.map(|p| present(state, row, p)));
    m
}

/// One migration for its owner: the public JSON with its `client_page`.
pub async fn with_page(state: &AppState, row: &MigrationRow) -> Result<Migration, ApiError> {
    let mut out = [Migration::from(row)];
    attach(state, std::slice::from_ref(row), &mut out).await?;
    let [m] = out;
    Ok(m)
}

/// `POST /v1/migrations/{id}/client_page/rotate`: a new link; the previous one stops working
/// at once. 409 `client_page_disabled` when the migration has none, 409 `invalid_state` when
/// it is not [`replaceable`].
///
/// `row` is the migration as its caller may see it (`migrations::rotate_client_page` reads it).
pub async fn rotate(
    state: &AppState,
    caller: Caller,
    row: MigrationRow,
) -> Result<(MigrationRow, ClientPage), ApiError> {
    let id = row.id;
    replaceable(&state.client_page, &row, Utc::now())?;
    let mut tx = state.pool.begin().await?;
    migrations::lock(&mut tx, id).await?;
    let Some(page) = store::get(&mut *tx, id).await? else {
        return Err(ApiError::conflict(
            "client_page_disabled",
            "This migration was created with \"client_page\": \"disabled\": it has no link to replace.",
        ));
    };
    let next = &tokens(&state.cipher, id, page.generation + 1)[0];
    let expires_at = Utc::now() + ttl(&state.client_page);
    let page = store::rotate(&mut *tx, id, page.generation, &token_hash(next), expires_at)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("client page moved under its lock")))?;
    let by = if caller == Caller::Admin {
        "admin"
    } else {
        "partner"
    };
    let row = super::transition::apply(
        &mut tx,
        &row,
        &migrations::Guard::default(),
        &migrations::Patch::default(),
        migrations::Lease::Keep,
        Some(NewEvent {
            kind: EventType::ClientPageRotated,
            from_state: None,
            to_state: None,
            data: json!({ "by": by, "generation": page.generation }),
        }),
    )
    .await?
    .unwrap_or(row);
    tx.commit().await?;
    tracing::info!(migration.id = %id, by, generation = page.generation, "client page link rotated");
    let shown = present(state, &row, &page);
    Ok((row, shown))
}

/// A link that was presented and is valid, with what the page shows.
#[derive(Debug, Clone)]
pub struct Opened {
    pub row: MigrationRow,
    pub page: ClientPageRow,
    pub partner_name: String,
    /// The partner's 360dialog signup link (Embedded Signup flow).
    pub signup_url: Option<String>,
    /// False once the migration ended: the page only shows the outcome.
    pub can_act: bool,
}

/// Why a presented link gives nothing.
#[derive(Debug)]
pub enum Refused {
    /// Unknown, rotated, expired, or its migration ended: one neutral answer for all.
    Invalid,
    /// The address made too many failed lookups or submissions.
    Throttled(Duration),
    Internal(ApiError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Internal(e)
    }
}

impl From<crate::db::Error> for Refused {
    fn from(e: crate::db::Error) -> Self {
        Refused::Internal(e.into())
    }
}

/// Finds the migration of a presented token, if the link is valid now. A failed lookup counts
/// against the client address (so guessing is throttled like failed authentications).
pub async fn open(
    state: &AppState,
    token: &str,
    client: Option<IpAddr>,
) -> Result<Opened, Refused> {
    let found = if well_formed(token) {
        store::by_token_hash(&state.pool, &token_hash(token)).await?
    } else {
        None
    };
    let opened = match found {
        Some(page) => check(state, token, page).await?,
        None => None,
    };
    match opened {
        Some(o) => Ok(o),
        None => {
            state
                .client_page_limits
                .address(client)
                .map_err(Refused::Throttled)?;
            Err(Refused::Invalid)
        }
    }
}

async fn check(
    state: &AppState,
    token: &str,
    page: ClientPageRow,
) -> Result<Option<Opened>, Refused> {
    let presented = token.as_bytes();
    let matches = tokens(&state.cipher, page.migration_id, page.generation)
        .iter()
        .any(|t| crypto::constant_time_eq(t.as_bytes(), presented));
    if !matches {
        return Ok(None);
    }
    let row = migrations::get(&state.pool, page.migration_id, None).await?;
    let now = Utc::now();
    if effective_expiry(&state.client_page, &row, &page) <= now {
        return Ok(None);
    }
    let partner = crate::db::partners::get(&state.pool, row.partner_id).await?;
    Ok(Some(Opened {
        can_act: !state_for_client(&row).is_terminal(),
        partner_name: partner.name,
        signup_url: partner.signup_url,
        row,
        page,
    }))
}

/// Records the first opening of this link: event and webhook `migration.client_page_opened`.
pub async fn record_opened(state: &AppState, o: &Opened) -> Result<(), ApiError> {
    if o.page.opened_at.is_some() {
        return Ok(());
    }
    let mut tx = state.pool.begin().await?;
    // The event's sequence number follows the row's version: hold the row still. Taken before
    // the page's row, in the order `rotate` takes them, so the two never deadlock.
    migrations::lock(&mut tx, o.row.id).await?;
    if store::mark_opened(&mut *tx, o.row.id, o.page.generation).await? {
        let row = migrations::get(&mut *tx, o.row.id, None).await?;
        super::transition::apply(
            &mut tx,
            &row,
            &migrations::Guard::default(),
            &migrations::Patch::default(),
            migrations::Lease::Keep,
            Some(NewEvent {
                kind: EventType::ClientPageOpened,
                from_state: None,
                to_state: None,
                data: json!({ "generation": o.page.generation }),
            }),
        )
        .await?;
        tracing::info!(migration.id = %o.row.id, "client page opened");
    }
    tx.commit().await?;
    Ok(())
}

/// Why a submission through the page was not taken.
#[derive(Debug)]
pub enum NotTaken {
    /// Over the link's or the address's budget; try again after this long.
    Throttled(Duration),
    /// What the command answered (wrong state, code window closed, resend too soon, …).
    Refused(ApiError),
}

impl From<ApiError> for NotTaken {
    fn from(e: ApiError) -> Self {
        NotTaken::Refused(e)
    }
}

fn limits(state: &AppState, o: &Opened, client: Option<IpAddr>) -> Result<(), NotTaken> {
    state
        .client_page_limits
        .address(client)
        .map_err(NotTaken::Throttled)?;
    state
        .client_page_limits
        .token(o.row.id)
        .map_err(NotTaken::Throttled)?;
    Ok(())
}

/// One submission through the page (a code, "Send again", "Call me instead"): within the
/// link's and the address's limits, counted on the link. Returns who acts: the migration's
/// partner (`migrations::submit_code_from_page` / `resend_from_page` then run the API's command).
pub async fn take_submission(
    state: &AppState,
    o: &Opened,
    client: Option<IpAddr>,
) -> Result<Caller, NotTaken> {
    limits(state, o, client)?;
    store::count_submission(&state.pool, o.row.id, o.page.generation)
        .await
        .map_err(ApiError::from)?;
    Ok(Caller::Partner(o.row.partner_id))
}

/// A form token binding a form to this link: HMAC of the link's token hash and the time it
/// was rendered, valid for `CSRF_VALIDITY`.
pub fn csrf_token(state: &AppState, o: &Opened, now: DateTime<Utc>) -> String {
    let issued = now.timestamp();
    format!("{issued}.{}", csrf_mac(state, &o.page.token_hash, issued))
}

/// How long a rendered form may be submitted.
const CSRF_VALIDITY: i64 = 6 * 3600;

fn csrf_mac(state: &AppState, token_hash: &[u8], issued: i64) -> String {
    let mut input = token_hash.to_vec();
    input.extend_from_slice(&issued.to_be_bytes());
    let secret = &state.cipher.derived_secrets("client-page-csrf/v1", &input)[0];
    URL_SAFE_NO_PAD.encode(&secret[..16])
}

/// Whether `presented` is a form token this link rendered in the last `CSRF_VALIDITY`.
pub fn csrf_valid(state: &AppState, o: &Opened, presented: &str, now: DateTime<Utc>) -> bool {
    let Some((issued, mac)) = presented.split_once('.') else {
        return false;
    };
    let Ok(issued) = issued.parse::<i64>() else {
        return false;
    };
    let age = now.timestamp() - issued;
    if !(-60..=CSRF_VALIDITY).contains(&age) {
        return false;
    }
    crypto::constant_time_eq(
        csrf_mac(state, &o.page.token_hash, issued).as_bytes(),
        mac.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::ClientPageConfig;

    #[test]
    fn root_is_the_public_path_with_one_leading_slash() {
        let root = |url: &str| {
            ClientPageConfig {
                public_base_url: url::Url::parse(url).unwrap(),
                ..Default::default()
            }
            .root()
        };
        assert_eq!(root("https://example.com"), "");
        assert_eq!(root("https://example.com/"), "");
        assert_eq!(root("https://example.com/migrate"), "/migrate");
        assert_eq!(root("https://example.com/migrate/"), "/migrate");
        assert_eq!(root("https://example.com/a/b"), "/a/b");
        // Not `//migrate`: a protocol-relative path to host `migrate`.
        assert_eq!(root("https://example.com//migrate"), "/migrate");
        assert_eq!(root("https://example.com/m%C3%A9"), "/m%C3%A9");
    }
}
