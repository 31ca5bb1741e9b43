//! `waba-bench parked` (issue 7, target 5): the service's memory and idle CPU with 10,000
//! migrations parked in `awaiting_otp`, against the same service with none.
//!
//! One PostgreSQL, one sandbox, one `serve` in `run`'s throughput environment:
//!
//! 1. Fresh service: RSS after start (nothing done yet).
//! 2. Warm-up: `--warm-migrations` migrations driven to `completed` through the API (so pool
//!    connections, HTTP buffers and allocator arenas exist before the baseline), then the
//!    baseline window: RSS and CPU over `--idle-seconds` with 0 parked.
//! 3. `--parked` − `--via-api` migrations seeded straight into PostgreSQL in `awaiting_otp`
//!    ([`super::seed::seed_parked`], `pin_enc` sealed with the service's key), a settle time,
//!    then the same window.
//! 4. `--via-api` more created through `POST /v1/migrations` and parked by the workers
//!    themselves (waited for in the database), settle, window.
//! 5. The service restarted with all of them parked: RSS of the fresh process, window, against
//!    step 1's fresh figure (nothing parked may be loaded into memory at start).
//!
//! Each window reads `VmRSS` every second (mean and last reported), `VmHWM`, and the `utime +
//! stime` of the service and of PostgreSQL (its backends serve the workers' idle polling).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use super::procs;
use super::seed;
use super::stack::{self, Stack};
use super::stats::{Samples, Table};
use super::{Api, round};

#[derive(Debug, Clone, Args)]
pub struct ParkedArgs {
    /// Migrations parked in `awaiting_otp` in the end (seeded + created through the API).
    #[arg(long, default_value_t = 10_000)]
    parked: i64,
    /// Of those, how many are created through POST /v1/migrations and parked by the workers.
    #[arg(long, default_value_t = 300)]
    via_api: usize,
    /// Length of each idle measurement window.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Wait before each window (after seeding, creating or starting).
    #[arg(long, default_value_t = 10)]
    settle_seconds: u64,
    /// Migrations driven to `completed` before the baseline (warm-up).
    #[arg(long, default_value_t = 100)]
    warm_migrations: usize,
    /// API calls in flight while warming up and creating the `--via-api` migrations.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Skip the restart-with-parked measurement.
    #[arg(long, default_value_t = false)]
    no_restart: bool,
    #[command(flatten)]
    out: stack::Output,
}

/// `waba-bench parked`.
pub async fn run(args: ParkedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.via_api as i64 <= args.parked,
        "--via-api cannot exceed --parked"
    );
    let bin = stack::migrator_bin(args.out.bin.as_deref())?;
    let dir = args.out.dir();
    let s = Stack::start(&dir, &bin, stack::default_run_args()?).await?;
    let outcome = measure(&s, &args).await;
    s.stop(outcome.is_ok(), args.out.keep).await;
    let (doc, table) = outcome?;
    args.out.report(&doc, &table)
}

/// One idle window of the service.
struct Window {
    rss_first: f64,
    rss_last: f64,
    rss_mean: f64,
    hwm: f64,
    cpu_pct: f64,
    pg_cpu_pct: f64,
}

impl Window {
    fn json(&self) -> Value {
        json!({
            "rss_first_mib": round(self.rss_first, 2),
            "rss_last_mib": round(self.rss_last, 2),
            "rss_mean_mib": round(self.rss_mean, 2),
            "hwm_mib": round(self.hwm, 2),
            "service_cpu_pct_of_one_core": round(self.cpu_pct, 3),
            "postgres_cpu_pct_of_one_core": round(self.pg_cpu_pct, 3),
        })
    }
}

