//! # Upstream sandbox
//!
//! A stateful, in-memory simulator of exactly the upstream endpoints the service calls: the Meta
//! Graph API (WhatsApp Business Management + Cloud API registration), the 360dialog Partner API
//! (Hub) and the 360dialog Messaging API. One HTTP server serves all three, so the service can be
//! pointed at it with
//!
//! ```text
//! META_GRAPH_URL=http://host:port        (any `v<major>.<minor>` version segment)
//! D360_HUB_URL=http://host:port/api/v2
//! D360_WABA_URL=http://host:port
//! ```
//!
//! ## What it simulates
//!
//! * **Meta Graph** (`Authorization: Bearer <anything>` or an `access_token` parameter, else
//!   HTTP 401 / code 190): `GET /{v}/me` (the token's system user), `GET /{v}/{waba-id}`,
//!   `GET /{v}/{phone-number-id}`,
//!   `GET /{v}/{waba-id}/phone_numbers|subscribed_apps|message_templates` (cursor paging;
//!   `phone_numbers` also takes Graph's `filtering`, see `graph::FILTER_FIELDS`),
//!   `POST /{v}/{dest-waba-id}/phone_numbers` (start a migration), `POST /{v}/{phone-id}/request_code`,
//!   `…/verify_code`, `…/register` and `POST /{v}/{dest-waba-id}/migrate_message_templates`.
//!   Parameters are read from the JSON body, a form-encoded body or the query string, and typed
//!   as Meta's OpenAPI spec types them: `cc`, `phone_number`, `source_waba_id`, `code`, `pin`,
//!   `code_method`, `language` and `messaging_product` are strings (a JSON number is refused
//!   with error 100), `code_method`
//!   is `SMS` or `VOICE`, `language` is `xx_YY`. Errors use
//!   the Graph error object (`message`, `type`, `code`, `error_subcode`, `fbtrace_id`,
//!   `is_transient`, `error_data`, …).
//! * **360dialog Partner API** under `/api/v2` (`X-API-Key`, any non-empty value; a legacy
//!   `Authorization: Bearer` is accepted too): channel listing with `filters`,
//!   `shared_client_numbers` and API-key generation (revokes earlier keys; one per
//!   [`SandboxConfig::api_key_rate_window`] per channel).
//! * **360dialog Messaging API**: `GET /health_status` with `D360-API-KEY`.
//! * **Control** under `/_sandbox` (no auth, never faulted, no latency, not counted):
//!   `GET /counters`, `GET /counters/{e164}`, `POST /reset`, `GET|POST|DELETE /faults`,
//!   `GET /channels/{id}`, `POST /channels/{id}/permission` (API-key permission, below),
//!   `POST /numbers` (seeding, below), `POST /numbers/{e164}/resolve` (scenarios, below),
//!   `POST /numbers/{e164}/complete_signup` (the client finished Embedded Signup: the number
//!   is registered in its destination WABA and a running channel appears),
//!   `POST /wabas/{id}/templates` (many templates, below), `GET /scenarios` and `GET /_sandbox`
//!   (this list, as JSON).
//!
//! **Graph `fields`** is honoured on `GET /{v}/{id}`, `…/phone_numbers` and
//! `…/message_templates`: each object carries `id` and the named fields it has; without
//! `fields`, the node type's defaults (a phone number: `id`, `display_phone_number`,
//! `verified_name`, `quality_rating`); a name the node type does not have (see
//! `graph::PHONE_NODE` and its siblings, or [`SandboxConfig::graph_missing_fields`]) is answered
//! `(#100) Tried accessing nonexisting field (…) on node type (…)`, for the whole request.
//!
//! Simplifications: every 360dialog partner id sees every channel; each destination WABA gets
//! one 360dialog client.
//!
//! ## Lenient world
//!
//! Any business, WABA and partner id is accepted and created on first use: WABAs are approved,
//! owned by [`SANDBOX_BUSINESS_ID`] (or the `business_id` of the latest seeding that named them:
//! ids can be reused with any business), verified, have a payment method and one subscribed app.
//! Any E.164 number whose country code is known is a happy-path number (the national part is not
//! checked against numbering plans, so `+1 555…` numbers work): display name approved, OTP
//! [`SANDBOX_OTP_CODE`], a 6-digit PIN accepted at registration.
//!
//! **Seeding.** The Graph API never tells the sandbox which number a precheck is about (the
//! service lists a source WABA's numbers before it ever names the number), so a number is listed
//! on a source WABA only once it has been *added* there, with `POST /_sandbox/numbers`
//! `{"phone_number","source_waba_id","destination_waba_id"?,"business_id"?}` or
//! [`Sandbox::add_number`]. Adding a number also gives its source WABA the default templates
//! (3 APPROVED+GREEN, 1 APPROVED+UNKNOWN, 1 APPROVED+RED). Starting a migration of a number that
//! was never added is accepted anyway (lenient); a WABA named as `source_waba_id` of a template
//! migration also gets the default templates.
//!
//! **A WABA being set up.** `complete_signup` with `"set_up": false` makes a WABA the signup
//! creates look as 360dialog leaves it right after the signup: no payment method and no
//! subscribed app, until `POST /_sandbox/wabas/{waba_id}/set_up`. With `"shared": false` the
//! WABA is not shared with the partner's app yet: Graph answers its reads with 100/33 until
//! `POST /_sandbox/wabas/{waba_id}/share`.
//!
//! **Many templates.** `POST /_sandbox/wabas/{waba_id}/templates` `{"count": 1200}` (1..=10000)
//! or [`Sandbox::set_templates`] replaces the WABA's templates (creating the WABA if unknown)
//! with `count` generated ones and answers `{"waba_id": "…", "count": 1200, "eligible": 840}`
//! (400 `{"error": "…"}` for a bad count or id). Template `i` (0-based) is `tpl_{i:05}`, `en_US`
//! for even `i` and `pt_BR` for odd, `UTILITY` or `MARKETING` by `(i / 2) % 2`, and by `i % 10`:
//! 0–5 APPROVED+GREEN, 6 APPROVED+UNKNOWN, 7 APPROVED+YELLOW, 8 PENDING, 9 REJECTED (quality
//! UNKNOWN). Eligible (APPROVED with GREEN or UNKNOWN) templates whose index is a multiple of 97
//! are never copied by `migrate_message_templates`: they are reported in `failed_templates` as
//! `"Incorrect category"`, on every attempt, also when retried by `template_ids`.
//!
//! **Template migration.** `page_number` `p` with page size `count` (default and maximum 500)
//! selects the source's templates `[p*size, (p+1)*size)` in creation order, eligible or not, and
//! copies the eligible ones of that page that the destination does not have yet (same name and
//! language; copies are APPROVED, quality UNKNOWN, with new ids). Ones already present are
//! reported in `migrated_templates` without being copied again; ineligible ones of the page are
//! not mentioned. A page past the end answers empty lists. `template_ids` (at most 500) retries
//! exactly those ids; an ineligible or unknown id goes to `failed_templates` with its reason.
//! `GET /{v}/{waba-id}/message_templates` pages with `limit` (default 25, at most 1000) and the
//! `after` cursor.
//!
//! **API-key permission.** Each 360dialog channel has a `permission` flag (the partner may
//! generate API keys): true, except for channels of scenario 0020 numbers.
//! `POST /_sandbox/channels/{channel_id}/permission` `{"granted": true|false}` or
//! [`Sandbox::set_permission`] sets it and answers the channel JSON of
//! `GET /_sandbox/channels/{channel_id}`
//! (`{"id","status","phone_number","client_id","current_key_id","keys_issued","permission"}`;
//! 404 for an unknown channel). Without permission the channel is left out of
//! `shared_client_numbers` and `POST …/channels/{id}/api_keys` answers 403
//! `Permission denied for partner {partner_id}`; granting it makes both succeed.
//!
//! Phone-number ids minted by the sandbox are 16 digits starting with `1090`; an unknown id of
//! that shape is answered with Graph error 100/33 ("does not exist"), any other unknown id on
//! `GET /{v}/{id}` is taken to be a WABA and created.
//!
//! ## Flow
//!
//! `POST /{dest}/phone_numbers` creates the number in the destination (`NOT_VERIFIED`,
//! `PENDING`); `request_code` then `verify_code` (`123456`) make it `VERIFIED`; `register` makes it
//! `CONNECTED`, marks the source copy `MIGRATED` and creates the 360dialog channel (`ready`,
//! `running` after [`SandboxConfig::channel_running_after`]; statuses are computed from
//! timestamps, there are no background tasks). The partner then generates a channel API key,
//! which `GET /health_status` accepts until the next key is generated.
//!
//! ## Scenario numbers
//!
//! Numbers whose last four digits are `00xx` trigger failures, see [`SCENARIOS`]. WABA-level
//! scenarios (0005–0010, 0018, 0021) carried by a number show on the WABAs it was seeded with or
//! migrates into only while it is the *current* number there (the latest seeded, migrated or
//! registered): a scenario number never breaks shared WABA ids for the numbers after it. They
//! also apply, always, to a WABA whose id ends in the same four digits.
//!
//! `POST /_sandbox/numbers/{e164}/resolve` or [`Sandbox::resolve`] stands for the fix (two-step
//! verification off, name approved, permission granted, …): the number behaves as a happy-path
//! number from then on, its channel gets API-key permission, a registered number whose channel
//! never appeared (0019) gets one, and its register count is cleared.
//!
//! ## Persistence
//!
//! [`Sandbox::snapshot`] / [`Sandbox::restore`] move the world (not counters or faults) as JSON.
//! With [`Sandbox::persist_to`], every request that changed the world hands the new snapshot to
//! the store before its response (or its lost response) leaves; `serve`'s in-process sandbox
//! stores it in the service's database (`crate::db::sandbox`), so a restart is invisible.
//!
//! ## Counters
//!
//! Every simulated request is counted per endpoint per E.164 number (see [`ENDPOINTS`]):
//! `received` counts every request that reached a handler, including faulted and refused ones;
//! `applied` counts requests whose effect was applied (success responses and `lost_response`
//! faults). WABA-level calls are counted under every number associated with the WABA (added
//! there, or migrating into it); `migrate_message_templates` under every number migrating into
//! the destination WABA; 360dialog calls under the channel's number. Requests that cannot be
//! tied to a number (an unknown API key, a WABA without numbers) are not counted.
//!
//! ## Faults
//!
//! Deterministic rules (`POST /_sandbox/faults`) fire first, in order; otherwise a random fault
//! fires with probability `fault_rate`. See [`FaultKind`] for the semantics of each kind.
//! `lost_response` and `connection_reset` close the connection without any HTTP response: when
//! served through [`serve`], the connection's socket is poisoned so no byte reaches the client;
//! with [`Sandbox::router`] under another server, the response body fails before its first frame,
//! which makes hyper drop the connection before the buffered head is written.
//!
//! A request is processed to its end even when the client hangs up meanwhile (each runs in a
//! task of its own), as a real upstream does: a `slow` fault holds the request for
//! [`SandboxConfig::hang_for`] and then applies it, whether or not the caller still waits.

