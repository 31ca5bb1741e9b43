//! Configuration: command line and environment (clap), validated once at startup.
//!
//! Every setting has an environment variable (DESIGN.md §4 names are fixed) and a `--flag`;
//! `waba-migrator <command> --help` lists them all with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use secrecy::SecretString;
use url::Url;

/// `TRUSTED_PROXIES`, parsed as a whole (an alias, so clap reads one value, not a list).
pub type TrustedProxies = Vec<ipnet::IpNet>;

#[derive(Debug, Parser)]
#[command(
    name = "waba-migrator",
    version,
    about = "Migrates WhatsApp Business phone numbers from another provider into 360dialog.",
    long_about = "Migrates WhatsApp Business phone numbers from another provider into 360dialog: \
                  prechecks, the verification code, registration, template copy and the \
                  360dialog API key, as one durable job per number in PostgreSQL."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and (unless --no-workers) the background workers.
    Serve(ServeArgs),
    /// Run only the background workers (scale them separately from the API); serves only
    /// /healthz, /readyz and /metrics, on BIND_ADDR.
    Worker(WorkerProcessArgs),
    /// Apply the database schema migrations and exit (to the embedded database under DATA_DIR
    /// when DATABASE_URL is unset).
    Migrate(DbArgs),
    /// Re-seal every encrypted value under ENCRYPTION_KEY (after rotating it; see README).
    Reencrypt(ReencryptArgs),
    /// Run the upstream simulator (Meta Graph API, 360dialog Partner and Messaging APIs).
    Sandbox(SandboxArgs),
    /// Print the OpenAPI document (YAML) to stdout.
    Openapi,
    /// Exit 0 if GET URL answers 2xx (container health checks; no curl needed).
    Healthcheck {
        /// e.g. http://127.0.0.1:8080/healthz
        url: String,
    },
}

impl Cli {
    /// The command line and the environment, where a variable that is set but empty
    /// (`HTTP_MAX_CONNECTIONS=` in an env file or `docker --env-file`) counts as unset: the
    /// setting takes its default, or none. Except [`EMPTY_IS_AN_ERROR`]'s: unset, they switch
    /// the service to its development mode. Exits on a bad value, as `Cli::parse` does.
    pub fn from_env_and_args() -> Self {
        let matches = empty_env_as_unset(Self::command()).get_matches();
        Self::from_arg_matches(&matches)
            .map_err(|e| e.format(&mut Self::command()))
            .unwrap_or_else(|e| e.exit())
    }
}

/// Variables whose absence switches to development mode: `DATABASE_URL` (the embedded
/// PostgreSQL) and `META_ACCESS_TOKEN` (the sandbox). Set but empty (a secret that was not
/// filled in) is refused at start-up (`DbArgs::validate`, `RunArgs::validate`), rather than
/// taken for unset: a production replica must never migrate into a private database or
/// against the simulator.
const EMPTY_IS_AN_ERROR: &[&str] = &["DATABASE_URL", "META_ACCESS_TOKEN"];

