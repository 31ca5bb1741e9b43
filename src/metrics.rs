//! Prometheus metrics (`GET /metrics`): the `metrics` facade records from wherever things
//! happen; `metrics-exporter-prometheus` renders the text format.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `waba_migrations` | gauge, read from the database at scrape time (all replicas) | `state` |
//! | `waba_migrations_created_total` | counter | |
//! | `waba_migration_transitions_total` | counter | `from`, `to` |
//! | `waba_migration_failures_total` | counter | `code` |
//! | `waba_migration_duration_seconds` | histogram, creation → terminal state | `outcome` |
//! | `waba_step_duration_seconds` | histogram, one run of a step | `step` |
//! | `waba_step_retries_total` | counter | `step` |
//! | `waba_claim_lag_seconds` | histogram, due → claimed by a worker | |
//! | `waba_upstream_requests_total` | counter | `service`, `endpoint`, `status`, `error_code` |
//! | `waba_upstream_request_duration_seconds` | histogram | `service`, `endpoint` |
//! | `waba_webhook_attempts_total` | counter | `outcome` (`succeeded`, `failed`, `gave_up`) |
//! | `waba_webhook_attempt_duration_seconds` | histogram | |
//! | `waba_http_requests_total` | counter | `method`, `route`, `status` |
//! | `waba_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `waba_db_pool_connections` | gauge | `state` (`idle`, `in_use`, `max`) |
//! | `waba_http_connections` | gauge, open API connections | `slot` (`regular`, `over_limit`) |
//! | `waba_http_connections_dropped_total` | counter, connections the server closed | `reason` |
//! | `waba_api_key_lookups_total` | counter | `outcome` (`found`, `not_found`: the database; `cached_not_found`: the negative cache; `refused`: 429 before any lookup) |
//! | `waba_graph_field_unavailable` | gauge, 1 per field the configured Graph version does not have (reads go without it) | `field` (`waba.…`, `phone_number.…`) |
//!
//! Counters are per process (sum them across replicas); transition counters are incremented
//! with the database write, so a transaction that then fails to commit (the database went away
//! mid-commit) is counted once too often.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::db::migrations::MigrationRow;
use crate::domain::MigrationState;

/// Seconds: from 5 ms to an hour, for steps, HTTP calls and lags.
const SHORT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
/// Seconds: whole migrations, from a second to two days (they wait for people).
const LONG_BUCKETS: &[f64] = &[
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    24.0 * 3600.0,
    48.0 * 3600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use. If another recorder was installed first
/// (an embedding application), ours still renders, but only what it records itself.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(SHORT_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("waba_migration_duration_seconds".into()),
                    LONG_BUCKETS,
                )
            })
            .expect("bucket lists are non-empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be incomplete");
        }
        describe();
        zeroes();
        handle
    })
}

/// Counters with a known set of labels are shown from the first scrape, at 0: a rate over a
/// series that appears only at its first event misses that event.
fn zeroes() {
    counter!("waba_migrations_created_total").increment(0);
    counter!("waba_batch_admitted_total").increment(0);
    counter!("waba_batch_throttled_total").increment(0);
    for step in MigrationState::ALL.iter().filter(|s| !s.is_terminal()) {
        counter!("waba_step_retries_total", "step" => step.as_str()).increment(0);
    }
    for reason in [
        "header_timeout",
        "idle_timeout",
        "write_timeout",
        "evicted",
        "over_limit_full",
        "shutdown",
    ] {
        counter!("waba_http_connections_dropped_total", "reason" => reason).increment(0);
    }
}

