//! `/_sandbox` control endpoints: counters, reset, faults, channel inspection and API-key
//! permission, number seeding, generated templates and the scenario table. No auth, no latency,
//! never faulted, not counted.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::faults::FaultsRequest;
use super::state::{ChannelRec, NumberSeed};
use super::{Inner, SignupWaba};
use super::{SCENARIOS, Sandbox, scenarios};

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.into()})),
    )
        .into_response()
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// `GET /_sandbox/counters`.
pub(crate) async fn all_counters(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(sandbox.counters())
}

/// `GET /_sandbox/counters/{e164}` (with `+`, `%2B` or digits only): `{"register": {…}, …}`.
pub(crate) async fn number_counters(
    State(sandbox): State<Sandbox>,
    Path(phone): Path<String>,
) -> Response {
    match scenarios::normalize_e164(&phone) {
        Some(number) => Json(sandbox.lock().counters.number_json(&number)).into_response(),
        None => bad_request(format!("not an E.164 phone number: {phone:?}")),
    }
}

/// `POST /_sandbox/reset`: clears state and counters, restores the configured faults.
pub(crate) async fn reset(State(sandbox): State<Sandbox>) -> Json<Value> {
    sandbox.reset();
    sandbox.flush().await;
    Json(json!({"reset": true}))
}

/// `GET /_sandbox/faults`.
pub(crate) async fn get_faults(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(sandbox.lock().faults.to_json())
}

/// `POST /_sandbox/faults` `{"rules": [...], "random": {...}}`: appends rules, replaces the
/// random settings; all or nothing.
pub(crate) async fn add_faults(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let request: FaultsRequest = match parse_json(&body) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    let mut inner = sandbox.lock();
    match inner.faults.apply(request) {
        Ok(()) => Json(inner.faults.to_json()).into_response(),
        Err(message) => bad_request(message),
    }
}

/// `DELETE /_sandbox/faults`: no rules, no random faults.
pub(crate) async fn clear_faults(State(sandbox): State<Sandbox>) -> Json<Value> {
    let mut inner = sandbox.lock();
    inner.faults.clear();
    Json(inner.faults.to_json())
}

fn no_channel(channel_id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no channel {channel_id:?}")})),
    )
        .into_response()
}

/// JSON of `GET /_sandbox/channels/{channel_id}`.
fn channel_json(c: &ChannelRec) -> Value {
    json!({
        "id": c.id,
        "status": c.status(),
        "phone_number": c.e164,
        "client_id": c.client_id,
        "current_key_id": c.current_key.as_ref().map(|k| k.id.clone()),
        "keys_issued": c.keys_issued,
        "permission": c.permission,
    })
}

/// `GET /_sandbox/channels/{channel_id}`.
pub(crate) async fn channel(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
) -> Response {
    channel_response(&sandbox.lock(), &channel_id)
}