/// `cmd` (and its subcommands) without the environment variable of each argument whose variable
/// is set but empty (except [`EMPTY_IS_AN_ERROR`]'s): clap would take `""` as the value (an
/// empty key, an unparsable number).
fn empty_env_as_unset(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|arg| {
        let empty = arg
            .get_env()
            .filter(|name| !EMPTY_IS_AN_ERROR.iter().any(|e| name == e))
            .and_then(std::env::var_os)
            .is_some_and(|v| v.is_empty());
        if empty {
            arg.env(None::<&'static str>)
        } else {
            arg
        }
    })
    .mut_subcommands(empty_env_as_unset)
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DbArgs {
    /// PostgreSQL URL. Unset: a private PostgreSQL is started under DATA_DIR.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Where the embedded PostgreSQL (and its generated encryption key) live.
    #[arg(long, env = "DATA_DIR", default_value = ".data")]
    pub data_dir: PathBuf,
    /// Maximum database connections of this process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,
}

/// `serve`: the HTTP API's settings and everything a worker needs.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `worker`: the background workers, and the operations endpoints (`/healthz`, `/readyz`,
/// `/metrics`) on BIND_ADDR.
#[derive(Debug, Clone, Args)]
pub struct WorkerProcessArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Where a process serves HTTP, and how it bounds its connections and its shutdown: the API
/// (`serve`), or the operations endpoints alone (`worker`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP server")]
pub struct ListenArgs {
    /// Address the HTTP server listens on: the API (`serve`), or only /healthz, /readyz and
    /// /metrics (`worker`; port 0 takes a free port, logged).
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind_addr: SocketAddr,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// Settings of the HTTP API only (`serve`; not `worker`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP API")]
pub struct ApiArgs {
    /// Do not run background workers in this process (API only).
    #[arg(long, env = "NO_WORKERS", default_value_t = false)]
    pub no_workers: bool,
    /// Admin bearer key (sees and manages every partner). Required outside sandbox mode; in
    /// sandbox mode without it, a development admin key is generated at each start.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<SecretString>,
    /// Requests per second allowed per API key (sustained; 0 = no limit).
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,
    /// Requests an API key may send in a burst above the sustained rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,
    /// Dry-run prechecks (`POST /v1/prechecks`) per partner a minute, all at once at most: each
    /// reads the Graph API seven times or more with the service's one Meta token (0 = no limit).
    #[arg(long, env = "PRECHECK_RATE_PER_MINUTE", default_value_t = 60)]
    pub precheck_rate_per_minute: u32,
    /// Failed authentications (unknown or revoked keys) allowed per client address per minute,
    /// sustained; past the burst, unknown keys from the address get 429 until it recovers
    /// (0 = no limit).
    #[arg(long, env = "AUTH_FAILURES_PER_MINUTE", default_value_t = 6)]
    pub auth_failures_per_minute: u32,
    /// Failed authentications a client address may make at once.
    #[arg(long, env = "AUTH_FAILURE_BURST", default_value_t = 10)]
    pub auth_failure_burst: u32,
    /// Proxies (comma-separated addresses or CIDR blocks) whose `X-Forwarded-For` names the
    /// client address; empty: the TCP peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = crate::core::auth::parse_trusted_proxies)]
    pub trusted_proxies: TrustedProxies,
    /// Dashboard: a non-terminal migration that has not changed state for this many minutes
    /// is listed as stuck.
    #[arg(long, env = "DASHBOARD_STUCK_MINUTES", default_value_t = 30)]
    pub dashboard_stuck_minutes: u64,
    /// Dashboard: mark the session cookie `Secure` (turn on when users reach the service over
    /// https, e.g. behind a TLS-terminating proxy; on anyway when PUBLIC_BASE_URL is https).
    #[arg(long, env = "DASHBOARD_SECURE_COOKIE", default_value_t = false)]
    pub dashboard_secure_cookie: bool,
    /// The service's address as end clients reach it (scheme, host, optional port and path
    /// prefix): client page links are `{PUBLIC_BASE_URL}/c/{token}`. Default: `http://` and
    /// BIND_ADDR (127.0.0.1 when it is an unspecified address). Set it in production.
    #[arg(long, env = "PUBLIC_BASE_URL", value_parser = parse_public_base_url)]
    pub public_base_url: Option<String>,
    /// How long a client page link works after it was issued or rotated.
    #[arg(long, env = "CLIENT_PAGE_TTL_SECONDS", default_value_t = 604_800)]
    pub client_page_ttl_seconds: u64,
    /// How long a client page still shows a completed or failed migration's outcome; then
    /// its link stops working.
    #[arg(long, env = "CLIENT_PAGE_LINGER_SECONDS", default_value_t = 900)]
    pub client_page_linger_seconds: u64,
    #[command(flatten)]
    pub listen: ListenArgs,
}

/// `PUBLIC_BASE_URL`: an absolute http(s) URL without query or fragment.
fn parse_public_base_url(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| format!("not an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    // It is written into every client page link.
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    Ok(url.into())
}

impl ApiArgs {
    /// The client page's settings: [`Self::public_base_url`], or one made from the bind address.
    /// Whether the dashboard's session cookie is `Secure`: when asked, or when the service is
    /// reached over https (`PUBLIC_BASE_URL`), where a cookie sent over plain http would be a
    /// mistake.
    pub fn dashboard_secure_cookie(&self) -> bool {
        self.dashboard_secure_cookie || self.client_page().public_base_url.scheme() == "https"
    }

    pub fn client_page(&self) -> crate::core::ClientPageConfig {
        let base = self
            .public_base_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .unwrap_or_else(|| {
                let mut addr = self.listen.bind_addr;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                url::Url::parse(&format!("http://{addr}")).expect("a socket address makes a URL")
            });
        crate::core::ClientPageConfig {
            public_base_url: base,
            ttl: std::time::Duration::from_secs(self.client_page_ttl_seconds),
            linger: std::time::Duration::from_secs(self.client_page_linger_seconds),
        }
    }
}

/// How the HTTP server bounds its connections and its shutdown.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP connections and shutdown")]
pub struct ConnectionArgs {
    /// A request's headers must be complete this long after its connection opened (or after
    /// the request's first byte, on a kept-alive connection); otherwise the connection is
    /// closed.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10.0)]
    pub http_header_read_timeout_seconds: f64,
    /// How long a kept-alive connection may wait for its next request (keep it above the load
    /// balancer's idle timeout), and a response for the client to read it.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECONDS", default_value_t = 75.0)]
    pub http_idle_timeout_seconds: f64,
    /// Connections served at once; beyond them, up to 32 more are answered for /healthz and
    /// /readyz only (503 too_many_connections otherwise). Default: half of the open-file limit
    /// left after 256, between 16 and 1024 (384 under `ulimit -n 1024`).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// On SIGTERM: how long /readyz answers 503 while requests are still served (each with
    /// `Connection: close`), before the listener closes. SIGINT (Ctrl-C) skips it.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value_t = 10.0)]
    pub shutdown_drain_seconds: f64,
    /// After the drain: how long in-flight requests may take before the connections still
    /// open are closed (so the API stops within SHUTDOWN_DRAIN_SECONDS + this).
    #[arg(long, env = "HTTP_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub http_shutdown_timeout_seconds: f64,
}

/// What every process that advances migrations needs (`serve` and `worker`): the database,
/// the upstreams, the secrets key, the worker and webhook settings, the in-process sandbox.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Apply schema migrations at startup (always on with the embedded database).
    #[arg(
        long,
        env = "RUN_MIGRATIONS",
        default_value_t = false,
        help_heading = "Database"
    )]
    pub run_migrations: bool,
    /// 32 random bytes, standard base64: seals PINs, keys and secrets at rest.
    /// Generated under DATA_DIR when the embedded database is used.
    #[arg(
        long,
        env = "ENCRYPTION_KEY",
        hide_env_values = true,
        help_heading = "Secrets"
    )]
    pub encryption_key: Option<SecretString>,
    /// The previous ENCRYPTION_KEY while rotating it: opens values not yet re-sealed (never seals).
    #[arg(
        long,
        env = "ENCRYPTION_KEY_OLD",
        hide_env_values = true,
        help_heading = "Secrets"
    )]
    pub encryption_key_old: Option<SecretString>,
    #[command(flatten)]
    pub upstreams: UpstreamArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub sandbox: InProcessSandboxArgs,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Upstream APIs")]
