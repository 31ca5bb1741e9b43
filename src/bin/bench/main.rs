//! `waba-bench`: an end-to-end benchmark of `waba-migrator` (see BENCHMARKS.md).
//!
//! `waba-bench run` starts its own PostgreSQL (fresh data directory), a `waba-migrator sandbox`
//! and `waba-migrator serve` processes (the binary next to this one), then:
//!
//! 1. **Pickup probe** (idle service, its upstream URLs pointed at a recording proxy in this
//!    process): creates migrations one at a time and times POST /v1/migrations returning → the
//!    first upstream (Graph) call of its precheck, both on this process's monotonic clock. A
//!    "solo" migration driven to `completed` through the same proxy counts the upstream calls of
//!    one migration and how many of them are sequential.
//! 2. **Throughput drive** (a fresh `serve` talking to the sandbox directly): N migrations
//!    through the public API with C in flight: create → poll until `awaiting_otp` → submit the
//!    sandbox code → poll until `completed`.
//! 3. **Commit ceiling**: `pgbench` against the same PostgreSQL, one one-row UPDATE per
//!    transaction, as many clients as the service's database pool.
//!
//! It prints a Markdown table and a JSON document (`--json FILE` too).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use waba_migrator::domain::EventType;

mod ab;
mod anchor;
mod batch;
mod explain;
mod parked;
mod procs;
mod proxy;
mod seed;
mod stack;
mod stats;
mod store;

use procs::{CpuSnapshot, Proc};
use stack::Stack;
use stats::{Samples, Table};

const ADMIN_KEY: &str = "bench-admin-key-0123456789abcdef";
const BUSINESS: &str = "100000000000000";

/// The event types of transitions (`migration.state_changed` and the types of their own:
/// `migration.awaiting_otp`, `migration.completed`, ...): the events that count as one.
fn transition_types() -> Vec<&'static str> {
    EventType::ALL
        .into_iter()
        .filter(|t| t.is_transition())
        .map(EventType::as_str)
        .collect()
}

#[derive(Debug, Parser)]
#[command(
    name = "waba-bench",
    about = "End-to-end benchmark of waba-migrator (BENCHMARKS.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start PostgreSQL, the sandbox and the service; measure pickup, throughput and the
    /// PostgreSQL commit ceiling; print a table and JSON.
    Run(RunArgs),
    /// Bulk-insert realistic migrations (mostly terminal, some parked) straight into
    /// PostgreSQL, partners through the admin API.
    Seed(seed::SeedArgs),
    /// Target 4: GET / list / claim latency with a small and a large store, same run.
    Store(store::StoreArgs),
    /// Target 5: service RSS and idle CPU with 10,000 migrations parked in awaiting_otp.
    Parked(parked::ParkedArgs),
    /// Issue 17: a 5,000-row CSV batch checked and created, and refused at one bad row.
    Batch(batch::BatchArgs),
    /// A change's before/after: paired `run` drives of an old and a new service binary, in
    /// alternating order; prints the median ratio new ÷ old of the CPU per transition.
    Ab(ab::AbArgs),
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Migrations driven to `completed` in the throughput drive.
    #[arg(long, default_value_t = 2000)]
    migrations: usize,
    /// Migrations in flight at once (each one a driver task: create, poll, submit, poll).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Latency the sandbox adds to every upstream call (SANDBOX_LATENCY_MS).
    #[arg(long, default_value_t = 0)]
    sandbox_latency_ms: u64,
    /// SANDBOX_CHANNEL_DELAY_MS: registration → 360dialog channel running.
    #[arg(long, default_value_t = 0)]
    sandbox_channel_delay_ms: u64,
    /// CHANNEL_POLL_MS of the service.
    #[arg(long, default_value_t = 10)]
    channel_poll_ms: u64,
    /// Driver: interval between two GETs of one migration while waiting for a state.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// How the driver notices `awaiting_otp`: `poll` (GET each migration every --poll-ms) or
    /// `list` (one watcher pages through GET /v1/migrations?state=awaiting_otp every --watch-ms;
    /// for thousands of migrations in flight, where per-migration polling would swamp the API).
    #[arg(long, default_value = "poll", value_parser = ["poll", "list"])]
    otp_watch: String,
    /// Interval of the `list` watcher.
    #[arg(long, default_value_t = 50)]
    watch_ms: u64,
    /// WORKER_CONCURRENCY of the service (default: max(concurrency, 64)).
    #[arg(long)]
    worker_concurrency: Option<usize>,
    /// DATABASE_MAX_CONNECTIONS of the service; also pgbench's client count.
    #[arg(long, default_value_t = 20)]
    db_pool: u32,
    /// RUST_LOG of the service (its default filter is "info,sqlx=warn,tower_http=info,hyper=warn").
    #[arg(long, default_value = "info,sqlx=warn,tower_http=info,hyper=warn")]
    service_log: String,
    /// Pickup samples (idle service, one migration at a time).
    #[arg(long, default_value_t = 50)]
    pickup_samples: usize,
    /// pgbench duration in seconds (0: skip the ceiling).
    #[arg(long, default_value_t = 15)]
    pgbench_seconds: u64,
    /// pgbench threads (-j).
    #[arg(long, default_value_t = 2)]
    pgbench_threads: u32,
    /// Idle samples of GET /v1/migrations/{id} and GET /v1/migrations after the drive.
    #[arg(long, default_value_t = 300)]
    idle_api_samples: usize,
    /// Load pg_stat_statements (PostgreSQL restarted once at start) and report the
    /// statements of the throughput drive: calls per migration, mean and total time.
    #[arg(long, default_value_t = false)]
    pg_stat_statements: bool,
    #[command(flatten)]
    anchor: anchor::AnchorArgs,
    #[command(flatten)]
    out: stack::Output,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Run(args) => rt.block_on(run(args)),
        Cmd::Seed(args) => rt.block_on(seed::run(args)),
        Cmd::Store(args) => rt.block_on(store::run(args)),
        Cmd::Parked(args) => rt.block_on(parked::run(args)),
        Cmd::Batch(args) => rt.block_on(batch::run(args)),
        Cmd::Ab(args) => rt.block_on(ab::run(args)),
    }
}

