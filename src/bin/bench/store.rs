//! `waba-bench store` (issue 7, target 4): API and claim latency with a small store (10,000
//! migrations) and a large one (1,000,000), measured the same way, at the same time.
//!
//! Two PostgreSQL servers with `run`'s defaults (one per store, so neither store's pages evict
//! the other's from `shared_buffers`), one sandbox, one `serve` per store (`run`'s throughput
//! environment). The partners are created through each service's `POST /v1/partners`; the
//! rows are seeded straight into PostgreSQL ([`super::seed`]) on one timeline of constant
//! arrival rate (`--per-day`, default 1,000,000 a year): the small store holds its first
//! `--small` rows, the large one its first `--large` (the same store a year later), and both
//! hold the same `--parked` migrations in `awaiting_otp`. So a day of the timeline has as many
//! rows in both stores, and a filtered page is as full. Then `VACUUM ANALYZE` (as autovacuum
//! eventually would), `CHECKPOINT` and a pause, so nothing runs while the seeded gigabytes are
//! written back.
//!
//! The machine is shared and its load drifts, so the two stores are measured **interleaved**:
//! every round asks both services the same three things (in alternating order), sequentially
//! from one client, `--warmup` rounds excluded and `--samples` measured:
//!
//! * `GET /v1/migrations/{id}` of a random existing migration (its partner's key; the ids are
//!   drawn uniformly over the timeline, index-only, so drawing them warms no heap page),
//! * `GET /v1/migrations?state=failed&limit=50` with a random partner's key,
//! * `GET /v1/migrations?created_after=T&created_before=T+1d&limit=50`, T a random instant of
//!   the store's span less one day, with a random partner's key,
//!
//! then `GET /metrics` (its `waba_migrations` gauges count the whole table) a few times. The
//! services are stopped and the claim is timed, alternating between the stores, by calling
//! `waba_migrator::db::migrations::claim` (the worker's statement, `limit` 1) on our own
//! connections: with no due row; then with `--due-rows` parked rows made due, once as the
//! statement alone (in a transaction rolled back afterwards) and once in autocommit as the
//! worker runs it (its commit waits for the WAL flush; the lease is given back with
//! `db::migrations::release`, so the row stays due). `auto_explain` logs the plan (`ANALYZE,
//! BUFFERS`) of one call of each, and of the list and get queries through
//! `db::migrations::list` / `get`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use clap::Args;
use rand::Rng;
use serde_json::{Value, json};
use uuid::Uuid;
use waba_migrator::db::migrations as store;
use waba_migrator::embedded_pg::EmbeddedPostgres;

use super::explain::{self, Explainer};
use super::procs::{self, Proc};
use super::seed::{self, Partner};
use super::stack::{self, Stack};
use super::stats::{Samples, Table};
use super::{Env, round};

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Terminal migrations of the small store.
    #[arg(long, default_value_t = 10_000)]
    small: i64,
    /// Terminal migrations of the large store (the small one plus the next rows).
    #[arg(long, default_value_t = 1_000_000)]
    large: i64,
    /// Measured rounds per size (each: one GET, one state=failed page, one day-window page).
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Rounds before the measured ones, excluded.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Timed claims per size and case (no due row / due rows).
    #[arg(long, default_value_t = 1000)]
    claim_samples: usize,
    /// Parked rows made due for the "due" claim case.
    #[arg(long, default_value_t = 5)]
    due_rows: i64,
    /// Partners (created through the admin API), rows spread evenly.
    #[arg(long, default_value_t = 5)]
    partners: usize,
    /// Migrations parked in `awaiting_otp`, the same in both stores.
    #[arg(long, default_value_t = 1000)]
    parked: i64,
    /// Arrival rate of the seeded timeline (migrations per day).
    #[arg(long, default_value_t = seed::PER_DAY)]
    per_day: f64,
    /// Connections seeding in parallel.
    #[arg(long, default_value_t = 2)]
    seed_jobs: usize,
    /// `GET /metrics` samples per size.
    #[arg(long, default_value_t = 10)]
    metrics_samples: usize,
    /// Drop this index in both stores after migrating (repeatable): measures what it buys.
    #[arg(long)]
    drop_index: Vec<String>,
    #[command(flatten)]
    out: stack::Output,
}

