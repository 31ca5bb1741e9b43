//! `TestApp`: the service on a loopback port, its sandbox upstreams, a partner, and helpers.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;
use waba_migrator::app::{App, Settings};
use waba_migrator::core::auth::AuthConfig;
use waba_migrator::core::settings::SystemClock;
use waba_migrator::core::{
    AppState, ClientPageConfig, Clock, DashboardConfig, OtpPolicy, SandboxSeeder, Upstreams,
    WebhookConfig,
};
use waba_migrator::crypto::Cipher;
use waba_migrator::domain::RetryPolicy;
use waba_migrator::sandbox::{Sandbox, SandboxConfig};
use waba_migrator::webhooks::{BatchTicker, Dispatcher};
use waba_migrator::worker::{Deps, FailPoints, Worker, WorkerConfig};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The sandbox's default business (owner of WABAs it creates on first use).
pub const BUSINESS: &str = "100000000000000";
pub const SOURCE_WABA: &str = "200000000000001";
pub const DEST_WABA: &str = "300000000000001";

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()))
            .with_test_writer()
            // A no-op when a test installed its own subscriber (see `secrets::capture_logs`).
            .try_init()
            .ok();
    }
});

/// Knobs a test may turn before spawning.
#[derive(Clone)]
pub struct Options {
    pub worker: WorkerConfig,
    pub sandbox: SandboxConfig,
    pub upstream_timeout: Duration,
    /// Start a background worker (otherwise drive with `worker().run_until_idle()`).
    pub background_worker: bool,
    /// Webhook settings (private callbacks allowed: consumers are on loopback).
    pub webhooks: WebhookConfig,
    /// Start a background webhook dispatcher (otherwise drive with `dispatcher.run_until_idle()`).
    pub background_dispatcher: bool,
    /// Start a background batch ticker (otherwise drive with `batch_ticker.run_once()`).
    pub background_batch_ticker: bool,
    /// What the dispatcher schedules by (a `ManualClock` to skip through retry delays).
    pub clock: Arc<dyn Clock>,
    /// Requests per second and burst per key; `None`: unlimited.
    pub rate_limit: Option<(u32, u32)>,
    /// Dry-run prechecks per caller a minute (0: unlimited, the default here).
    pub precheck_rate_per_minute: u32,
    /// Failed-authentication limits per client address (default: none).
    pub auth: AuthConfig,
    /// The secrets cipher (default: a fresh random key).
    pub cipher: Option<Cipher>,
    /// The support dashboard's settings.
    pub dashboard: DashboardConfig,
    /// The client page's settings (its `public_base_url` is set to the test server's, with
    /// this one's path).
    pub client_page: ClientPageConfig,
    /// Whether a create seeds the sandbox with its number and WABAs (as sandbox mode does);
    /// without it, the sandbox only knows what Graph would find anyway.
    pub seed_sandbox: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: WorkerConfig {
                concurrency: 4,
                lease: Duration::from_secs(2),
                poll_interval: Duration::from_millis(100),
                shutdown_grace: Duration::from_secs(5),
                channel_poll: Duration::from_millis(50),
                signup_poll_max: Duration::from_millis(500),
                setup_poll: Duration::from_millis(500),
                retry: RetryPolicy {
                    base: Duration::from_millis(50),
                    cap: Duration::from_millis(400),
                    max_retry_after: Duration::from_secs(3),
                    max_attempts: 4,
                    channel_timeout: Duration::from_secs(10),
                    signup_timeout: Duration::from_secs(60),
                    try_later_base: Duration::from_millis(50),
                    try_later_cap: Duration::from_millis(200),
                    try_later_total: Duration::from_millis(1500),
                },
                otp: OtpPolicy {
                    ttl: Duration::from_secs(600),
                    resend_cooldown: Duration::from_secs(60),
                    max_attempts: 3,
                    voice_fallback: None,
                },
                ..WorkerConfig::default()
            },
            sandbox: SandboxConfig {
                api_key_rate_window: Duration::ZERO,
                hang_for: Duration::from_secs(3),
                ..SandboxConfig::default()
            },
            upstream_timeout: Duration::from_secs(2),
            background_worker: true,
            webhooks: WebhookConfig {
                allow_private: true,
                attempt_timeout: Duration::from_secs(2),
                poll_interval: Duration::from_millis(100),
                ..WebhookConfig::default()
            },
            background_dispatcher: true,
            background_batch_ticker: true,
            clock: Arc::new(SystemClock),
            rate_limit: None,
            precheck_rate_per_minute: 0,
            auth: AuthConfig::default(),
            cipher: None,
            dashboard: DashboardConfig::default(),
            client_page: ClientPageConfig::default(),
            seed_sandbox: true,
        }
    }
}

