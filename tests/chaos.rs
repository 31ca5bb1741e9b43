//! Chaos harness: several `waba-migrator serve` replicas (real processes on loopback ports)
//! share one PostgreSQL and a `waba-migrator sandbox` that injects upstream faults; replicas are
//! SIGKILLed and restarted at random moments and PostgreSQL is restarted once, while migrations
//! are driven through the public API like a partner would (creating with `Idempotency-Key`,
//! submitting the sandbox code, resending when a code was refused). At the end every migration
//! must be `completed` and the sandbox counters must show that no non-idempotent call ran twice.
//! A webhook consumer that refuses a share of deliveries must have acknowledged every
//! transition of every migration, each migration's in order, every one correctly signed.
//!
//! The default configuration is small enough for CI (100 migrations, 2 kills, 10 % faults).
//! The large run of the README:
//!
//! ```sh
//! CHAOS=large cargo test --release --test chaos -- --nocapture
//! ```
//!
//! Sizes can be overridden with `CHAOS_MIGRATIONS`, `CHAOS_REPLICAS`, `CHAOS_FAULT_RATE`,
//! `CHAOS_KILL_EVERY_MS` (kill about this often) or `CHAOS_KILLS` (this many kills, spread over
//! the run). Chaos is tied to progress so it always hits migrations in flight: PostgreSQL is
//! restarted when 45 % of the migrations have completed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use waba_migrator::embedded_pg::EmbeddedPostgres;

const BIN: &str = env!("CARGO_BIN_EXE_waba-migrator");
const ADMIN_KEY: &str = "chaos-admin-key-0123456789abcdef";
/// At least twice the upstream timeout: the service refuses to start otherwise.
const LEASE_SECONDS: u64 = 4;
const RETRY_CAP_SECONDS: u64 = 2;
const UPSTREAM_TIMEOUT_SECONDS: u64 = 2;
/// At least the upstream timeout + 1 s: the service refuses to start otherwise.
const SHUTDOWN_GRACE_SECONDS: u64 = 3;
const BUSINESS: &str = "100000000000000";
/// A killed replica's migrations must be claimed again within this: the lease, the longest
/// backoff, and two polling intervals of slack.
const RECOVERY_BOUND: Duration = Duration::from_secs(LEASE_SECONDS + RETRY_CAP_SECONDS + 2);

