//! The application core: what the edges (`http`, `dashboard`, `cli`, `worker`, `webhooks`) share
//! and call. The state every handler and command reads ([`AppState`]), the commands on a
//! migration ([`migrations`]) and the one way a migration row changes ([`transition`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use secrecy::SecretString;
use sqlx::PgPool;
use url::Url;
use uuid::Uuid;

use crate::api::problem::ApiError;
use crate::clients::{D360Api, D360Client, MetaApi, MetaClient};
use crate::crypto::Cipher;

pub mod auth;
pub mod batches;
pub mod client_page;
pub mod migrations;
pub mod partners;
pub mod rate_limit;
pub mod settings;
pub mod ssrf;
pub mod transition;
pub mod upstream_check;

pub use client_page::ClientPageConfig;
use rate_limit::RateLimiter;
pub use settings::{Clock, DashboardConfig, OtpPolicy, WebhookConfig};

/// Tells the sandbox about a number before the service asks about it (the sandbox cannot know
/// which number a WABA listing is for): the `prechecking` step and the dry run call it right
/// before reading the WABAs. Only ever set when the upstreams are the sandbox.
#[derive(Clone)]
pub enum SandboxSeeder {
    /// The in-process sandbox of `serve` without `META_ACCESS_TOKEN`.
    InProcess(crate::sandbox::Sandbox),
    /// A standalone `waba-migrator sandbox` at this base URL (`SANDBOX_SEED_NUMBERS=true`).
    Remote(reqwest::Client, Url),
}

impl SandboxSeeder {
    /// Registers the number on the source WABA of the sandbox (idempotent). Failures are logged:
    /// the migration then fails its precheck with `number_not_found_on_source`, as upstream would.
    pub async fn seed(&self, phone: &str, source: &str, destination: &str, business: &str) {
        let seed = crate::sandbox::NumberSeed {
            phone_number: phone.to_owned(),
            source_waba_id: source.to_owned(),
            destination_waba_id: Some(destination.to_owned()),
            business_id: Some(business.to_owned()),
        };
        let result = match self {
            SandboxSeeder::InProcess(sb) => {
                let added = sb.add_number(&seed).map(|_| ());
                sb.flush().await;
                added
            }
            SandboxSeeder::Remote(http, base) => {
                let url = format!("{}/_sandbox/numbers", base.as_str().trim_end_matches('/'));
                match http
                    .post(url)
                    .timeout(std::time::Duration::from_secs(5))
                    .json(&seed)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("sandbox answered {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not seed the sandbox with the number");
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub cipher: Cipher,
    /// SHA-256 of `ADMIN_API_KEY`, if set.
    pub admin_key_hash: Option<Vec<u8>>,
    pub meta: Arc<dyn MetaApi>,
    /// The 360dialog APIs: whether a completed migration's key still works (create, rotate).
    pub d360: Arc<dyn D360Api>,
    pub otp: OtpPolicy,
    /// Messaging API base, reported as a key's address when 360dialog gave none.
    pub d360_waba_url: String,
    pub sandbox_seeder: Option<SandboxSeeder>,
    /// Callback URL rules and the secret-rotation overlap.
    pub webhooks: WebhookConfig,
    /// The webhook scheduling clock (redeliveries are due at its "now").
    pub clock: Arc<dyn Clock>,
    /// Per-key request limits; `None`: unlimited.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Dry-run prechecks per caller (partner, or the admin) a minute: each reads the Graph API
    /// seven times or more with the service's one Meta token; `None`: unlimited.
    pub precheck_limiter: Option<Arc<RateLimiter>>,
    /// Failed-authentication limits per client address and the negative key cache.
    pub auth: Arc<auth::AuthGuard>,
    /// The support dashboard's settings.
    pub dashboard: DashboardConfig,
    /// The end client's page: where links point, how long they work.
    pub client_page: ClientPageConfig,
    /// Submission limits of the client page, per link and per address.
    pub client_page_limits: Arc<client_page::PageLimits>,
    /// The API's reader of a CSV batch upload, for the dashboard's upload form.
    pub batch_csv: batches::CsvReader,
}

impl FromRef<AppState> for PgPool {
    fn from_ref(s: &AppState) -> Self {
        s.pool.clone()
    }
}

/// Where the upstream APIs are and how to authenticate.
#[derive(Clone)]
pub struct Upstreams {
    pub meta_graph_url: Url,
    pub meta_graph_version: String,
    pub meta_access_token: SecretString,
    pub d360_hub_url: Url,
    pub d360_waba_url: Url,
    pub timeout: Duration,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("meta_graph_url", &self.meta_graph_url.as_str())
            .field("meta_graph_version", &self.meta_graph_version)
            .field("meta_access_token", &"[redacted]")
            .field("d360_hub_url", &self.d360_hub_url.as_str())
            .field("d360_waba_url", &self.d360_waba_url.as_str())
            .finish()
    }
}

impl Upstreams {
    /// One reqwest client for all upstream calls, with timeouts and a User-Agent.
    pub fn clients(&self) -> anyhow::Result<(Arc<dyn MetaApi>, Arc<dyn D360Api>)> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("waba-migrator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let meta = MetaClient::new(
            self.meta_graph_url.clone(),
            self.meta_graph_version.clone(),
            self.meta_access_token.clone(),
            http.clone(),
        );
        let d360 = D360Client::new(self.d360_hub_url.clone(), self.d360_waba_url.clone(), http);
        Ok((Arc::new(meta), Arc::new(d360)))
    }
}

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// `ADMIN_API_KEY`: sees and manages everything.
    Admin,
    /// A partner key: sees only its own migrations.
    Partner(Uuid),
}

impl Caller {
    /// Tenant scope for queries: `None` for the admin.
    pub fn scope(self) -> Option<Uuid> {
        match self {
            Caller::Admin => None,
            Caller::Partner(p) => Some(p),
        }
    }

    pub fn require_admin(self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Partner(_) => Err(ApiError::forbidden(
                "This route needs the admin key (ADMIN_API_KEY).",
            )),
        }
    }
}