fn phone(phase: usize, i: usize) -> String {
    // Last four digits 2000..=9999: never a `00xx` scenario number of the sandbox.
    let n = phase * 200_000 + i;
    format!("+1415{:03}{:04}", 550 + n / 8000, 2000 + n % 8000)
}

fn create_body(phase: usize, i: usize) -> Value {
    json!({
        "phone_number": phone(phase, i),
        "source_waba_id": format!("2{phase}{i:07}1111"),
        "destination_waba_id": format!("3{phase}{i:07}1111"),
        "meta_business_id": BUSINESS,
    })
}

/// Everything a run holds on to, stopped in `shutdown`.
struct Env {
    bin: PathBuf,
    dir: PathBuf,
    database_url: String,
    sandbox_url: String,
    encryption_key: String,
    args: RunArgs,
}

impl Env {
    fn serve_env(&self, upstream: &str, port: u16) -> Vec<(String, String)> {
        let a = &self.args;
        let workers = a.worker_concurrency.unwrap_or(a.concurrency.max(64));
        [
            ("DATABASE_URL", self.database_url.clone()),
            ("DATABASE_MAX_CONNECTIONS", a.db_pool.to_string()),
            ("BIND_ADDR", format!("127.0.0.1:{port}")),
            ("META_ACCESS_TOKEN", "bench-token".into()),
            ("META_GRAPH_URL", upstream.to_owned()),
            ("D360_HUB_URL", format!("{upstream}/api/v2")),
            ("D360_WABA_URL", upstream.to_owned()),
            ("SANDBOX_SEED_NUMBERS", "true".into()),
            ("ADMIN_API_KEY", ADMIN_KEY.into()),
            ("ENCRYPTION_KEY", self.encryption_key.clone()),
            ("WORKER_CONCURRENCY", workers.to_string()),
            // Every driver task keeps its own connection: without room for all of them the
            // service's connection cap (1,024 by default) resets the excess at target 2's
            // 2,000 in flight.
            (
                "HTTP_MAX_CONNECTIONS",
                (a.concurrency + 256).max(1024).to_string(),
            ),
            ("CHANNEL_POLL_MS", a.channel_poll_ms.to_string()),
            ("RATE_LIMIT_PER_SECOND", "0".into()),
            // At least the upstream timeout (default 30 s) + 1 s, as startup checks; a stop
            // with nothing in flight is immediate anyway.
            ("SHUTDOWN_GRACE_SECONDS", "31".into()),
            // The bench stops `serve` with SIGTERM and waits 10 s: no HTTP drain first.
            ("SHUTDOWN_DRAIN_SECONDS", "0".into()),
            ("RUST_LOG", a.service_log.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    async fn start_serve(
        &self,
        http: &reqwest::Client,
        upstream: &str,
        label: &str,
    ) -> anyhow::Result<(Proc, String)> {
        let port = procs::free_port();
        let log = self.dir.join(format!("serve-{label}.log"));
        let p = Proc::spawn(
            "serve",
            &self.bin,
            &["serve"],
            &self.serve_env(upstream, port),
            log.clone(),
        )?;
        let base = format!("http://127.0.0.1:{port}");
        procs::wait_ok(http, &format!("{base}/readyz"), "serve", &log).await?;
        Ok((p, base))
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn create(&self, phase: usize, i: usize) -> anyhow::Result<(String, f64)> {
        let t = Instant::now();
        let res = self
            .http
            .post(format!("{}/v1/migrations", self.base))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", format!("bench-{phase}-{i}"))
            .json(&create_body(phase, i))
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or_default();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if status != reqwest::StatusCode::CREATED {
            bail!("create {phase}/{i}: {status} {body}");
        }
        Ok((body["id"].as_str().unwrap_or_default().to_owned(), ms))
    }

    /// GET `path` with the partner key: the JSON body and the latency in ms.
    async fn get_json(&self, path: &str) -> anyhow::Result<(Value, f64)> {
        let t = Instant::now();
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or_default();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok((body, ms))
    }

    async fn get(&self, id: &str) -> anyhow::Result<(Value, f64)> {
        self.get_json(&format!("/v1/migrations/{id}")).await
    }

    async fn list(&self, query: &str) -> anyhow::Result<f64> {
        Ok(self.list_page(query).await?.2)
    }

    /// One page of GET /v1/migrations: the ids on it and the next cursor.
    async fn list_page(&self, query: &str) -> anyhow::Result<(Vec<String>, Option<String>, f64)> {
        let (body, ms) = self.get_json(&format!("/v1/migrations?{query}")).await?;
        let ids = body["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok((ids, body["next_cursor"].as_str().map(str::to_owned), ms))
    }

    async fn otp(&self, id: &str) -> anyhow::Result<f64> {
        let t = Instant::now();
        let res = self
            .http
            .post(format!("{}/v1/migrations/{id}/otp", self.base))
            .bearer_auth(&self.key)
            .json(&json!({"code": "123456"}))
            .send()
            .await?;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if status != reqwest::StatusCode::ACCEPTED {
            bail!("otp {id}: {status} {body}");
        }
        Ok(ms)
    }

    /// Polls every `every` until the migration is in `want`; returns when it was seen there.
    async fn wait_state(
        &self,
        id: &str,
        want: &str,
        every: Duration,
        gets: &mut Samples,
        deadline: Duration,
    ) -> anyhow::Result<Instant> {
        let until = Instant::now() + deadline;
        loop {
            tokio::time::sleep(every).await;
            let (m, ms) = self.get(id).await?;
            gets.push(ms);
            let state = m["state"].as_str().unwrap_or_default();
            if state == want {
                return Ok(Instant::now());
            }
            if matches!(state, "failed" | "cancelled") {
                bail!("migration {id} ended {state}: {}", m["error"]);
            }
            if Instant::now() > until {
                bail!("migration {id} still {state} after {deadline:?} (waiting for {want})");
            }
        }
    }
}

async fn create_partner(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let res = http
        .post(format!("{base}/v1/partners"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "Bench partner", "d360_partner_id": "benchPA", "d360_api_key": "bench-key"}))
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or_default();
    if status != reqwest::StatusCode::CREATED {
        bail!("create partner: {status} {body}");
    }
    Ok(body["api_key"].as_str().unwrap_or_default().to_owned())
}

#[derive(Default)]
struct DriveResult {
    ids: Vec<String>,
    create: Samples,
    get: Samples,
    otp: Samples,
    list: Samples,
    watch: Samples,
    to_awaiting: Samples,
    to_completed: Samples,
    create_phase: Duration,
    wall: Duration,
    errors: Vec<String>,
    pool_in_use_max: f64,
    /// `/metrics` scrapes by the side sampler.
    scrapes: usize,
    service_rss_max_sampled: f64,
}

async fn drive(api: Arc<Api>, args: &RunArgs, serve_pid: u32) -> DriveResult {
    let n = args.migrations;
    let poll = Duration::from_millis(args.poll_ms);
    let next = Arc::new(AtomicUsize::new(0));
    let result = Arc::new(Mutex::new(DriveResult::default()));
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();

    // Side samplers: list latency under load (10/s) and /metrics pool use + RSS (4/s).
    let list_task = {
        let (api, stop, result) = (api.clone(), stop.clone(), result.clone());
        tokio::spawn(async move {
            let mut list = Samples::default();
            while !stop.is_cancelled() {
                if let Ok(ms) = api.list("limit=100").await {
                    list.push(ms);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result.lock().await.list = list;
        })
    };
    let metrics_task = {
        let (api, stop, result) = (api.clone(), stop.clone(), result.clone());
        tokio::spawn(async move {
            let (mut pool_max, mut rss_max, mut scrapes) = (0f64, 0f64, 0usize);
            while !stop.is_cancelled() {
                scrapes += 1;
                if let Ok(r) = api.http.get(format!("{}/metrics", api.base)).send().await
                    && let Ok(text) = r.text().await
                    && let Some(v) = text
                        .lines()
                        .find(|l| l.starts_with("waba_db_pool_connections{state=\"in_use\"}"))
                        .and_then(|l| l.split_whitespace().last())
                        .and_then(|v| v.parse::<f64>().ok())
                {
                    pool_max = pool_max.max(v);
                }
                rss_max = rss_max.max(procs::rss_mib(serve_pid).0);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let mut r = result.lock().await;
            r.pool_in_use_max = pool_max;
            r.service_rss_max_sampled = rss_max;
            r.scrapes = scrapes;
        })
    };

    // The `list` watcher: when each migration was first seen in awaiting_otp.
    let parked: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let sweep = Arc::new(tokio::sync::Notify::new());
    let watch_task = (args.otp_watch == "list").then(|| {
        let (api, stop, result) = (api.clone(), stop.clone(), result.clone());
        let (parked, sweep) = (parked.clone(), sweep.clone());
        let every = Duration::from_millis(args.watch_ms);
        tokio::spawn(async move {
            let mut pages = Samples::default();
            while !stop.is_cancelled() {
                let mut cursor: Option<String> = None;
                loop {
                    let q = match &cursor {
                        Some(c) => format!("state=awaiting_otp&limit=100&cursor={c}"),
                        None => "state=awaiting_otp&limit=100".to_owned(),
                    };
                    let Ok((ids, next, ms)) = api.list_page(&q).await else {
                        break;
                    };
                    pages.push(ms);
                    let now = Instant::now();
                    let mut p = parked.lock().expect("lock");
                    for id in ids {
                        p.entry(id).or_insert(now);
                    }
                    drop(p);
                    match next {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                sweep.notify_waiters();
                tokio::time::sleep(every).await;
            }
            result.lock().await.watch = pages;
        })
    });

    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.min(n) {
        let (api, next, result) = (api.clone(), next.clone(), result.clone());
        let (parked, sweep) = (parked.clone(), sweep.clone());
        let by_list = args.otp_watch == "list";
        tasks.push(tokio::spawn(async move {
            let mut mine = DriveResult::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let one = async {
                    let (id, ms) = api.create(1, i).await?;
                    mine.create.push(ms);
                    let created = Instant::now();
                    mine.create_phase = mine.create_phase.max(created - started);
                    let parked = if by_list {
                        let until = Instant::now() + Duration::from_secs(600);
                        loop {
                            let swept = sweep.notified();
                            tokio::pin!(swept);
                            swept.as_mut().enable();
                            if let Some(t) = parked.lock().expect("lock").get(&id) {
                                break *t;
                            }
                            if Instant::now() > until {
                                bail!("migration {id} not seen in awaiting_otp within 600 s");
                            }
                            let _ = tokio::time::timeout(Duration::from_secs(5), swept).await;
                        }
                    } else {
                        api.wait_state(
                            &id,
                            "awaiting_otp",
                            poll,
                            &mut mine.get,
                            Duration::from_secs(600),
                        )
                        .await?
                    };
                    mine.to_awaiting
                        .push((parked - created).as_secs_f64() * 1e3);
                    mine.otp.push(api.otp(&id).await?);
                    let submitted = Instant::now();
                    let done = api
                        .wait_state(
                            &id,
                            "completed",
                            poll,
                            &mut mine.get,
                            Duration::from_secs(600),
                        )
                        .await?;
                    mine.to_completed
                        .push((done - submitted).as_secs_f64() * 1e3);
                    mine.wall = mine.wall.max(done - started);
                    anyhow::Ok(id)
                };
                match one.await {
                    Ok(id) => mine.ids.push(id),
                    Err(e) => mine.errors.push(format!("{e:#}")),
                }
            }
            let mut r = result.lock().await;
            r.ids.append(&mut mine.ids);
            r.create.extend(&mine.create);
            r.get.extend(&mine.get);
            r.otp.extend(&mine.otp);
            r.to_awaiting.extend(&mine.to_awaiting);
            r.to_completed.extend(&mine.to_completed);
            r.create_phase = r.create_phase.max(mine.create_phase);
            r.wall = r.wall.max(mine.wall);
            r.errors.append(&mut mine.errors);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    stop.cancel();
    let _ = list_task.await;
    if let Some(w) = watch_task {
        let _ = w.await;
    }
    let _ = metrics_task.await;
    match Arc::try_unwrap(result) {
        Ok(m) => m.into_inner(),
        Err(_) => DriveResult::default(),
    }
}

struct Pickup {
    proxy_ms: Samples,
    cold_ms: f64,
    db_ms: Samples,
    solo_calls: usize,
    solo_waves: usize,
    solo_e2e_ms: f64,
    solo_to_awaiting_ms: f64,
    solo_to_completed_ms: f64,
    solo_paths: Vec<String>,
}

/// Idle service, one migration at a time, through the recording proxy.
async fn pickup(
    api: &Api,
    rec: &proxy::Recorder,
    db: &sqlx::PgPool,
    samples: usize,
) -> anyhow::Result<Pickup> {
    let mut proxy_ms = Samples::default();
    let mut cold_ms = 0.0;
    let mut ids = Vec::new();
    let mut gets = Samples::default();
    for i in 0..=samples {
        tokio::time::sleep(Duration::from_millis(150)).await;
        rec.clear();
        let arrived = rec.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let (id, _) = api.create(0, i).await?;
        let returned = Instant::now();
        let first = *rec.first_arrival.lock().expect("lock");
        let first = match first {
            Some(t) => t,
            None => {
                tokio::time::timeout(Duration::from_secs(10), arrived)
                    .await
                    .context("no upstream call within 10 s of a create")?;
                rec.first_arrival
                    .lock()
                    .expect("lock")
                    .context("notified without a time")?
            }
        };
        // Signed: negative when the worker called upstream before the response reached us.
        let ms = if first >= returned {
            (first - returned).as_secs_f64() * 1e3
        } else {
            -((returned - first).as_secs_f64() * 1e3)
        };
        // The first create after start pays one-time connection setup (service → sandbox,
        // pool connections): reported apart, not in the percentiles.
        if i == 0 {
            cold_ms = ms;
        } else {
            proxy_ms.push(ms);
        }
        api.wait_state(
            &id,
            "awaiting_otp",
            Duration::from_millis(20),
            &mut gets,
            Duration::from_secs(60),
        )
        .await?;
        ids.push(id);
    }
    // The same from the database clock: `created` event → the transition out of `queued` (both
    // stamped with their transaction's start time).
    let db_rows: Vec<(f64,)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (p.created_at - c.created_at))::float8 * 1000
           FROM migration_events c
           JOIN migration_events p ON p.migration_id = c.migration_id
          WHERE c.type = $2 AND p.type = ANY($3)
            AND p.from_state = 'queued' AND c.migration_id::text = ANY($1)",
    )
    .bind(&ids)
    .bind(EventType::Created.as_str())
    .bind(transition_types())
    .fetch_all(db)
    .await?;
    let db_ms = Samples(db_rows.into_iter().map(|r| r.0).collect());

    // Solo: one migration to `completed`, counting its upstream calls.
    tokio::time::sleep(Duration::from_millis(200)).await;
    rec.clear();
    let poll = Duration::from_millis(5);
    let t0 = Instant::now();
    let (id, _) = api.create(0, samples + 1).await?;
    let created = Instant::now();
    let parked = api
        .wait_state(
            &id,
            "awaiting_otp",
            poll,
            &mut gets,
            Duration::from_secs(120),
        )
        .await?;
    api.otp(&id).await?;
    let submitted = Instant::now();
    let done = api
        .wait_state(&id, "completed", poll, &mut gets, Duration::from_secs(120))
        .await?;
    let seen = rec.seen.lock().expect("lock").clone();
    Ok(Pickup {
        proxy_ms,
        cold_ms,
        db_ms,
        solo_calls: seen.len(),
        solo_waves: proxy::waves(&seen),
        solo_e2e_ms: (done - t0).as_secs_f64() * 1e3,
        solo_to_awaiting_ms: (parked - created).as_secs_f64() * 1e3,
        solo_to_completed_ms: (done - submitted).as_secs_f64() * 1e3,
        solo_paths: seen
            .iter()
            .map(|s| format!("{} {}", s.method, s.path.split('?').next().unwrap_or("")))
            .collect(),
    })
}

/// One-row UPDATE per transaction, `clients` clients, each on its own row.
async fn pgbench(
    env: &Env,
    db: &sqlx::PgPool,
    pg_port: u16,
    clients: u32,
    threads: u32,
    seconds: u64,
) -> anyhow::Result<(f64, String)> {
    sqlx::query("DROP TABLE IF EXISTS bench_ceiling")
        .execute(db)
        .await?;
    sqlx::query("CREATE TABLE bench_ceiling (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)")
        .execute(db)
        .await?;
    sqlx::query("INSERT INTO bench_ceiling (id) SELECT generate_series(1, $1)")
        .bind(clients as i32)
        .execute(db)
        .await?;
    let script = env.dir.join("ceiling.sql");
    std::fs::write(
        &script,
        "\\set id :client_id + 1\nUPDATE bench_ceiling SET n = n + 1 WHERE id = :id;\n",
    )?;
    let pgbench = std::env::var("PGBENCH").unwrap_or_else(|_| "pgbench".into());
    let out = tokio::process::Command::new(&pgbench)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port.to_string(),
            "-U",
            "waba",
            "-n",
        ])
        .arg("-f")
        .arg(&script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &threads.min(clients).to_string(),
            "-T",
            &seconds.to_string(),
            "waba_migrator",
        ])
        .env_remove("PGPASSWORD")
        .output()
        .await
        .with_context(|| format!("cannot run {pgbench}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "pgbench failed: {}\n{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .context("no `tps = ` line in pgbench's output")?;
    sqlx::query("DROP TABLE bench_ceiling").execute(db).await?;
    Ok((tps, text))
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let out = args.out.clone();
    let (doc, table) = run_measured(args).await?;
    out.report(&doc, &table)
}

/// One `run` drive, its document only (for `ab`): the table is not printed.
async fn run_once(args: RunArgs) -> anyhow::Result<Value> {
    Ok(run_measured(args).await?.0)
}

async fn run_measured(args: RunArgs) -> anyhow::Result<(Value, stats::Table)> {
    let bin = stack::migrator_bin(args.out.bin.as_deref())?;
    // PostgreSQL with its default durability settings (fsync, synchronous_commit on).
    let s = Stack::start(&args.out.dir(), &bin, args.clone()).await?;
    let result = measure(
        &s.env,
        &s.http,
        &s.db,
        s.pg_port,
        s.postmaster,
        s.sandbox.pid(),
    )
    .await;
    let machine = s.machine.clone();
    s.stop(result.is_ok(), args.out.keep).await;
    let (mut doc, table) = result?;
    doc["machine"] = machine;
    doc["machine"]["loadavg_at_end"] = json!(
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok((doc, table))
}

fn mem_total_gib() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    round(kb / 1024.0 / 1024.0, 1)
}

async fn measure(
    env: &Env,
    http: &reqwest::Client,
    db: &sqlx::PgPool,
    pg_port: u16,
    postmaster: u32,
    sandbox_pid: u32,
) -> anyhow::Result<(Value, Table)> {
    let args = &env.args;
    let mut t = Table::default();

    // 1. Pickup and solo probes, through the recording proxy.
    let (proxy_url, rec) = proxy::start(&env.sandbox_url).await?;
    let (serve_a, base_a) = env.start_serve(http, &proxy_url, "pickup").await?;
    let key = create_partner(http, &base_a).await?;
    let api_a = Api {
        http: http.clone(),
        base: base_a,
        key: key.clone(),
    };
    eprintln!("bench: pickup probe ({} samples)", args.pickup_samples);
    let pick = pickup(&api_a, &rec, db, args.pickup_samples).await;
    serve_a.stop(Duration::from_secs(10)).await;
    let pick = pick?;

    // The anchor (issue 18): graphile-worker draining no-op jobs, then step jobs, on the same
    // PostgreSQL, half of each default-mode series before the service's drive and half after.
    // Step jobs call the sandbox, so they run only when it answers at once.
    let mut anchor =
        anchor::Anchor::prepare(&args.anchor, db, pg_port, postmaster, &env.sandbox_url).await?;
    let before = args.anchor.anchor_runs.max(1).div_ceil(2);
    let step_runs = if args.sandbox_latency_ms == 0 {
        args.anchor.anchor_step_runs
    } else {
        0
    };
    let step_before = step_runs.div_ceil(2);
    if let Some(a) = &mut anchor {
        eprintln!(
            "bench: graphile-worker anchor, {} jobs per drain",
            args.anchor.anchor_jobs
        );
        a.drains(anchor::Task::Noop, 0, before).await?;
        a.drains(anchor::Task::Step, 0, step_before).await?;
    }

    // 2. The throughput drive, straight to the sandbox.
    let (serve, base) = env.start_serve(http, &env.sandbox_url, "drive").await?;
    let serve_pid = serve.pid();
    let api = Arc::new(Api {
        http: http.clone(),
        base,
        key,
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle0 = CpuSnapshot::take(serve_pid, sandbox_pid, postmaster);
    let idle_t = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = CpuSnapshot::take(serve_pid, sandbox_pid, postmaster).since(&idle0);
    let idle_pct = idle.service / idle_t.elapsed().as_secs_f64() * 100.0;
    let (rss_before, _) = procs::rss_mib(serve_pid);

    eprintln!(
        "bench: driving {} migrations, {} in flight, sandbox latency {} ms",
        args.migrations, args.concurrency, args.sandbox_latency_ms
    );
    if args.pg_stat_statements {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(db)
            .await?;
    }
    let wal0 = procs::WalSnapshot::take(db).await?;
    let cpu0 = CpuSnapshot::take(serve_pid, sandbox_pid, postmaster);
    let d = drive(api.clone(), args, serve_pid).await;
    let cpu = CpuSnapshot::take(serve_pid, sandbox_pid, postmaster).since(&cpu0);
    let wal = procs::WalSnapshot::take(db).await?.since(&wal0);
    let statements = if args.pg_stat_statements {
        top_statements(db, d.ids.len()).await?
    } else {
        Vec::new()
    };
    let (rss_after, rss_hwm) = procs::rss_mib(serve_pid);
    if !d.errors.is_empty() {
        eprintln!(
            "bench: {} migrations failed; first: {}",
            d.errors.len(),
            d.errors[0]
        );
    }
    let done = d.ids.len();
    let upstream_calls = upstream_total(http, &format!("{}/metrics", api.base)).await;

    // Transitions of this drive's migrations, on the database clock.
    let (transitions, window_s): (i64, f64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM migration_events
                  WHERE type = ANY($2) AND migration_id::text = ANY($1)),
                COALESCE(EXTRACT(EPOCH FROM (max(completed_at) - min(created_at)))::float8, 0)
           FROM migrations WHERE id::text = ANY($1)",
    )
    .bind(&d.ids)
    .bind(transition_types())
    .fetch_one(db)
    .await?;
    let tps = if window_s > 0.0 {
        transitions as f64 / window_s
    } else {
        0.0
    };
    let wall = d.wall.as_secs_f64();

    // Idle API latency after the drive.
    let mut idle_get = Samples::default();
    let mut idle_list = Samples::default();
    for i in 0..args.idle_api_samples {
        if let Some(id) = d.ids.get(i * 7919 % d.ids.len().max(1)) {
            idle_get.push(api.get(id).await?.1);
        }
        idle_list.push(api.list("limit=100").await?);
    }

    // What the driver's reads cost (its GET polls, the `list` watcher's pages, the side
    // samplers' lists and /metrics scrapes): the same requests replayed now that no migration
    // moves, with as many in flight; service + PostgreSQL CPU. The anchor has no such reads.
    let reads = Reads {
        gets: d.get.0.len(),
        pages: d.watch.0.len(),
        lists: d.list.0.len(),
        scrapes: d.scrapes,
    };
    let reads_cpu_ms = if d.ids.is_empty() {
        None
    } else {
        let cpu0 = CpuSnapshot::take(serve_pid, sandbox_pid, postmaster);
        replay_reads(&api, &d.ids, &reads, args.concurrency).await;
        let c = CpuSnapshot::take(serve_pid, sandbox_pid, postmaster).since(&cpu0);
        Some((c.service + c.postgres) * 1e3)
    };
    serve.stop(Duration::from_secs(10)).await;

    // 3. The anchor's other drains (defaults and step jobs: the rest; local queue: all).
    let anchor = match anchor {
        Some(mut a) => {
            a.drains(
                anchor::Task::Noop,
                0,
                args.anchor.anchor_runs.max(1) - before,
            )
            .await?;
            a.drains(anchor::Task::Step, 0, step_runs - step_before)
                .await?;
            if args.anchor.anchor_local_queue > 0 {
                a.drains(
                    anchor::Task::Noop,
                    args.anchor.anchor_local_queue,
                    args.anchor.anchor_runs.max(1),
                )
                .await?;
            }
            a.finish().await
        }
        None => Vec::new(),
    };

    // 4. The commit ceiling.
    let ceiling = if args.pgbench_seconds > 0 {
        eprintln!(
            "bench: pgbench ceiling, {} clients, {} s",
            args.db_pool, args.pgbench_seconds
        );
        Some(
            pgbench(
                env,
                db,
                pg_port,
                args.db_pool,
                args.pgbench_threads,
                args.pgbench_seconds,
            )
            .await?,
        )
    } else {
        None
    };
    let ratio = ceiling.as_ref().map(|(c, _)| tps / c);

    // Target 2: wall ≤ 1.5 × sequential upstream calls × latency + the driver's create time.
    let t2_bound_s = 1.5 * pick.solo_waves as f64 * args.sandbox_latency_ms as f64 / 1e3
        + d.create_phase.as_secs_f64();
    let per = |v: f64| if done > 0 { v / done as f64 } else { 0.0 };

    t.section("run");
    t.row(
        "migrations completed / failed",
        format!("{done} / {}", d.errors.len()),
        format!(
            "{} in flight, sandbox latency {} ms, poll every {} ms",
            args.concurrency, args.sandbox_latency_ms, args.poll_ms
        ),
    );
    t.row(
        "wall time (first create → last completed seen)",
        format!("{wall:.2} s"),
        format!(
            "creates all answered after {:.2} s",
            d.create_phase.as_secs_f64()
        ),
    );
    t.row(
        "migrations/s completed",
        format!("{:.1}", done as f64 / wall),
        "",
    );
    t.row(
        "state transitions/s",
        format!("{tps:.1}"),
        format!("{transitions} transition events over {window_s:.2} s (database clock)"),
    );
    if let Some((c, _)) = &ceiling {
        t.row(
            "commit ceiling (pgbench, one-row UPDATE/tx)",
            format!("{c:.0} tps"),
            format!(
                "{} clients = DATABASE_MAX_CONNECTIONS, {} s",
                args.db_pool, args.pgbench_seconds
            ),
        );
        t.row(
            "transitions/s ÷ ceiling",
            format!("{:.3}", ratio.unwrap_or(0.0)),
            "target 1: ≥ 0.5",
        );
    }
    t.section("latency (driver clock; polls add up to one poll interval)");
    t.row(
        "create → awaiting_otp p50/p95/p99",
        d.to_awaiting.fmt3(),
        "",
    );
    t.row(
        "OTP submit → completed p50/p95/p99",
        d.to_completed.fmt3(),
        "",
    );
    t.row(
        "API create p50/p99 (under load)",
        d.create.fmt2(),
        format!("n={}", d.create.0.len()),
    );
    t.row(
        "API get p50/p99 (under load)",
        d.get.fmt2(),
        format!("n={}", d.get.0.len()),
    );
    t.row(
        "API list p50/p99 (under load, 10/s)",
        d.list.fmt2(),
        format!("n={}", d.list.0.len()),
    );
    t.row(
        "API otp p50/p99 (under load)",
        d.otp.fmt2(),
        format!("n={}", d.otp.0.len()),
    );
    t.row(
        "API get p50/p99 (idle)",
        idle_get.fmt2(),
        format!("n={}", idle_get.0.len()),
    );
    t.row(
        "API list p50/p99 (idle, limit=100)",
        idle_list.fmt2(),
        format!("n={}", idle_list.0.len()),
    );
    t.section("pickup (idle service, one migration at a time)");
    t.row(
        "POST returned → first precheck upstream call p50/p95/p99",
        pick.proxy_ms.fmt3(),
        format!(
            "n={} after one warm-up ({:.1} ms), recording proxy; target 3: p99 ≤ 15 ms",
            pick.proxy_ms.0.len(),
            pick.cold_ms
        ),
    );
    t.row(
        "created event → queued→prechecking event p50/p95/p99",
        pick.db_ms.fmt3(),
        "database clock (transaction start times)",
    );
    t.row(
        "solo migration: upstream calls / sequential",
        format!("{} / {}", pick.solo_calls, pick.solo_waves),
        format!(
            "end to end {:.0} ms (create → awaiting_otp {:.0} ms, OTP → completed {:.0} ms)",
            pick.solo_e2e_ms, pick.solo_to_awaiting_ms, pick.solo_to_completed_ms
        ),
    );
    if args.sandbox_latency_ms > 0 {
        t.row(
            "target 2 bound: 1.5 × sequential × latency + create time",
            format!("{t2_bound_s:.2} s"),
            format!(
                "wall / bound = {:.2} (driver clock), {:.2} (database clock: first created_at → last completed_at)",
                wall / t2_bound_s,
                window_s / t2_bound_s
            ),
        );
    }
    t.section("service footprint");
    t.row(
        "service RSS before / after / peak (VmHWM)",
        format!("{rss_before:.1} / {rss_after:.1} / {rss_hwm:.1} MiB"),
        format!(
            "sampled max during drive {:.1} MiB",
            d.service_rss_max_sampled
        ),
    );
    t.row(
        "service idle CPU",
        format!("{idle_pct:.2} %"),
        "of one core, 5 s before the drive",
    );
    t.row(
        "CPU s per migration: service / postgres / sandbox / driver",
        format!(
            "{:.4} / {:.4} / {:.4} / {:.4}",
            per(cpu.service),
            per(cpu.postgres),
            per(cpu.sandbox),
            per(cpu.driver)
        ),
        format!(
            "totals {:.1} / {:.1} / {:.1} / {:.1} s of {:.1} s × 2 cores",
            cpu.service, cpu.postgres, cpu.sandbox, cpu.driver, wall
        ),
    );
    // Issue 18: service + PostgreSQL CPU per transition against the anchor's per job.
    let per_transition_ms = if transitions > 0 {
        (cpu.service + cpu.postgres) * 1e3 / transitions as f64
    } else {
        0.0
    };
    t.row(
        "CPU ms per transition: service + postgres",
        format!("{per_transition_ms:.3}"),
        format!(
            "{:.3} + {:.3}; {transitions} transitions",
            cpu.service * 1e3 / transitions.max(1) as f64,
            cpu.postgres * 1e3 / transitions.max(1) as f64
        ),
    );
    // The same net of the driver's reads (replayed apart, above): the engine and the API
    // calls a migration needs (create, OTP), what the anchor's jobs are compared with.
    let net_ms = reads_cpu_ms
        .map(|ms| (per_transition_ms * transitions as f64 - ms) / transitions.max(1) as f64);
    if let (Some(ms), Some(net)) = (reads_cpu_ms, net_ms) {
        t.row(
            "  of which the driver's reads",
            format!("{:.3}", ms / transitions.max(1) as f64),
            format!(
                "{} GET polls, {} watcher pages, {} lists (limit=100), {} /metrics scrapes: {ms:.0} ms replayed after the drive, {} in flight",
                reads.gets, reads.pages, reads.lists, reads.scrapes, args.concurrency
            ),
        );
        t.row(
            "CPU ms per transition net of the driver's reads",
            format!("{net:.3}"),
            "create, OTP, the workers' claims, steps, upstream calls and records",
        );
    }
    t.row(
        "PostgreSQL per transition: WAL records / bytes / flushes / commits",
        wal.fmt_per(transitions as f64),
        "pg_stat_wal, pg_stat_database over the drive (its GETs' read-only commits included)",
    );
    for mode in &anchor {
        let m = mode.median();
        let name = if mode.task == anchor::Task::Step {
            "anchor: graphile-worker, step jobs".to_owned()
        } else if mode.local_queue > 0 {
            format!("anchor: graphile-worker, local queue {}", mode.local_queue)
        } else {
            "anchor: graphile-worker, defaults".to_owned()
        };
        t.row(
            &format!("{name}: CPU ms per job (worker + postgres)"),
            format!("{:.3}", m.cpu_ms_per_job()),
            format!(
                "median of {}: {:.0} jobs/s, {} jobs, concurrency {}; worker {:.2} s + postgres {:.2} s",
                mode.drains.len(),
                m.jobs_per_s(),
                m.jobs,
                args.anchor.anchor_concurrency,
                m.worker_cpu_s,
                m.postgres_cpu_s
            ),
        );
        let goal = if mode.task == anchor::Task::Step {
            "a job doing a step's work: 2 sandbox calls, a state change and an event row".to_owned()
        } else if mode.local_queue > 0 {
            "issue 18 stretch: ≤ 1.5".to_owned()
        } else {
            "issue 18 target 2: ≤ 1.0".to_owned()
        };
        t.row(
            &format!("{name}: per job: WAL records / bytes / flushes / commits"),
            m.wal.fmt_per(f64::from(m.jobs)),
            "",
        );
        t.row(
            &format!("per transition ÷ per job ({name})"),
            format!("{:.2}", per_transition_ms / m.cpu_ms_per_job()),
            goal,
        );
        if let Some(net) = net_ms {
            t.row(
                &format!("per transition net of the driver's reads ÷ per job ({name})"),
                format!("{:.2}", net / m.cpu_ms_per_job()),
                "",
            );
        }
    }
    t.row(
        "DB pool in use (max sampled) / size",
        format!("{:.0} / {}", d.pool_in_use_max, args.db_pool),
        format!(
            "WORKER_CONCURRENCY {}",
            args.worker_concurrency.unwrap_or(args.concurrency.max(64))
        ),
    );
    t.row(
        "upstream calls per migration",
        format!("{:.1}", per(upstream_calls)),
        "waba_upstream_requests_total of the drive's service",
    );

    if !statements.is_empty() {
        t.section("pg_stat_statements over the drive (top 25 by total time)");
        for st in &statements {
            t.row(
                &st["query"].as_str().unwrap_or_default().replace('|', "\\|"),
                format!(
                    "{:.2} calls/migration × {:.0} µs",
                    st["calls_per_migration"].as_f64().unwrap_or(0.0),
                    st["mean_us"].as_f64().unwrap_or(0.0)
                ),
                format!(
                    "{:.0} ms in all; planned {} times ({:.0} ms)",
                    st["total_ms"].as_f64().unwrap_or(0.0),
                    st["plans"],
                    st["plan_ms"].as_f64().unwrap_or(0.0)
                ),
            );
        }
    }

    let doc = json!({
        "statements": statements,
        "config": {
            "migrations": args.migrations,
            "concurrency": args.concurrency,
            "sandbox_latency_ms": args.sandbox_latency_ms,
            "sandbox_channel_delay_ms": args.sandbox_channel_delay_ms,
            "channel_poll_ms": args.channel_poll_ms,
            "poll_ms": args.poll_ms,
            "otp_watch": args.otp_watch,
            "watch_ms": args.watch_ms,
            "worker_concurrency": args.worker_concurrency.unwrap_or(args.concurrency.max(64)),
            "db_pool": args.db_pool,
            "service_log": args.service_log,
            "pgbench_seconds": args.pgbench_seconds,
        },
        "completed": done,
        "failed": d.errors.len(),
        "first_errors": d.errors.iter().take(5).collect::<Vec<_>>(),
        "wall_s": round(wall, 3),
        "create_phase_s": round(d.create_phase.as_secs_f64(), 3),
        "migrations_per_s": round(done as f64 / wall, 2),
        "transitions": transitions,
        "transitions_window_s": round(window_s, 3),
        "transitions_per_s": round(tps, 1),
        "ceiling_tps": ceiling.as_ref().map(|(c, _)| round(*c, 1)),
        "transitions_to_ceiling_ratio": ratio.map(|r| round(r, 4)),
        "latency": {
            "create_to_awaiting_otp": d.to_awaiting.json(),
            "otp_to_completed": d.to_completed.json(),
        },
        "api": {
            "create_under_load": d.create.json(),
            "get_under_load": d.get.json(),
            "list_under_load": d.list.json(),
            "otp_under_load": d.otp.json(),
            "list_awaiting_otp_watcher": d.watch.json(),
            "get_idle": idle_get.json(),
            "list_idle": idle_list.json(),
        },
        "pickup": {
            "proxy_post_to_first_upstream": pick.proxy_ms.json(),
            "proxy_post_to_first_upstream_warmup_ms": round(pick.cold_ms, 2),
            "proxy_post_to_first_upstream_samples_ms": pick
                .proxy_ms
                .0
                .iter()
                .map(|v| round(*v, 2))
                .collect::<Vec<_>>(),
            "db_created_to_prechecking": pick.db_ms.json(),
            "solo_upstream_calls": pick.solo_calls,
            "solo_sequential_calls": pick.solo_waves,
            "solo_e2e_ms": round(pick.solo_e2e_ms, 1),
            "solo_to_awaiting_otp_ms": round(pick.solo_to_awaiting_ms, 1),
            "solo_otp_to_completed_ms": round(pick.solo_to_completed_ms, 1),
            "solo_calls": pick.solo_paths,
        },
        "target2_bound_s": (args.sandbox_latency_ms > 0).then(|| round(t2_bound_s, 3)),
        "service": {
            "rss_before_mib": round(rss_before, 1),
            "rss_after_mib": round(rss_after, 1),
            "rss_hwm_mib": round(rss_hwm, 1),
            "rss_sampled_max_mib": round(d.service_rss_max_sampled, 1),
            "idle_cpu_pct": round(idle_pct, 3),
            "db_pool_in_use_max": d.pool_in_use_max,
        },
        "cpu_seconds": {
            "service": round(cpu.service, 2),
            "postgres": round(cpu.postgres, 2),
            "sandbox": round(cpu.sandbox, 2),
            "driver": round(cpu.driver, 2),
            "total": round(cpu.total(), 2),
            "per_migration": {
                "service": round(per(cpu.service), 5),
                "postgres": round(per(cpu.postgres), 5),
                "sandbox": round(per(cpu.sandbox), 5),
                "driver": round(per(cpu.driver), 5),
            },
        },
        "upstream_calls_per_migration": round(per(upstream_calls), 2),
        "cpu_ms_per_transition": {
            "service": round(cpu.service * 1e3 / transitions.max(1) as f64, 4),
            "postgres": round(cpu.postgres * 1e3 / transitions.max(1) as f64, 4),
            "service_plus_postgres": round(per_transition_ms, 4),
        },
        "postgres_per_transition": wal.per(transitions as f64),
        "driver_reads": {
            "gets": reads.gets,
            "watcher_pages": reads.pages,
            "lists": reads.lists,
            "metrics_scrapes": reads.scrapes,
            "cpu_ms_replayed": reads_cpu_ms.map(|v| round(v, 1)),
            "cpu_ms_per_transition_net_of_reads": net_ms.map(|v| round(v, 4)),
        },
        "anchor": anchor.iter().map(|m| {
            let mut v = m.json();
            v["ratio_per_transition_to_per_job"] =
                json!(round(per_transition_ms / m.median().cpu_ms_per_job(), 3));
            v["ratio_net_of_reads_to_per_job"] =
                json!(net_ms.map(|n| round(n / m.median().cpu_ms_per_job(), 3)));
            v
        }).collect::<Vec<_>>(),
        "anchor_config": {
            "jobs": args.anchor.anchor_jobs,
            "runs": args.anchor.anchor_runs,
            "concurrency": args.anchor.anchor_concurrency,
            "local_queue": args.anchor.anchor_local_queue,
            "step_runs": step_runs,
        },
        "pgbench_output": ceiling.as_ref().map(|(_, o)| o.clone()),
    });
    Ok((doc, t))
}

/// Sum of `waba_upstream_requests_total` in a service's /metrics.
async fn upstream_total(http: &reqwest::Client, url: &str) -> f64 {
    let Ok(r) = http.get(url).send().await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("waba_upstream_requests_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The drive's statements from pg_stat_statements, most total time first.
async fn top_statements(db: &sqlx::PgPool, migrations: usize) -> anyhow::Result<Vec<Value>> {
    let rows: Vec<(String, i64, f64, f64, i64, i64, f64)> = sqlx::query_as(
        "SELECT regexp_replace(left(query, 160), '\\s+', ' ', 'g'), calls,
                total_exec_time + total_plan_time, mean_exec_time, rows, plans, total_plan_time
           FROM pg_stat_statements
          WHERE query NOT ILIKE '%pg_stat_statements%'
          ORDER BY total_exec_time + total_plan_time DESC LIMIT 25",
    )
    .fetch_all(db)
    .await?;
    let n = migrations.max(1) as f64;
    Ok(rows
        .into_iter()
        .map(|(query, calls, total, mean, rows, plans, plan_ms)| {
            json!({
                "plans": plans,
                "plan_ms": round(plan_ms, 1),
                "query": query,
                "calls": calls,
                "calls_per_migration": round(calls as f64 / n, 3),
                "mean_us": round(mean * 1e3, 1),
                "total_ms": round(total, 1),
                "rows": rows,
            })
        })
        .collect())
}

/// The read requests a drive made besides the ones a migration needs.
struct Reads {
    gets: usize,
    pages: usize,
    lists: usize,
    scrapes: usize,
}

/// Sends `reads` again: GETs of the drive's migrations, `awaiting_otp` pages and `limit=100`
/// lists and /metrics scrapes, `in_flight` at a time.
async fn replay_reads(api: &Arc<Api>, ids: &[String], reads: &Reads, in_flight: usize) {
    let total = reads.gets + reads.pages + reads.lists + reads.scrapes;
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(ids.to_vec());
    let (gets, pages, lists) = (reads.gets, reads.pages, reads.lists);
    let mut tasks = Vec::new();
    for _ in 0..in_flight.clamp(1, total.max(1)) {
        let (api, next, ids) = (api.clone(), next.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if i < gets {
                    let _ = api.get(&ids[i * 7919 % ids.len()]).await;
                } else if i < gets + pages {
                    let _ = api.list("state=awaiting_otp&limit=100").await;
                } else if i < gets + pages + lists {
                    let _ = api.list("limit=100").await;
                } else if let Ok(r) = api.http.get(format!("{}/metrics", api.base)).send().await {
                    let _ = r.bytes().await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
