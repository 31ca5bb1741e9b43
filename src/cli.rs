//! The subcommands behind `main`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tracing::{info, warn};
use url::Url;

use crate::app::{App, SandboxSeeder, Settings, Upstreams};
use crate::config::{Cli, Command, DbArgs, SandboxArgs, SandboxFaultArgs, ServeArgs};
use crate::crypto::{self, Cipher};
use crate::domain::RetryPolicy;
use crate::embedded_pg::EmbeddedPostgres;
use crate::http::partners::{CreatePartner, create_partner_with_key};
use crate::sandbox::{FaultKind, Sandbox, SandboxConfig};
use crate::webhooks::{SystemClock, WebhookConfig};
use crate::worker::{OtpPolicy, WorkerConfig, default_owner};
use crate::{db, shutdown};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args, true).await,
        Command::Worker(args) => serve(args, false).await,
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

async fn migrate(args: DbArgs) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let url = args
        .database_url
        .as_ref()
        .context("DATABASE_URL is required for `migrate`")?;
    let pool = db::connect(url.expose_secret(), 2)
        .await
        .context("cannot connect to DATABASE_URL")?;
    db::migrate(&pool)
        .await
        .context("schema migration failed")?;
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
    let url = args
        .db
        .database_url
        .as_ref()
        .context("DATABASE_URL is required for `reencrypt`")?;
    let pool = db::connect(url.expose_secret(), 2)
        .await
        .context("cannot connect to DATABASE_URL")?;
    let report = crate::crypto_rotation::reencrypt(&pool, &cipher, args.reencrypt_batch_size).await;
    pool.close().await;
    let report = report.context("re-encryption failed (safe to run again)")?;
    print!("{report}");
    anyhow::ensure!(
        report.undecryptable() == 0,
        "{} stored value(s) open under neither ENCRYPTION_KEY nor ENCRYPTION_KEY_OLD (ids above)",
        report.undecryptable()
    );
    Ok(())
}

/// The database: `DATABASE_URL`, or a private PostgreSQL under `DATA_DIR`.
async fn database(
    args: &DbArgs,
    run_migrations: bool,
) -> anyhow::Result<(PgPool, Option<EmbeddedPostgres>)> {
    match &args.database_url {
        Some(url) => {
            let pool = db::connect(url.expose_secret(), args.database_max_connections)
                .await
                .context("cannot connect to DATABASE_URL")?;
            if run_migrations {
                db::migrate(&pool)
                    .await
                    .context("schema migration failed")?;
            }
            Ok((pool, None))
        }
        None => {
            let dir = args.data_dir.join("postgres");
            warn!(
                data_dir = %dir.display(),
                "DATABASE_URL is not set: starting a private PostgreSQL (development only)"
            );
            let pg = EmbeddedPostgres::start(&dir, None)
                .await
                .context("could not start the embedded PostgreSQL")?;
            let pool = db::connect(pg.database_url(), args.database_max_connections)
                .await
                .context("cannot connect to the embedded PostgreSQL")?;
            db::migrate(&pool)
                .await
                .context("schema migration failed")?;
            Ok((pool, Some(pg)))
        }
    }
}