/// Keeps histogram storage bounded when nobody scrapes (call every few seconds).
pub async fn upkeep_forever() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle().run_upkeep();
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("waba_migrations", "Migrations by state (whole database).");
    describe_counter!("waba_migrations_created_total", "Migrations created.");
    describe_counter!(
        "waba_migration_transitions_total",
        "State transitions of migrations."
    );
    describe_counter!(
        "waba_migration_failures_total",
        "Migrations that failed, by error code."
    );
    describe_histogram!(
        "waba_migration_duration_seconds",
        Unit::Seconds,
        "Time from creation to a terminal state."
    );
    describe_histogram!(
        "waba_step_duration_seconds",
        Unit::Seconds,
        "Time one run of a step took (upstream calls included)."
    );
    describe_counter!(
        "waba_step_retries_total",
        "Steps rescheduled after a transient failure."
    );
    describe_histogram!(
        "waba_claim_lag_seconds",
        Unit::Seconds,
        "Time from a migration being due to a worker claiming it."
    );
    describe_counter!(
        "waba_upstream_requests_total",
        "Requests to Meta and 360dialog, by endpoint, HTTP status and upstream error code."
    );
    describe_histogram!(
        "waba_upstream_request_duration_seconds",
        Unit::Seconds,
        "Latency of upstream requests."
    );
    describe_counter!(
        "waba_webhook_attempts_total",
        "Webhook delivery attempts by outcome."
    );
    describe_histogram!(
        "waba_webhook_attempt_duration_seconds",
        Unit::Seconds,
        "Latency of webhook delivery attempts."
    );
    describe_counter!("waba_http_requests_total", "API requests served.");
    describe_histogram!(
        "waba_http_request_duration_seconds",
        Unit::Seconds,
        "API request latency."
    );
    describe_gauge!(
        "waba_db_pool_connections",
        "Database connections of this process."
    );
    describe_gauge!(
        "waba_http_connections",
        "Open API connections: `regular` (up to HTTP_MAX_CONNECTIONS) or `over_limit` (beyond it: health checks only)."
    );
    describe_counter!(
        "waba_http_connections_dropped_total",
        "API connections the server closed: header_timeout, idle_timeout, write_timeout, evicted, over_limit_full, shutdown."
    );
    describe_counter!(
        "waba_api_key_lookups_total",
        "API keys checked (not the admin key), by where the answer came from."
    );
    describe_counter!(
        "waba_batch_admitted_total",
        "Batch migrations given a slot (batch pacing): at their batch's creation or by the admission step."
    );
    describe_counter!(
        "waba_batch_throttled_total",
        "Meta throttling answers to batch migrations (each pauses its batch's admissions)."
    );
    describe_gauge!(
        "waba_graph_field_unavailable",
        "1 for each field the configured META_GRAPH_VERSION answered 'nonexisting field' for: reads go without it, and prechecks report the checks that need it as not made."
    );
}

/// A migration was inserted.
pub fn migration_created() {
    counter!("waba_migrations_created_total").increment(1);
}

/// A migration moved from `from` to the state of `row` (written in the same statement).
pub fn transition(from: &str, row: &MigrationRow) {
    counter!(
        "waba_migration_transitions_total",
        "from" => from.to_owned(),
        "to" => row.state.clone()
    )
    .increment(1);
    let state = row.state();
    if state == MigrationState::Failed {
        let code = row
            .error
            .as_ref()
            .and_then(|e| e.get("code"))
            .and_then(|c| c.as_str())
            .unwrap_or("unknown")
            .to_owned();
        counter!("waba_migration_failures_total", "code" => code).increment(1);
    }
    // A key rotation ends in a terminal state again: the migration's duration was recorded when
    // it first completed.
    let completed_before = row.completed_at.is_some_and(|t| t < row.updated_at);
    if state.is_terminal() && !completed_before {
        let took = (row.updated_at - row.created_at)
            .to_std()
            .unwrap_or_default();
        histogram!("waba_migration_duration_seconds", "outcome" => row.state.clone())
            .record(took.as_secs_f64());
    }
}

/// `n` batch migrations were given a slot: by the admission step, or as their batch was
/// created.
pub fn batch_admitted(n: u64) {
    counter!("waba_batch_admitted_total").increment(n);
}

/// Meta throttled a batch migration; its batch is paused.
pub fn batch_throttled() {
    counter!("waba_batch_throttled_total").increment(1);
}

pub fn step_ran(step: MigrationState, took: Duration) {
    histogram!("waba_step_duration_seconds", "step" => step.as_str()).record(took.as_secs_f64());
}

pub fn step_retried(step: MigrationState) {
    counter!("waba_step_retries_total", "step" => step.as_str()).increment(1);
}

pub fn claimed(lag: Duration) {
    histogram!("waba_claim_lag_seconds").record(lag.as_secs_f64());
}

