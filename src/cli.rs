//! The subcommands behind `main`.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt as _;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tracing::{info, warn};
use url::Url;

use crate::app::{App, Endpoints, Listener, Settings};
use crate::config::{
    ApiArgs, Cli, Command, ConnectionArgs, DbArgs, ListenArgs, RunArgs, SandboxArgs,
    SandboxFaultArgs,
};
use crate::core::auth::AuthConfig;
use crate::core::settings::{OtpPolicy, SystemClock, WebhookConfig};
use crate::core::{SandboxSeeder, Upstreams};
use crate::crypto::{self, Cipher};
use crate::domain::RetryPolicy;
use crate::embedded_pg::EmbeddedPostgres;
use crate::http::server::{self, ServeConfig};
use crate::sandbox::{FaultKind, Sandbox, SandboxConfig};
use crate::worker::{WorkerConfig, default_owner};
use crate::{db, shutdown};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            args.validate().map_err(anyhow::Error::msg)?;
            serve(Role::Api(args.api), args.run).await
        }
        Command::Worker(args) => {
            args.validate().map_err(anyhow::Error::msg)?;
            serve(Role::Worker(args.listen), args.run).await
        }
        Command::Migrate(args) => migrate(args).await,
        Command::Reencrypt(args) => reencrypt(args).await,
        Command::Sandbox(args) => sandbox(args).await,
        Command::Openapi => {
            print!("{}", crate::http::openapi_yaml());
            Ok(())
        }
        Command::Healthcheck { url } => healthcheck(&url).await,
    }
}

async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url} failed"))?;
    anyhow::ensure!(
        res.status().is_success(),
        "GET {url} answered {}",
        res.status()
    );
    Ok(())
}

/// `migrate`: the schema of DATABASE_URL, or of the embedded database under DATA_DIR (started
/// for the occasion, or the one a running `serve` uses).
async fn migrate(args: DbArgs) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let args = DbArgs {
        database_max_connections: 2,
        ..args
    };
    let (pool, embedded) = database(&args, true).await?;
    pool.close().await;
    stop_if_started(embedded).await?;
    info!("schema is current");
    Ok(())
}

/// `reencrypt`: every stored secret re-sealed under ENCRYPTION_KEY; fails if any value opens
/// under neither key.
async fn reencrypt(args: crate::config::ReencryptArgs) -> anyhow::Result<()> {
    let cipher =
        Cipher::from_base64_with_old(&args.encryption_key, args.encryption_key_old.as_ref())
            .context("invalid ENCRYPTION_KEY or ENCRYPTION_KEY_OLD")?;
    if !cipher.has_old_key() {
        warn!(
            "ENCRYPTION_KEY_OLD is not set: only checking that every value opens under ENCRYPTION_KEY"
        );
    }
    // DATABASE_URL, or the embedded database under DATA_DIR (started for the occasion, or the
    // one a running `serve` uses), as `migrate` does.
    let db_args = DbArgs {
        database_max_connections: 2,
        ..args.db.clone()
    };
    let (pool, embedded) = database(&db_args, false).await?;
    let report = crate::crypto_rotation::reencrypt(&pool, &cipher, args.reencrypt_batch_size).await;
    let clean = report.as_ref().is_ok_and(|r| r.undecryptable() == 0);
    // `None`: not asked for, or not done since some value opens under neither key.
    let replaced = if args.new_fingerprint_key && clean {
        Some(crate::crypto_rotation::replace_fingerprint_key(&pool, &cipher).await)
    } else {
        None
    };
    pool.close().await;
    stop_if_started(embedded).await?;
    let report = report.context("re-encryption failed (safe to run again)")?;
    print!("{report}");
    match replaced {
        Some(Err(e)) => {
            return Err(anyhow::Error::from(e)
                .context("every value is re-sealed, but the fingerprint key could not be replaced (safe to run again)"));
        }
        Some(Ok(())) => println!(
            "fingerprint key replaced: client-page links and Idempotency-Key records made before no longer match; restart every replica"
        ),
        None if args.new_fingerprint_key => {
            println!(
                "fingerprint key NOT replaced: some values open under neither key (listed above)"
            )
        }
        None => {}
    }
    anyhow::ensure!(
        report.undecryptable() == 0,
        "{} stored value(s) open under neither ENCRYPTION_KEY nor ENCRYPTION_KEY_OLD (ids above)",
        report.undecryptable()
    );
    Ok(())
}