fn channel_response(inner: &Inner, channel_id: &str) -> Response {
    match inner.world.channels.get(channel_id) {
        Some(c) => Json(channel_json(c)).into_response(),
        None => no_channel(channel_id),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionRequest {
    granted: bool,
}

/// `POST /_sandbox/channels/{channel_id}/permission` `{"granted": bool}` → the channel JSON of
/// `GET /_sandbox/channels/{channel_id}` (404 for an unknown channel).
pub(crate) async fn set_permission(
    State(sandbox): State<Sandbox>,
    Path(channel_id): Path<String>,
    body: Bytes,
) -> Response {
    let request: PermissionRequest = match parse_json(&body) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    if sandbox
        .set_permission(&channel_id, request.granted)
        .is_err()
    {
        return no_channel(&channel_id);
    }
    sandbox.flush().await;
    channel_response(&sandbox.lock(), &channel_id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplatesRequest {
    count: usize,
}

/// `POST /_sandbox/wabas/{waba_id}/templates` `{"count": n}` → `{"waba_id", "count", "eligible"}`.
pub(crate) async fn set_templates(
    State(sandbox): State<Sandbox>,
    Path(waba_id): Path<String>,
    body: Bytes,
) -> Response {
    let request: TemplatesRequest = match parse_json(&body) {
        Ok(request) => request,
        Err(message) => return bad_request(message),
    };
    let result = sandbox.lock().world.set_templates(&waba_id, request.count);
    sandbox.flush().await;
    match result {
        Ok(eligible) => Json(json!({
            "waba_id": waba_id,
            "count": request.count,
            "eligible": eligible,
        }))
        .into_response(),
        Err(message) => bad_request(message),
    }
}

/// `POST /_sandbox/wabas/{waba_id}/set_up`: 360dialog finished setting up a WABA the signup
/// made (`complete_signup` with `"set_up": false`) → `{"waba_id", "set_up": true}`.
pub(crate) async fn finish_setup(
    State(sandbox): State<Sandbox>,
    Path(waba_id): Path<String>,
) -> Response {
    let result = sandbox.lock().world.finish_setup(&waba_id);
    sandbox.flush().await;
    match result {
        Ok(()) => Json(json!({ "waba_id": waba_id, "set_up": true })).into_response(),
        Err(message) => bad_request(message),
    }
}

/// `POST /_sandbox/wabas/{waba_id}/share`: a WABA the signup made is shared with the
/// partner's app (`complete_signup` with `"shared": false`) → `{"waba_id", "shared": true}`.
pub(crate) async fn share_waba(
    State(sandbox): State<Sandbox>,
    Path(waba_id): Path<String>,
) -> Response {
    let result = sandbox.lock().world.share(&waba_id);
    sandbox.flush().await;
    match result {
        Ok(()) => Json(json!({ "waba_id": waba_id, "shared": true })).into_response(),
        Err(message) => bad_request(message),
    }
}

/// `POST /_sandbox/numbers` `{"phone_number","source_waba_id","destination_waba_id"?,"business_id"?}`.
pub(crate) async fn add_number(State(sandbox): State<Sandbox>, body: Bytes) -> Response {
    let seed: NumberSeed = match parse_json(&body) {
        Ok(seed) => seed,
        Err(message) => return bad_request(message),
    };
    match sandbox.add_number(&seed) {
        Ok(listed) => {
            sandbox.flush().await;
            (StatusCode::CREATED, Json(listed)).into_response()
        }
        Err(message) => bad_request(message),
    }
}

/// `POST /_sandbox/numbers/{e164}/resolve` (with `+`, `%2B` or digits only): the number's
/// scenario is resolved, see [`Sandbox::resolve`].
pub(crate) async fn resolve_number(
    State(sandbox): State<Sandbox>,
    Path(phone): Path<String>,
) -> Response {
    match sandbox.resolve(&phone) {
        Ok(body) => {
            sandbox.flush().await;
            Json(body).into_response()
        }
        Err(message) => bad_request(message),
    }
}

/// Body of `POST /_sandbox/numbers/{e164}/complete_signup` (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CompleteSignupRequest {
    /// Accepted for the record: every partner sees every sandbox channel.
    #[serde(default)]
    #[allow(dead_code)]
    partner_id: Option<String>,
    /// Where the number goes, when the sandbox does not know it from seeding.
    #[serde(default)]
    destination_waba_id: Option<String>,
    /// The new channel's id (what the onboarding redirect gives the partner); made up when
    /// absent. Ignored when the number has a channel on that WABA already.
    #[serde(default)]
    channel_id: Option<String>,
    /// The client's Meta business, owner of a WABA the signup creates; by default the owner
    /// of the number's source WABA, when the sandbox knows it.
    #[serde(default)]
    business_id: Option<String>,
    /// `false`: a WABA the signup creates is not set up yet (no payment method, no
    /// subscribed app) until `POST /_sandbox/wabas/{waba_id}/set_up`. Default `true`.
    #[serde(default = "yes")]
    set_up: bool,
    /// `false`: a WABA the signup creates is not shared with the partner's app yet (Graph
    /// answers its reads 100/33) until `POST /_sandbox/wabas/{waba_id}/share`. Default `true`.
    #[serde(default = "yes")]
    shared: bool,
}

fn yes() -> bool {
    true
}

/// `POST /_sandbox/numbers/{e164}/complete_signup` `{"partner_id"?, "destination_waba_id"?}`
/// (with `+`, `%2B` or digits only; the body may be empty): the client finished Embedded
/// Signup, see [`Sandbox::complete_signup`]. Answers the channel JSON of
/// `GET /_sandbox/channels/{channel_id}`.
pub(crate) async fn complete_signup(
    State(sandbox): State<Sandbox>,
    Path(phone): Path<String>,
    body: Bytes,
) -> Response {
    let request: CompleteSignupRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CompleteSignupRequest::default()
    } else {
        match parse_json(&body) {
            Ok(request) => request,
            Err(message) => return bad_request(message),
        }
    };
    match sandbox.complete_signup(
        &phone,
        request.destination_waba_id.as_deref(),
        request.channel_id.as_deref(),
        request.business_id.as_deref(),
        SignupWaba {
            set_up: request.set_up,
            shared: request.shared,
        },
    ) {
        Ok(channel_id) => {
            sandbox.flush().await;
            channel_response(&sandbox.lock(), &channel_id)
        }
        Err(message) => bad_request(message),
    }
}

/// `GET /_sandbox`: what the control API offers, for people exploring it with curl.
pub(crate) async fn index() -> Json<Value> {
    Json(json!({
        "sandbox": "waba-migrator upstream simulator (Meta Graph API, 360dialog Partner and Messaging APIs)",
        "control": {
            "GET /_sandbox/scenarios": "the failure-scenario numbers (last four digits 00xx) and the error code each leads to",
            "POST /_sandbox/numbers/{e164}/resolve": "a scenario number behaves as a happy-path number from now on (two-step verification turned off, display name approved, permission granted, ...): retry its migration",
    "POST /_sandbox/numbers/{e164}/complete_signup": "{\"destination_waba_id\"?, \"channel_id\"?, \"business_id\"?, \"set_up\"?, \"shared\"?} the client finished 360dialog's Embedded Signup: the number is registered in its destination WABA (or the one named) and a running channel with API-key permission appears there (an embedded_signup migration waiting in awaiting_signup continues); \"set_up\": false leaves a WABA the signup creates without a payment method and a subscribed app until POST /_sandbox/wabas/{waba_id}/set_up",
    "POST /_sandbox/wabas/{waba_id}/set_up": "360dialog finished setting up a WABA the signup made (complete_signup with \"set_up\": false)",
    "POST /_sandbox/wabas/{waba_id}/share": "a WABA the signup made is shared with the partner's app: Graph reads it (complete_signup with \"shared\": false answers 100/33 until then)",
            "POST /_sandbox/channels/{channel_id}/permission": "{\"granted\": true} lets the partner generate the channel's API key (scenario 0020)",
            "GET /_sandbox/channels/{channel_id}": "a 360dialog channel: status, permission, keys issued",
            "POST /_sandbox/numbers": "{\"phone_number\", \"source_waba_id\", \"destination_waba_id\"?, \"business_id\"?} registers a number on a source WABA (the service does this itself)",
            "POST /_sandbox/wabas/{waba_id}/templates": "{\"count\": 1200} gives a WABA many generated templates",
            "GET /_sandbox/counters": "calls per number per endpoint (received, applied)",
            "GET /_sandbox/counters/{e164}": "calls of one number",
            "GET|POST|DELETE /_sandbox/faults": "fault injection rules (server_error, rate_limited, timeout, connection_reset, lost_response; when named: garbled_success, success_false, slow)",
            "POST /_sandbox/reset": "forget every WABA, number, channel and counter",
        },
        "otp_code": super::SANDBOX_OTP_CODE,
    }))
}

/// `GET /_sandbox/scenarios`: the scenario table.
pub(crate) async fn scenarios() -> Json<Value> {
    let rows: Vec<Value> = SCENARIOS
        .iter()
        .map(|(last_four, code, description)| {
            json!({"last_four": last_four, "code": code, "description": description})
        })
        .collect();
    Json(json!({ "scenarios": rows }))
}