/// `outcome`: `succeeded`, `failed` (will be retried) or `gave_up`.
pub fn webhook_attempt(outcome: &'static str, took: Duration) {
    counter!("waba_webhook_attempts_total", "outcome" => outcome).increment(1);
    histogram!("waba_webhook_attempt_duration_seconds").record(took.as_secs_f64());
}

/// An API key checked: `found` / `not_found` in the database, `cached_not_found` (the negative
/// cache, no database), `refused` (the address is over its failure limit, no lookup).
pub fn api_key_lookup(outcome: &'static str) {
    counter!("waba_api_key_lookups_total", "outcome" => outcome).increment(1);
}

pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    counter!(
        "waba_http_requests_total",
        "method" => method.to_owned(),
        "route" => route.to_owned(),
        "status" => status.to_string()
    )
    .increment(1);
    histogram!(
        "waba_http_request_duration_seconds",
        "method" => method.to_owned(),
        "route" => route.to_owned()
    )
    .record(took.as_secs_f64());
}

/// An API connection opened; `slot`: `regular` or `over_limit`.
pub fn http_connection_opened(slot: &'static str) {
    gauge!("waba_http_connections", "slot" => slot).increment(1.0);
}

pub fn http_connection_closed(slot: &'static str) {
    gauge!("waba_http_connections", "slot" => slot).decrement(1.0);
}

/// The server closed an API connection before its client did (`reason`: a timeout, `evicted`,
/// `over_limit_full` or `shutdown`).
pub fn http_connection_dropped(reason: &'static str) {
    counter!("waba_http_connections_dropped_total", "reason" => reason).increment(1);
}

/// How long the terminal states' `waba_migrations` gauges may be reused: counting them reads
/// the whole table (about 220 ms at 1,000,000 rows), so not on every scrape.
const TERMINAL_COUNT_TTL: Duration = Duration::from_secs(60);

/// Migrations per state, as counted at an instant.
type StateCount = (std::time::Instant, Vec<(String, i64)>);

/// The last count of the terminal states and when it was taken.
static TERMINAL_COUNT: std::sync::Mutex<Option<StateCount>> = std::sync::Mutex::new(None);

/// Sets the scrape-time gauges and renders the text format. Without the database the
/// `waba_migrations` gauges keep their last values and everything else is still rendered.
///
/// Non-terminal states are counted on every scrape (the partial indexes make that cheap at any
/// table size); terminal states at most every [`TERMINAL_COUNT_TTL`].
pub async fn render(pool: &sqlx::PgPool) -> String {
    let fresh_enough = TERMINAL_COUNT
        .lock()
        .expect("metrics lock")
        .as_ref()
        .is_some_and(|(at, _)| at.elapsed() < TERMINAL_COUNT_TTL);
    let counted = tokio::time::timeout(Duration::from_secs(2), async {
        if fresh_enough {
            crate::db::migrations::count_active_by_state(pool).await
        } else {
            let all = crate::db::migrations::count_by_state(pool).await?;
            *TERMINAL_COUNT.lock().expect("metrics lock") =
                Some((std::time::Instant::now(), all.clone()));
            Ok(all)
        }
    })
    .await;
    match counted {
        Ok(Ok(by_state)) => {
            let terminal = TERMINAL_COUNT.lock().expect("metrics lock").clone();
            for s in MigrationState::ALL {
                let source = if s.is_terminal() {
                    terminal.as_ref().map_or(&by_state, |(_, t)| t)
                } else {
                    &by_state
                };
                let n = source
                    .iter()
                    .find(|(name, _)| name == s.as_str())
                    .map_or(0, |(_, n)| *n);
                gauge!("waba_migrations", "state" => s.as_str()).set(n as f64);
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics: migrations by state unavailable"),
        Err(_) => tracing::debug!("metrics: counting migrations timed out"),
    }
    let size = f64::from(pool.size());
    let idle = pool.num_idle() as f64;
    gauge!("waba_db_pool_connections", "state" => "in_use").set(size - idle);
    gauge!("waba_db_pool_connections", "state" => "idle").set(idle);
    gauge!("waba_db_pool_connections", "state" => "max")
        .set(f64::from(pool.options().get_max_connections()));
    let h = handle();
    h.run_upkeep();
    h.render()
}
