//! `waba-bench store` (issue 7, target 4): API and claim latency with a small store (10,000
//! migrations) and a large one (1,000,000), measured the same way in the same run.
//!
//! One PostgreSQL (`run`'s defaults), one sandbox. The partners are created through
//! `POST /v1/partners`; the rows are seeded straight into PostgreSQL ([`super::seed`]) on one
//! timeline of constant arrival rate (`--per-day`, default 1,000,000 a year): the small store is
//! the first `--small` rows of it, the large one the same plus the next rows up to `--large`
//! (the store a year later), and both hold the same `--parked` migrations in `awaiting_otp`.
//! So a day of the timeline has as many rows in both stores, and a filtered page is as full.
//!
//! For each size: seed, `VACUUM ANALYZE` (as autovacuum eventually would), `CHECKPOINT` and a
//! pause (so no measurement runs while the seeded gigabytes are written back), start a fresh
//! `serve` (`run`'s throughput environment), then over HTTP, sequentially from one client,
//! `--warmup` rounds excluded and `--samples` rounds measured, each round being
//!
//! * `GET /v1/migrations/{id}` of a random existing migration (its partner's key; the ids are
//!   drawn uniformly over the timeline, index-only, so drawing them warms no heap page),
//! * `GET /v1/migrations?state=failed&limit=50` with a random partner's key,
//! * `GET /v1/migrations?created_after=T&created_before=T+1d&limit=50`, T a random instant of
//!   the store's span less one day, with a random partner's key,
//!
//! then `GET /metrics` (its `waba_migrations` gauges count the whole table) a few times. The
//! service is stopped and the claim is timed by calling `waba_migrator::db::migrations::claim`
//! (the worker's statement, `limit` 1) on our own connection: with no due row; then with
//! `--due-rows` parked rows made due, once as the statement alone (in a transaction rolled back
//! afterwards) and once in autocommit as the worker runs it (its commit waits for the WAL
//! flush; the lease is given back with `db::migrations::release`, so the row stays due).
//! `auto_explain` logs the plan (`ANALYZE, BUFFERS`) of one call of each, and of the list and
//! get queries through `db::migrations::list` / `get`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use clap::Args;
use rand::Rng;
use serde_json::{Value, json};
use uuid::Uuid;
use waba_migrator::db::migrations as store;

use super::explain::{self, Explainer};
use super::seed::{self, Partner};
use super::stack::{self, Stack};
use super::stats::{Samples, Table};

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
    /// Write the JSON document here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Working directory (PostgreSQL data, logs); default /var/tmp/waba-bench-<pid>.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The waba-migrator binary (default: next to this executable).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Keep the working directory afterwards (logs, database).
    #[arg(long, default_value_t = false)]
    keep: bool,
}

/// `waba-bench store`.
pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.small > 0 && args.large > args.small,
        "need 0 < --small < --large"
    );
    let bin = stack::migrator_bin(args.bin.as_deref())?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/waba-bench-{}", std::process::id())));
    let s = Stack::start(&dir, &bin, stack::default_run_args()?).await?;
    let outcome = measure(&s, &args).await;
    s.stop(outcome.is_ok(), args.keep).await;
    let (doc, table) = outcome?;
    println!("{}", table.render());
    let text = serde_json::to_string_pretty(&doc)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Figures of one store size.
struct SizeResult {
    doc: Value,
    get: Samples,
    list_failed: Samples,
    list_window: Samples,
    claim_idle: Samples,
    claim_due: Samples,
    claim_due_tx: Samples,
}

