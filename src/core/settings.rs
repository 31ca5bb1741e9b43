//! Settings the application core and its edges share: OTP rules, webhook delivery, the
//! dashboard, and the clock webhooks are scheduled by.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// OTP rules shared by the API (resend cooldown, attempts) and the workers.
#[derive(Debug, Clone)]
pub struct OtpPolicy {
    /// How long a migration waits in `awaiting_otp` before failing with `otp_expired`.
    pub ttl: Duration,
    /// Minimum time between two codes sent to the client.
    pub resend_cooldown: Duration,
    /// Wrong codes accepted before the migration fails with `otp_invalid`.
    pub max_attempts: i32,
    /// Call the client (voice) when no code was submitted this long after an SMS; once.
    pub voice_fallback: Option<Duration>,
}

impl Default for OtpPolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            resend_cooldown: Duration::from_secs(60),
            max_attempts: 5,
            voice_fallback: None,
        }
    }
}

/// Settings of the dashboard (`DASHBOARD_*`).
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// A non-terminal migration not advanced for longer than this is "stuck".
    pub stuck_after: Duration,
    /// Add `Secure` to the session cookie (the service is reached over https).
    pub secure_cookie: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            stuck_after: Duration::from_secs(30 * 60),
            secure_cookie: false,
        }
    }
}

/// The retry schedule of Standard Webhooks (and Svix): delays after the 1st…7th failed attempt.
pub const DEFAULT_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Deliveries in flight at once in this process.
    pub concurrency: usize,
    /// Timeout of one attempt (connect + request + response headers).
    pub attempt_timeout: Duration,
    /// Delay before attempt n+2 after attempt n+1 failed; its length + 1 is the attempt count.
    pub schedule: Vec<Duration>,
    /// How long a rotated-out secret keeps signing.
    pub secret_overlap: Duration,
    /// Deliver to loopback/private addresses and plain `http` (tests, local development).
    pub allow_private: bool,
    pub poll_interval: Duration,
    /// Time in-flight deliveries get at shutdown.
    pub shutdown_grace: Duration,
    /// The least time between two `batch.progress` webhooks of a batch.
    pub batch_progress_interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            attempt_timeout: Duration::from_secs(15),
            schedule: DEFAULT_SCHEDULE.to_vec(),
            secret_overlap: Duration::from_secs(24 * 3600),
            allow_private: false,
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            batch_progress_interval: Duration::from_secs(60),
        }
    }
}

/// The time the dispatcher schedules by. Tests substitute a [`ManualClock`] to live through a
/// day of retries in milliseconds; signatures always carry the real time (consumers check it).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The real time plus an offset that only grows when told to: tests skip through retry delays
/// while "now" never falls behind the database's `now()` (which stamps new deliveries).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<Mutex<chrono::Duration>>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        let mut offset = self.0.lock().expect("clock lock");
        *offset += chrono::Duration::from_std(by).expect("duration in range");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.0.lock().expect("clock lock")
    }
}