/// `waba-bench store`.
pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.small > 0 && args.large > args.small,
        "need 0 < --small < --large"
    );
    let bin = stack::migrator_bin(args.out.bin.as_deref())?;
    let dir = args.out.dir();
    let s = Stack::start(&dir, &bin, stack::default_run_args()?).await?;
    // The large store's own server.
    let port = procs::free_port();
    let outcome = match EmbeddedPostgres::start(&dir.join("postgres-large"), Some(port)).await {
        Ok(pg) => {
            let outcome = measure(&s, &pg, port, &args).await;
            if let Err(e) = pg.stop().await {
                eprintln!("bench: could not stop PostgreSQL (large): {e:#}");
            }
            outcome
        }
        Err(e) => Err(e.context("starting PostgreSQL (large)")),
    };
    s.stop(outcome.is_ok(), args.out.keep).await;
    let (doc, table) = outcome?;
    args.out.report(&doc, &table)
}

/// One store: its database, service environment, partners and figures.
struct Side {
    label: &'static str,
    rows: i64,
    db: sqlx::PgPool,
    data_dir: PathBuf,
    env: Env,
    partners: Vec<Partner>,
    /// (partner key, migration id, partner id) to GET.
    targets: Vec<(String, Uuid, Uuid)>,
    span: ChronoDuration,
    base: String,
    get: Samples,
    list_failed: Samples,
    list_window: Samples,
    metrics: Samples,
    claim_idle: Samples,
    claim_due: Samples,
    claim_due_tx: Samples,
    max_body: (usize, usize),
    doc: Value,
}

impl Side {
    async fn new(
        label: &'static str,
        rows: i64,
        db: sqlx::PgPool,
        data_dir: &Path,
        env: Env,
        s: &Stack,
        args: &StoreArgs,
    ) -> anyhow::Result<Self> {
        // Partners through this store's own admin API.
        let (serve, base) = env
            .start_serve(&s.http, &env.sandbox_url, &format!("partners-{label}"))
            .await?;
        let partners = seed::create_partners(&s.http, &base, super::ADMIN_KEY, args.partners).await;
        serve.stop(Duration::from_secs(10)).await;
        Ok(Self {
            label,
            rows,
            db,
            data_dir: data_dir.to_owned(),
            env,
            partners: partners?,
            targets: Vec::new(),
            span: ChronoDuration::milliseconds((rows as f64 / args.per_day * 86_400_000.0) as i64),
            base: String::new(),
            get: Samples::default(),
            list_failed: Samples::default(),
            list_window: Samples::default(),
            metrics: Samples::default(),
            claim_idle: Samples::default(),
            claim_due: Samples::default(),
            claim_due_tx: Samples::default(),
            max_body: (0, 0),
            doc: json!({}),
        })
    }

    fn partner_ids(&self) -> Vec<Uuid> {
        self.partners.iter().map(|p| p.id).collect()
    }