async fn measure(s: &Stack, args: &StoreArgs) -> anyhow::Result<(Value, Table)> {
    // Partners through the admin API of a first service.
    let (serve, base) = s.start_serve("partners").await?;
    let partners = seed::create_partners(&s.http, &base, super::ADMIN_KEY, args.partners).await;
    serve.stop(Duration::from_secs(10)).await;
    let partners = partners?;
    let ids: Vec<Uuid> = partners.iter().map(|p| p.id).collect();
    let cipher = s.cipher()?;

    // One timeline for both sizes: row i at origin + i / per_day days, the last one now.
    let span_days = args.large as f64 / args.per_day;
    let origin = Utc::now() - ChronoDuration::milliseconds((span_days * 86_400_000.0) as i64);

    eprintln!("bench: seeding the small store ({} rows)", args.small);
    let small_seed = seed::seed_terminal(
        &s.db,
        &ids,
        origin,
        args.per_day,
        0,
        args.small,
        args.seed_jobs,
    )
    .await?;
    let parked = seed::seed_parked(&s.db, &ids, Some(&cipher), 0, args.parked).await?;
    let small_vacuum = seed::vacuum_analyze(&s.db).await?;
    settle_writes(&s.db).await?;
    let small = measure_size(s, args, &partners, "small", origin, args.small).await?;

    eprintln!(
        "bench: seeding the large store (+{} rows)",
        args.large - args.small
    );
    let large_seed = seed::seed_terminal(
        &s.db,
        &ids,
        origin,
        args.per_day,
        args.small,
        args.large - args.small,
        args.seed_jobs,
    )
    .await?;
    let large_vacuum = seed::vacuum_analyze(&s.db).await?;
    settle_writes(&s.db).await?;
    let large = measure_size(s, args, &partners, "large", origin, args.large).await?;

    let ratio = |a: &Samples, b: &Samples, p: f64| match (a.pct(p), b.pct(p)) {
        (Some(x), Some(y)) if x > 0.0 => Some(super::round(y / x, 2)),
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
        "store scale: {} vs {} terminal migrations (+{} parked in both)",
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
    t.row(
        "seeding (terminal rows, events)",
        format!(
            "{} rows, {} events in {:.1} s",
            small_seed.rows, small_seed.events, small_seed.seconds
        ),
        format!(
            "+{} rows, {} events in {:.1} s ({:.0} rows/s); VACUUM ANALYZE {:.1} s",
            large_seed.rows,
            large_seed.events,
            large_seed.seconds,
            large_seed.rows as f64 / large_seed.seconds,
            large_vacuum
        ),
    );
    for (label, doc) in [("small", &small.doc), ("large", &large.doc)] {
        t.row(
            &format!("{label}: table / indexes"),
            format!(
                "{} / {}",
                doc["sizes"]["migrations_table"], doc["sizes"]["migrations_indexes"]
            ),
            format!(
                "events {} + {}; GET /metrics p50 {} ms",
                doc["sizes"]["events_table"],
                doc["sizes"]["events_indexes"],
                doc["http"]["metrics"]["p50_ms"]
            ),
        );
    }
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
            "timeline_days": super::round(span_days, 1),
        },
        "seeding": {
            "small": {"rows": small_seed.rows, "events": small_seed.events,
                      "seconds": super::round(small_seed.seconds, 2),
                      "vacuum_analyze_seconds": super::round(small_vacuum, 2)},
            "parked": {"rows": parked.rows, "events": parked.events,
                       "seconds": super::round(parked.seconds, 2)},
            "large_added": {"rows": large_seed.rows, "events": large_seed.events,
                            "seconds": super::round(large_seed.seconds, 2),
                            "rows_per_s": super::round(large_seed.rows as f64 / large_seed.seconds, 0),
                            "vacuum_analyze_seconds": super::round(large_vacuum, 2)},
        },
        "small": small.doc,
        "large": large.doc,
        "ratios_large_over_small": {
            "get": ratios(&small.get, &large.get),
            "list_state_failed": ratios(&small.list_failed, &large.list_failed),
            "list_day_window": ratios(&small.list_window, &large.list_window),
            "claim_nothing_due": ratios(&small.claim_idle, &large.claim_idle),
            "claim_due_statement": ratios(&small.claim_due_tx, &large.claim_due_tx),
            "claim_due_autocommit": ratios(&small.claim_due, &large.claim_due),
        },
        "target4": {
            "get_p99_within_1_5x": ratio(&small.get, &large.get, 99.0).map(|r| r <= 1.5),
            "list_failed_p99_within_1_5x": ratio(&small.list_failed, &large.list_failed, 99.0).map(|r| r <= 1.5),
            "list_window_p99_within_1_5x": ratio(&small.list_window, &large.list_window, 99.0).map(|r| r <= 1.5),
        },
        "machine": s.machine.clone(),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    Ok((doc, t))
}