/// The database: `DATABASE_URL` (its schema applied if `run_migrations`, else checked), or a
/// private PostgreSQL under `DATA_DIR` (always migrated). The embedded server is returned so
/// the caller stops it ([`stop_if_started`]); if this fails after starting it, it is stopped
/// here.
async fn database(
    args: &DbArgs,
    run_migrations: bool,
) -> anyhow::Result<(PgPool, Option<EmbeddedPostgres>)> {
    match &args.database_url {
        Some(url) => {
            let pool = open(url.expose_secret(), "DATABASE_URL", args, run_migrations).await?;
            Ok((pool, None))
        }
        None => {
            let dir = args.data_dir.join("postgres");
            warn!(
                data_dir = %dir.display(),
                "DATABASE_URL is not set: using the private PostgreSQL under DATA_DIR, started if it is not running (development only)"
            );
            let pg = EmbeddedPostgres::start(&dir, None)
                .await
                .context("could not start the embedded PostgreSQL")?;
            match open(pg.database_url(), "the embedded PostgreSQL", args, true).await {
                Ok(pool) => Ok((pool, Some(pg))),
                Err(e) => {
                    if let Err(stop) = stop_if_started(Some(pg)).await {
                        warn!(error = %stop, "could not stop the embedded PostgreSQL");
                    }
                    Err(e)
                }
            }
        }
    }
}

/// A pool on `url` (`what` names it in errors) whose schema is applied if `run_migrations`,
/// else checked ([`ensure_schema`]); on failure the pool is closed.
async fn open(
    url: &str,
    what: &str,
    args: &DbArgs,
    run_migrations: bool,
) -> anyhow::Result<PgPool> {
    let pool = db::connect(url, args.database_max_connections)
        .await
        .with_context(|| format!("cannot connect to {what}"))?;
    let ready = if run_migrations {
        db::migrate(&pool).await.context("schema migration failed")
    } else {
        ensure_schema(&pool).await
    };
    match ready {
        Ok(()) => Ok(pool),
        Err(e) => {
            pool.close().await;
            Err(e)
        }
    }
}

/// Stops the embedded PostgreSQL if this process started it. One it reused (already running
/// on DATA_DIR, started by e.g. a running `serve`) belongs to the process that started it.
async fn stop_if_started(embedded: Option<EmbeddedPostgres>) -> anyhow::Result<()> {
    match embedded {
        Some(pg) if !pg.reused() => pg.stop().await,
        _ => Ok(()),
    }
}

/// A database whose schema is not this version's (none at all, or older) stops the process
/// here, with one line saying how to apply it, rather than at its first query.
async fn ensure_schema(pool: &PgPool) -> anyhow::Result<()> {
    const APPLY: &str = "run `waba-migrator migrate` (same DATABASE_URL) first (`serve` and `worker` also apply it when started with RUN_MIGRATIONS=true)";
    match db::schema_current(pool).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            anyhow::bail!(
                "the database's schema is older than this version of waba-migrator: {APPLY}"
            )
        }
        // No `_sqlx_migrations` table: the schema was never applied.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
            anyhow::bail!("the database has no waba-migrator schema: {APPLY}")
        }
        Err(e) => Err(anyhow::Error::from(e).context("cannot read the database's schema version")),
    }
}

