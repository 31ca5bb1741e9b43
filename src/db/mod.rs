//! Postgres access. All SQL lives in this module's submodules as small functions taking an
//! executor (pool or transaction), so callers choose the transaction boundaries.
//!
//! Queries are runtime-checked (`sqlx::query_as` + `FromRow`) rather than `query!` macros: the
//! schema is young, several statements are genuinely dynamic (list filters, transition patches),
//! and every statement is exercised against a real PostgreSQL by the integration tests.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgPool, migrate::Migrator};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub mod batches;
pub mod client_pages;
pub mod dashboard;
pub mod encrypted;
pub mod events;
pub mod fingerprint_keys;
pub mod idempotency;
pub mod migrations;
pub mod partners;
pub mod sandbox;
pub mod webhooks;

/// The schema, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Channel notified when a migration becomes runnable now.
pub const JOBS_CHANNEL: &str = "waba_migrator_jobs";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found")]
    NotFound,
    /// A unique or check constraint refused the write; carries the constraint name.
    #[error("constraint `{0}` violated")]
    Constraint(String),
    #[error(transparent)]
    Sqlx(sqlx::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Error::NotFound,
            sqlx::Error::Database(ref db) => match db.constraint() {
                Some(c) => Error::Constraint(c.to_owned()),
                None => Error::Sqlx(e),
            },
            e => Error::Sqlx(e),
        }
    }
}

impl Error {
    /// True when the database could not be reached or went away mid-request (pool timeout,
    /// I/O, a closed pool, or a server shutting down: SQLSTATE classes 08 and 57).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Sqlx(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::Io(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            Error::Sqlx(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
            _ => false,
        }
    }
}

/// `columns` (a `", "`-separated list) with each name prefixed by `alias.`, for statements
/// that join or update from another relation and must say whose columns they return.
pub(crate) fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connections idle longer than this are pinged before use.
const IDLE_RECHECK: Duration = Duration::from_secs(2);

/// Connects a pool with sane timeouts: a request never hangs on an unreachable database.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("waba-migrator");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx already pings every connection when it goes back to the pool; pinging it again
        // on every acquire doubled the round trips of each one-statement use. A connection
        // idle for a while (the server may have restarted meanwhile) is still checked.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > IDLE_RECHECK {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
}

/// Applies pending schema migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether the database answers and every embedded migration is applied.
pub async fn schema_current(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.contains(&m.version)))
}

/// LISTENs on `channel` for wake-ups, reconnecting with backoff; after every (re)connect it
/// wakes the claim loop once, since notifications sent while disconnected are lost.
pub async fn listen(
    pool: PgPool,
    channel: &'static str,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(channel).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        match connected {
            Ok(mut l) => {
                backoff = Duration::from_millis(200);
                wake.notify_one();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        n = l.try_recv() => match n {
                            Ok(Some(_)) => wake.notify_one(),
                            // Connection lost; sqlx reconnects on the next call.
                            Ok(None) => wake.notify_one(),
                            Err(e) => {
                                tracing::debug!(error = %e, "listener error; reconnecting");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "listener could not connect"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