pub struct UpstreamArgs {
    /// Meta Graph API base URL.
    #[arg(
        long,
        env = "META_GRAPH_URL",
        default_value = "https://graph.facebook.com"
    )]
    pub meta_graph_url: Url,
    /// Graph API version used in paths.
    #[arg(long, env = "META_GRAPH_VERSION", default_value = "v23.0")]
    pub meta_graph_version: String,
    /// System-user access token for the Graph API. Unset: run against the built-in sandbox.
    #[arg(long, env = "META_ACCESS_TOKEN", hide_env_values = true)]
    pub meta_access_token: Option<SecretString>,
    /// 360dialog Partner API base URL.
    #[arg(
        long,
        env = "D360_HUB_URL",
        default_value = "https://hub.360dialog.io/api/v2"
    )]
    pub d360_hub_url: Url,
    /// 360dialog Messaging API base URL.
    #[arg(
        long,
        env = "D360_WABA_URL",
        default_value = "https://waba-v2.360dialog.io"
    )]
    pub d360_waba_url: Url,
    /// Timeout of one upstream HTTP request (at least 1; SHUTDOWN_GRACE_SECONDS must be at
    /// least this + 1).
    #[arg(long, env = "UPSTREAM_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub upstream_timeout_seconds: f64,
    /// Tell a standalone sandbox (at META_GRAPH_URL) about each new migration's number.
    #[arg(long, env = "SANDBOX_SEED_NUMBERS", default_value_t = false)]
    pub sandbox_seed_numbers: bool,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Workers")]
pub struct WorkerArgs {
    /// Migrations advanced concurrently by this process.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 8)]
    pub worker_concurrency: usize,
    /// Lease of a claimed migration; another replica resumes it this long after a crash. At
    /// least 2 × UPSTREAM_TIMEOUT_SECONDS.
    #[arg(long, env = "LEASE_SECONDS", default_value_t = 60.0)]
    pub lease_seconds: f64,
    /// Polling fallback when no NOTIFY arrives.
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Time a stopping worker gives in-flight steps before releasing their leases; at least
    /// UPSTREAM_TIMEOUT_SECONDS + 1, so an upstream call in flight at SIGTERM ends within it.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 35.0)]
    pub shutdown_grace_seconds: f64,
    /// Attempts of one step before a transient upstream error fails the migration; also the
    /// take-overs from an expired lease in a row before it fails with internal_error.
    #[arg(long, env = "MAX_STEP_ATTEMPTS", default_value_t = 10)]
    pub max_step_attempts: i32,
    /// First retry delay (doubles per attempt, with jitter).
    #[arg(long, env = "RETRY_BASE_MS", default_value_t = 2000)]
    pub retry_base_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "RETRY_CAP_SECONDS", default_value_t = 300)]
    pub retry_cap_seconds: u64,
    /// First delay after Meta's "There was an error migrating this phone number. Please try
    /// again after some time." (doubles per try, up to 15 minutes).
    #[arg(long, env = "TRY_AGAIN_LATER_BASE_SECONDS", default_value_t = 60)]
    pub try_again_later_base_seconds: u64,
    /// How long a step keeps trying after that answer before the migration fails with
    /// upstream_unavailable.
    #[arg(long, env = "TRY_AGAIN_LATER_TOTAL_SECONDS", default_value_t = 21_600)]
    pub try_again_later_total_seconds: u64,
    /// How long `awaiting_otp` waits for the code before failing with otp_expired
    /// (`otp.expires_at`, also `waiting_for.deadline`).
    #[arg(long, env = "OTP_TTL_SECONDS", default_value_t = 86_400)]
    pub otp_ttl_seconds: u64,
    /// Minimum time between two verification codes.
    #[arg(long, env = "OTP_RESEND_COOLDOWN_SECONDS", default_value_t = 60)]
    pub otp_resend_cooldown_seconds: u64,
    /// Wrong codes accepted per migration.
    #[arg(long, env = "OTP_MAX_ATTEMPTS", default_value_t = 5)]
    pub otp_max_attempts: i32,
    /// Switch to a voice call when no code was submitted this long after an SMS (0 = never).
    #[arg(long, env = "OTP_VOICE_FALLBACK_SECONDS", default_value_t = 0)]
    pub otp_voice_fallback_seconds: u64,
    /// How long `awaiting_channel` waits for a running channel with key permission
    /// (`waiting_for.deadline`); then the migration fails with the `waiting_for.code`.
    #[arg(long, env = "CHANNEL_TIMEOUT_SECONDS", default_value_t = 3600)]
    pub channel_timeout_seconds: u64,
    /// First delay between channel polls (doubles up to a minute; in `awaiting_signup` up to
    /// SIGNUP_POLL_MAX_SECONDS).
    #[arg(long, env = "CHANNEL_POLL_MS", default_value_t = 2000)]
    pub channel_poll_ms: u64,
    /// How long `awaiting_signup` waits for the client to finish Embedded Signup (a channel
    /// for the number on the partner's 360dialog account; `waiting_for.deadline`); then the
    /// migration fails with signup_not_completed. Default 7 days.
    #[arg(long, env = "SIGNUP_TIMEOUT_SECONDS", default_value_t = 604_800)]
    pub signup_timeout_seconds: u64,
    /// Longest delay between two looks for the channel in `awaiting_signup` (from
    /// CHANNEL_POLL_MS, doubling).
    #[arg(long, env = "SIGNUP_POLL_MAX_SECONDS", default_value_t = 60)]
    pub signup_poll_max_seconds: u64,
    /// Delay between two looks at a WABA the client's Embedded Signup made while 360dialog
    /// sets it up (no payment method or subscribed app yet, or not approved yet); each look is
    /// the precheck's Graph reads, which Meta's per-WABA quota counts. ± 10 % jitter.
    #[arg(long, env = "SIGNUP_SETUP_POLL_SECONDS", default_value_t = 300)]
    pub signup_setup_poll_seconds: u64,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Webhooks")]