/// `ENCRYPTION_KEY`, or (embedded database only) a key kept beside the data.
fn encryption_key(args: &ServeArgs, embedded: bool) -> anyhow::Result<Cipher> {
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
pub fn worker_config(args: &ServeArgs) -> WorkerConfig {
    WorkerConfig {
        owner: default_owner(),
        concurrency: args.worker_concurrency,
        lease: args.lease(),
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace_seconds.max(0.0)),
        channel_poll: Duration::from_millis(args.channel_poll_ms.max(10)),
        retry: RetryPolicy {
            base: Duration::from_millis(args.retry_base_ms.max(1)),
            cap: Duration::from_secs(args.retry_cap_seconds.max(1)),
            max_retry_after: Duration::from_secs(3600),
            max_attempts: args.max_step_attempts,
            channel_timeout: Duration::from_secs(args.channel_timeout_seconds),
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
pub fn webhook_config(args: &ServeArgs) -> WebhookConfig {
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
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace_seconds.max(0.0)),
    }
}

const DEV_PARTNER: &str = "Development partner (sandbox)";

async fn serve(args: ServeArgs, http: bool) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let stop = shutdown::on_signal();
    // The key first: a bad one is reported before anything connects or starts.
    let cipher = encryption_key(&args, args.db.database_url.is_none())?;
    let (pool, embedded) = database(&args.db, args.run_migrations).await?;

    let mut upstreams = Upstreams {
        meta_graph_url: args.meta_graph_url.clone(),
        meta_graph_version: args.meta_graph_version.clone(),
        meta_access_token: args
            .meta_access_token
            .clone()
            .unwrap_or_else(|| SecretString::from("sandbox-token")),
        d360_hub_url: args.d360_hub_url.clone(),
        d360_waba_url: args.d360_waba_url.clone(),
        timeout: Duration::from_secs_f64(args.upstream_timeout_seconds.max(1.0)),
    };
    let sandbox_mode = args.sandbox_mode();
    let mut seeder = args
        .sandbox
        .sandbox_seed_numbers
        .then(|| SandboxSeeder::Remote(reqwest::Client::new(), args.meta_graph_url.clone()));
    if sandbox_mode {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sb = Sandbox::new(sandbox_config(&args.sandbox)?);
        seeder = Some(SandboxSeeder::InProcess(sb.clone()));
        tokio::spawn(crate::sandbox::serve(
            listener,
            sb,
            stop.clone().cancelled_owned(),
        ));
        upstreams.meta_graph_url = Url::parse(&format!("http://{addr}"))?;
        upstreams.d360_hub_url = Url::parse(&format!("http://{addr}/api/v2"))?;
        upstreams.d360_waba_url = Url::parse(&format!("http://{addr}"))?;
        warn!(
            sandbox = %addr,
            "SANDBOX MODE: META_ACCESS_TOKEN is not set, so every upstream call goes to the built-in simulator at http://{addr} (counters: http://{addr}/_sandbox/counters). Nothing real is migrated."
        );
    } else if args.admin_api_key.is_none() {
        anyhow::bail!("ADMIN_API_KEY is required outside sandbox mode (META_ACCESS_TOKEN is set)");
    }

    let app = App::new(
        pool.clone(),
        Settings {
            upstreams,
            admin_api_key: args.admin_api_key.clone(),
            cipher,
            worker: worker_config(&args),
            run_workers: !args.no_workers,
            sandbox_seeder: seeder,
            webhooks: webhook_config(&args),
            clock: Arc::new(SystemClock),
            rate_limit: Some((args.rate_limit_per_second, args.rate_limit_burst)),
            dashboard: crate::dashboard::DashboardConfig {
                stuck_after: Duration::from_secs(args.dashboard_stuck_minutes.saturating_mul(60)),
                secure_cookie: args.dashboard_secure_cookie,
            },
        },
    )?;

    if sandbox_mode && args.admin_api_key.is_none() && http {
        let created = match db::partners::find_by_name(&pool, DEV_PARTNER).await? {
            Some(p) => {
                let (key, prefix) = crypto::generate_api_key();
                db::partners::insert_api_key(
                    &pool,
                    uuid::Uuid::now_v7(),
                    p.id,
                    &prefix,
                    &crypto::hash_api_key(key.expose_secret()),
                )
                .await?;
                key.expose_secret().to_owned()
            }
            None => {
                create_partner_with_key(
                    &app.state,
                    &CreatePartner {
                        name: DEV_PARTNER.into(),
                        d360_partner_id: "sandboxPA".into(),
                        d360_api_key: "sandbox-partner-api-key".into(),
                        callback_url: None,
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("could not create the development partner: {e:?}"))?
                .api_key
            }
        };
        println!(
            "\n  Development partner key (sandbox mode; a new one each start):\n\n    export KEY={created}\n"
        );
    }

    let listener = if http {
        let l = TcpListener::bind(args.bind_addr)
            .await
            .with_context(|| format!("cannot listen on BIND_ADDR {}", args.bind_addr))?;
        info!(addr = %l.local_addr()?, "API listening");
        Some(l)
    } else {
        None
    };
    let result = app.run(listener, stop.clone()).await;
    pool.close().await;
    if let Some(pg) = embedded
        && let Err(e) = pg.stop().await
    {
        warn!(error = %e, "could not stop the embedded PostgreSQL");
    }
    result
}