/// `ENCRYPTION_KEY`, or (embedded database only) a key kept beside the data.
fn encryption_key(args: &RunArgs, embedded: bool) -> anyhow::Result<Cipher> {
    let old = args.encryption_key_old.as_ref();
    if let Some(k) = &args.encryption_key {
        return Cipher::from_base64_with_old(k, old)
            .context("invalid ENCRYPTION_KEY or ENCRYPTION_KEY_OLD");
    }
    anyhow::ensure!(
        embedded,
        "ENCRYPTION_KEY is required when DATABASE_URL is set (32 random bytes, base64: `openssl rand -base64 32`)"
    );
    let path = args.db.data_dir.join("encryption.key");
    let key = match std::fs::read_to_string(&path) {
        Ok(s) => SecretString::from(s.trim().to_owned()),
        Err(_) => {
            let k = Cipher::generate_key();
            write_private(&path, k.expose_secret())?;
            info!(path = %path.display(), "generated an encryption key for the embedded database");
            k
        }
    };
    Cipher::from_base64_with_old(&key, old)
        .with_context(|| format!("invalid key in {} or ENCRYPTION_KEY_OLD", path.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

pub fn sandbox_config(f: &SandboxFaultArgs) -> anyhow::Result<SandboxConfig> {
    let kinds = f
        .sandbox_fault_kinds
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<FaultKind>()
                .map_err(|_| anyhow::anyhow!("SANDBOX_FAULT_KINDS: unknown fault kind `{s}`"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut cfg = SandboxConfig {
        fault_rate: f.sandbox_fault_rate,
        latency: Duration::from_millis(f.sandbox_latency_ms),
        channel_running_after: Duration::from_millis(f.sandbox_channel_delay_ms),
        api_key_rate_window: Duration::from_millis(f.sandbox_api_key_window_ms),
        hang_for: Duration::from_millis(f.sandbox_hang_ms),
        seed: f.sandbox_seed,
        ..SandboxConfig::default()
    };
    if !kinds.is_empty() {
        cfg.fault_kinds = kinds;
    }
    Ok(cfg)
}

async fn sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    let cfg = sandbox_config(&args.faults)?;
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let addr = listener.local_addr()?;
    info!(%addr, "sandbox listening: META_GRAPH_URL=http://{addr} D360_HUB_URL=http://{addr}/api/v2 D360_WABA_URL=http://{addr}");
    let stop = shutdown::on_signal();
    crate::sandbox::serve(listener, Sandbox::new(cfg), stop.cancelled_owned()).await?;
    Ok(())
}

/// The worker settings from the command line.
pub fn worker_config(run: &RunArgs) -> WorkerConfig {
    let args = &run.worker;
    WorkerConfig {
        owner: default_owner(),
        concurrency: args.worker_concurrency,
        lease: run.lease(),
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace_seconds.max(0.0)),
        channel_poll: Duration::from_millis(args.channel_poll_ms.max(10)),
        signup_poll_max: Duration::from_secs(args.signup_poll_max_seconds.max(1)),
        setup_poll: Duration::from_secs(args.signup_setup_poll_seconds.max(1)),
        retry: RetryPolicy {
            base: Duration::from_millis(args.retry_base_ms.max(1)),
            cap: Duration::from_secs(args.retry_cap_seconds.max(1)),
            max_retry_after: Duration::from_secs(3600),
            max_attempts: args.max_step_attempts,
            channel_timeout: Duration::from_secs(args.channel_timeout_seconds),
            signup_timeout: Duration::from_secs(args.signup_timeout_seconds),
            try_later_base: Duration::from_secs(args.try_again_later_base_seconds.max(1)),
            try_later_cap: Duration::from_secs(900),
            try_later_total: Duration::from_secs(args.try_again_later_total_seconds),
        },
        otp: OtpPolicy {
            ttl: Duration::from_secs(args.otp_ttl_seconds),
            resend_cooldown: Duration::from_secs(args.otp_resend_cooldown_seconds),
            max_attempts: args.otp_max_attempts,
            voice_fallback: (args.otp_voice_fallback_seconds > 0)
                .then(|| Duration::from_secs(args.otp_voice_fallback_seconds)),
        },
    }
}

/// The webhook settings from the command line.
pub fn webhook_config(run: &RunArgs) -> WebhookConfig {
    let args = &run.webhooks;
    WebhookConfig {
        concurrency: args.webhook_concurrency,
        attempt_timeout: Duration::from_secs_f64(args.webhook_timeout_seconds),
        schedule: args
            .webhook_retry_schedule
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        secret_overlap: Duration::from_secs(args.webhook_secret_overlap_seconds),
        allow_private: args.allow_private_callbacks,
        poll_interval: Duration::from_millis(run.worker.poll_interval_ms.max(10)),
        shutdown_grace: Duration::from_secs_f64(run.worker.shutdown_grace_seconds.max(0.0)),
        batch_progress_interval: Duration::from_secs(args.batch_progress_interval_seconds),
    }
}

/// The HTTP server's limits and shutdown from the command line; warns when the connection cap
/// does not fit the open-file limit.
pub fn serve_config(args: &ConnectionArgs) -> ServeConfig {
    let open_files = server::open_file_limit();
    let max_connections = args
        .http_max_connections
        .unwrap_or_else(|| server::default_max_connections(open_files));
    if let Some(warning) = server::files_warning(max_connections, open_files) {
        warn!("{warning}");
    }
    ServeConfig {
        header_read_timeout: Duration::from_secs_f64(args.http_header_read_timeout_seconds),
        idle_timeout: Duration::from_secs_f64(args.http_idle_timeout_seconds),
        max_connections,
        drain: Duration::from_secs_f64(args.shutdown_drain_seconds),
        shutdown_timeout: Duration::from_secs_f64(args.http_shutdown_timeout_seconds),
    }
}

const DEV_PARTNER: &str = "Development partner (sandbox)";

/// Where the built-in sandbox listens by default (`SANDBOX_BIND`, like `waba-migrator sandbox`).
const DEFAULT_SANDBOX_BIND: &str = "127.0.0.1:8090";

/// The built-in sandbox of sandbox mode: listening on `SANDBOX_BIND` (default 127.0.0.1:8090,
/// or a free port when that one is taken), its world kept in the service's database so that a
/// restart is invisible to migrations in flight.
async fn start_sandbox(
    run: &RunArgs,
    pool: &PgPool,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<(Sandbox, std::net::SocketAddr)> {
    let listener = match run.sandbox.sandbox_bind {
        Some(addr) => TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on SANDBOX_BIND {addr}"))?,
        None => match TcpListener::bind(DEFAULT_SANDBOX_BIND).await {
            Ok(l) => l,
            Err(e) => {
                warn!(
                    error = %e,
                    "the sandbox cannot listen on {DEFAULT_SANDBOX_BIND}; using a free port (set SANDBOX_BIND to choose)"
                );
                TcpListener::bind("127.0.0.1:0").await?
            }
        },
    };
    let addr = listener.local_addr()?;
    let sb = Sandbox::new(sandbox_config(&run.sandbox.faults)?);
    db::sandbox::ensure_table(pool)
        .await
        .context("cannot create the sandbox's table")?;
    if let Some(snapshot) = db::sandbox::load(pool)
        .await
        .context("cannot read the sandbox's world")?
    {
        match sb.restore(&snapshot) {
            Ok(()) => info!("sandbox: restored its world from the database"),
            Err(e) => warn!(error = %e, "sandbox: starting with an empty world"),
        }
    }
    let store_pool = pool.clone();
    sb.persist_to(Arc::new(move |snapshot: Vec<u8>| {
        let pool = store_pool.clone();
        Box::pin(async move {
            db::sandbox::save(&pool, &snapshot)
                .await
                .map_err(|e| e.to_string())
        })
    }));
    tokio::spawn(crate::sandbox::serve(
        listener,
        sb.clone(),
        stop.clone().cancelled_owned(),
    ));
    Ok((sb, addr))
}

/// What a `serve` or `worker` process serves besides its workers.
enum Role {
    /// `serve`: the API (and the workers unless `--no-workers`).
    Api(ApiArgs),
    /// `worker`: the workers, and the operations endpoints alone.
    Worker(ListenArgs),
}

impl Role {
    fn api(&self) -> Option<&ApiArgs> {
        match self {
            Role::Api(api) => Some(api),
            Role::Worker(_) => None,
        }
    }

    fn listen(&self) -> &ListenArgs {
        match self {
            Role::Api(api) => &api.listen,
            Role::Worker(listen) => listen,
        }
    }

    fn runs_workers(&self) -> bool {
        self.api().is_none_or(|a| !a.no_workers)
    }
}

/// Why sandbox mode does not split the API and the workers: each process would run its own
/// in-process sandbox, neither knowing what the other's did.
const SANDBOX_SPLIT: &str = "sandbox mode runs the API and the workers in one process (`waba-migrator serve`, without --no-workers); to split them, run `waba-migrator sandbox` and point META_GRAPH_URL, D360_HUB_URL (its /api/v2) and D360_WABA_URL at it, with META_ACCESS_TOKEN set to any value and SANDBOX_SEED_NUMBERS=true";

/// `serve` or `worker` (its settings checked by `ServeArgs::validate` or
/// `WorkerProcessArgs::validate`): the database, then the service on it until a signal; the
/// embedded PostgreSQL, if this process started it, is stopped on every way out.
async fn serve(role: Role, run: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !run.sandbox_mode() || (role.api().is_some() && role.runs_workers()),
        SANDBOX_SPLIT
    );
    let stop = shutdown::on_signals();
    // The key first: a bad one is reported before anything connects or starts.
    let cipher = encryption_key(&run, run.db.database_url.is_none())?;
    let (pool, embedded) = database(&run.db, run.run_migrations).await?;
    // A panic on this task (not one in a spawned task, which tokio catches) stops the service's
    // background tasks (they hold pool connections), then the embedded PostgreSQL, then goes
    // on unwinding.
    let stopping = stop.clone();
    let result = AssertUnwindSafe(serve_on(&pool, cipher, role, run, stop))
        .catch_unwind()
        .await;
    if result.is_err() {
        stopping.cancel();
    }
    if tokio::time::timeout(Duration::from_secs(10), pool.close())
        .await
        .is_err()
    {
        warn!("database connections still in use 10 s after stopping; closing anyway");
    }
    if let Err(e) = stop_if_started(embedded).await {
        warn!(error = %e, "could not stop the embedded PostgreSQL");
    }
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The service on `pool` until `stop` (or until it fails to start).
async fn serve_on(
    pool: &PgPool,
    cipher: Cipher,
    role: Role,
    run: RunArgs,
    stop: shutdown::Stop,
) -> anyhow::Result<()> {
    if let Some(column) = crate::crypto_rotation::first_unopenable(pool, &cipher).await? {
        anyhow::bail!(
            "ENCRYPTION_KEY does not open the secrets stored in this database ({column}): start with the key they were sealed with (during a rotation, the new one with ENCRYPTION_KEY_OLD set to the old one; with the embedded database and no ENCRYPTION_KEY, the key is DATA_DIR/encryption.key)"
        );
    }
    let cipher = crate::crypto_rotation::with_kept_fingerprint_key(pool, cipher).await?;
    let api = role.api();

    let up = &run.upstreams;
    let mut upstreams = Upstreams {
        meta_graph_url: up.meta_graph_url.clone(),
        meta_graph_version: up.meta_graph_version.clone(),
        meta_access_token: up
            .meta_access_token
            .clone()
            .unwrap_or_else(|| SecretString::from("sandbox-token")),
        d360_hub_url: up.d360_hub_url.clone(),
        d360_waba_url: up.d360_waba_url.clone(),
        timeout: Duration::from_secs_f64(up.upstream_timeout_seconds.max(1.0)),
    };
    let sandbox_mode = run.sandbox_mode();
    let mut seeder = up
        .sandbox_seed_numbers
        .then(|| SandboxSeeder::Remote(reqwest::Client::new(), up.meta_graph_url.clone()));
    let mut sandbox_addr = None;
    if sandbox_mode {
        let (sb, addr) = start_sandbox(&run, pool, stop.token()).await?;
        seeder = Some(SandboxSeeder::InProcess(sb));
        upstreams.meta_graph_url = Url::parse(&format!("http://{addr}"))?;
        upstreams.d360_hub_url = Url::parse(&format!("http://{addr}/api/v2"))?;
        upstreams.d360_waba_url = Url::parse(&format!("http://{addr}"))?;
        warn!(
            sandbox = %format!("http://{addr}"),
            control = %format!("http://{addr}/_sandbox"),
            "SANDBOX MODE: META_ACCESS_TOKEN is not set, so every upstream call goes to the built-in simulator at http://{addr} (control API: http://{addr}/_sandbox). Nothing real is migrated."
        );
        sandbox_addr = Some(addr);
    } else if api.is_some_and(|a| a.admin_api_key.is_none()) {
        anyhow::bail!("ADMIN_API_KEY is required outside sandbox mode (META_ACCESS_TOKEN is set)");
    }

    // Sandbox mode without ADMIN_API_KEY: an admin key for this run, shown in the banner.
    let dev_admin_key = (sandbox_mode && api.is_some_and(|a| a.admin_api_key.is_none()))
        .then(|| crypto::generate_api_key().0);
    let admin_api_key = api
        .and_then(|a| a.admin_api_key.clone())
        .or_else(|| dev_admin_key.clone());

    let app = App::new(
        pool.clone(),
        Settings {
            upstreams,
            admin_api_key,
            cipher,
            worker: worker_config(&run),
            run_workers: role.runs_workers(),
            sandbox_seeder: seeder,
            webhooks: webhook_config(&run),
            clock: Arc::new(SystemClock),
            rate_limit: api.map(|a| (a.rate_limit_per_second, a.rate_limit_burst)),
            precheck_rate_per_minute: api.map_or(0, |a| a.precheck_rate_per_minute),
            auth: api
                .map(|a| AuthConfig {
                    failure_limit: Some((a.auth_failures_per_minute, a.auth_failure_burst)),
                    trusted_proxies: a.trusted_proxies.clone(),
                })
                .unwrap_or_default(),
            dashboard: api
                .map(|a| crate::core::DashboardConfig {
                    stuck_after: Duration::from_secs(a.dashboard_stuck_minutes.saturating_mul(60)),
                    secure_cookie: a.dashboard_secure_cookie(),
                })
                .unwrap_or_default(),
            client_page: api.map(|a| a.client_page()).unwrap_or_default(),
        },
    )?;

    let listen = role.listen();
    let listener = TcpListener::bind(listen.bind_addr).await.with_context(|| match &role {
        Role::Api(_) => format!("cannot listen on BIND_ADDR {}", listen.bind_addr),
        Role::Worker(_) => format!(
            "cannot listen on BIND_ADDR {} (a worker serves /healthz, /readyz and /metrics there: give each process on a host its own, e.g. BIND_ADDR=127.0.0.1:8081)",
            listen.bind_addr
        ),
    })?;
    let config = serve_config(&listen.connections);
    let endpoints = if api.is_some() {
        Endpoints::Api
    } else {
        Endpoints::Operations
    };
    info!(
        addr = %listener.local_addr()?,
        max_connections = config.max_connections,
        header_read_timeout_seconds = config.header_read_timeout.as_secs_f64(),
        idle_timeout_seconds = config.idle_timeout.as_secs_f64(),
        "{}",
        match endpoints {
            Endpoints::Api => "API listening",
            Endpoints::Operations => "operations endpoints listening",
        }
    );

    if let Some(admin_key) = &dev_admin_key {
        let partner_key = development_partner_key(&app, pool).await?;
        let banner = dev_banner(
            listener.local_addr()?,
            sandbox_addr,
            partner_key.expose_secret(),
            admin_key.expose_secret(),
        );
        // stderr: stdout carries only log lines (one JSON object each when not a terminal).
        eprintln!("{banner}");
    }

    if !sandbox_mode {
        // Whether Meta takes the token, said once at start (the service starts either way).
        let meta = app.state.meta.clone();
        let version = up.meta_graph_version.clone();
        tokio::spawn(async move {
            crate::core::upstream_check::meta_token(meta.as_ref())
                .await
                .log(&version);
        });
    }

    app.run(
        Listener {
            listener,
            config,
            endpoints,
        },
        stop,
    )
    .await
}

/// A new key of the development partner (created at the first start).
async fn development_partner_key(app: &App, pool: &PgPool) -> anyhow::Result<SecretString> {
    Ok(match db::partners::find_by_name(pool, DEV_PARTNER).await? {
        Some(p) => {
            let (key, prefix) = crypto::generate_api_key();
            db::partners::insert_api_key(
                pool,
                uuid::Uuid::now_v7(),
                p.id,
                &prefix,
                &crypto::hash_api_key(key.expose_secret()),
            )
            .await?;
            key
        }
        None => {
            crate::core::partners::create(
                &app.state,
                crate::core::partners::NewPartner {
                    name: DEV_PARTNER,
                    d360_partner_id: "sandboxPA",
                    d360_api_key: "sandbox-partner-api-key",
                    callback_url: None,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("could not create the development partner: {e:?}"))?
            .api_key
        }
    })
}

/// What a developer needs to start: where everything is, and keys for this run.
fn dev_banner(
    api: std::net::SocketAddr,
    sandbox: Option<std::net::SocketAddr>,
    partner_key: &str,
    admin_key: &str,
) -> String {
    use std::fmt::Write as _;
    let api = format!("http://{api}");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n  waba-migrator in SANDBOX MODE: upstream calls go to the built-in simulator; nothing real is migrated.\n"
    );
    let _ = writeln!(
        out,
        "    API       {api}    reference {api}/docs, dashboard {api}/dashboard"
    );
    if let Some(sb) = sandbox {
        let sb = format!("http://{sb}");
        let _ = writeln!(
            out,
            "    Sandbox   {sb}    control API {sb}/_sandbox (its world is kept in the database)"
        );
        let _ = writeln!(out, "      scenario numbers   curl {sb}/_sandbox/scenarios");
        let _ = writeln!(
            out,
            "      fix a scenario     curl -X POST {sb}/_sandbox/numbers/%2B15550100001/resolve   (then retry its migration)"
        );
        let _ = writeln!(
            out,
            "      start over         curl -X POST {sb}/_sandbox/reset"
        );
        let _ = writeln!(
            out,
            "      verification code  {} for every sandbox number",
            crate::sandbox::SANDBOX_OTP_CODE
        );
    }
    let _ = writeln!(
        out,
        "\n  Keys, new at each start (earlier partner keys keep working until revoked; the admin key does not):\n"
    );
    let _ = writeln!(
        out,
        "    export KEY={partner_key}        # development partner: its migrations"
    );
    let _ = writeln!(
        out,
        "    export ADMIN_KEY={admin_key}  # admin: partners, API keys, webhook secrets, every migration"
    );
    out
}