/// `CHECKPOINT` and a pause, so the measurements do not run while the seeded gigabytes are
/// still being written back (on ext4 every WAL fsync would wait for that writeback).
async fn settle_writes(db: &sqlx::PgPool) -> anyhow::Result<()> {
    let t = Instant::now();
    sqlx::raw_sql("CHECKPOINT")
        .execute(db)
        .await
        .context("CHECKPOINT")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!(
        "bench: checkpoint and settle {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A UUIDv7 of instant `t` with zero random bits: every id created at or after `t` sorts
/// at or above it.
fn uuid_floor(t: DateTime<Utc>) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(t.timestamp_millis().max(0) as u64, &[0; 10])
        .into_uuid()
}

async fn measure_size(
    s: &Stack,
    args: &StoreArgs,
    partners: &[Partner],
    label: &str,
    origin: DateTime<Utc>,
    rows: i64,
) -> anyhow::Result<SizeResult> {
    let span = ChronoDuration::milliseconds((rows as f64 / args.per_day * 86_400_000.0) as i64);
    let end = origin + span;
    let sizes: (i64, String, String, String, String, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM migrations),
                pg_size_pretty(pg_table_size('migrations')),
                pg_size_pretty(pg_indexes_size('migrations')),
                pg_size_pretty(pg_table_size('migration_events')),
                pg_size_pretty(pg_indexes_size('migration_events')),
                (SELECT count(*) FROM migration_events)",
    )
    .fetch_one(&s.db)
    .await?;
    let by_state: Vec<(String, i64)> = store::count_by_state(&s.db).await?;

    // Random existing ids, uniform over the timeline, through the (partner_id, id) index only.
    let n = args.warmup + args.samples;
    let mut rng = rand::rng();
    let (mut who, mut probes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let p = rng.random_range(0..partners.len());
        let at =
            origin + ChronoDuration::milliseconds(rng.random_range(0..span.num_milliseconds()));
        who.push(partners[p].id);
        probes.push(uuid_floor(at));
    }
    let picked: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT u.p, (SELECT id FROM migrations m WHERE m.partner_id = u.p AND m.id >= u.r
                        ORDER BY m.partner_id, m.id LIMIT 1)
           FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(p, r, o) ORDER BY u.o",
    )
    .bind(&who)
    .bind(&probes)
    .fetch_all(&s.db)
    .await?;
    let key_of = |p: Uuid| {
        partners
            .iter()
            .find(|x| x.id == p)
            .map(|x| x.key.clone())
            .unwrap_or_default()
    };
    let targets: Vec<(String, Uuid, Uuid)> = picked
        .into_iter()
        .filter_map(|(p, id)| id.map(|id| (key_of(p), id, p)))
        .collect();
    anyhow::ensure!(!targets.is_empty(), "no migration ids drawn");

    let (serve, base) = s.start_serve(&format!("store-{label}")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "bench: {label}: {} rows; {} + {} rounds of GET / list(state=failed) / list(day window)",
        sizes.0, args.warmup, args.samples
    );
    let http = &s.http;
    let timed = |url: String, key: String| async move {
        let t = Instant::now();
        let res = http.get(&url).bearer_auth(&key).send().await?;
        let status = res.status();
        let body = res.bytes().await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(status.is_success(), "{url}: {status}");
        anyhow::Ok((ms, body.len()))
    };
    let (mut get, mut list_failed, mut list_window) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut failed_rows, mut window_rows) = (0usize, 0usize);
    let window_span = (span - ChronoDuration::days(1)).num_milliseconds().max(1);
    let mut result = Ok(());
    for i in 0..n {
        let (key, id, _) = &targets[i % targets.len()];
        let k2 = partners[rng.random_range(0..partners.len())].key.clone();
        let k3 = partners[rng.random_range(0..partners.len())].key.clone();
        let from = origin + ChronoDuration::milliseconds(rng.random_range(0..window_span));
        let to = from + ChronoDuration::days(1);
        let round = async {
            let a = timed(format!("{base}/v1/migrations/{id}"), key.clone()).await?;
            let b = timed(
                format!("{base}/v1/migrations?state=failed&limit=50"),
                k2.clone(),
            )
            .await?;
            let c = timed(
                format!(
                    "{base}/v1/migrations?created_after={}&created_before={}&limit=50",
                    from.to_rfc3339_opts(SecondsFormat::Millis, true),
                    to.to_rfc3339_opts(SecondsFormat::Millis, true)
                ),
                k3.clone(),
            )
            .await?;
            anyhow::Ok((a, b, c))
        };
        match round.await {
            Ok((a, b, c)) => {
                if i >= args.warmup {
                    get.push(a.0);
                    list_failed.push(b.0);
                    list_window.push(c.0);
                    failed_rows = failed_rows.max(b.1);
                    window_rows = window_rows.max(c.1);
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // GET /metrics counts every row by state.
    let mut metrics = Samples::default();
    if result.is_ok() {
        for _ in 0..args.metrics_samples {
            let t = Instant::now();
            match http.get(format!("{base}/metrics")).send().await {
                Ok(r) => {
                    let _ = r.bytes().await;
                    metrics.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
    }
    serve.stop(Duration::from_secs(10)).await;
    result?;

    // Plans of the two list queries, through the library function the handler calls.
    let mut conn = s.db.acquire().await?;
    let data_dir = s.pg.data_dir().to_owned();
    let ex = Explainer::on(&mut conn, &data_dir).await?;
    let mid = origin + ChronoDuration::milliseconds(window_span / 2);
    store::list(
        &mut *conn,
        &store::ListFilter {
            partner_id: Some(partners[0].id),
            state: Some("failed".into()),
            limit: 50,
            ..Default::default()
        },
    )
    .await?;
    store::list(
        &mut *conn,
        &store::ListFilter {
            partner_id: Some(partners[0].id),
            created_after: Some(mid),
            created_before: Some(mid + ChronoDuration::days(1)),
            limit: 50,
            ..Default::default()
        },
    )
    .await?;
    store::get(&mut *conn, targets[0].1, Some(targets[0].2)).await?;
    let list_plans = ex.off(&mut conn).await?;

    // The claim, with nothing due.
    eprintln!("bench: {label}: claims");
    let lease = Duration::from_secs(30);
    let owner = "waba-bench-store";
    let ex = Explainer::on(&mut conn, &data_dir).await?;
    let none = store::claim(&mut *conn, owner, lease, 1).await?;
    anyhow::ensure!(none.is_empty(), "a row was due before making any due");
    let claim_idle_plan = ex.off(&mut conn).await?;
    let mut claim_idle = Samples::default();
    for _ in 0..args.claim_samples {
        let t = Instant::now();
        let rows = store::claim(&mut *conn, owner, lease, 1).await?;
        claim_idle.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(rows.is_empty(), "claimed a row that should not be due");
    }

    // A few due rows: the oldest parked ones reach their deadline.
    let due: Vec<(Uuid,)> = sqlx::query_as(
        "UPDATE migrations SET run_at = now() - interval '1 second'
          WHERE id IN (SELECT id FROM migrations WHERE state = 'awaiting_otp'
                        ORDER BY run_at LIMIT $1)
          RETURNING id",
    )
    .bind(args.due_rows)
    .fetch_all(&mut *conn)
    .await?;
    let ex = Explainer::on(&mut conn, &data_dir).await?;
    let got = store::claim(&mut *conn, owner, lease, 1).await?;
    let claim_due_plan = ex.off(&mut conn).await?;
    for r in &got {
        store::release(&mut *conn, r.id, r.lease_token.unwrap_or_default()).await?;
    }
    // The statement alone: each claim in a transaction that is rolled back (no commit, so no
    // WAL flush; the row stays due and unleased).
    let mut claim_due_tx = Samples::default();
    for _ in 0..args.claim_samples {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let t = Instant::now();
        let rows = store::claim(&mut *tx, owner, lease, 1).await?;
        claim_due_tx.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(rows.len() == 1, "no due row claimed");
        tx.rollback().await?;
    }
    // As the worker runs it: autocommit, then the lease is given back.
    let mut claim_due = Samples::default();
    for _ in 0..args.claim_samples {
        let t = Instant::now();
        let rows = store::claim(&mut *conn, owner, lease, 1).await?;
        claim_due.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(rows.len() == 1, "no due row claimed");
        for r in &rows {
            store::release(&mut *conn, r.id, r.lease_token.unwrap_or_default()).await?;
        }
    }
    // Park them again (their OTP deadline ahead), so the next size starts alike.
    sqlx::query(
        "UPDATE migrations SET run_at = otp_expires_at, attempt = 0 WHERE id = ANY($1::uuid[])",
    )
    .bind(due.iter().map(|r| r.0).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    drop(conn);

    let plan_doc = |plans: &[Vec<String>]| {
        plans
            .iter()
            .map(|p| json!({"key_lines": explain::key_lines(p), "plan": p}))
            .collect::<Vec<_>>()
    };
    let doc = json!({
        "rows": sizes.0,
        "by_state": by_state.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "timeline": {"from": origin, "to": end},
        "sizes": {
            "migrations_table": sizes.1,
            "migrations_indexes": sizes.2,
            "events_table": sizes.3,
            "events_indexes": sizes.4,
            "events_rows": sizes.5,
        },
        "http": {
            "get": get.json(),
            "list_state_failed_limit50": list_failed.json(),
            "list_day_window_limit50": list_window.json(),
            "list_state_failed_max_body_bytes": failed_rows,
            "list_day_window_max_body_bytes": window_rows,
            "metrics": metrics.json(),
        },
        "claim": {
            "nothing_due": claim_idle.json(),
            "due_statement_in_rolled_back_tx": claim_due_tx.json(),
            "due_autocommit": claim_due.json(),
            "due_rows": due.len(),
        },
        "plans": {
            "list_state_failed": plan_doc(list_plans.get(..1).unwrap_or_default()),
            "list_day_window": plan_doc(list_plans.get(1..2).unwrap_or_default()),
            "get": plan_doc(list_plans.get(2..3).unwrap_or_default()),
            "claim_nothing_due": plan_doc(&claim_idle_plan),
            "claim_due": plan_doc(&claim_due_plan),
        },
    });
    Ok(SizeResult {
        doc,
        get,
        list_failed,
        list_window,
        claim_idle,
        claim_due,
        claim_due_tx,
    })
}