    /// Random existing ids, uniform over the timeline, through the (partner_id, id) index only.
    async fn draw_targets(&mut self, origin: DateTime<Utc>, n: usize) -> anyhow::Result<()> {
        let mut rng = rand::rng();
        let (mut who, mut probes) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let p = rng.random_range(0..self.partners.len());
            let at = origin
                + ChronoDuration::milliseconds(rng.random_range(0..self.span.num_milliseconds()));
            who.push(self.partners[p].id);
            probes.push(uuid_floor(at));
        }
        let picked: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
            "SELECT u.p, (SELECT id FROM migrations m WHERE m.partner_id = u.p AND m.id >= u.r
                            ORDER BY m.partner_id, m.id LIMIT 1)
               FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(p, r, o) ORDER BY u.o",
        )
        .bind(&who)
        .bind(&probes)
        .fetch_all(&self.db)
        .await?;
        let partners = &self.partners;
        self.targets = picked
            .into_iter()
            .filter_map(|(p, id)| {
                let key = partners.iter().find(|x| x.id == p)?.key.clone();
                Some((key, id?, p))
            })
            .collect();
        anyhow::ensure!(!self.targets.is_empty(), "no migration ids drawn");
        Ok(())
    }

    /// Table and index sizes, rows by state.
    async fn describe(&self, origin: DateTime<Utc>) -> anyhow::Result<Value> {
        let sizes: (i64, String, String, String, String, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM migrations),
                    pg_size_pretty(pg_table_size('migrations')),
                    pg_size_pretty(pg_indexes_size('migrations')),
                    pg_size_pretty(pg_table_size('migration_events')),
                    pg_size_pretty(pg_indexes_size('migration_events')),
                    (SELECT count(*) FROM migration_events)",
        )
        .fetch_one(&self.db)
        .await?;
        let by_state = store::count_by_state(&self.db).await?;
        Ok(json!({
            "rows": sizes.0,
            "by_state": by_state.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>(),
            "timeline": {"from": origin, "to": origin + self.span},
            "sizes": {
                "migrations_table": sizes.1,
                "migrations_indexes": sizes.2,
                "events_table": sizes.3,
                "events_indexes": sizes.4,
                "events_rows": sizes.5,
            },
        }))
    }

    /// One measured (or warm-up) round of the three requests.
    async fn round(
        &mut self,
        http: &reqwest::Client,
        origin: DateTime<Utc>,
        i: usize,
        record: bool,
    ) -> anyhow::Result<()> {
        let mut rng = rand::rng();
        let (key, id, _) = self.targets[i % self.targets.len()].clone();
        let k2 = self.partners[rng.random_range(0..self.partners.len())]
            .key
            .clone();
        let k3 = self.partners[rng.random_range(0..self.partners.len())]
            .key
            .clone();
        let window = (self.span - ChronoDuration::days(1))
            .num_milliseconds()
            .max(1);
        let from = origin + ChronoDuration::milliseconds(rng.random_range(0..window));
        let to = from + ChronoDuration::days(1);
        let base = &self.base;
        let a = timed(http, format!("{base}/v1/migrations/{id}"), &key).await?;
        let b = timed(
            http,
            format!("{base}/v1/migrations?state=failed&limit=50"),
            &k2,
        )
        .await?;
        let c = timed(
            http,
            format!(
                "{base}/v1/migrations?created_after={}&created_before={}&limit=50",
                from.to_rfc3339_opts(SecondsFormat::Millis, true),
                to.to_rfc3339_opts(SecondsFormat::Millis, true)
            ),
            &k3,
        )
        .await?;
        if record {
            self.get.push(a.0);
            self.list_failed.push(b.0);
            self.list_window.push(c.0);
            self.max_body = (self.max_body.0.max(b.1), self.max_body.1.max(c.1));
        }
        Ok(())
    }

    /// Plans of the list and get queries, through the library functions the handlers call.
    async fn list_plans(&self, origin: DateTime<Utc>) -> anyhow::Result<Vec<Vec<String>>> {
        let mut conn = self.db.acquire().await?;
        let ex = Explainer::on(&mut conn, &self.data_dir).await?;
        let mid = origin + (self.span - ChronoDuration::days(1)) / 2;
        let partner = self.partners[0].id;
        store::list(
            &mut *conn,
            &store::ListFilter {
                partner_id: Some(partner),
                state: Some("failed".into()),
                limit: 50,
                ..Default::default()
            },
        )
        .await?;
        store::list(
            &mut *conn,
            &store::ListFilter {
                partner_id: Some(partner),
                created_after: Some(mid),
                created_before: Some(mid + ChronoDuration::days(1)),
                limit: 50,
                ..Default::default()
            },
        )
        .await?;
        let (_, id, p) = &self.targets[0];
        store::get(&mut *conn, *id, Some(*p)).await?;
        ex.off(&mut conn).await
    }
}

