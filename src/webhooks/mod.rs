//! Webhooks to partners: a transactional outbox, signed (Standard Webhooks) deliveries with
//! retries for more than a day, and callback URLs that cannot reach private networks.
//!
//! * **Outbox** ([`transition_body`]): every state change of a migration writes a delivery
//!   row in the same statement as the change (`db::migrations::update`, so no transition can
//!   forget it). The body is rendered then, so it shows the migration as it was at that event,
//!   and it never changes: retries send the same bytes with the same `webhook-id`.
//! * **Order**: deliveries carry the migration's version as `sequence`, and the dispatcher
//!   only sends the oldest pending delivery of a migration, so a consumer sees one migration's
//!   events in order even across retries.
//! * **Delivery** ([`Dispatcher`]): leased claims like the migration workers; per-attempt
//!   timeout; the Standard Webhooks schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: 8
//!   attempts over 27.5 h); every attempt logged with status, latency and the next attempt.
//! * **Signing** ([`signing`]): `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>`
//!   with the partner's `whsec_` secret, plus the previous secret during a rotation's overlap.
//! * **Safety** ([`ssrf`]): only `https` URLs whose resolved addresses are all public, checked at
//!   connect time by the resolver itself, redirects not followed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::db::{events::NewEvent, migrations::MigrationRow};
use crate::domain::EventType;

pub mod dispatcher;
pub mod signing;
pub mod ssrf;

pub use dispatcher::Dispatcher;

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

/// Whether `event` is delivered as a webhook: transitions only (events that do not change the
/// state, such as a scheduled retry or a retrieved key, are not). A webhook's type is its
/// audit event's: [`EventType::for_transition`] of the state entered.
pub fn is_delivered(event: &NewEvent) -> bool {
    event.to_state.is_some() && event.from_state != event.to_state
}

/// The request body of the webhook for the transition that left the migration as `row`
/// (written to the outbox by `db::migrations::update`, in the statement of the transition).
pub fn transition_body(row: &MigrationRow) -> String {
    serde_json::to_string(&crate::http::webhooks::WebhookEvent {
        kind: EventType::for_transition(row.state()).as_str().to_owned(),
        timestamp: row.updated_at,
        sequence: row.version,
        data: crate::http::migrations::Migration::from(row),
    })
    .expect("a migration always serialises")
}