mod control;
mod exchange;
mod faults;
mod graph;
mod hub;
mod scenarios;
mod state;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use faults::{FaultKind, ParseFaultKindError};
pub use scenarios::SCENARIOS;
pub use state::{NumberSeed, SignupWaba};

use faults::{ConnHandle, FaultState, KillableListener};
use state::{Counters, World};

/// The verification code of every sandbox number, unless its scenario says otherwise.
pub const SANDBOX_OTP_CODE: &str = "123456";

/// Business portfolio that owns every WABA the sandbox creates on first use.
pub const SANDBOX_BUSINESS_ID: &str = "100000000000000";

/// Endpoint names used by counters and fault rules.
pub const ENDPOINTS: &[&str] = &[
    "get_waba",
    "get_phone_number",
    "list_phone_numbers",
    "list_subscribed_apps",
    "list_templates",
    "start_migration",
    "request_code",
    "verify_code",
    "register",
    "migrate_message_templates",
    "list_channels",
    "shared_client_numbers",
    "api_keys",
    "health_status",
];

/// How the sandbox behaves.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Probability (0.0..=1.0) that a simulated request gets a random fault.
    pub fault_rate: f64,
    /// Which kinds random faults draw from.
    pub fault_kinds: Vec<FaultKind>,
    /// Added to every simulated request before it is handled.
    pub latency: Duration,
    /// How long a `timeout` fault sleeps before answering 504.
    pub hang_for: Duration,
    /// Delay between `register` and the 360dialog channel becoming `running`.
    pub channel_running_after: Duration,
    /// RNG seed for reproducible random faults.
    pub seed: Option<u64>,
    /// 360dialog allows one API-key generation per channel per this window (429 otherwise).
    pub api_key_rate_window: Duration,
    /// Fields the simulated Graph version does not have, as after Meta removes one, each as
    /// `node.field` (`waba.…`, `phone_number.…`, `template.…`): a read naming one in `fields`
    /// is answered `(#100) Tried accessing nonexisting field`.
    pub graph_missing_fields: Vec<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            fault_rate: 0.0,
            fault_kinds: FaultKind::ALL.to_vec(),
            latency: Duration::ZERO,
            hang_for: Duration::from_secs(30),
            channel_running_after: Duration::ZERO,
            seed: None,
            api_key_rate_window: Duration::from_secs(30),
            graph_missing_fields: Vec::new(),
        }
    }
}