pub struct WebhookArgs {
    /// Deliver webhooks to private, loopback and link-local addresses and over plain http
    /// (tests and local development only).
    #[arg(long, env = "ALLOW_PRIVATE_CALLBACKS", default_value_t = false)]
    pub allow_private_callbacks: bool,
    /// Webhook deliveries in flight at once in this process.
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 16)]
    pub webhook_concurrency: usize,
    /// Timeout of one webhook attempt.
    #[arg(long, env = "WEBHOOK_TIMEOUT_SECONDS", default_value_t = 15.0)]
    pub webhook_timeout_seconds: f64,
    /// Delays between webhook attempts, in seconds (comma-separated); attempts = delays + 1.
    /// Default: the Standard Webhooks schedule, 8 attempts over 27.5 hours.
    #[arg(
        long,
        env = "WEBHOOK_RETRY_SCHEDULE",
        value_delimiter = ',',
        default_value = "5,300,1800,7200,18000,36000,36000"
    )]
    pub webhook_retry_schedule: Vec<u64>,
    /// How long a rotated-out webhook secret keeps signing next to the new one.
    #[arg(long, env = "WEBHOOK_SECRET_OVERLAP_SECONDS", default_value_t = 86_400)]
    pub webhook_secret_overlap_seconds: u64,
    /// The least time between two `batch.progress` webhooks of a batch (sent only when its
    /// counts changed); a batch's end is noticed within min(this, 5 s).
    #[arg(long, env = "BATCH_PROGRESS_INTERVAL_SECONDS", default_value_t = 60)]
    pub batch_progress_interval_seconds: u64,
}

/// The built-in sandbox `serve` and `worker` run when META_ACCESS_TOKEN is unset.
#[derive(Debug, Clone, Args)]
pub struct InProcessSandboxArgs {
    /// Sandbox mode: where the built-in sandbox listens (its control API is under /_sandbox).
    /// Default 127.0.0.1:8090, or a free port when that one is taken.
    #[arg(
        long,
        env = "SANDBOX_BIND",
        help_heading = "Sandbox (when META_ACCESS_TOKEN is unset)"
    )]
    pub sandbox_bind: Option<SocketAddr>,
    #[command(flatten)]
    pub faults: SandboxFaultArgs,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sandbox (when META_ACCESS_TOKEN is unset)")]
