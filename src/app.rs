//! Wiring: application state, upstream clients, and running the API and workers together.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::clients::{D360Api, D360Client, MetaApi, MetaClient};
use crate::crypto::{self, Cipher};
use crate::http::rate_limit::RateLimiter;
use crate::webhooks::{Clock, Dispatcher, WebhookConfig};
use crate::worker::{Deps, FailPoints, OtpPolicy, Worker, WorkerConfig};

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
    /// The support dashboard's settings.
    pub dashboard: crate::dashboard::DashboardConfig,
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

/// Everything `App::new` needs besides the pool.
#[derive(Clone)]
pub struct Settings {
    pub upstreams: Upstreams,
    pub admin_api_key: Option<SecretString>,
    pub cipher: Cipher,
    pub worker: WorkerConfig,
    pub run_workers: bool,
    pub sandbox_seeder: Option<SandboxSeeder>,
    pub webhooks: WebhookConfig,
    /// What the webhook dispatcher schedules by (a `ManualClock` in tests).
    pub clock: Arc<dyn Clock>,
    /// Requests per second and burst per API key; `None`: unlimited.
    pub rate_limit: Option<(u32, u32)>,
    /// The support dashboard's settings.
    pub dashboard: crate::dashboard::DashboardConfig,
}

/// The service: API state plus (optionally) a worker.
pub struct App {
    pub state: AppState,
    pub worker: Option<Worker>,
    /// Runs wherever the migration workers run.
    pub dispatcher: Option<Dispatcher>,
    pub fail_points: FailPoints,
}

impl App {
    pub fn new(pool: PgPool, settings: Settings) -> anyhow::Result<Self> {
        crate::metrics::handle();
        let (meta, d360) = settings.upstreams.clients()?;
        let fail_points = FailPoints::default();
        let state = AppState {
            pool: pool.clone(),
            cipher: settings.cipher.clone(),
            admin_key_hash: settings
                .admin_api_key
                .as_ref()
                .map(|k| crypto::hash_api_key(k.expose_secret())),
            meta: meta.clone(),
            otp: settings.worker.otp.clone(),
            d360_waba_url: settings
                .upstreams
                .d360_waba_url
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            sandbox_seeder: settings.sandbox_seeder.clone(),
            webhooks: settings.webhooks.clone(),
            clock: settings.clock.clone(),
            rate_limiter: settings
                .rate_limit
                .and_then(|(rate, burst)| RateLimiter::new(rate, burst))
                .map(Arc::new),
            dashboard: settings.dashboard.clone(),
        };
        let dispatcher = if settings.run_workers {
            Some(Dispatcher::new(
                pool.clone(),
                settings.cipher.clone(),
                settings.webhooks.clone(),
                settings.clock.clone(),
            )?)
        } else {
            None
        };
        let worker = settings.run_workers.then(|| {
            Worker::new(Deps {
                pool,
                meta,
                d360,
                cipher: settings.cipher.clone(),
                config: settings.worker.clone(),
                fail_points: fail_points.clone(),
                sandbox_seeder: settings.sandbox_seeder.clone(),
            })
        });
        Ok(Self {
            state,
            worker,
            dispatcher,
            fail_points,
        })
    }

    /// Serves the API on `listener` (if given) and runs the worker until `shutdown`; HTTP is
    /// drained and in-flight steps finish or release their leases before this returns.
    pub async fn run(
        self,
        listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let upkeep = tokio::spawn(crate::metrics::upkeep_forever());
        if let Some(listener) = listener {
            let router = crate::http::router(self.state.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        if let Some(worker) = self.worker {
            let stop = shutdown.clone();
            tasks.spawn(async move { worker.run(stop).await });
        }
        if let Some(dispatcher) = self.dispatcher {
            let stop = shutdown.clone();
            tasks.spawn(async move { dispatcher.run(stop).await });
        }
        // If one part dies, stop the other and report it.
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            let r = match done {
                Ok(r) => r,
                Err(e) => Err(anyhow::Error::from(e)),
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "a service task failed; shutting down");
                shutdown.cancel();
                result = Err(e);
            }
        }
        upkeep.abort();
        result
    }
}