async fn idle_window(pid: u32, postmaster: u32, seconds: u64) -> Window {
    let cpu0 = procs::cpu_seconds(pid, false);
    let pg0 = procs::postgres_cpu_seconds(postmaster);
    let t = Instant::now();
    let mut rss = Vec::new();
    for _ in 0..seconds.max(1) {
        rss.push(procs::rss_mib(pid).0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = procs::cpu_seconds(pid, false) - cpu0;
    let pg = procs::postgres_cpu_seconds(postmaster) - pg0;
    let (last, hwm) = procs::rss_mib(pid);
    rss.push(last);
    Window {
        rss_first: rss[0],
        rss_last: last,
        rss_mean: rss.iter().sum::<f64>() / rss.len() as f64,
        hwm,
        cpu_pct: cpu / wall * 100.0,
        pg_cpu_pct: pg / wall * 100.0,
    }
}

/// Creates migrations `phase/0..n` through the API, `c` at a time; with `complete`, drives each
/// to `completed`, otherwise leaves it to the workers (they park it in `awaiting_otp`).
async fn drive_some(
    api: Arc<Api>,
    phase: usize,
    n: usize,
    c: usize,
    complete: bool,
) -> anyhow::Result<Samples> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c.clamp(1, n.max(1)) {
        let (api, next) = (api.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut creates = Samples::default();
            let mut gets = Samples::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (id, ms) = api.create(phase, i).await?;
                creates.push(ms);
                if complete {
                    let every = Duration::from_millis(50);
                    let limit = Duration::from_secs(120);
                    api.wait_state(&id, "awaiting_otp", every, &mut gets, limit)
                        .await?;
                    api.otp(&id).await?;
                    api.wait_state(&id, "completed", every, &mut gets, limit)
                        .await?;
                }
            }
            anyhow::Ok(creates)
        }));
    }
    let mut all = Samples::default();
    for t in tasks {
        all.extend(&t.await.context("driver task")??);
    }
    Ok(all)
}

async fn count_parked(db: &sqlx::PgPool) -> anyhow::Result<i64> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM migrations WHERE state = 'awaiting_otp'")
            .fetch_one(db)
            .await?;
    Ok(n)
}