pub struct SandboxFaultArgs {
    /// Sandbox: probability that an upstream request fails (0.0–1.0).
    #[arg(long, env = "SANDBOX_FAULT_RATE", default_value_t = 0.0)]
    pub sandbox_fault_rate: f64,
    /// Sandbox: fault kinds drawn from (comma-separated: server_error, rate_limited, timeout,
    /// connection_reset, lost_response; also garbled_success, success_false: applied, then a
    /// 200 that is not the upstream's JSON; slow: held SANDBOX_HANG_MS, then applied).
    /// Default: the first five.
    #[arg(long, env = "SANDBOX_FAULT_KINDS", value_delimiter = ',')]
    pub sandbox_fault_kinds: Vec<String>,
    /// Sandbox: latency added to every upstream request, in milliseconds.
    #[arg(long, env = "SANDBOX_LATENCY_MS", default_value_t = 0)]
    pub sandbox_latency_ms: u64,
    /// Sandbox: 360dialog allows one API-key generation per channel per this window, in ms.
    #[arg(long, env = "SANDBOX_API_KEY_WINDOW_MS", default_value_t = 30_000)]
    pub sandbox_api_key_window_ms: u64,
    /// Sandbox: how long a `timeout` fault hangs before answering 504 (and a `slow` one holds
    /// the request before applying it), in ms.
    #[arg(long, env = "SANDBOX_HANG_MS", default_value_t = 30_000)]
    pub sandbox_hang_ms: u64,
    /// Sandbox: delay between registration and the 360dialog channel running, in ms.
    #[arg(long, env = "SANDBOX_CHANNEL_DELAY_MS", default_value_t = 1000)]
    pub sandbox_channel_delay_ms: u64,
    /// Sandbox: seed for reproducible random faults.
    #[arg(long, env = "SANDBOX_SEED")]
    pub sandbox_seed: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct ReencryptArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The key every value is re-sealed under (the new key).
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: SecretString,
    /// The previous key. Unset: only checks that every value opens under ENCRYPTION_KEY.
    #[arg(long, env = "ENCRYPTION_KEY_OLD", hide_env_values = true)]
    pub encryption_key_old: Option<SecretString>,
    /// Rows re-sealed per transaction.
    #[arg(long, env = "REENCRYPT_BATCH_SIZE", default_value_t = 500)]
    pub reencrypt_batch_size: u32,
    /// Also replace the kept fingerprint key with a new random one (after a leak of an
    /// ENCRYPTION_KEY): client-page links and Idempotency-Key records made before stop matching.
    /// Restart every replica afterwards.
    #[arg(long)]
    pub new_fingerprint_key: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Address the sandbox listens on (its control API is under /_sandbox).
    #[arg(long, env = "SANDBOX_BIND", default_value = "127.0.0.1:8090")]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub faults: SandboxFaultArgs,
}

/// How much longer than one upstream request (`UPSTREAM_TIMEOUT_SECONDS`) the shutdown grace
/// period must be. No step starts an irreversible call once the worker is stopping, so every
/// call in flight at SIGTERM began before it and returns (answer or timeout) within the upstream
/// timeout; the margin covers what follows before the step can let go: recording the outcome
/// (one guarded statement, milliseconds) and the runtime's scheduling. A second is ample for
/// that and still lets tests run with small values.
pub const SHUTDOWN_GRACE_MARGIN_SECONDS: f64 = 1.0;

/// Shortest `ADMIN_API_KEY`: an operator chooses it, and it sees every tenant.
pub const MIN_ADMIN_KEY_CHARS: usize = 24;

impl DbArgs {
    /// A malformed `DATABASE_URL` is named without echoing it (it holds a password).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.database_url {
            use secrecy::ExposeSecret;
            if url.expose_secret().is_empty() {
                return Err("DATABASE_URL is set but empty: set it to the PostgreSQL URL, or unset it for the embedded PostgreSQL under DATA_DIR (development only)".into());
            }
            url.expose_secret()
                .parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|e| {
                    format!(
                        "DATABASE_URL is not a valid PostgreSQL URL (postgres://user:password@host:5432/database): {e}"
                    )
                })?;
        }
        if self.database_max_connections == 0 {
            return Err("DATABASE_MAX_CONNECTIONS must be at least 1".into());
        }
        Ok(())
    }
}

impl ServeArgs {
    /// Checks ranges and combinations; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        self.api.validate()?;
        if !self.api.no_workers {
            self.run.validate_with_workers()?;
        }
        self.run.validate()
    }
}

impl ApiArgs {
    /// Checks ranges and combinations; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(key) = &self.admin_api_key {
            use secrecy::ExposeSecret;
            if key.expose_secret().chars().count() < MIN_ADMIN_KEY_CHARS {
                return Err(format!(
                    "ADMIN_API_KEY must be at least {MIN_ADMIN_KEY_CHARS} characters (e.g. `openssl rand -hex 24`)"
                ));
            }
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return Err(
                "RATE_LIMIT_BURST must be at least 1 when RATE_LIMIT_PER_SECOND is set".into(),
            );
        }
        if self.auth_failures_per_minute > 0 && self.auth_failure_burst == 0 {
            return Err(
                "AUTH_FAILURE_BURST must be at least 1 when AUTH_FAILURES_PER_MINUTE is set".into(),
            );
        }
        if self.dashboard_stuck_minutes == 0 {
            return Err("DASHBOARD_STUCK_MINUTES must be at least 1".into());
        }
        self.listen.validate()
    }
}

impl WorkerProcessArgs {
    /// Checks ranges and combinations; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        self.listen.validate()?;
        self.run.validate_with_workers()?;
        self.run.validate()
    }
}

impl ListenArgs {
    /// Checks ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        self.connections.validate()
    }
}