impl Options {
    /// No background worker: the test advances migrations itself
    /// (`app.worker().run_until_idle()`).
    pub fn no_worker() -> Self {
        Self {
            background_worker: false,
            ..Self::default()
        }
    }

    /// Neither a background worker nor a background webhook dispatcher: the test drives both
    /// (`worker().run_until_idle()`, `dispatcher.run_until_idle()`) or claims by hand.
    pub fn manual() -> Self {
        Self {
            background_worker: false,
            background_dispatcher: false,
            ..Self::default()
        }
    }

    /// Failed authentications limited to `burst` per client address at once, then one a
    /// minute: nothing recovers during a test. No trusted proxy.
    pub fn auth_failures_limited(burst: u32) -> Self {
        Options {
            auth: AuthConfig {
                failure_limit: Some((1, burst)),
                trusted_proxies: Vec::new(),
            },
            ..Options::default()
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub sandbox: Sandbox,
    pub sandbox_url: String,
    pub partner_id: String,
    pub partner_key: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    pub fail_points: FailPoints,
    /// The partner's webhook signing secret.
    pub webhook_secret: String,
    pub dispatcher: Dispatcher,
    /// Writes the batches' webhooks to the outbox.
    pub batch_ticker: BatchTicker,
    /// The API's state (e.g. `state.auth` to observe key lookups).
    pub state: AppState,
    worker: Worker,
    settings: Settings,
    pub shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, Options::default()).await
    }