/// One GET: (ms, body bytes); non-2xx is an error.
async fn timed(http: &reqwest::Client, url: String, key: &str) -> anyhow::Result<(f64, usize)> {
    let t = Instant::now();
    let res = http.get(&url).bearer_auth(key).send().await?;
    let status = res.status();
    let body = res.bytes().await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status.is_success(), "{url}: {status}");
    Ok((ms, body.len()))
}

/// `CHECKPOINT` (the caller then pauses), so the measurements do not run while the seeded
/// gigabytes are still being written back (on ext4 every WAL fsync would wait for it).
async fn settle_writes(db: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("CHECKPOINT")
        .execute(db)
        .await
        .context("CHECKPOINT")?;
    Ok(())
}

/// A UUIDv7 of instant `t` with zero random bits: every id created at or after `t` sorts
/// at or above it.
fn uuid_floor(t: DateTime<Utc>) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(t.timestamp_millis().max(0) as u64, &[0; 10])
        .into_uuid()
}

/// The two stores, in the order of round `i` (alternating, so neither always goes first).
fn in_turn(sides: &mut [Side; 2], i: usize) -> [&mut Side; 2] {
    let [a, b] = sides;
    if i.is_multiple_of(2) { [a, b] } else { [b, a] }
}

async fn measure(
    s: &Stack,
    pg_large: &EmbeddedPostgres,
    port_large: u16,
    args: &StoreArgs,
) -> anyhow::Result<(Value, Table)> {
    // The large store's schema and service environment.
    let large_url = format!("postgres://waba@127.0.0.1:{port_large}/waba_migrator");
    let status = tokio::process::Command::new(&s.env.bin)
        .arg("migrate")
        .env("DATABASE_URL", &large_url)
        .env("RUST_LOG", "warn")
        .status()
        .await?;
    anyhow::ensure!(status.success(), "waba-migrator migrate failed (large)");
    let db_large = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&large_url)
        .await?;
    let env_large = Env {
        bin: s.env.bin.clone(),
        dir: s.env.dir.clone(),
        database_url: large_url,
        sandbox_url: s.env.sandbox_url.clone(),
        encryption_key: s.env.encryption_key.clone(),
        args: s.env.args.clone(),
    };
    let env_small = Env {
        bin: s.env.bin.clone(),
        dir: s.env.dir.clone(),
        database_url: s.env.database_url.clone(),
        sandbox_url: s.env.sandbox_url.clone(),
        encryption_key: s.env.encryption_key.clone(),
        args: s.env.args.clone(),
    };
    for name in &args.drop_index {
        anyhow::ensure!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "--drop-index takes an index name"
        );
        for db in [&s.db, &db_large] {
            sqlx::raw_sql(&format!("DROP INDEX {name}"))
                .execute(db)
                .await
                .with_context(|| format!("DROP INDEX {name}"))?;
        }
    }
    let small = Side::new(
        "small",
        args.small,
        s.db.clone(),
        s.pg.data_dir(),
        env_small,
        s,
        args,
    )
    .await?;
    let large = Side::new(
        "large",
        args.large,
        db_large,
        pg_large.data_dir(),
        env_large,
        s,
        args,
    )
    .await?;
    let mut sides = [small, large];
    let cipher = s.cipher()?;

    // One timeline for both sizes: row i at origin + i / per_day days, the last one now.
    let span_days = args.large as f64 / args.per_day;
    let origin = Utc::now() - ChronoDuration::milliseconds((span_days * 86_400_000.0) as i64);
    let mut seeding = serde_json::Map::new();
    for side in &sides {
        eprintln!(
            "bench: seeding the {} store ({} rows)",
            side.label, side.rows
        );
        let ids = side.partner_ids();
        let t = seed::seed_terminal(
            &side.db,
            &ids,
            origin,
            args.per_day,
            0,
            side.rows,
            args.seed_jobs,
        )
        .await?;
        let p = seed::seed_parked(&side.db, &ids, Some(&cipher), 0, args.parked).await?;
        let v = seed::vacuum_analyze(&side.db).await?;
        let c = Instant::now();
        settle_writes(&side.db).await?;
        seeding.insert(
            side.label.into(),
            json!({
                "rows": t.rows,
                "events": t.events,
                "seconds": round(t.seconds, 2),
                "rows_per_s": round(t.rows as f64 / t.seconds, 0),
                "parked_rows": p.rows,
                "parked_seconds": round(p.seconds, 2),
                "vacuum_analyze_seconds": round(v, 2),
                "checkpoint_seconds": round(c.elapsed().as_secs_f64(), 2),
            }),
        );
    }
    tokio::time::sleep(Duration::from_secs(10)).await;

    let n = args.warmup + args.samples;
    let mut serves: Vec<Proc> = Vec::new();
    let mut outcome = async {
        for side in sides.iter_mut() {
            side.doc = side.describe(origin).await?;
            side.draw_targets(origin, n).await?;
            let (p, base) = side
                .env
                .start_serve(&s.http, &side.env.sandbox_url, &format!("store-{}", side.label))
                .await?;
            serves.push(p);
            side.base = base;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        eprintln!(
            "bench: {} + {} rounds of GET / list(state=failed) / list(day window), both stores in turn",
            args.warmup, args.samples
        );
        for i in 0..n {
            for side in in_turn(&mut sides, i) {
                side.round(&s.http, origin, i, i >= args.warmup).await?;
            }
        }
        for i in 0..args.metrics_samples {
            for side in in_turn(&mut sides, i) {
                let t = Instant::now();
                let r = s.http.get(format!("{}/metrics", side.base)).send().await?;
                let _ = r.bytes().await?;
                side.metrics.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        anyhow::Ok(())
    }
    .await;
    for p in serves {
        p.stop(Duration::from_secs(10)).await;
    }
    if outcome.is_ok() {
        outcome = claims(&mut sides, args).await;
    }
    outcome?;
    for side in sides.iter_mut() {
        let plans = side.list_plans(origin).await?;
        let plan_doc = |plans: &[Vec<String>]| {
            plans
                .iter()
                .map(|p| json!({"key_lines": explain::key_lines(p), "plan": p}))
                .collect::<Vec<_>>()
        };
        side.doc["plans"]["list_state_failed"] =
            json!(plan_doc(plans.get(..1).unwrap_or_default()));
        side.doc["plans"]["list_day_window"] = json!(plan_doc(plans.get(1..2).unwrap_or_default()));
        side.doc["plans"]["get"] = json!(plan_doc(plans.get(2..3).unwrap_or_default()));
        for (k, v) in side.doc["claim_plans"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            let lines: Vec<Vec<String>> = serde_json::from_value(v).unwrap_or_default();
            side.doc["plans"][k] = json!(plan_doc(&lines));
        }
        if let Some(o) = side.doc.as_object_mut() {
            o.remove("claim_plans");
        }
        side.doc["http"] = json!({
            "get": side.get.json(),
            "list_state_failed_limit50": side.list_failed.json(),
            "list_day_window_limit50": side.list_window.json(),
            "list_state_failed_max_body_bytes": side.max_body.0,
            "list_day_window_max_body_bytes": side.max_body.1,
            "metrics": side.metrics.json(),
        });
        side.doc["claim"] = json!({
            "nothing_due": side.claim_idle.json(),
            "due_statement_in_rolled_back_tx": side.claim_due_tx.json(),
            "due_autocommit": side.claim_due.json(),
        });
    }
    let [small, large] = &sides;
    Ok(report(args, small, large, seeding, span_days, s))
}

/// Claims on both stores in turn: nothing due, then due (statement alone, then autocommit).
async fn claims(sides: &mut [Side; 2], args: &StoreArgs) -> anyhow::Result<()> {
    eprintln!("bench: claims, both stores in turn");
    let lease = Duration::from_secs(30);
    let owner = "waba-bench-store";
    let mut conns = Vec::new();
    for side in sides.iter() {
        conns.push(side.db.acquire().await?);
    }
    // Plans first (one call each), nothing due.
    for (side, conn) in sides.iter_mut().zip(conns.iter_mut()) {
        let ex = Explainer::on(conn, &side.data_dir).await?;
        let none = store::claim(&mut **conn, owner, lease, 1).await?;
        anyhow::ensure!(none.is_empty(), "a row was due before making any due");
        side.doc["claim_plans"]["claim_nothing_due"] = json!(ex.off(conn).await?);
    }
    for i in 0..args.claim_samples {
        let order = if i.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        for k in order {
            let conn = &mut conns[k];
            let t = Instant::now();
            let rows = store::claim(&mut **conn, owner, lease, 1).await?;
            sides[k].claim_idle.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(rows.is_empty(), "claimed a row that should not be due");
        }
    }
    // A few due rows: the oldest parked ones reach their deadline.
    let mut due = Vec::new();
    for (side, conn) in sides.iter_mut().zip(conns.iter_mut()) {
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "UPDATE migrations SET run_at = now() - interval '1 second'
              WHERE id IN (SELECT id FROM migrations WHERE state = 'awaiting_otp'
                            ORDER BY run_at LIMIT $1)
              RETURNING id",
        )
        .bind(args.due_rows)
        .fetch_all(&mut **conn)
        .await?;
        due.push(ids.into_iter().map(|r| r.0).collect::<Vec<_>>());
        let ex = Explainer::on(conn, &side.data_dir).await?;
        let mut tx = sqlx::Connection::begin(&mut **conn).await?;
        store::claim(&mut *tx, owner, lease, 1).await?;
        tx.rollback().await?;
        side.doc["claim_plans"]["claim_due"] = json!(ex.off(conn).await?);
    }
    // The statement alone: in a transaction that is rolled back (no commit, no WAL flush; the
    // row stays due and unleased).
    for i in 0..args.claim_samples {
        let order = if i.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        for k in order {
            let conn = &mut conns[k];
            let mut tx = sqlx::Connection::begin(&mut **conn).await?;
            let t = Instant::now();
            let rows = store::claim(&mut *tx, owner, lease, 1).await?;
            sides[k].claim_due_tx.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(rows.len() == 1, "no due row claimed");
            tx.rollback().await?;
        }
    }
    // As the worker runs it: autocommit, then the lease is given back.
    for i in 0..args.claim_samples {
        let order = if i.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        for k in order {
            let conn = &mut conns[k];
            let t = Instant::now();
            let rows = store::claim(&mut **conn, owner, lease, 1).await?;
            sides[k].claim_due.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(rows.len() == 1, "no due row claimed");
            for r in &rows {
                store::release(&mut **conn, r.id, r.lease_token.unwrap_or_default(), false).await?;
            }
        }
    }
    // Park them again (their OTP deadline ahead).
    for (conn, ids) in conns.iter_mut().zip(due) {
        sqlx::query(
            "UPDATE migrations SET run_at = otp_expires_at, attempt = 0 WHERE id = ANY($1::uuid[])",
        )
        .bind(ids)
        .execute(&mut **conn)
        .await?;
    }
    Ok(())
}

fn report(
    args: &StoreArgs,
    small: &Side,
    large: &Side,
    seeding: serde_json::Map<String, Value>,
    span_days: f64,
    s: &Stack,
) -> (Value, Table) {
    let ratio = |a: &Samples, b: &Samples, p: f64| match (a.pct(p), b.pct(p)) {
        (Some(x), Some(y)) if x > 0.0 => Some(round(y / x, 2)),
        _ => None,
    };
    let ratios = |a: &Samples, b: &Samples| {
        json!({
            "p50": ratio(a, b, 50.0),
            "p95": ratio(a, b, 95.0),
            "p99": ratio(a, b, 99.0),
        })
    };
    let mut t = Table::default();
    t.section(&format!(
        "store scale: {} vs {} terminal migrations (+{} parked in both), measured in turn",
        args.small, args.large, args.parked
    ));
    t.row(
        "figure (p50 / p95 / p99)",
        format!("small ({})", args.small),
        format!(
            "large ({}) — p99 ratio large/small (target 4: ≤ 1.5)",
            args.large
        ),
    );
    for (name, a, b) in [
        ("GET /v1/migrations/{id}", &small.get, &large.get),
        (
            "GET /v1/migrations?state=failed&limit=50",
            &small.list_failed,
            &large.list_failed,
        ),
        (
            "GET /v1/migrations?created_after&created_before (1 day)&limit=50",
            &small.list_window,
            &large.list_window,
        ),
        (
            "claim (db::migrations::claim, limit 1), nothing due",
            &small.claim_idle,
            &large.claim_idle,
        ),
        (
            "claim, a few rows due: statement only (in a transaction, rolled back)",
            &small.claim_due_tx,
            &large.claim_due_tx,
        ),
        (
            "claim, a few rows due: autocommit as the worker (commit waits for the WAL flush)",
            &small.claim_due,
            &large.claim_due,
        ),
        (
            "GET /metrics (counts all rows by state)",
            &small.metrics,
            &large.metrics,
        ),
    ] {
        t.row(
            name,
            a.fmt3(),
            format!(
                "{} — ratio {}",
                b.fmt3(),
                ratio(a, b, 99.0).map_or("—".into(), |r| format!("{r:.2}"))
            ),
        );
    }
    let seed_of = |k: &str| seeding.get(k).cloned().unwrap_or_default();
    let (sm, lg) = (seed_of("small"), seed_of("large"));
    t.row(
        "seeding (terminal rows, events, time)",
        format!(
            "{} rows, {} events, {} s",
            sm["rows"], sm["events"], sm["seconds"]
        ),
        format!(
            "{} rows, {} events, {} s ({} rows/s); VACUUM ANALYZE {} s",
            lg["rows"], lg["events"], lg["seconds"], lg["rows_per_s"], lg["vacuum_analyze_seconds"]
        ),
    );
    t.row(
        "migrations table / indexes; events table + indexes",
        format!(
            "{} / {}; {} + {}",
            small.doc["sizes"]["migrations_table"],
            small.doc["sizes"]["migrations_indexes"],
            small.doc["sizes"]["events_table"],
            small.doc["sizes"]["events_indexes"]
        ),
        format!(
            "{} / {}; {} + {}",
            large.doc["sizes"]["migrations_table"],
            large.doc["sizes"]["migrations_indexes"],
            large.doc["sizes"]["events_table"],
            large.doc["sizes"]["events_indexes"]
        ),
    );
    let within = |a: &Samples, b: &Samples| ratio(a, b, 99.0).map(|r| r <= 1.5);
    let doc = json!({
        "config": {
            "small": args.small,
            "large": args.large,
            "samples": args.samples,
            "warmup": args.warmup,
            "claim_samples": args.claim_samples,
            "due_rows": args.due_rows,
            "partners": args.partners,
            "parked": args.parked,
            "per_day": args.per_day,
            "seed_jobs": args.seed_jobs,
            "dropped_indexes": args.drop_index,
            "timeline_days": round(span_days, 1),
            "method": "two PostgreSQL servers (one per store), one serve each; requests and claims alternate between the stores",
        },
        "seeding": seeding,
        "small": small.doc,
        "large": large.doc,
        "ratios_large_over_small": {
            "get": ratios(&small.get, &large.get),
            "list_state_failed": ratios(&small.list_failed, &large.list_failed),
            "list_day_window": ratios(&small.list_window, &large.list_window),
            "claim_nothing_due": ratios(&small.claim_idle, &large.claim_idle),
            "claim_due_statement": ratios(&small.claim_due_tx, &large.claim_due_tx),
            "claim_due_autocommit": ratios(&small.claim_due, &large.claim_due),
            "metrics": ratios(&small.metrics, &large.metrics),
        },
        "target4": {
            "get_p99_within_1_5x": within(&small.get, &large.get),
            "list_failed_p99_within_1_5x": within(&small.list_failed, &large.list_failed),
            "list_window_p99_within_1_5x": within(&small.list_window, &large.list_window),
            "claim_not_slower_p99_ratio": ratio(&small.claim_due_tx, &large.claim_due_tx, 99.0),
        },
        "machine": s.machine.clone(),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    (doc, t)
}