impl ConnectionArgs {
    /// Checks ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value, min) in [
            (
                "HTTP_HEADER_READ_TIMEOUT_SECONDS",
                self.http_header_read_timeout_seconds,
                0.1,
            ),
            (
                "HTTP_IDLE_TIMEOUT_SECONDS",
                self.http_idle_timeout_seconds,
                0.1,
            ),
            ("SHUTDOWN_DRAIN_SECONDS", self.shutdown_drain_seconds, 0.0),
            (
                "HTTP_SHUTDOWN_TIMEOUT_SECONDS",
                self.http_shutdown_timeout_seconds,
                0.0,
            ),
        ] {
            if !(min..=3600.0).contains(&value) {
                return Err(format!("{name} must be between {min} and 3600"));
            }
        }
        if self.http_max_connections == Some(0) {
            return Err("HTTP_MAX_CONNECTIONS must be at least 1".into());
        }
        Ok(())
    }
}

/// Pool connections a running process keeps for itself: one LISTENs for job wake-ups, one for
/// webhook wake-ups (sqlx's listener holds its pooled connection).
pub const LISTENING_CONNECTIONS: u32 = 2;

impl RunArgs {
    /// A process that runs the workers: its pool must leave connections besides the
    /// listeners'. With fewer, they take every connection, or leave one that a single request
    /// or step holds while heartbeats wait for it: nothing moves.
    fn validate_with_workers(&self) -> Result<(), String> {
        if self.db.database_max_connections < LISTENING_CONNECTIONS + 2 {
            return Err(format!(
                "DATABASE_MAX_CONNECTIONS must be at least {} where the workers run: {LISTENING_CONNECTIONS} of them listen for wake-ups",
                LISTENING_CONNECTIONS + 2
            ));
        }
        Ok(())
    }

    /// Checks ranges and combinations; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        self.db.validate()?;
        let (w, h, u) = (&self.worker, &self.webhooks, &self.upstreams);
        if u.meta_access_token.as_ref().is_some_and(|t| {
            use secrecy::ExposeSecret;
            t.expose_secret().is_empty()
        }) {
            return Err("META_ACCESS_TOKEN is set but empty: set it to the system user's token, or unset it for sandbox mode (development only)".into());
        }
        if !(0.0..=1.0).contains(&self.sandbox.faults.sandbox_fault_rate) {
            return Err("SANDBOX_FAULT_RATE must be between 0 and 1".into());
        }
        if w.lease_seconds < 1.0 {
            return Err("LEASE_SECONDS must be at least 1".into());
        }
        validate_lease(w.lease_seconds, u.upstream_timeout_seconds)?;
        validate_shutdown_grace(w.shutdown_grace_seconds, u.upstream_timeout_seconds)?;
        if w.worker_concurrency == 0 {
            return Err("WORKER_CONCURRENCY must be at least 1".into());
        }
        if w.otp_max_attempts < 1 {
            return Err("OTP_MAX_ATTEMPTS must be at least 1".into());
        }
        if w.max_step_attempts < 1 {
            return Err("MAX_STEP_ATTEMPTS must be at least 1".into());
        }
        if h.webhook_concurrency == 0 {
            return Err("WEBHOOK_CONCURRENCY must be at least 1".into());
        }
        if !(0.1..=300.0).contains(&h.webhook_timeout_seconds) {
            return Err("WEBHOOK_TIMEOUT_SECONDS must be between 0.1 and 300".into());
        }
        if h.webhook_retry_schedule.len() > 50 {
            return Err("WEBHOOK_RETRY_SCHEDULE must have at most 50 delays".into());
        }
        if !(1..=86_400).contains(&h.batch_progress_interval_seconds) {
            return Err("BATCH_PROGRESS_INTERVAL_SECONDS must be between 1 and 86400".into());
        }
        if !u.meta_graph_version.starts_with('v') {
            return Err("META_GRAPH_VERSION must look like v23.0".into());
        }
        for (name, url) in [
            ("META_GRAPH_URL", &u.meta_graph_url),
            ("D360_HUB_URL", &u.d360_hub_url),
            ("D360_WABA_URL", &u.d360_waba_url),
        ] {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{name} must be an http(s) URL"));
            }
        }
        Ok(())
    }

    pub fn sandbox_mode(&self) -> bool {
        self.upstreams.meta_access_token.is_none()
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs_f64(self.worker.lease_seconds)
    }
}

/// `UPSTREAM_TIMEOUT_SECONDS` as applied: at least one second.
fn effective_upstream_timeout(seconds: f64) -> f64 {
    if seconds.is_nan() {
        1.0
    } else {
        seconds.max(1.0)
    }
}

/// An irreversible call starts only with `UPSTREAM_TIMEOUT_SECONDS` of lease left, so the lease
/// covers it even if no heartbeat gets through any more; heartbeats renew it every third of its
/// length. Half the lease leaves a sixth of it for a late heartbeat: with a shorter lease, calls
/// would be refused while the lease is healthy.
pub fn validate_lease(lease_seconds: f64, upstream_timeout_seconds: f64) -> Result<(), String> {
    let timeout = effective_upstream_timeout(upstream_timeout_seconds);
    let needed = 2.0 * timeout;
    if lease_seconds >= needed && lease_seconds.is_finite() {
        return Ok(());
    }
    Err(format!(
        "LEASE_SECONDS ({lease_seconds}) must be at least 2 × UPSTREAM_TIMEOUT_SECONDS ({timeout}) = {needed}: an irreversible upstream call starts only while the lease left covers the call; raise LEASE_SECONDS or lower UPSTREAM_TIMEOUT_SECONDS"
    ))
}