    pub async fn spawn_with(pool: PgPool, opts: Options) -> Self {
        LazyLock::force(&TRACING);
        let shutdown = CancellationToken::new();
        let sandbox = Sandbox::new(opts.sandbox.clone());
        let sb_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sb_addr = sb_listener.local_addr().unwrap();
        tokio::spawn(waba_migrator::sandbox::serve(
            sb_listener,
            sandbox.clone(),
            shutdown.clone().cancelled_owned(),
        ));
        let sandbox_url = format!("http://{sb_addr}");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let settings = Settings {
            upstreams: Upstreams {
                meta_graph_url: Url::parse(&sandbox_url).unwrap(),
                meta_graph_version: "v23.0".into(),
                meta_access_token: SecretString::from("sandbox-token"),
                d360_hub_url: Url::parse(&format!("{sandbox_url}/api/v2")).unwrap(),
                d360_waba_url: Url::parse(&sandbox_url).unwrap(),
                timeout: opts.upstream_timeout,
            },
            admin_api_key: Some(SecretString::from(ADMIN_KEY)),
            cipher: opts
                .cipher
                .clone()
                .unwrap_or_else(|| Cipher::from_base64(&Cipher::generate_key()).unwrap()),
            worker: opts.worker.clone(),
            run_workers: true,
            sandbox_seeder: opts
                .seed_sandbox
                .then(|| SandboxSeeder::InProcess(sandbox.clone())),
            webhooks: opts.webhooks.clone(),
            clock: opts.clock.clone(),
            rate_limit: opts.rate_limit,
            precheck_rate_per_minute: opts.precheck_rate_per_minute,
            auth: opts.auth.clone(),
            dashboard: opts.dashboard.clone(),
            client_page: ClientPageConfig {
                // The test server's address, with the path the options name (a proxy's).
                public_base_url: {
                    let mut url = Url::parse(&base).unwrap();
                    url.set_path(opts.client_page.public_base_url.path());
                    url
                },
                ..opts.client_page.clone()
            },
        };
        let app = App::new(pool.clone(), settings.clone()).unwrap();
        let fail_points = app.fail_points.clone();
        let worker = app.worker.clone().expect("worker");
        let dispatcher = app.dispatcher.clone().expect("dispatcher");
        let batch_ticker = app.batch_ticker.clone().expect("batch ticker");
        let router = waba_migrator::http::router(app.state.clone(), waba_migrator::app::pages());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
        });
        if opts.background_worker {
            let w = worker.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { w.run(stop).await });
        }
        if opts.background_dispatcher {
            let d = dispatcher.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { d.run(stop).await });
        }
        if opts.background_batch_ticker {
            let t = batch_ticker.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { t.run(stop).await });
        }
        let http = reqwest::Client::new();
        let res = http
            .post(format!("{base}/v1/partners"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({
                "name": "Test partner",
                "d360_partner_id": "testPA",
                "d360_api_key": "partner-secret-key"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        TestApp {
            base,
            sandbox,
            sandbox_url,
            partner_id: body["partner"]["id"].as_str().unwrap().to_owned(),
            partner_key: body["api_key"].as_str().unwrap().to_owned(),
            webhook_secret: body["webhook_secret"].as_str().unwrap().to_owned(),
            dispatcher,
            batch_ticker,
            state: app.state.clone(),
            http,
            pool,
            fail_points,
            worker,
            settings,
            shutdown,
        }
    }

    /// The app's own worker (for `run_until_idle` when no background worker runs).
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Another worker sharing the database and upstreams (a second replica), with its own
    /// owner id and fail points.
    pub fn another_worker(&self) -> Worker {
        let (meta, d360) = self.settings.upstreams.clients().unwrap();
        let mut config = self.settings.worker.clone();
        config.owner = waba_migrator::worker::default_owner();
        Worker::new(Deps {
            pool: self.pool.clone(),
            meta,
            d360,
            cipher: self.settings.cipher.clone(),
            config,
            call_time: self.settings.upstreams.timeout,
            fail_points: FailPoints::default(),
            sandbox_seeder: self.settings.sandbox_seeder.clone(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.post_as(&self.partner_key.clone(), path, body).await
    }

    pub async fn post_as(&self, key: &str, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.get_as(&self.partner_key.clone(), path).await
    }

    pub async fn get_as(&self, key: &str, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub fn create_body(phone: &str) -> Value {
        json!({
            "phone_number": phone,
            "source_waba_id": SOURCE_WABA,
            "destination_waba_id": DEST_WABA,
            "meta_business_id": BUSINESS,
        })
    }

    /// Creates a migration for `phone`; returns its id.
    pub async fn create(&self, phone: &str) -> String {
        self.create_with(Self::create_body(phone)).await
    }

    /// Creates a migration from a full body; returns its id.
    pub async fn create_with(&self, body: Value) -> String {
        let res = self.post("/v1/migrations", body).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Waits for the code request, submits the sandbox code, waits for `completed`.
    pub async fn complete(&self, id: &str) -> Value {
        self.wait_for(id, "awaiting_otp").await;
        assert_eq!(
            self.submit_otp(id, "123456").await.status(),
            StatusCode::ACCEPTED
        );
        self.wait_for(id, "completed").await
    }

    /// The stored 360dialog key of a completed migration.
    pub async fn stored_key(&self, id: &str) -> String {
        let res = self.get(&format!("/v1/migrations/{id}/api_key")).await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<Value>().await.unwrap()["api_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn count_migrations(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM migrations")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn migration(&self, id: &str) -> Value {
        let res = self.get(&format!("/v1/migrations/{id}")).await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// Polls until the migration is in `state` (panics after 30 s, or if it lands in another
    /// terminal state first).
    pub async fn wait_for(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.migration(id).await;
            let now = m["state"].as_str().unwrap().to_owned();
            if now == state {
                return m;
            }
            let terminal = ["completed", "failed", "cancelled"].contains(&now.as_str());
            if terminal || tokio::time::Instant::now() > deadline {
                panic!("expected state {state}, got {now}: {m:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the migration failed `times` times (its `migration.failed` events), driving
    /// `worker` meanwhile if given (a test without a background worker), and returns it.
    pub async fn wait_for_failures(&self, id: &str, times: i64, worker: Option<&Worker>) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.event_count(id, Some("migration.failed")).await < times {
            if let Some(w) = worker {
                w.run_until_idle().await.unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} did not fail {times} times"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.migration(id).await
    }

    /// Polls until `done` holds for the migration (panics after 20 s).
    pub async fn wait_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.migration(id).await;
            if done(&m) {
                return m;
            }
            assert!(tokio::time::Instant::now() < deadline, "{m:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn submit_otp(&self, id: &str, code: &str) -> Response {
        self.post(&format!("/v1/migrations/{id}/otp"), json!({ "code": code }))
            .await
    }

    /// The whole audit trail, oldest first (every page).
    /// Stored audit events of the migration (of type `kind`, when given).
    /// Waits until some session of this test's database waits on a lock (another request
    /// blocked behind a transaction the test holds); false after 10 s or once `gave_up` says so.
    pub async fn until_a_lock_is_waited_for(&self, gave_up: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && !gave_up() {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if waiting > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub async fn event_count(&self, id: &str, kind: Option<&str>) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM migration_events
              WHERE migration_id = $1::uuid AND ($2::text IS NULL OR type = $2)",
        )
        .bind(id)
        .bind(kind)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        self.all_pages(&format!("/v1/migrations/{id}/events")).await
    }

    /// The first event of migration `id` that entered `state`.
    pub async fn event_into(&self, id: &str, state: &str) -> Value {
        self.events(id)
            .await
            .into_iter()
            .find(|e| e["to_state"] == state)
            .unwrap_or_else(|| panic!("no event into {state}"))
    }

    /// The migration's `step_memo`, as stored (not part of the API).
    pub async fn step_memo(&self, id: &str) -> Value {
        sqlx::query_scalar("SELECT step_memo FROM migrations WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Every item of a paged list (`{data, next_cursor}`), following `next_cursor`.
    /// `path` may carry its own query (filters).
    pub async fn all_pages(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{sep}limit=100");
        loop {
            let res = self.get(&url).await;
            assert_eq!(res.status(), StatusCode::OK, "{url}");
            let body: Value = res.json().await.unwrap();
            items.extend(body["data"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => url = format!("{path}{sep}limit=100&cursor={c}"),
                None => return items,
            }
        }
    }

    /// How many times the sandbox applied `endpoint` for `phone`.
    /// Meta received `register` for `phone` once and applied it once.
    pub fn assert_registered_once(&self, phone: &str) {
        assert_eq!(
            (
                self.received(phone, "register"),
                self.applied(phone, "register")
            ),
            (1, 1),
            "register exactly once"
        );
    }

    pub fn applied(&self, phone: &str, endpoint: &str) -> u64 {
        self.sandbox.count(phone, endpoint).1
    }

    pub fn received(&self, phone: &str, endpoint: &str) -> u64 {
        self.sandbox.count(phone, endpoint).0
    }

    /// The text of `GET /metrics`.
    /// `POST /v1/webhook_deliveries/{id}/redeliver` as the app's partner.
    pub async fn redeliver(&self, delivery_id: &str) -> Response {
        self.post(
            &format!("/v1/webhook_deliveries/{delivery_id}/redeliver"),
            json!({}),
        )
        .await
    }

    pub async fn metrics_text(&self) -> String {
        let res = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.text().await.unwrap()
    }

    /// Adds deterministic fault rules to the sandbox.
    pub async fn faults(&self, rules: Value) {
        let res = self
            .http
            .post(format!("{}/_sandbox/faults", self.sandbox_url))
            .json(&json!({ "rules": rules }))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    }

    /// A second partner (tenant) and its key.
    pub async fn other_partner(&self) -> (String, String) {
        let res = self
            .post_as(
                ADMIN_KEY,
                "/v1/partners",
                json!({ "name": "Other", "d360_partner_id": "otherPA", "d360_api_key": "k" }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        (
            body["partner"]["id"].as_str().unwrap().to_owned(),
            body["api_key"].as_str().unwrap().to_owned(),
        )
    }

    /// `POST /_sandbox/numbers/{phone}/complete_signup`: the client finished Embedded Signup
    /// (`body`: `destination_waba_id`, `channel_id`, `business_id`, all optional).
    pub async fn complete_signup(&self, phone: &str, body: Option<Value>) -> (StatusCode, Value) {
        let digits = phone.trim_start_matches('+');
        let mut req = self.http.post(format!(
            "{}/_sandbox/numbers/{digits}/complete_signup",
            self.sandbox_url
        ));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        (res.status(), res.json().await.unwrap())
    }

    /// The number is already a running 360dialog channel (`channel_id`) on the source WABA,
    /// the one a change of WABA inside 360dialog leaves.
    pub async fn channel_on_source(&self, phone: &str, channel_id: &str) {
        let body = json!({ "destination_waba_id": SOURCE_WABA, "channel_id": channel_id });
        let (status, channel) = self.complete_signup(phone, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{channel:#}");
    }

    /// `POST /_sandbox/wabas/{id}/set_up`: 360dialog finished setting up a WABA the signup made.
    pub async fn set_up_waba(&self, waba_id: &str) {
        self.waba_control(waba_id, "set_up").await;
    }

    /// `POST /_sandbox/wabas/{id}/share`: a WABA the signup made is shared with the partner's
    /// app (Graph reads it).
    pub async fn share_waba(&self, waba_id: &str) {
        self.waba_control(waba_id, "share").await;
    }

    async fn waba_control(&self, waba_id: &str, action: &str) {
        let res = self
            .http
            .post(format!(
                "{}/_sandbox/wabas/{waba_id}/{action}",
                self.sandbox_url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{action} {waba_id}");
    }

    /// The `waiting_for` codes of the migration's `migration.waiting_for_changed` events,
    /// oldest first.
    pub async fn waiting_reasons(&self, id: &str) -> Vec<Value> {
        self.events(id)
            .await
            .into_iter()
            .filter(|e| e["type"] == "migration.waiting_for_changed")
            .map(|e| e["data"]["waiting_for"]["code"].clone())
            .collect()
    }

    /// `GET /_sandbox/channels/{id}`: a sandbox channel (status, permission, keys issued).
    pub async fn sandbox_channel(&self, channel_id: &str) -> Value {
        let res = self
            .http
            .get(format!(
                "{}/_sandbox/channels/{channel_id}",
                self.sandbox_url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json().await.unwrap()
    }

    /// Health status of `key` at the sandbox's Messaging API (200 = the channel's current key).
    pub async fn key_status(&self, key: &str) -> StatusCode {
        self.http
            .get(format!("{}/health_status", self.sandbox_url))
            .header("D360-API-KEY", key)
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// Whether an event of `GET …/events` is a transition (`migration.state_changed` or a type of
/// its own such as `migration.completed`). Panics on a type the service does not declare.
/// The `migration_id` of each item of a batch's 201 body, in the order sent.
pub fn batch_item_ids(created: &Value) -> Vec<String> {
    created["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["migration_id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn is_transition(event: &Value) -> bool {
    let kind = event["type"].as_str().expect("a type");
    kind.parse::<waba_migrator::domain::EventType>()
        .unwrap_or_else(|e| panic!("{e}: {event}"))
        .is_transition()
}

/// The whole seconds of a response's `Retry-After`.
pub fn retry_after_secs(res: &Response) -> u64 {
    res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Asserts a problem+json response with `code`; returns the body.
pub async fn assert_problem(res: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let got = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body:#}");
    assert_eq!(body["code"], code, "{body:#}");
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/problems/{code}"))
    );
    body
}

/// The check `id` of a precheck report (`{"checks": [...]}`), or a panic naming it.
pub fn check_in(report: &Value, id: &str) -> Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("no check {id}: {report:#}"))
        .clone()
}