/// Where a persistent sandbox writes its world: called with the snapshot's JSON after every
/// request that changed it, before the response leaves (see [`Sandbox::persist_to`]).
pub type SnapshotStore =
    Arc<dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Version of the snapshot format [`Sandbox::snapshot`] writes and [`Sandbox::restore`] reads.
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(serde::Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    world: &'a World,
}

#[derive(serde::Deserialize)]
struct Snapshot {
    format: u32,
    world: World,
}

/// The simulator. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
}

struct Shared {
    config: SandboxConfig,
    inner: Mutex<Inner>,
    /// Bumped when a server started by [`serve`] shuts down, so hanging `timeout` faults end.
    hang_cut: tokio::sync::watch::Sender<u64>,
    /// Set by [`Sandbox::persist_to`].
    store: OnceLock<SnapshotStore>,
    /// The last snapshot written; the lock also keeps writes in order.
    persisted: tokio::sync::Mutex<Vec<u8>>,
}

struct Inner {
    world: World,
    counters: Counters,
    faults: FaultState,
}

impl Sandbox {
    /// A fresh sandbox.
    pub fn new(config: SandboxConfig) -> Self {
        let faults = FaultState::from_config(&config);
        let (hang_cut, _) = tokio::sync::watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    world: World::default(),
                    counters: Counters::default(),
                    faults,
                }),
                config,
                hang_cut,
                store: OnceLock::new(),
                persisted: tokio::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// All routes (Graph, 360dialog Partner and Messaging APIs, `/_sandbox` control), state included.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{version}/{id}", get(graph::get_node))
            .route(
                "/{version}/{id}/{edge}",
                get(graph::get_edge).post(graph::post_edge),
            )
            .route(
                "/api/v2/partners/{partner_id}/channels",
                get(hub::list_channels),
            )
            .route(
                "/api/v2/partners/{partner_id}/clients/{client_id}/shared_client_numbers",
                get(hub::shared_client_numbers),
            )
            .route(
                "/api/v2/partners/{partner_id}/channels/{channel_id}/api_keys",
                post(hub::generate_api_key),
            )
            .route("/health_status", get(hub::health_status))
            .route("/_sandbox/counters", get(control::all_counters))
            .route("/_sandbox/counters/{phone}", get(control::number_counters))
            .route("/_sandbox/reset", post(control::reset))
            .route(
                "/_sandbox/faults",
                get(control::get_faults)
                    .post(control::add_faults)
                    .delete(control::clear_faults),
            )
            .route("/_sandbox/channels/{channel_id}", get(control::channel))
            .route(
                "/_sandbox/channels/{channel_id}/permission",
                post(control::set_permission),
            )
            .route("/_sandbox", get(control::index))
            .route("/_sandbox/numbers", post(control::add_number))
            .route(
                "/_sandbox/numbers/{phone}/resolve",
                post(control::resolve_number),
            )
            .route(
                "/_sandbox/numbers/{phone}/complete_signup",
                post(control::complete_signup),
            )
            .route(
                "/_sandbox/wabas/{waba_id}/templates",
                post(control::set_templates),
            )
            .route(
                "/_sandbox/wabas/{waba_id}/set_up",
                post(control::finish_setup),
            )
            .route("/_sandbox/wabas/{waba_id}/share", post(control::share_waba))
            .route("/_sandbox/scenarios", get(control::scenarios))
            .fallback(not_found)
            .layer(axum::middleware::from_fn(exchange::detached))
            .with_state(self.clone())
    }

    /// Same JSON as `GET /_sandbox/counters`:
    /// `{"numbers": {"+15551234567": {"register": {"received": 1, "applied": 1}, …}}}`.
    pub fn counters(&self) -> serde_json::Value {
        self.lock().counters.to_json()
    }

    /// `(received, applied)` of one endpoint (see [`ENDPOINTS`]) for one number (with or
    /// without `+`); `(0, 0)` when never called.
    pub fn count(&self, phone_e164: &str, endpoint: &str) -> (u64, u64) {
        match scenarios::normalize_e164(phone_e164) {
            Some(number) => self.lock().counters.get(&number, endpoint),
            None => (0, 0),
        }
    }

    /// Lists `seed.phone_number` on `seed.source_waba_id` (and, optionally, records the
    /// destination WABA and owning business), exactly like `POST /_sandbox/numbers`. Returns
    /// the phone-number object(s) now listed on the source WABA.
    pub fn add_number(&self, seed: &NumberSeed) -> Result<serde_json::Value, String> {
        self.lock().world.add_number(seed, &self.shared.config)
    }

    /// Replaces the templates of WABA `waba_id` (created if unknown) with `count` (1..=10000)
    /// generated templates, exactly like `POST /_sandbox/wabas/{waba_id}/templates`
    /// `{"count": n}`. Template `i` (0-based, in creation order) is named `tpl_{i:05}`,
    /// language `en_US` (even `i`) or `pt_BR` (odd `i`), category `UTILITY` or `MARKETING` (by
    /// `(i / 2) % 2`); by `i % 10`: 0–5 APPROVED+GREEN, 6 APPROVED+UNKNOWN, 7 APPROVED+YELLOW,
    /// 8 PENDING, 9 REJECTED (quality UNKNOWN for both), so 7 in 10 are eligible. Every
    /// eligible template whose index is a multiple of 97 is refused by
    /// `migrate_message_templates` with `"Incorrect category"` in `failed_templates`, on every
    /// attempt. The WABA no longer gets the default templates.
    pub fn set_templates(&self, waba_id: &str, count: usize) -> Result<(), String> {
        self.lock().world.set_templates(waba_id, count).map(|_| ())
    }

    /// Grants (`true`) or revokes (`false`) the partner's permission to generate API keys for a
    /// 360dialog channel, exactly like `POST /_sandbox/channels/{channel_id}/permission`
    /// `{"granted": bool}`. Without permission the channel is left out of
    /// `shared_client_numbers` and `POST …/api_keys` answers 403. Channels start with permission,
    /// except those of scenario 0020 numbers. `Err` for an unknown channel.
    pub fn set_permission(&self, channel_id: &str, granted: bool) -> Result<(), String> {
        self.lock().world.set_permission(channel_id, granted)
    }

    /// Makes `code` (6 digits) the verification code of `phone_e164` instead of
    /// [`SANDBOX_OTP_CODE`] (tests use a distinctive code to look for it in logs).
    pub fn set_otp_code(&self, phone_e164: &str, code: &str) -> Result<(), String> {
        let number = scenarios::normalize_e164(phone_e164)
            .ok_or_else(|| format!("not an E.164 phone number: {phone_e164:?}"))?;
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the code must be 6 digits".into());
        }
        self.lock().world.otp_codes.insert(number, code.to_owned());
        Ok(())
    }

    /// Makes a scenario number behave as a happy-path number from now on, exactly like
    /// `POST /_sandbox/numbers/{e164}/resolve` (whoever had to act did it: two-step verification
    /// off, display name approved, API-key permission granted, …), so retrying its migration
    /// can succeed. Answers `{"phone_number", "resolved": true, "scenario": <code or null>}`.
    pub fn resolve(&self, phone_e164: &str) -> Result<serde_json::Value, String> {
        let number = scenarios::normalize_e164(phone_e164)
            .ok_or_else(|| format!("not an E.164 phone number: {phone_e164:?}"))?;
        Ok(self.lock().world.resolve(&number, &self.shared.config))
    }

    /// The client finished 360dialog's Embedded Signup for `phone_e164`, exactly like
    /// `POST /_sandbox/numbers/{e164}/complete_signup`: the number is registered in its
    /// destination WABA (`destination_waba_id`, else the one the sandbox knows from seeding)
    /// and a `running` channel with API-key permission exists for it. Returns the channel id.
    pub fn complete_signup(
        &self,
        phone_e164: &str,
        destination_waba_id: Option<&str>,
        channel_id: Option<&str>,
        business_id: Option<&str>,
        new_waba: SignupWaba,
    ) -> Result<String, String> {
        let number = scenarios::normalize_e164(phone_e164)
            .ok_or_else(|| format!("not an E.164 phone number: {phone_e164:?}"))?;
        self.lock().world.complete_signup(
            &number,
            destination_waba_id,
            channel_id,
            business_id,
            new_waba,
            &self.shared.config,
        )
    }

    /// The world (WABAs, numbers, templates, channels, keys) as JSON bytes; counters and fault
    /// settings are not part of it.
    pub fn snapshot(&self) -> Vec<u8> {
        let inner = self.lock();
        serde_json::to_vec(&SnapshotRef {
            format: SNAPSHOT_FORMAT,
            world: &inner.world,
        })
        .unwrap_or_default()
    }

    /// Replaces the world with one [`snapshot`](Self::snapshot) wrote (counters and faults are
    /// kept). `Err` (and nothing changed) for bytes that are not such a snapshot.
    pub fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        let parsed: Snapshot =
            serde_json::from_slice(snapshot).map_err(|e| format!("not a sandbox snapshot: {e}"))?;
        if parsed.format != SNAPSHOT_FORMAT {
            return Err(format!(
                "sandbox snapshot format {} is not {SNAPSHOT_FORMAT}",
                parsed.format
            ));
        }
        self.lock().world = parsed.world;
        Ok(())
    }

    /// Makes the world durable: from now on every request that changes it hands the new
    /// [`snapshot`](Self::snapshot) to `store` before its response is sent, as a real upstream
    /// commits before it answers. `serve`'s in-process sandbox stores it in the service's
    /// database, so a restart of the service is invisible to migrations in flight. Only the
    /// first call has an effect.
    pub fn persist_to(&self, store: SnapshotStore) {
        let _ = self.shared.store.set(store);
    }

    /// Writes the world through the [`persist_to`](Self::persist_to) store if it changed since
    /// the last write (a no-op without a store). A failed write is logged and tried again with
    /// the next change.
    pub async fn flush(&self) {
        let Some(store) = self.shared.store.get() else {
            return;
        };
        let mut last = self.shared.persisted.lock().await;
        let snapshot = self.snapshot();
        if *last == snapshot {
            return;
        }
        match store(snapshot.clone()).await {
            Ok(()) => *last = snapshot,
            Err(e) => tracing::warn!(error = %e, "could not store the sandbox's world"),
        }
    }

    /// Clears all state and counters and restores the configured fault settings.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.world.reset();
        inner.counters = Counters::default();
        inner.faults = FaultState::from_config(&self.shared.config);
    }

    fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// The state lock. Held only for synchronous bookkeeping, never across an `.await`.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps structurally broken; keep serving.
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serve the sandbox on `listener` until `shutdown` resolves.
///
/// Connections are accepted through a wrapper that lets a handler close its own connection
/// without sending any response (`lost_response` and `connection_reset` faults). On shutdown,
/// pending `timeout` faults end early so the server drains promptly.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sandbox: Sandbox,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hang_cut = sandbox.shared.hang_cut.clone();
    let app = sandbox
        .router()
        .into_make_service_with_connect_info::<ConnHandle>();
    axum::serve(KillableListener::new(listener), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            hang_cut.send_modify(|generation| *generation += 1);
        })
        .await
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": "Not found (sandbox)"})),
    )
        .into_response()
}