/// An upstream call in flight when SIGTERM arrives must be able to end within the shutdown grace
/// period: otherwise the step would be cut off mid-call (its lease then left to expire) instead
/// of recording the call's outcome and handing the migration over at once.
pub fn validate_shutdown_grace(
    grace_seconds: f64,
    upstream_timeout_seconds: f64,
) -> Result<(), String> {
    let timeout = effective_upstream_timeout(upstream_timeout_seconds);
    let needed = timeout + SHUTDOWN_GRACE_MARGIN_SECONDS;
    if grace_seconds >= needed && grace_seconds.is_finite() {
        return Ok(());
    }
    Err(format!(
        "SHUTDOWN_GRACE_SECONDS ({grace_seconds}) must be at least UPSTREAM_TIMEOUT_SECONDS ({timeout}) + {SHUTDOWN_GRACE_MARGIN_SECONDS} = {needed}: an upstream call in flight at shutdown must be able to finish within the grace period; raise SHUTDOWN_GRACE_SECONDS or lower UPSTREAM_TIMEOUT_SECONDS"
    ))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command, validate_lease, validate_shutdown_grace};

    /// The long flags `waba-migrator <sub> --help` lists.
    fn flags(sub: &str) -> Vec<String> {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut(sub)
            .expect("subcommand")
            .render_long_help()
            .to_string();
        help.split_whitespace()
            .filter(|w| w.starts_with("--"))
            .map(|w| w.trim_end_matches([',', '.', ')']).to_owned())
            .filter(|w| w.len() > 2 && !w.contains('='))
            .collect()
    }

    const API_ONLY: &[&str] = &[
        "--no-workers",
        "--admin-api-key",
        "--rate-limit-per-second",
        "--rate-limit-burst",
        "--dashboard-stuck-minutes",
        "--dashboard-secure-cookie",
        "--public-base-url",
    ];

    /// The HTTP server's settings: the API's (`serve`), or the operations endpoints' (`worker`).
    const HTTP_SERVER: &[&str] = &[
        "--bind-addr",
        "--http-header-read-timeout-seconds",
        "--http-idle-timeout-seconds",
        "--http-max-connections",
        "--shutdown-drain-seconds",
        "--http-shutdown-timeout-seconds",
    ];

    #[test]
    fn worker_help_has_no_api_only_options() {
        let worker = flags("worker");
        for flag in API_ONLY {
            assert!(
                !worker.contains(&flag.to_string()),
                "worker --help lists {flag}"
            );
        }
        for flag in [
            "--database-url",
            "--worker-concurrency",
            "--meta-access-token",
            "--webhook-concurrency",
        ]
        .iter()
        .chain(HTTP_SERVER)
        {
            assert!(
                worker.contains(&flag.to_string()),
                "worker --help lacks {flag}: {worker:?}"
            );
        }
        let serve = flags("serve");
        for flag in API_ONLY
            .iter()
            .chain(HTTP_SERVER)
            .chain(&["--worker-concurrency", "--sandbox-bind"])
        {
            assert!(
                serve.contains(&flag.to_string()),
                "serve --help lacks {flag}"
            );
        }
    }

    #[test]
    fn sandbox_help_has_no_serve_only_options() {
        let sandbox = flags("sandbox");
        for flag in [
            "--sandbox-seed-numbers",
            "--database-url",
            "--bind-addr",
            "--worker-concurrency",
            "--sandbox-bind",
            "--data-dir",
        ] {
            assert!(
                !sandbox.contains(&flag.to_string()),
                "sandbox --help lists {flag}"
            );
        }
        for flag in ["--bind", "--sandbox-fault-rate", "--sandbox-latency-ms"] {
            assert!(
                sandbox.contains(&flag.to_string()),
                "sandbox --help lacks {flag}"
            );
        }
    }

    /// `waba-migrator worker` parsed from `args` (flags; no environment needed for them).
    fn worker_args(args: &[&str]) -> super::RunArgs {
        let cli =
            Cli::try_parse_from(["waba-migrator", "worker"].iter().chain(args)).expect("parses");
        match cli.command {
            Command::Worker(worker) => worker.run,
            other => panic!("not worker: {other:?}"),
        }
    }

    #[test]
    fn the_lease_must_be_twice_the_upstream_timeout() {
        assert_eq!(validate_lease(60.0, 30.0), Ok(()));
        assert_eq!(validate_lease(4.0, 2.0), Ok(()));
        // The timeout as applied: at least one second.
        assert_eq!(validate_lease(2.0, 0.1), Ok(()));
        assert_eq!(
            validate_lease(50.0, 30.0),
            Err(
                "LEASE_SECONDS (50) must be at least 2 × UPSTREAM_TIMEOUT_SECONDS (30) = 60: an \
                 irreversible upstream call starts only while the lease left covers the call; \
                 raise LEASE_SECONDS or lower UPSTREAM_TIMEOUT_SECONDS"
                    .into()
            )
        );
        assert!(validate_lease(f64::INFINITY, 30.0).is_err());
        assert!(validate_lease(f64::NAN, 30.0).is_err());
    }

    #[test]
    fn shutdown_grace_must_outlast_the_upstream_timeout() {
        // The defaults pass.
        assert_eq!(worker_args(&[]).validate(), Ok(()));
        assert_eq!(validate_shutdown_grace(35.0, 30.0), Ok(()));
        assert_eq!(validate_shutdown_grace(31.0, 30.0), Ok(()));
        assert_eq!(validate_shutdown_grace(3.0, 2.0), Ok(()));

        // The old default grace (20 s) against the default timeout (30 s): a clear error naming
        // both settings and their values.
        let err = worker_args(&["--shutdown-grace-seconds", "20"])
            .validate()
            .unwrap_err();
        assert_eq!(
            err,
            "SHUTDOWN_GRACE_SECONDS (20) must be at least UPSTREAM_TIMEOUT_SECONDS (30) + 1 = 31: \
             an upstream call in flight at shutdown must be able to finish within the grace \
             period; raise SHUTDOWN_GRACE_SECONDS or lower UPSTREAM_TIMEOUT_SECONDS"
        );
        // Equal is not enough: the margin is required.
        let err = worker_args(&[
            "--shutdown-grace-seconds",
            "2",
            "--upstream-timeout-seconds",
            "2",
        ])
        .validate()
        .unwrap_err();
        assert!(
            err.starts_with(
                "SHUTDOWN_GRACE_SECONDS (2) must be at least UPSTREAM_TIMEOUT_SECONDS (2) + 1 = 3"
            ),
            "{err}"
        );
        // The timeout as applied (at least 1 s), and nonsense values, are checked too.
        assert!(validate_shutdown_grace(1.5, 0.1).is_err());
        assert_eq!(validate_shutdown_grace(2.0, 0.1), Ok(()));
        assert!(validate_shutdown_grace(f64::NAN, 30.0).is_err());
        assert!(validate_shutdown_grace(f64::INFINITY, 30.0).is_err());
        assert!(validate_shutdown_grace(-1.0, 30.0).is_err());
    }

    #[test]
    fn connection_settings_are_checked() {
        let serve = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(["waba-migrator", "serve"].iter().chain(args)).expect("parses");
            match cli.command {
                Command::Serve(serve) => serve.api.validate(),
                other => panic!("not serve: {other:?}"),
            }
        };
        assert_eq!(serve(&[]), Ok(()));
        assert_eq!(serve(&["--shutdown-drain-seconds=0"]), Ok(()));
        // The listeners' connections leave too few to work with.
        let run = |cmd: &str, args: &[&str]| {
            let cli =
                Cli::try_parse_from(["waba-migrator", cmd].iter().chain(args)).expect("parses");
            match cli.command {
                Command::Serve(serve) => serve.validate(),
                Command::Worker(worker) => worker.validate(),
                other => panic!("not serve nor worker: {other:?}"),
            }
        };
        for cmd in ["serve", "worker"] {
            let err = run(cmd, &["--database-max-connections=3"]).unwrap_err();
            assert!(
                err.starts_with("DATABASE_MAX_CONNECTIONS must be at least 4"),
                "{err}"
            );
            assert_eq!(run(cmd, &["--database-max-connections=4"]), Ok(()));
        }
        // An API-only replica listens for nothing.
        assert_eq!(
            run("serve", &["--no-workers", "--database-max-connections=2"]),
            Ok(())
        );
        for (arg, named) in [
            (
                "--http-header-read-timeout-seconds=0",
                "HTTP_HEADER_READ_TIMEOUT_SECONDS",
            ),
            (
                "--http-idle-timeout-seconds=NaN",
                "HTTP_IDLE_TIMEOUT_SECONDS",
            ),
            ("--http-max-connections=0", "HTTP_MAX_CONNECTIONS"),
            ("--shutdown-drain-seconds=-1", "SHUTDOWN_DRAIN_SECONDS"),
            (
                "--http-shutdown-timeout-seconds=86400",
                "HTTP_SHUTDOWN_TIMEOUT_SECONDS",
            ),
        ] {
            let err = serve(&[arg]).unwrap_err();
            assert!(err.starts_with(named), "{arg}: {err}");
        }
    }

    #[test]
    fn an_https_public_address_makes_the_dashboard_cookie_secure() {
        let secure = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(["waba-migrator", "serve"].iter().chain(args)).expect("parses");
            match cli.command {
                Command::Serve(serve) => serve.api.dashboard_secure_cookie(),
                other => panic!("not serve: {other:?}"),
            }
        };
        assert!(!secure(&[]));
        assert!(!secure(&["--public-base-url=http://10.0.0.5:8080"]));
        assert!(secure(&["--public-base-url=https://migrate.example.com"]));
        assert!(secure(&["--dashboard-secure-cookie"]));
    }

    #[test]
    fn migrate_help_lists_only_database_options() {
        let migrate = flags("migrate");
        assert!(migrate.contains(&"--database-url".to_string()));
        // `migrate` without DATABASE_URL migrates the embedded database under DATA_DIR.
        assert!(migrate.contains(&"--data-dir".to_string()));
        for flag in [
            "--bind-addr",
            "--worker-concurrency",
            "--sandbox-fault-rate",
            "--encryption-key",
        ] {
            assert!(
                !migrate.contains(&flag.to_string()),
                "migrate --help lists {flag}"
            );
        }
    }
}