#[derive(Debug, Clone)]
struct Config {
    name: &'static str,
    migrations: usize,
    replicas: usize,
    fault_rate: f64,
    /// Kill a replica about this often (with jitter) until the end.
    kill_every: Option<Duration>,
    /// Otherwise: this many kills, spread evenly over the run's progress.
    kills: usize,
    deadline: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> Config {
    let large = std::env::var("CHAOS").is_ok_and(|v| v == "large");
    let base = if large {
        Config {
            name: "large",
            migrations: 1000,
            replicas: 3,
            fault_rate: 0.2,
            kill_every: Some(Duration::from_secs(5)),
            kills: 0,
            deadline: Duration::from_secs(1800),
        }
    } else {
        Config {
            name: "ci",
            migrations: 100,
            replicas: 3,
            fault_rate: 0.1,
            kill_every: None,
            kills: 2,
            deadline: Duration::from_secs(420),
        }
    };
    let kill_every_ms: u64 = env_or(
        "CHAOS_KILL_EVERY_MS",
        base.kill_every.map_or(0, |d| d.as_millis() as u64),
    );
    Config {
        migrations: env_or("CHAOS_MIGRATIONS", base.migrations),
        replicas: env_or("CHAOS_REPLICAS", base.replicas),
        fault_rate: env_or("CHAOS_FAULT_RATE", base.fault_rate),
        kill_every: (kill_every_ms > 0).then(|| Duration::from_millis(kill_every_ms)),
        kills: env_or("CHAOS_KILLS", base.kills),
        ..base
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replica {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    starts: usize,
}

impl Replica {
    /// A replica slot on a free loopback port, not started yet.
    fn new(log: PathBuf) -> Self {
        Replica {
            port: free_port(),
            child: None,
            log,
            starts: 0,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// What every replica is started with.
#[derive(Clone)]
struct Env {
    database_url: String,
    sandbox_url: String,
    encryption_key: String,
    /// Settings that replace the harness's defaults (see [`spawn_replica`]).
    overrides: Vec<(&'static str, String)>,
}

impl Env {
    fn new(database_url: &str, sandbox_url: &str) -> Self {
        Env {
            database_url: database_url.to_owned(),
            sandbox_url: sandbox_url.to_owned(),
            encryption_key: waba_migrator::crypto::Cipher::generate_key()
                .expose_secret()
                .to_owned(),
            overrides: Vec::new(),
        }
    }
}

/// An empty working directory for one harness run.
fn fresh_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts a PostgreSQL of the harness's own under `dir` on a free port and applies the schema
/// with `waba-migrator migrate`. Returns it, its port and its URL.
async fn start_database(dir: &Path) -> (EmbeddedPostgres, u16, String) {
    let port = free_port();
    let pg = EmbeddedPostgres::start(dir, Some(port)).await.unwrap();
    let url = format!("postgres://waba@127.0.0.1:{port}/waba_migrator");
    let status = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .status()
        .await
        .unwrap();
    assert!(status.success(), "migrate failed");
    (pg, port, url)
}

/// Starts `waba-migrator sandbox` on a free port with `env`, logging to `log`; returns once it
/// answers.
async fn start_sandbox(env: &[(&str, String)], log: &Path) -> (Child, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(BIN)
        .args(["sandbox", "--bind", &format!("127.0.0.1:{port}")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{url}/_sandbox/counters"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "sandbox did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, url)
}

async fn spawn_replica(w: &Env, r: &mut Replica) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&r.log)
        .unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &w.database_url)
        .env("DATABASE_MAX_CONNECTIONS", "10")
        .env("BIND_ADDR", format!("127.0.0.1:{}", r.port))
        .env("META_ACCESS_TOKEN", "chaos-token")
        .env("META_GRAPH_URL", &w.sandbox_url)
        .env("D360_HUB_URL", format!("{}/api/v2", w.sandbox_url))
        .env("D360_WABA_URL", &w.sandbox_url)
        .env("SANDBOX_SEED_NUMBERS", "true")
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .env("ENCRYPTION_KEY", &w.encryption_key)
        .env("WORKER_CONCURRENCY", "8")
        .env("LEASE_SECONDS", LEASE_SECONDS.to_string())
        .env("POLL_INTERVAL_MS", "250")
        .env("RETRY_BASE_MS", "100")
        .env("RETRY_CAP_SECONDS", RETRY_CAP_SECONDS.to_string())
        .env("MAX_STEP_ATTEMPTS", "100")
        .env(
            "UPSTREAM_TIMEOUT_SECONDS",
            UPSTREAM_TIMEOUT_SECONDS.to_string(),
        )
        .env("OTP_RESEND_COOLDOWN_SECONDS", "1")
        .env("OTP_MAX_ATTEMPTS", "10")
        .env("CHANNEL_POLL_MS", "100")
        .env("SHUTDOWN_GRACE_SECONDS", SHUTDOWN_GRACE_SECONDS.to_string())
        // SIGTERM tests time the workers' hand-over: no HTTP drain before the exit.
        .env("SHUTDOWN_DRAIN_SECONDS", "0")
        // The driver polls hundreds of migrations with one key; limits are tested elsewhere.
        .env("RATE_LIMIT_PER_SECOND", "0")
        // The webhook consumer is on loopback; retry every second instead of the day-long schedule.
        .env("ALLOW_PRIVATE_CALLBACKS", "true")
        .env("WEBHOOK_TIMEOUT_SECONDS", "2")
        .env("WEBHOOK_RETRY_SCHEDULE", vec!["1"; 40].join(","))
        .env("RUST_LOG", "warn,waba_migrator=info")
        .envs(w.overrides.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start a replica");
    r.child = Some(child);
    r.starts += 1;
}

/// Starts `r` (not started before) and waits until it is ready. `free_port` releases the port
/// it picked, so another process may take it before the replica binds it: the replica then
/// exits at once, and gets another port (its base URL is not handed out yet). Without that
/// check, the other process (another test's service) would answer in its place.
async fn start_replica(http: &reqwest::Client, env: &Env, r: &mut Replica) {
    for _ in 0..5 {
        spawn_replica(env, r).await;
        if bound(r).await {
            wait_healthy(http, &r.base()).await;
            return;
        }
        r.port = free_port();
    }
    panic!("the replica could not bind a port: see {}", r.log.display());
}

/// Whether the replica's latest start bound its port (its log has one `API listening` line
/// per start that did), or `false` once it exited without.
async fn bound(r: &mut Replica) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let listening = std::fs::read_to_string(&r.log)
            .unwrap_or_default()
            .matches("\"API listening\"")
            .count();
        if listening >= r.starts {
            return true;
        }
        let child = r.child.as_mut().expect("started");
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica never said it listens: see {}", r.log.display());
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} never became ready");
}

/// Sends a request to live replicas in turn until one answers something other than a
/// transport error or a 503 (killed replicas, database restart).
async fn call(
    http: &reqwest::Client,
    bases: &[String],
    key: &str,
    build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = rand::rng().random_range(0..bases.len());
    loop {
        let base = &bases[i % bases.len()];
        match build(http, base)
            .bearer_auth(key)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => return r,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no replica answered for 120 s");
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    restarts: usize,
    pg_restarts: usize,
    outage_api_status: Vec<u16>,
    outage_api_problem_json: bool,
    outage_readyz_status: Vec<u16>,
    creates_retried: usize,
    codes_submitted: usize,
    resends: usize,
    /// When PostgreSQL was down.
    outage: Option<(Instant, Instant)>,
}

/// What the webhook consumer saw: every request's id, migration, sequence and whether it was
/// acknowledged, in arrival order; and how many failed signature verification.
#[derive(Default)]
struct Hooks {
    seen: Vec<(String, String, i64, bool)>,
    bad_signatures: usize,
}

/// A webhook consumer that verifies every request with the `standardwebhooks` crate and
/// answers 500 to `refuse_rate` of them.
async fn start_consumer(
    secret: Arc<std::sync::OnceLock<String>>,
    refuse_rate: f64,
) -> (String, Arc<std::sync::Mutex<Hooks>>) {
    let hooks = Arc::new(std::sync::Mutex::new(Hooks::default()));
    let h = hooks.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (h, secret) = (h.clone(), secret.clone());
                async move {
                    let verified = secret.get().is_some_and(|s| {
                        standardwebhooks::Webhook::new(s)
                            .and_then(|w| w.verify(&body, &headers))
                            .is_ok()
                    });
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let ack = verified && !rand::rng().random_bool(refuse_rate);
                    let mut h = h.lock().unwrap();
                    if !verified {
                        h.bad_signatures += 1;
                    }
                    h.seen.push((
                        headers["webhook-id"].to_str().unwrap_or("").to_owned(),
                        v["data"]["id"].as_str().unwrap_or("").to_owned(),
                        v["sequence"].as_i64().unwrap_or(-1),
                        ack,
                    ));
                    if ack {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, hooks)
}

/// Per migration, the sequences of its transitions that the consumer has not acknowledged yet,
/// and whether its first acknowledgements came out of order.
fn webhook_gaps(
    hooks: &Hooks,
    transitions: &HashMap<String, Vec<i64>>,
) -> (Vec<String>, Vec<String>) {
    let mut first_acks: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut acked_ids = HashSet::new();
    for (id, migration, seq, ack) in &hooks.seen {
        if *ack && acked_ids.insert(id.as_str()) {
            first_acks.entry(migration.as_str()).or_default().push(*seq);
        }
    }
    let mut missing = Vec::new();
    let mut disorder = Vec::new();
    for (migration, want) in transitions {
        let got = first_acks
            .get(migration.as_str())
            .cloned()
            .unwrap_or_default();
        if got.windows(2).any(|w| w[0] >= w[1]) {
            disorder.push(format!(
                "{migration}: webhooks acknowledged in order {got:?}"
            ));
        }
        let got: HashSet<i64> = got.into_iter().collect();
        let lost: Vec<i64> = want.iter().copied().filter(|s| !got.contains(s)).collect();
        if !lost.is_empty() {
            missing.push(format!(
                "{migration}: webhooks for sequences {lost:?} not acknowledged"
            ));
        }
    }
    (missing, disorder)
}

/// Whether an audit event is a transition (`migration.state_changed` or a type of its own such
/// as `migration.completed`); a type the service does not declare is a violation too.
fn is_transition(event: &Value) -> bool {
    let kind = event["type"].as_str().unwrap_or_default();
    kind.parse::<waba_migrator::domain::EventType>()
        .unwrap_or_else(|e| panic!("{e}: {event}"))
        .is_transition()
}

fn phone(i: usize) -> String {
    // 2000..=9999 as the last four digits: never a `00xx` scenario number.
    format!("+1415{:03}{:04}", 550 + i / 8000, 2000 + i % 8000)
}

#[test]
fn chaos() {
    let cfg = config();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(cfg));
}

async fn run(cfg: Config) {
    let started = Instant::now();
    let dir = fresh_dir("waba-chaos");
    println!("chaos[{}]: {cfg:?}; logs in {}", cfg.name, dir.display());

    // PostgreSQL of our own (we restart it mid-run).
    let pg_dir = dir.join("postgres");
    let (pg, pg_port, database_url) = start_database(&pg_dir).await;
    let mut pg = Some(pg);

    // The sandbox, with random faults of every kind: the garbled 2xx answers (applied, then an
    // HTML page or `{"success": false}`) are drawn only when named.
    let (mut sandbox, sandbox_url) = start_sandbox(
        &[
            ("SANDBOX_FAULT_RATE", cfg.fault_rate.to_string()),
            (
                "SANDBOX_FAULT_KINDS",
                "server_error,rate_limited,timeout,connection_reset,lost_response,garbled_success,success_false".into(),
            ),
            ("SANDBOX_SEED", "7".into()),
            ("SANDBOX_CHANNEL_DELAY_MS", "200".into()),
            ("SANDBOX_API_KEY_WINDOW_MS", "1000".into()),
            ("SANDBOX_HANG_MS", "4000".into()),
        ],
        &dir.join("sandbox.log"),
    )
    .await;
    let http = reqwest::Client::new();
    let env = Env::new(&database_url, &sandbox_url);
    let mut replicas = Vec::new();
    for i in 0..cfg.replicas {
        let mut r = Replica::new(dir.join(format!("replica-{i}.log")));
        start_replica(&http, &env, &mut r).await;
        replicas.push(r);
    }
    let bases: Vec<String> = replicas.iter().map(Replica::base).collect();

    // A partner whose webhook consumer refuses 10 % of deliveries.
    let secret = Arc::new(std::sync::OnceLock::new());
    let (hook_url, hooks) = start_consumer(secret.clone(), 0.1).await;
    let res = call(&http, &bases, ADMIN_KEY, |h, b| {
        h.post(format!("{b}/v1/partners")).json(&json!({
            "name": "Chaos partner", "d360_partner_id": "chaosPA", "d360_api_key": "chaos-key",
            "callback_url": hook_url,
        }))
    })
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let partner: Value = res.json().await.unwrap();
    let partner_key = partner["api_key"].as_str().unwrap().to_owned();
    secret
        .set(partner["webhook_secret"].as_str().unwrap().to_owned())
        .unwrap();

    let tally = Arc::new(Mutex::new(Tally::default()));
    let replicas = Arc::new(Mutex::new(replicas));
    // The harness reads lease owners directly, to time how fast a killed replica's
    // migrations are resumed.
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&database_url)
        .await
        .unwrap();

    // Create every migration through the API, 16 at a time, exactly once thanks to
    // Idempotency-Key even when a replica dies mid-request.
    let ids: Vec<String> = {
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::new();
        for i in 0..cfg.migrations {
            let (http, bases, key, sem, tally) = (
                http.clone(),
                bases.clone(),
                partner_key.clone(),
                sem.clone(),
                tally.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let body = json!({
                    "phone_number": phone(i),
                    // Ids ending in 1111: never a `00xx` scenario WABA.
                    "source_waba_id": format!("2{i:07}1111"),
                    "destination_waba_id": format!("3{i:07}1111"),
                    "meta_business_id": BUSINESS,
                });
                let mut tries = 0;
                loop {
                    tries += 1;
                    let res = call(&http, &bases, &key, |h, b| {
                        h.post(format!("{b}/v1/migrations"))
                            .header("Idempotency-Key", format!("chaos-{i}"))
                            .json(&body)
                    })
                    .await;
                    if res.status() == StatusCode::CREATED {
                        if tries > 1 {
                            tally.lock().await.creates_retried += 1;
                        }
                        return res.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                    }
                    assert!(
                        res.status().is_server_error(),
                        "create {i}: {} {}",
                        res.status(),
                        res.text().await.unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids
    };
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), cfg.migrations);
    println!(
        "chaos[{}]: {} migrations created in {:.1}s",
        cfg.name,
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    // Chaos: kill random replicas now and then; restart PostgreSQL once.
    let completed = Arc::new(AtomicUsize::new(0));
    let stop_chaos = tokio_util::sync::CancellationToken::new();
    let chaos_task = {
        let completed = completed.clone();
        let (replicas, tally, stop, cfg, http, env, db) = (
            replicas.clone(),
            tally.clone(),
            stop_chaos.clone(),
            cfg.clone(),
            http.clone(),
            env.clone(),
            db.clone(),
        );
        let pg_dir = pg_dir.clone();
        let mut pg = pg.take();
        tokio::spawn(async move {
            let n = cfg.migrations as f64;
            let mut pg_restarted = false;
            // Kill moments: by time, or at evenly spread progress marks.
            let mut next_kill_at = cfg.kill_every.map(|d| Instant::now() + d);
            // Spread over 15..85 % of the run, around the restart of PostgreSQL at 45 %.
            let mut kill_marks: Vec<f64> = (0..cfg.kills)
                .map(|k| 0.15 + 0.7 * (k as f64 + 0.5) / cfg.kills as f64)
                .map(|m| if (m - 0.45).abs() < 0.1 { m + 0.12 } else { m })
                .collect();
            kill_marks.sort_by(f64::total_cmp);
            let mut recoveries = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let progress = completed.load(Ordering::Relaxed) as f64 / n;
                if !pg_restarted && progress >= 0.45 {
                    pg_restarted = true;
                    let bases: Vec<String> = replicas
                        .lock()
                        .await
                        .iter()
                        .filter(|r| r.child.is_some())
                        .map(Replica::base)
                        .collect();
                    let old = pg.take().expect("postgres");
                    pg = Some(restart_postgres(old, &pg_dir, pg_port, &bases, &tally, &http).await);
                    continue;
                }
                let due = match (&mut next_kill_at, cfg.kill_every) {
                    (Some(at), Some(every)) if Instant::now() >= *at => {
                        let jitter: f64 = rand::rng().random_range(0.5..1.5);
                        *at = Instant::now() + every.mul_f64(jitter);
                        true
                    }
                    _ => {
                        if kill_marks.first().is_some_and(|m| progress >= *m) {
                            kill_marks.remove(0);
                            true
                        } else {
                            false
                        }
                    }
                };
                if !due {
                    continue;
                }
                let victim = rand::rng().random_range(0..cfg.replicas);
                let mut rs = replicas.lock().await;
                let Some(mut child) = rs[victim].child.take() else {
                    continue;
                };
                let owner = format!("local:{}:%", child.id().unwrap_or(0));
                // SIGKILL: no graceful shutdown; its leases stay until they expire.
                let _ = child.start_kill();
                let killed_at = Instant::now();
                let _ = child.wait().await;
                tally.lock().await.kills += 1;
                recoveries.push(tokio::spawn(time_recovery(db.clone(), owner, killed_at)));
                let pause = Duration::from_millis(rand::rng().random_range(200..1500));
                tokio::time::sleep(pause).await;
                spawn_replica(&env, &mut rs[victim]).await;
                tally.lock().await.restarts += 1;
            }
            let mut resumes = Vec::new();
            for r in recoveries {
                resumes.extend(r.await.unwrap());
            }
            (pg, resumes)
        })
    };

    // The partner: submit the code when a migration waits for it; resend when a code was
    // refused because the earlier request never reached Meta.
    let mut submitted_for: HashMap<String, String> = HashMap::new();
    let drive_deadline = Instant::now() + cfg.deadline;
    let mut last_print = Instant::now();
    let final_states = loop {
        let all = list_all(&http, &bases, &partner_key).await;
        let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
        for m in &all {
            *by_state
                .entry(m["state"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!(
                "chaos[{}]: t={:.0}s {by_state:?}",
                cfg.name,
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        let done = by_state.get("completed").copied().unwrap_or(0);
        completed.store(done, Ordering::Relaxed);
        if done == cfg.migrations {
            break by_state;
        }
        assert!(
            by_state.get("failed").copied().unwrap_or(0) == 0
                && by_state.get("cancelled").copied().unwrap_or(0) == 0,
            "a migration ended badly: {by_state:?}: {:#}",
            all.iter()
                .find(|m| m["state"] == "failed")
                .cloned()
                .unwrap_or_default()
        );
        assert!(
            Instant::now() < drive_deadline,
            "not all migrations completed in {:?}: {by_state:?}",
            cfg.deadline
        );
        for m in all.iter().filter(|m| m["state"] == "awaiting_otp") {
            let id = m["id"].as_str().unwrap().to_owned();
            let generation = m["otp"]["requested_at"].as_str().unwrap_or("").to_owned();
            let refused = m["error"]["code"] == "otp_invalid";
            if refused {
                let res = call(&http, &bases, &partner_key, |h, b| {
                    h.post(format!("{b}/v1/migrations/{id}/otp/resend"))
                        .json(&json!({}))
                })
                .await;
                if res.status() == StatusCode::ACCEPTED {
                    tally.lock().await.resends += 1;
                }
            } else if submitted_for.get(&id) != Some(&generation) {
                let res = call(&http, &bases, &partner_key, |h, b| {
                    h.post(format!("{b}/v1/migrations/{id}/otp"))
                        .json(&json!({ "code": "123456" }))
                })
                .await;
                if res.status() == StatusCode::ACCEPTED {
                    submitted_for.insert(id, generation);
                    tally.lock().await.codes_submitted += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    stop_chaos.cancel();
    let (pg, resumes) = chaos_task.await.unwrap();
    // Time to resume, not counting the PostgreSQL outage (nothing can move while it is down)
    // and the reconnection right after it.
    let outage = tally.lock().await.outage;
    let orphans = resumes.len();
    let worst_recovery = resumes
        .iter()
        .map(|(killed, resumed)| {
            let took = resumed.saturating_duration_since(*killed);
            match outage {
                Some((down, up)) if down < *resumed && up > *killed => {
                    let overlap = up
                        .min(*resumed)
                        .saturating_duration_since(down.max(*killed));
                    took.saturating_sub(overlap + Duration::from_secs(2))
                }
                _ => took,
            }
        })
        .max()
        .unwrap_or_default();
    if let Some((down, up)) = outage {
        println!(
            "chaos[{}]: PostgreSQL was down {:.1} s, from t={:.1}s",
            cfg.name,
            up.duration_since(down).as_secs_f64(),
            down.duration_since(started).as_secs_f64()
        );
    }
    let elapsed = started.elapsed();

    // Invariants, read with upstream faults switched off.
    http.delete(format!("{sandbox_url}/_sandbox/faults"))
        .send()
        .await
        .unwrap();
    let counters: Value = http
        .get(format!("{sandbox_url}/_sandbox/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all = list_all(&http, &bases, &partner_key).await;
    let mut violations: Vec<String> = Vec::new();
    let mut transitions: HashMap<String, Vec<i64>> = HashMap::new();
    let mut api_keys_applied = 0u64;
    let mut register_received = 0u64;
    let mut request_code_received = 0u64;
    for m in &all {
        let id = m["id"].as_str().unwrap();
        let number = m["phone_number"].as_str().unwrap();
        let c = &counters["numbers"][number];
        for endpoint in ["request_code", "verify_code", "register"] {
            let applied = c[endpoint]["applied"].as_u64().unwrap_or(0);
            if applied != 1 {
                violations.push(format!("{number}: {endpoint} applied {applied} times"));
            }
        }
        register_received += c["register"]["received"].as_u64().unwrap_or(0);
        request_code_received += c["request_code"]["received"].as_u64().unwrap_or(0);
        api_keys_applied += c["api_keys"]["applied"].as_u64().unwrap_or(0);

        // The stored key is the channel's current key: no api_keys call came after it.
        let key = call(&http, &bases, &partner_key, |h, b| {
            h.get(format!("{b}/v1/migrations/{id}/api_key"))
        })
        .await
        .json::<Value>()
        .await
        .unwrap();
        let status = http
            .get(format!("{sandbox_url}/health_status"))
            .header("D360-API-KEY", key["api_key"].as_str().unwrap_or(""))
            .send()
            .await
            .unwrap()
            .status();
        if status != StatusCode::OK {
            violations.push(format!("{number}: stored API key answers {status}"));
        }

        // The audit trail (every page) is one unbroken path with no duplicated transition.
        let mut events: Vec<Value> = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = call(&http, &bases, &partner_key, |h, b| {
                h.get(format!(
                    "{b}/v1/migrations/{id}/events?limit=100{}",
                    if cursor.is_empty() {
                        String::new()
                    } else {
                        format!("&cursor={cursor}")
                    }
                ))
            })
            .await
            .json::<Value>()
            .await
            .unwrap();
            events.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        let events = &events;
        transitions.insert(
            id.to_owned(),
            events
                .iter()
                .filter(|e| is_transition(e))
                .map(|e| e["seq"].as_i64().unwrap())
                .collect(),
        );
        let mut state = "queued".to_owned();
        let mut seqs = HashSet::new();
        let mut generated = 0;
        for e in events {
            if !seqs.insert(e["seq"].as_i64().unwrap()) {
                violations.push(format!("{number}: duplicate event seq {}", e["seq"]));
            }
            if e["type"] == "migration.api_key_generated" {
                generated += 1;
            }
            if is_transition(e) {
                if e["from_state"] != state.as_str() {
                    violations.push(format!(
                        "{number}: transition {}→{} after {state}",
                        e["from_state"], e["to_state"]
                    ));
                }
                state = e["to_state"].as_str().unwrap().to_owned();
            }
        }
        if state != "completed" {
            violations.push(format!("{number}: ended {state}"));
        }
        if generated != 1 {
            violations.push(format!("{number}: {generated} api_key_generated events"));
        }
    }

    // Every transition's webhook is acknowledged, each migration's in order (deliveries that
    // were in flight on a killed replica wait for their lease, then go again).
    let webhook_deadline = Instant::now() + Duration::from_secs(60);
    let (missing, disorder) = loop {
        let (missing, disorder) = webhook_gaps(&hooks.lock().unwrap(), &transitions);
        if missing.is_empty() || Instant::now() > webhook_deadline {
            break (missing, disorder);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    violations.extend(missing);
    violations.extend(disorder);
    let (hook_requests, hook_refused, hook_bad, hook_duplicates) = {
        let h = hooks.lock().unwrap();
        let acked: Vec<&String> = h.seen.iter().filter(|s| s.3).map(|s| &s.0).collect();
        let unique: HashSet<&&String> = acked.iter().collect();
        (
            h.seen.len(),
            h.seen.iter().filter(|s| !s.3).count(),
            h.bad_signatures,
            acked.len() - unique.len(),
        )
    };
    if hook_bad > 0 {
        violations.push(format!("{hook_bad} webhooks failed signature verification"));
    }
    let hook_expected: usize = transitions.values().map(Vec::len).sum();

    let tally = tally.lock().await;
    let replica_starts: usize = replicas.lock().await.iter().map(|r| r.starts).sum();
    println!();
    println!("chaos summary ({})", cfg.name);
    println!("| metric | value |");
    println!("|---|---|");
    println!("| migrations | {} |", cfg.migrations);
    println!("| replicas | {} |", cfg.replicas);
    println!("| upstream fault rate | {:.0} % |", cfg.fault_rate * 100.0);
    println!("| fault kinds | all 7, garbled 2xx (`garbled_success`, `success_false`) included |");
    println!("| final states | {final_states:?} |");
    println!(
        "| replicas SIGKILLed / restarted | {} / {} |",
        tally.kills, tally.restarts
    );
    println!("| replica process starts | {replica_starts} |");
    println!("| PostgreSQL restarts | {} |", tally.pg_restarts);
    println!(
        "| API during the PostgreSQL outage | {:?} (problem+json: {}) |",
        tally.outage_api_status, tally.outage_api_problem_json
    );
    println!(
        "| /readyz during the outage | {:?} |",
        tally.outage_readyz_status
    );
    println!(
        "| creates retried (same Idempotency-Key) | {} |",
        tally.creates_retried
    );
    println!(
        "| codes submitted / resends after a refused code | {} / {} |",
        tally.codes_submitted, tally.resends
    );
    println!(
        "| register calls received / applied | {register_received} / {} |",
        cfg.migrations
    );
    println!(
        "| request_code calls received / applied | {request_code_received} / {} |",
        cfg.migrations
    );
    println!("| api_keys calls applied (lost responses regenerate) | {api_keys_applied} |");
    println!(
        "| migrations leased by killed replicas / slowest resume | {orphans} / {:.1} s (bound {} s = lease + backoff cap + 2 s polling) |",
        worst_recovery.as_secs_f64(),
        RECOVERY_BOUND.as_secs()
    );
    println!(
        "| webhooks: transitions / requests / refused by the consumer / acknowledged twice | {hook_expected} / {hook_requests} / {hook_refused} / {hook_duplicates} |"
    );
    println!("| invariant violations | {} |", violations.len());
    println!("| wall time | {:.1} s |", elapsed.as_secs_f64());
    println!();

    // Tear down before asserting, so a failure leaves no processes behind.
    {
        let mut rs = replicas.lock().await;
        for r in rs.iter_mut() {
            if let Some(mut c) = r.child.take() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }
    let _ = sandbox.start_kill();
    let _ = sandbox.wait().await;
    if let Some(pg) = pg {
        let _ = pg.stop().await;
    }

    assert!(
        violations.is_empty(),
        "violations:\n{}",
        violations.join("\n")
    );
    assert_eq!(tally.pg_restarts, 1);
    assert!(
        tally.kills >= cfg.kills.max(1),
        "only {} kills",
        tally.kills
    );
    assert!(
        tally.outage_api_status.iter().all(|s| *s == 503),
        "the API answered {:?} while PostgreSQL was down",
        tally.outage_api_status
    );
    assert!(!tally.outage_api_status.is_empty() && tally.outage_api_problem_json);
    assert!(
        tally.outage_readyz_status.iter().all(|s| *s == 503)
            && !tally.outage_readyz_status.is_empty(),
        "readyz answered {:?} while PostgreSQL was down",
        tally.outage_readyz_status
    );
    // A dead replica's migrations resume once its lease expires (plus backoff and polling).
    assert!(
        worst_recovery <= RECOVERY_BOUND,
        "a killed replica's migration resumed only after {worst_recovery:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops PostgreSQL, checks the API answers 503 problem+json and readyz is not ready while it
/// is down, then starts it again.
async fn restart_postgres(
    pg: EmbeddedPostgres,
    dir: &Path,
    port: u16,
    bases: &[String],
    tally: &Arc<Mutex<Tally>>,
    http: &reqwest::Client,
) -> EmbeddedPostgres {
    println!("chaos: restarting PostgreSQL");
    pg.stop().await.unwrap();
    let down_since = Instant::now();
    // One round of probes to every live replica at once, twice: the API must answer 503
    // problem+json (not hang, not 500) and readyz must say not ready.
    let mut api = Vec::new();
    let mut ready = Vec::new();
    let mut problem = true;
    for _ in 0..2 {
        let probes = bases.iter().map(|b| {
            let http = http.clone();
            let b = b.clone();
            async move {
                let api = http
                    .get(format!("{b}/v1/migrations"))
                    .bearer_auth("wm_any_key")
                    .timeout(Duration::from_secs(8))
                    .send()
                    .await
                    .ok()
                    .map(|r| {
                        let pj = r
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v == "application/problem+json");
                        (r.status().as_u16(), pj)
                    });
                let ready = http
                    .get(format!("{b}/readyz"))
                    .timeout(Duration::from_secs(8))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                (api, ready)
            }
        });
        for (a, r) in futures::future::join_all(probes).await {
            if let Some((status, pj)) = a {
                api.push(status);
                problem &= pj;
            }
            ready.extend(r);
        }
    }
    let pg = EmbeddedPostgres::start(dir, Some(port)).await.unwrap();
    let mut t = tally.lock().await;
    t.pg_restarts += 1;
    t.outage = Some((down_since, Instant::now()));
    t.outage_api_status = api;
    t.outage_api_problem_json = problem;
    t.outage_readyz_status = ready;
    pg
}

async fn list_all(http: &reqwest::Client, bases: &[String], key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/migrations?limit=100&cursor={c}"),
            None => "/v1/migrations?limit=100".into(),
        };
        let res = call(http, bases, key, |h, b| h.get(format!("{b}{path}"))).await;
        assert_eq!(res.status(), StatusCode::OK);
        let page: Value = res.json().await.unwrap();
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// Watches every migration leased by the killed process (`owner` pattern) until another worker
/// takes it over or it moves on. Returns (kill time, resume time) per migration.
async fn time_recovery(
    db: sqlx::PgPool,
    owner: String,
    killed_at: Instant,
) -> Vec<(Instant, Instant)> {
    let leased: Vec<(uuid::Uuid, i32)> = loop {
        match sqlx::query_as(
            "SELECT id, version FROM migrations WHERE lease_owner LIKE $1 AND lease_token IS NOT NULL",
        )
        .bind(&owner)
        .fetch_all(&db)
        .await
        {
            Ok(rows) => break rows,
            Err(_) if killed_at.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot read leases: {e}"),
        }
    };
    let mut pending: HashMap<uuid::Uuid, i32> = leased.iter().cloned().collect();
    let mut resumed = Vec::new();
    let deadline = killed_at + Duration::from_secs(120);
    while !pending.is_empty() && Instant::now() < deadline {
        let ids: Vec<uuid::Uuid> = pending.keys().cloned().collect();
        if let Ok(rows) = sqlx::query_as::<_, (uuid::Uuid, i32, Option<String>)>(
            "SELECT id, version, lease_owner FROM migrations WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&db)
        .await
        {
            let prefix = owner.trim_end_matches('%');
            for (id, version, lease_owner) in rows {
                let moved = version > pending[&id];
                let taken = lease_owner.is_some_and(|o| !o.starts_with(prefix));
                if moved || taken {
                    pending.remove(&id);
                    resumed.push((killed_at, Instant::now()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    resumed.extend(
        pending
            .keys()
            .map(|_| (killed_at, deadline + Duration::from_secs(3600))),
    );
    resumed
}

/// SIGTERM makes a replica finish its step and release its lease at once: another replica
/// resumes the migration within a second of the exit, not after the lease expires.
#[test]
fn sigterm_hands_in_flight_migrations_over_at_once() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(sigterm_handover());
}

async fn sigterm_handover() {
    let dir = fresh_dir("waba-sigterm");
    let (pg, _, database_url) = start_database(&dir.join("postgres")).await;
    // Slow upstreams: a step is in flight when the signal arrives.
    let (mut sandbox, sandbox_url) = start_sandbox(
        &[("SANDBOX_LATENCY_MS", "700".into())],
        &dir.join("sandbox.log"),
    )
    .await;
    let env = Env::new(&database_url, &sandbox_url);
    let http = reqwest::Client::new();
    let db = sqlx::PgPool::connect(&database_url).await.unwrap();

    let mut a = Replica::new(dir.join("a.log"));
    start_replica(&http, &env, &mut a).await;
    let res = http
        .post(format!("{}/v1/partners", a.base()))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "name": "p", "d360_partner_id": "pPA", "d360_api_key": "k" }))
        .send()
        .await
        .unwrap();
    let key = res.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = http
        .post(format!("{}/v1/migrations", a.base()))
        .bearer_auth(&key)
        .json(&json!({
            "phone_number": "+14155557777",
            "source_waba_id": "201111111111",
            "destination_waba_id": "301111111111",
            "meta_business_id": BUSINESS,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let id: uuid::Uuid = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Replica B is up and idle; A holds the migration's lease.
    let mut b = Replica::new(dir.join("b.log"));
    start_replica(&http, &env, &mut b).await;
    let a_pid = a.child.as_ref().unwrap().id().unwrap();
    let b_owner = format!("local:{}:", b.child.as_ref().unwrap().id().unwrap());
    let owner = || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT lease_owner FROM migrations WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !owner()
        .await
        .is_some_and(|o| o.starts_with(&format!("local:{a_pid}:")))
    {
        assert!(Instant::now() < deadline, "A never held the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let signalled_at = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &a_pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let exit = a.child.as_mut().unwrap().wait().await.unwrap();
    let exited_at = Instant::now();
    assert!(exit.success(), "SIGTERM exit status {exit:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if owner().await.is_some_and(|o| o.starts_with(&b_owner)) {
            break;
        }
        assert!(Instant::now() < deadline, "B never took the migration over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handover = exited_at.elapsed();
    println!(
        "sigterm: A exited 0 {:.0} ms after the signal (finishing its step); B held the migration {:.0} ms after A's exit ({:.0} ms after the signal; lease {LEASE_SECONDS} s)",
        exited_at.duration_since(signalled_at).as_secs_f64() * 1000.0,
        handover.as_secs_f64() * 1000.0,
        signalled_at.elapsed().as_secs_f64() * 1000.0
    );
    if let Some(mut c) = b.child.take() {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    let _ = sandbox.start_kill();
    let _ = sandbox.wait().await;
    db.close().await;
    pg.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        handover < Duration::from_secs(1),
        "resumed {handover:?} after SIGTERM"
    );
    // The replicas' grace period, and a second of slack for process exit.
    let stopping = exited_at.duration_since(signalled_at);
    assert!(
        stopping <= Duration::from_secs(SHUTDOWN_GRACE_SECONDS + 1),
        "A took {stopping:?} to exit after SIGTERM (grace {SHUTDOWN_GRACE_SECONDS} s)"
    );
}

/// SIGTERM while `register` is in flight and slower than the grace period (a `slow` sandbox
/// fault: Meta applies it late, after the caller's timeout, whether or not it still waits). The
/// stopping replica exits within its grace period but must not hand the migration over before
/// Meta could have applied the call: its lease is left to expire, so the other replica claims it
/// only afterwards, reads the number `CONNECTED` and never calls `register` again.
#[test]
fn sigterm_during_a_slow_register_never_registers_twice() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(sigterm_slow_register());
}

async fn sigterm_slow_register() {
    // The replicas' upstream timeout and grace period (valid: grace ≥ timeout + 1 s), Meta's
    // delay before it applies the held `register` (longer than both), and a lease that outlasts
    // that delay.
    const TIMEOUT_S: u64 = 3;
    const GRACE_S: u64 = 4;
    const HOLD_MS: u64 = 7000;
    const LEASE_S: u64 = 12;
    let phone = "+14155557788";

    let dir = fresh_dir("waba-sigterm-register");
    let (pg, _, database_url) = start_database(&dir.join("postgres")).await;
    let (mut sandbox, sandbox_url) = start_sandbox(
        &[("SANDBOX_HANG_MS", HOLD_MS.to_string())],
        &dir.join("sandbox.log"),
    )
    .await;
    let mut env = Env::new(&database_url, &sandbox_url);
    env.overrides = vec![
        ("UPSTREAM_TIMEOUT_SECONDS", TIMEOUT_S.to_string()),
        ("SHUTDOWN_GRACE_SECONDS", GRACE_S.to_string()),
        ("LEASE_SECONDS", LEASE_S.to_string()),
    ];
    let http = reqwest::Client::new();
    let db = sqlx::PgPool::connect(&database_url).await.unwrap();

    // Two replicas, both up before the migration becomes due: whichever claims it is "first".
    let mut replicas = [
        Replica::new(dir.join("a.log")),
        Replica::new(dir.join("b.log")),
    ];
    for r in replicas.iter_mut() {
        start_replica(&http, &env, r).await;
    }
    let base = replicas[0].base();
    let res = http
        .post(format!("{base}/v1/partners"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "name": "p", "d360_partner_id": "pPA", "d360_api_key": "k" }))
        .send()
        .await
        .unwrap();
    let key = res.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = http
        .post(format!("{base}/v1/migrations"))
        .bearer_auth(&key)
        .json(&json!({
            "phone_number": phone,
            "source_waba_id": "201111111112",
            "destination_waba_id": "301111111112",
            "meta_business_id": BUSINESS,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let id: uuid::Uuid = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM migrations WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while state().await != "awaiting_otp" {
        assert!(Instant::now() < deadline, "never reached awaiting_otp");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Meta will hold the next `register` of this number for HOLD_MS, then apply it.
    let res = http
        .post(format!("{sandbox_url}/_sandbox/faults"))
        .json(&json!({ "rules": [{ "endpoint": "register", "phone_number": phone, "fault": "slow" }] }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let res = http
        .post(format!("{base}/v1/migrations/{id}/otp"))
        .bearer_auth(&key)
        .json(&json!({ "code": "123456" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let register = || async {
        let c: Value = http
            .get(format!("{sandbox_url}/_sandbox/counters/{phone}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            c["register"]["received"].as_u64().unwrap_or(0),
            c["register"]["applied"].as_u64().unwrap_or(0),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while register().await.0 == 0 {
        assert!(
            Instant::now() < deadline,
            "register never reached the sandbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received_at = Instant::now();

    // SIGTERM the replica whose `register` Meta is holding.
    let owner = || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT lease_owner FROM migrations WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let holder = owner()
        .await
        .expect("the registering replica holds the lease");
    let prefix = |r: &Replica| format!("local:{}:", r.child.as_ref().unwrap().id().unwrap());
    let first = replicas
        .iter()
        .position(|r| holder.starts_with(&prefix(r)))
        .unwrap_or_else(|| panic!("lease held by an unknown owner {holder}"));
    let second_owner = prefix(&replicas[1 - first]);
    let first_pid = replicas[first].child.as_ref().unwrap().id().unwrap();
    let signalled_at = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &first_pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());

    // Watch until the other replica holds the migration (or it moved past `registering`): when
    // it took over, what Meta had received and applied of `register` by then, when Meta applied
    // the first one, when the first replica exited.
    let (mut applied_at, mut taken_over, mut exit) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while taken_over.is_none() {
        assert!(
            Instant::now() < deadline,
            "the other replica never took the migration over"
        );
        if exit.is_none()
            && let Some(status) = replicas[first].child.as_mut().unwrap().try_wait().unwrap()
        {
            exit = Some((status, Instant::now()));
        }
        let moved_on = !matches!(state().await.as_str(), "registering" | "verifying_otp");
        if owner().await.is_some_and(|o| o.starts_with(&second_owner)) || moved_on {
            taken_over = Some((Instant::now(), register().await));
        } else if applied_at.is_none() && register().await == (1, 1) {
            applied_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, exited_at) = match exit {
        Some(e) => e,
        None => {
            let status = replicas[first]
                .child
                .as_mut()
                .unwrap()
                .wait()
                .await
                .unwrap();
            (status, Instant::now())
        }
    };
    let (taken_over_at, register_then) = taken_over.unwrap();
    let ms = |t: Instant| t.duration_since(received_at).as_millis();
    println!(
        "slow register: SIGTERM {} ms after Meta received it; first replica exited at {} ms; Meta applied it at {:?} ms; the other replica took over at {} ms, register (received, applied) then {register_then:?} (hold {HOLD_MS} ms, timeout {TIMEOUT_S} s, grace {GRACE_S} s, lease {LEASE_S} s)",
        ms(signalled_at),
        ms(exited_at),
        applied_at.map(ms),
        ms(taken_over_at),
    );

    // The migration still completes, on the other replica.
    let deadline = Instant::now() + Duration::from_secs(60);
    let final_state = loop {
        let s = state().await;
        if matches!(s.as_str(), "completed" | "failed" | "cancelled") || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counts = register().await;

    for r in replicas.iter_mut() {
        if let Some(mut c) = r.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
    let _ = sandbox.start_kill();
    let _ = sandbox.wait().await;
    db.close().await;
    pg.stop().await.unwrap();

    assert!(status.success(), "SIGTERM exit status {status:?}");
    let stopping = exited_at.duration_since(signalled_at);
    assert!(
        stopping <= Duration::from_secs(GRACE_S + 1),
        "the first replica took {stopping:?} to exit after SIGTERM (grace {GRACE_S} s)"
    );
    assert_eq!(
        register_then,
        (1, 1),
        "register (received, applied) when the other replica took the migration over, {} ms after Meta received the first one: it must not take over before Meta applied that call",
        ms(taken_over_at)
    );
    assert_eq!(counts, (1, 1), "register (received, applied): exactly once");
    assert_eq!(final_state, "completed");
    let _ = std::fs::remove_dir_all(&dir);
}
