//! Wiring: application state, upstream clients, and running the API and workers together.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::core::auth::{AuthConfig, AuthGuard};
use crate::core::rate_limit::RateLimiter;
use crate::core::{
    AppState, ClientPageConfig, Clock, DashboardConfig, SandboxSeeder, Upstreams, WebhookConfig,
};
use crate::crypto::{self, Cipher};
use crate::http::server::ServeConfig;
use crate::shutdown::Stop;
use crate::webhooks::{BatchTicker, Dispatcher};
use crate::worker::{Deps, FailPoints, Worker, WorkerConfig};

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
    /// Dry-run prechecks per caller a minute (`PRECHECK_RATE_PER_MINUTE`); 0: unlimited.
    pub precheck_rate_per_minute: u32,
    /// Failed-authentication limits per client address; trusted proxies.
    pub auth: AuthConfig,
    /// The support dashboard's settings.
    pub dashboard: DashboardConfig,
    /// The end client's page.
    pub client_page: ClientPageConfig,
}

/// The HTML pages served beside the API: the support dashboard and the end client's page.
pub fn pages() -> axum::Router<AppState> {
    crate::dashboard::routes().merge(crate::client_page::routes())
}

/// What a process serves on its HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// The API, its documents, the dashboard and the client page (`serve`).
    Api,
    /// `/healthz`, `/readyz` and `/metrics` only (`worker`): health checks and scrapes of the
    /// metrics its workers record.
    Operations,
}

/// The HTTP server of a process: its listener, its limits and what it serves.
pub struct Listener {
    pub listener: TcpListener,
    pub config: ServeConfig,
    pub endpoints: Endpoints,
}

/// The service: API state plus (optionally) a worker.
pub struct App {
    pub state: AppState,
    pub worker: Option<Worker>,
    /// Runs wherever the migration workers run.
    pub dispatcher: Option<Dispatcher>,
    /// Writes the batches' webhooks; runs wherever the dispatcher runs.
    pub batch_ticker: Option<BatchTicker>,
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
            d360: d360.clone(),
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
            precheck_limiter: RateLimiter::per_minute(settings.precheck_rate_per_minute)
                .map(Arc::new),
            auth: Arc::new(AuthGuard::new(&settings.auth)),
            dashboard: settings.dashboard.clone(),
            client_page: settings.client_page.clone(),
            client_page_limits: Default::default(),
            batch_csv: crate::http::batches::read_csv_upload,
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
        let batch_ticker = settings
            .run_workers
            .then(|| BatchTicker::new(state.clone(), settings.webhooks.batch_progress_interval));
        let worker = settings.run_workers.then(|| {
            Worker::new(Deps {
                pool,
                meta,
                d360,
                cipher: settings.cipher.clone(),
                config: settings.worker.clone(),
                call_time: settings.upstreams.timeout,
                fail_points: fail_points.clone(),
                sandbox_seeder: settings.sandbox_seeder.clone(),
            })
        });
        Ok(Self {
            state,
            worker,
            dispatcher,
            batch_ticker,
            fail_points,
        })
    }

    /// Serves `http` (the API, or the operations endpoints alone) and runs the worker until
    /// `stop`. On SIGTERM the API drains for `config.drain` first (`/readyz` answers 503; on
    /// another stop, or serving the operations endpoints alone, it does not drain); it returns
    /// once its connections are closed, at most
    /// `config.shutdown_timeout` after that. The worker stops claiming at once and its in-flight
    /// steps finish or release their leases.
    pub async fn run(self, http: Listener, stop: Stop) -> anyhow::Result<()> {
        let shutdown = stop.token().clone();
        let mut tasks = tokio::task::JoinSet::new();
        let upkeep = tokio::spawn(crate::metrics::upkeep_forever());
        let Listener {
            listener,
            config,
            endpoints,
        } = http;
        let router = match endpoints {
            Endpoints::Api => crate::http::router(self.state.clone(), pages()),
            Endpoints::Operations => crate::http::operations_router(self.state.clone()),
        };
        let signal = stop.clone();
        // A worker's endpoints are behind no load balancer that would need to see it go: it
        // does not wait before it stops answering.
        let drain = match endpoints {
            Endpoints::Api => config.drain,
            Endpoints::Operations => std::time::Duration::ZERO,
        };
        let signalled = async move {
            signal.token().cancelled().await;
            if signal.by_sigterm() {
                drain
            } else {
                std::time::Duration::ZERO
            }
        };
        tasks.spawn(async move {
            crate::http::server::serve(listener, router, config, signalled).await;
            Ok(())
        });
        if let Some(worker) = self.worker {
            let stop = shutdown.clone();
            tasks.spawn(async move { worker.run(stop).await });
        }
        if let Some(dispatcher) = self.dispatcher {
            let stop = shutdown.clone();
            tasks.spawn(async move { dispatcher.run(stop).await });
        }
        if let Some(ticker) = self.batch_ticker {
            let stop = shutdown.clone();
            tasks.spawn(async move { ticker.run(stop).await });
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
                stop.cancel();
                result = Err(e);
            }
        }
        upkeep.abort();
        result
    }
}
