//! PostgreSQL + schema + sandbox for the `store` and `parked` subcommands, started the way
//! `run` starts them (same PostgreSQL defaults, same sandbox and `serve` environment).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, FromArgMatches};

use super::stats::Table;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use waba_migrator::embedded_pg::EmbeddedPostgres;

use super::procs::{self, Proc};
use super::{Env, RunArgs};

/// `run`'s flags at their defaults: the `serve` environment of its throughput drive
/// (`DATABASE_MAX_CONNECTIONS=20`, `WORKER_CONCURRENCY=64`, `CHANNEL_POLL_MS=10`, info logs).
pub fn default_run_args() -> anyhow::Result<RunArgs> {
    let cmd = RunArgs::augment_args(clap::Command::new("run"));
    Ok(RunArgs::from_arg_matches(
        &cmd.try_get_matches_from(["run"])?,
    )?)
}

/// Where a subcommand works and reports: the flags `run`, `store` and `parked` share.
#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Write the JSON document here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Working directory (PostgreSQL data, logs); default /var/tmp/waba-bench-<pid>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The waba-migrator binary (default: next to this executable).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Keep the working directory afterwards (logs, database).
    #[arg(long, default_value_t = false)]
    pub keep: bool,
}

impl Output {
    /// `--dir`, else `/var/tmp/waba-bench-<pid>`.
    pub fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/waba-bench-{}", std::process::id())))
    }

    /// Prints the table and the JSON document, and writes the JSON to `--json`.
    pub fn report(&self, doc: &Value, table: &Table) -> anyhow::Result<()> {
        println!("{}", table.render());
        let text = serde_json::to_string_pretty(doc)?;
        println!("{text}");
        if let Some(path) = &self.json {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// The `waba-migrator` binary: `--bin`, else next to this executable.
pub fn migrator_bin(bin: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match bin {
        Some(b) => b.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("waba-migrator"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: build both binaries with `cargo build --release --bins` (or pass --bin)",
        bin.display()
    );
    Ok(bin)
}

/// A running PostgreSQL (schema applied) and sandbox.
pub struct Stack {
    pub pg: EmbeddedPostgres,
    pub db: sqlx::PgPool,
    pub env: Env,
    pub sandbox: Proc,
    pub postmaster: u32,
    /// PostgreSQL's TCP port on 127.0.0.1 (pgbench connects there).
    pub pg_port: u16,
    pub http: reqwest::Client,
    pub machine: Value,
}

impl Stack {
    /// Starts PostgreSQL in `dir/postgres` (fresh), migrates, starts the sandbox.
    pub async fn start(dir: &Path, bin: &Path, args: RunArgs) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        eprintln!("bench: working directory {}", dir.display());
        let pg_port = procs::free_port();
        let mut pg = EmbeddedPostgres::start(&dir.join("postgres"), Some(pg_port))
            .await
            .context("starting PostgreSQL")?;
        if args.pg_stat_statements {
            pg = Self::preload_pg_stat_statements(pg, dir, pg_port).await?;
        }
        match Self::start_rest(dir, bin, args, pg_port).await {
            Ok((db, env, sandbox, http, machine)) => Ok(Self {
                postmaster: procs::postmaster_pid(pg.data_dir()),
                pg_port,
                pg,
                db,
                env,
                sandbox,
                http,
                machine,
            }),
            Err(e) => {
                let _ = pg.stop().await;
                Err(e)
            }
        }
    }

    /// `shared_preload_libraries = 'pg_stat_statements'`, then a restart on the same data
    /// directory (the library loads at server start only). Stops the server on failure.
    async fn preload_pg_stat_statements(
        pg: EmbeddedPostgres,
        dir: &Path,
        pg_port: u16,
    ) -> anyhow::Result<EmbeddedPostgres> {
        let set = async {
            let db = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&format!("postgres://waba@127.0.0.1:{pg_port}/postgres"))
                .await?;
            sqlx::query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                .execute(&db)
                .await?;
            db.close().await;
            anyhow::Ok(())
        }
        .await;
        pg.stop().await?;
        set?;
        EmbeddedPostgres::start(&dir.join("postgres"), Some(pg_port))
            .await
            .context("restarting PostgreSQL with pg_stat_statements")
    }

    async fn start_rest(
        dir: &Path,
        bin: &Path,
        args: RunArgs,
        pg_port: u16,
    ) -> anyhow::Result<(sqlx::PgPool, Env, Proc, reqwest::Client, Value)> {
        let database_url = format!("postgres://waba@127.0.0.1:{pg_port}/waba_migrator");
        let status = tokio::process::Command::new(bin)
            .arg("migrate")
            .env("DATABASE_URL", &database_url)
            .env("RUST_LOG", "warn")
            .status()
            .await?;
        anyhow::ensure!(status.success(), "waba-migrator migrate failed");
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url)
            .await?;
        if args.pg_stat_statements {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&db)
                .await?;
            // Planning counted apart: a statement replanned on every execution shows here.
            sqlx::query("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
                .execute(&db)
                .await?;
            sqlx::query("SELECT pg_reload_conf()").execute(&db).await?;
        }
        let (version,): (String,) = sqlx::query_as("SELECT version()").fetch_one(&db).await?;
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting FROM pg_settings WHERE name IN
             ('fsync', 'synchronous_commit', 'shared_buffers', 'effective_cache_size',
              'random_page_cost', 'work_mem', 'autovacuum', 'max_connections',
              'wal_sync_method', 'full_page_writes')
             ORDER BY name",
        )
        .fetch_all(&db)
        .await?;
        let machine = json!({
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "mem_total_gib": super::mem_total_gib(),
            "postgres": version,
            "postgres_settings": settings
                .into_iter()
                .map(|(k, v)| (k, json!(v)))
                .collect::<serde_json::Map<_, _>>(),
        });

        let sb_port = procs::free_port();
        let sandbox_url = format!("http://127.0.0.1:{sb_port}");
        let sb_log = dir.join("sandbox.log");
        let sandbox = Proc::spawn(
            "sandbox",
            bin,
            &["sandbox", "--bind", &format!("127.0.0.1:{sb_port}")],
            &[
                (
                    "SANDBOX_LATENCY_MS".into(),
                    args.sandbox_latency_ms.to_string(),
                ),
                (
                    "SANDBOX_CHANNEL_DELAY_MS".into(),
                    args.sandbox_channel_delay_ms.to_string(),
                ),
                ("RUST_LOG".into(), "warn".into()),
            ],
            sb_log.clone(),
        )?;
        let http = reqwest::Client::builder()
            // `run` keeps up to --concurrency (thousands) of requests in flight.
            .pool_max_idle_per_host(4096)
            .timeout(Duration::from_secs(60))
            .build()?;
        procs::wait_ok(
            &http,
            &format!("{sandbox_url}/_sandbox/counters"),
            "sandbox",
            &sb_log,
        )
        .await?;
        let env = Env {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            database_url,
            sandbox_url,
            encryption_key: waba_migrator::crypto::Cipher::generate_key()
                .expose_secret()
                .to_owned(),
            args,
        };
        Ok((db, env, sandbox, http, machine))
    }

    /// The service's cipher (for seeding `pin_enc` it can decrypt).
    pub fn cipher(&self) -> anyhow::Result<waba_migrator::crypto::Cipher> {
        waba_migrator::crypto::Cipher::from_base64(&secrecy::SecretString::from(
            self.env.encryption_key.clone(),
        ))
        .map_err(|e| anyhow::anyhow!("encryption key: {e}"))
    }

    /// `serve` against the sandbox, as `run`'s throughput drive starts it.
    pub async fn start_serve(&self, label: &str) -> anyhow::Result<(Proc, String)> {
        self.env
            .start_serve(&self.http, &self.env.sandbox_url, label)
            .await
    }

    /// Stops the sandbox and PostgreSQL; removes the directory unless `keep` or failed.
    pub async fn stop(self, ok: bool, keep: bool) {
        self.sandbox.stop(Duration::from_secs(5)).await;
        self.db.close().await;
        if let Err(e) = self.pg.stop().await {
            eprintln!("bench: could not stop PostgreSQL: {e:#}");
        }
        if ok && !keep {
            let _ = std::fs::remove_dir_all(&self.env.dir);
        }
    }
}