async fn measure(s: &Stack, args: &ParkedArgs) -> anyhow::Result<(Value, Table)> {
    let settle = Duration::from_secs(args.settle_seconds);
    let (serve, base) = s.start_serve("parked").await?;
    let pid = serve.pid();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (fresh_rss, fresh_hwm) = procs::rss_mib(pid);
    let outcome = async {
        let partner = seed::create_partners(&s.http, &base, super::ADMIN_KEY, 1).await?;
        let partner = partner.into_iter().next().context("no partner")?;
        let api = Arc::new(Api {
            http: s.http.clone(),
            base: base.clone(),
            key: partner.key.clone(),
        });

        eprintln!(
            "bench: warm-up, {} migrations to completed",
            args.warm_migrations
        );
        drive_some(api.clone(), 7, args.warm_migrations, args.concurrency, true).await?;
        tokio::time::sleep(settle).await;
        eprintln!("bench: baseline window ({} s, 0 parked)", args.idle_seconds);
        let base_w = idle_window(pid, s.postmaster, args.idle_seconds).await;

        let seeded_n = args.parked - args.via_api as i64;
        eprintln!("bench: seeding {seeded_n} parked migrations into PostgreSQL");
        let seeded =
            seed::seed_parked(&s.db, &[partner.id], Some(&s.cipher()?), 0, seeded_n).await?;
        tokio::time::sleep(settle).await;
        let seeded_w = idle_window(pid, s.postmaster, args.idle_seconds).await;
        let parked_seeded = count_parked(&s.db).await?;

        eprintln!(
            "bench: {} more through POST /v1/migrations, parked by the workers",
            args.via_api
        );
        let creates = drive_some(api.clone(), 8, args.via_api, args.concurrency, false).await?;
        let t = Instant::now();
        let parked_all = loop {
            let n = count_parked(&s.db).await?;
            if n >= args.parked || t.elapsed() > Duration::from_secs(300) {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let parked_after_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(settle).await;
        let api_w = idle_window(pid, s.postmaster, args.idle_seconds).await;
        anyhow::Ok((
            base_w,
            seeded,
            seeded_w,
            parked_seeded,
            creates,
            parked_all,
            parked_after_s,
            api_w,
        ))
    }
    .await;
    serve.stop(Duration::from_secs(10)).await;
    let (base_w, seeded, seeded_w, parked_seeded, creates, parked_all, parked_after_s, api_w) =
        outcome?;

    // Restart with everything parked.
    let restart = if args.no_restart {
        None
    } else {
        eprintln!("bench: restarting serve with {parked_all} parked");
        let (serve, _) = s.start_serve("parked-restart").await?;
        let pid = serve.pid();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let fresh = procs::rss_mib(pid);
        tokio::time::sleep(settle.saturating_sub(Duration::from_secs(3))).await;
        let w = idle_window(pid, s.postmaster, args.idle_seconds).await;
        serve.stop(Duration::from_secs(10)).await;
        Some((fresh, w))
    };

    let mib_to_mb = 1.048_576;
    let d_seeded = seeded_w.rss_mean - base_w.rss_mean;
    let d_all = api_w.rss_mean - base_w.rss_mean;
    let mut t = Table::default();
    t.section(&format!(
        "footprint: {} migrations parked in awaiting_otp ({} seeded + {} via the API)",
        parked_all, seeded.rows, args.via_api
    ));
    t.row(
        "fresh service RSS / VmHWM (nothing done)",
        format!("{fresh_rss:.1} / {fresh_hwm:.1} MiB"),
        "3 s after start",
    );
    for (name, w, note) in [
        (
            "0 parked (after warm-up): RSS mean / VmHWM, idle CPU",
            &base_w,
            format!("{} migrations completed before", args.warm_migrations),
        ),
        (
            "+ seeded parked: RSS mean / VmHWM, idle CPU",
            &seeded_w,
            format!("{parked_seeded} parked"),
        ),
        (
            "+ API-created parked: RSS mean / VmHWM, idle CPU",
            &api_w,
            format!("{parked_all} parked; the last parked {parked_after_s:.1} s after the creates"),
        ),
    ] {
        t.row(
            name,
            format!(
                "{:.1} / {:.1} MiB, {:.2} % (PostgreSQL {:.2} %)",
                w.rss_mean, w.hwm, w.cpu_pct, w.pg_cpu_pct
            ),
            note,
        );
    }
    t.row(
        "RSS delta: seeded parked only / all parked",
        format!(
            "{d_seeded:+.2} / {d_all:+.2} MiB ({:+.2} / {:+.2} MB)",
            d_seeded * mib_to_mb,
            d_all * mib_to_mb
        ),
        "target 5: < 5 MB",
    );
    t.row(
        "idle CPU with them present",
        format!("{:.2} % of one core", api_w.cpu_pct),
        format!("over {} s; target 5: < 1 %", args.idle_seconds),
    );
    if let Some(((rss, hwm), w)) = &restart {
        t.row(
            "restart with all parked: fresh RSS / VmHWM; idle window",
            format!(
                "{rss:.1} / {hwm:.1} MiB; {:.1} MiB, {:.2} %",
                w.rss_mean, w.cpu_pct
            ),
            format!(
                "vs fresh with 0 parked {fresh_rss:.1} MiB: {:+.2} MiB",
                rss - fresh_rss
            ),
        );
    }
    let doc = json!({
        "config": {
            "parked": args.parked,
            "via_api": args.via_api,
            "idle_seconds": args.idle_seconds,
            "settle_seconds": args.settle_seconds,
            "warm_migrations": args.warm_migrations,
            "concurrency": args.concurrency,
            "serve_env": "run's throughput drive: DATABASE_MAX_CONNECTIONS=20, WORKER_CONCURRENCY=64, CHANNEL_POLL_MS=10, RUST_LOG info",
        },
        "fresh": {"rss_mib": round(fresh_rss, 2), "hwm_mib": round(fresh_hwm, 2)},
        "baseline_0_parked": base_w.json(),
        "seeded_parked": {
            "seeded_rows": seeded.rows,
            "seed_seconds": round(seeded.seconds, 2),
            "parked_in_db": parked_seeded,
            "window": seeded_w.json(),
        },
        "all_parked": {
            "parked_in_db": parked_all,
            "created_via_api": creates.0.len(),
            "api_create": creates.json(),
            "all_parked_after_s": round(parked_after_s, 2),
            "window": api_w.json(),
        },
        "rss_delta_mib": {"seeded_only": round(d_seeded, 2), "all_parked": round(d_all, 2)},
        "rss_delta_mb": {"seeded_only": round(d_seeded * mib_to_mb, 2), "all_parked": round(d_all * mib_to_mb, 2)},
        "target5": {
            "rss_delta_under_5_mb": d_all * mib_to_mb < 5.0,
            "idle_cpu_under_1_pct": api_w.cpu_pct < 1.0,
        },
        "restart_with_parked": restart.as_ref().map(|((rss, hwm), w)| json!({
            "fresh_rss_mib": round(*rss, 2),
            "fresh_hwm_mib": round(*hwm, 2),
            "fresh_rss_delta_vs_0_parked_mib": round(rss - fresh_rss, 2),
            "window": w.json(),
        })),
        "machine": s.machine.clone(),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    Ok((doc, t))
}
