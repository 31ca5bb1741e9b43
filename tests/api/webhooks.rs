//! Webhooks end to end: a consumer on loopback verifies every delivery with the independent
//! `standardwebhooks` crate; a consumer that is down for the first hour (a manual clock skips
//! through the retry schedule) still gets every event, in order, with stable ids.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use standardwebhooks::{Webhook, WebhookError};
use tokio::net::TcpListener;
use waba_migrator::core::WebhookConfig;
use waba_migrator::core::settings::ManualClock;
use waba_migrator::domain::EventType;
use waba_migrator::webhooks::signing::SigningKey;

use crate::helpers::{
    ADMIN_KEY, Options, TestApp, assert_problem, is_transition, retry_after_secs,
};

/// One request as the consumer saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub answered: u16,
}

impl Received {
    fn id(&self) -> &str {
        self.headers["webhook-id"].to_str().unwrap()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook consumer on a loopback port that answers 503 while `down`.
#[derive(Clone)]
pub struct Consumer {
    pub url: String,
    pub down: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Consumer {
    pub async fn start() -> Self {
        let down = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (d, r) = (down.clone(), received.clone());
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (d, r) = (d.clone(), r.clone());
                async move {
                    let status = if d.load(Ordering::SeqCst) {
                        AxStatus::SERVICE_UNAVAILABLE
                    } else {
                        AxStatus::NO_CONTENT
                    };
                    r.lock().unwrap().push(Received {
                        headers,
                        body,
                        answered: status.as_u16(),
                    });
                    status
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            url,
            down,
            received,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests it acknowledged, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.answered < 300)
            .collect()
    }
}

/// The app with a dispatcher the test drives (`run_until_idle`) on a clock it moves.
async fn spawn_with_manual_clock(pool: PgPool, opts: Options) -> (TestApp, ManualClock) {
    let clock = ManualClock::default();
    let app = TestApp::spawn_with(
        pool,
        Options {
            background_dispatcher: false,
            clock: Arc::new(clock.clone()),
            ..opts
        },
    )
    .await;
    (app, clock)
}

/// Cancels a migration: one transition, one webhook.
async fn cancel(app: &TestApp, id: &str) {
    let res = app
        .post(&format!("/v1/migrations/{id}/cancel"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    app.wait_for(id, "cancelled").await;
}

async fn create_with_callback(app: &TestApp, phone: &str, url: &str) -> String {
    let mut body = TestApp::create_body(phone);
    body["callback_url"] = json!(url);
    app.create_with(body).await
}

pub async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    app.all_pages(&format!("/v1/migrations/{id}/webhook_deliveries"))
        .await
}

/// The transitions in the audit trail, as (sequence, to_state).
async fn transitions(app: &TestApp, id: &str) -> Vec<(i64, String)> {
    app.events(id)
        .await
        .into_iter()
        .filter(|e| e["to_state"].is_string() && e["from_state"] != e["to_state"])
        .filter(|e| e["from_state"].is_string())
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["to_state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn every_delivery_of_a_migration_verifies_with_standard_webhooks(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let consumer = Consumer::start().await;
    let id = create_with_callback(&app, "+14155550501", &consumer.url).await;
    app.complete(&id).await;

    let expected = transitions(&app, &id).await;
    assert!(expected.len() >= 9, "{expected:?}");
    let last_seq = expected.last().unwrap().0;
    let mut got = Vec::new();
    for _ in 0..200 {
        got = consumer.accepted();
        if got.last().map(|r| r.json()["sequence"].as_i64().unwrap()) == Some(last_seq) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One delivery per transition, in order, each verified by an independent implementation.
    let verifier = Webhook::new(&app.webhook_secret).unwrap();
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (r, (seq, state)) in got.iter().zip(&expected) {
        verifier
            .verify(&r.body, &r.headers)
            .unwrap_or_else(|e| panic!("delivery {} rejected: {e:?}", r.id()));
        let body = r.json();
        assert_eq!(body["sequence"].as_i64(), Some(*seq));
        assert_eq!(body["data"]["state"], json!(state));
        assert_eq!(body["data"]["id"], json!(id));
        let expected_type = match state.as_str() {
            "awaiting_otp" => "migration.awaiting_otp",
            "completed" => "migration.completed",
            _ => "migration.state_changed",
        };
        assert_eq!(body["type"], json!(expected_type));
        assert_eq!(r.headers["content-type"], "application/json");
    }
    // The body is rendered before the transition's statement runs, from the row and the step's
    // changes: the last one must show the migration exactly as the API shows it afterwards.
    // (Except the client page link: a capability, never in a webhook.)
    let mut now = app.migration(&id).await;
    assert!(now["client_page"]["url"].is_string());
    now.as_object_mut().unwrap().remove("client_page");
    assert_eq!(got.last().unwrap().json()["data"], now);
    assert!(
        !got.iter()
            .any(|r| r.json()["data"].get("client_page").is_some())
    );
    assert_eq!(got.last().unwrap().json()["timestamp"], now["updated_at"]);
    let mut ids: Vec<&str> = got.iter().map(Received::id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "webhook-ids are unique per event");

    // A tampered body fails verification.
    let r = &got[0];
    let mut tampered = r.json();
    tampered["data"]["state"] = json!("completed");
    let err = verifier
        .verify(tampered.to_string().as_bytes(), &r.headers)
        .unwrap_err();
    assert!(matches!(err, WebhookError::InvalidSignature), "{err:?}");

    // A message correctly signed by our signer but with an old timestamp (a replay) is refused.
    let key = SigningKey::from_secret(&SecretString::from(app.webhook_secret.clone())).unwrap();
    let old = chrono::Utc::now().timestamp() - 600;
    let mut headers = r.headers.clone();
    headers.insert("webhook-timestamp", old.to_string().parse().unwrap());
    headers.insert(
        "webhook-signature",
        key.sign(r.id(), old, std::str::from_utf8(&r.body).unwrap())
            .parse()
            .unwrap(),
    );
    let err = verifier.verify(&r.body, &headers).unwrap_err();
    assert!(matches!(err, WebhookError::TimestampTooOldError), "{err:?}");

    // The delivery log shows one successful attempt per event with status and latency.
    let log = deliveries(&app, &id).await;
    assert_eq!(log.len(), expected.len());
    for d in &log {
        assert_eq!(d["status"], "succeeded", "{d}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1);
        let a = &d["attempts"][0];
        assert_eq!(a["response_status"], 204);
        assert_eq!(a["outcome"], "succeeded");
        assert!(a["latency_ms"].is_i64());
        assert!(a["next_attempt_at"].is_null());
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_consumer_down_for_an_hour_gets_every_event_in_order(pool: PgPool) {
    let (app, clock) = spawn_with_manual_clock(pool, Options::default()).await;
    let consumer = Consumer::start().await;
    consumer.down.store(true, Ordering::SeqCst);
    let id = create_with_callback(&app, "+14155550502", &consumer.url).await;
    app.complete(&id).await;
    let expected = transitions(&app, &id).await;

    // Three hours in one-minute steps; the consumer comes back after the first hour.
    let step = Duration::from_secs(60);
    for minute in 0..=180 {
        if minute == 60 {
            // The events behind the first wait as long as it does, off the front of the due
            // index that every claim walks.
            let ahead_of_the_first: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_deliveries d
                  WHERE d.migration_id = $1::uuid AND d.status = 'pending'
                    AND d.next_attempt_at < (
                        SELECT h.next_attempt_at FROM webhook_deliveries h
                         WHERE h.migration_id = $1::uuid AND h.status = 'pending'
                         ORDER BY h.sequence LIMIT 1)",
            )
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
            assert_eq!(ahead_of_the_first, 0);
            consumer.down.store(false, Ordering::SeqCst);
        }
        app.dispatcher.run_until_idle().await.unwrap();
        // The 5-second retry falls inside the first minute.
        if minute == 0 {
            clock.advance(Duration::from_secs(5));
            app.dispatcher.run_until_idle().await.unwrap();
        }
        clock.advance(step);
    }

    let accepted = consumer.accepted();
    let sequences: Vec<i64> = accepted
        .iter()
        .map(|r| r.json()["sequence"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = expected.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, want, "every event once, in order");
    let verifier = Webhook::new(&app.webhook_secret).unwrap();
    for r in &accepted {
        verifier.verify(&r.body, &r.headers).unwrap();
    }

    // While down, only the first event was tried (later ones wait behind it), always with the
    // same id and body.
    let refused: Vec<Received> = consumer
        .received()
        .into_iter()
        .filter(|r| r.answered == 503)
        .collect();
    assert_eq!(refused.len(), 4, "attempts at 0 s, 5 s, ~5 min and ~35 min");
    for r in &refused {
        assert_eq!(r.id(), accepted[0].id());
        assert_eq!(r.body, accepted[0].body);
    }

    // The log: the first delivery shows 4 failed attempts with their next times, then success.
    let log = deliveries(&app, &id).await;
    assert!(log.iter().all(|d| d["status"] == "succeeded"));
    let first = &log[0];
    assert_eq!(first["id"].as_str(), Some(accepted[0].id()));
    let attempts = first["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 5, "{first:#}");
    for a in &attempts[..4] {
        assert_eq!(a["response_status"], 503);
        assert_eq!(a["outcome"], "failed");
        assert!(a["next_attempt_at"].is_string());
    }
    assert_eq!(attempts[4]["outcome"], "succeeded");
    let t = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let gaps: Vec<i64> = attempts
        .windows(2)
        .map(|w| (t(&w[1]["started_at"]) - t(&w[0]["started_at"])).num_seconds())
        .collect();
    // 5 s, then 5 min, 30 min and 2 h (each rounded up to the next one-minute tick).
    assert!(gaps[0] >= 5 && gaps[0] < 60, "{gaps:?}");
    assert!((300..=360).contains(&gaps[1]), "{gaps:?}");
    assert!((1800..=1860).contains(&gaps[2]), "{gaps:?}");
    assert!((7200..=7260).contains(&gaps[3]), "{gaps:?}");
    for d in &log[1..] {
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d:#}");
    }
}

/// The events behind a failing delivery wait for its retry; when it is redelivered (and
/// succeeds) before that time, they are due at once, not at the retry time they waited for.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_events_behind_a_redelivered_webhook_follow_it_at_once(pool: PgPool) {
    let (app, _clock) = spawn_with_manual_clock(pool, Options::default()).await;
    let consumer = Consumer::start().await;
    consumer.down.store(true, Ordering::SeqCst);
    let id = create_with_callback(&app, "+14155550506", &consumer.url).await;
    app.complete(&id).await;
    let expected = transitions(&app, &id).await;
    app.dispatcher.run_until_idle().await.unwrap();
    assert!(consumer.accepted().is_empty());

    // Back up; the first event is sent again by hand, before its retry time (the clock
    // stands still).
    consumer.down.store(false, Ordering::SeqCst);
    let first = deliveries(&app, &id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.redeliver(&first).await;
    app.dispatcher.run_until_idle().await.unwrap();
    let sequences: Vec<i64> = consumer
        .accepted()
        .iter()
        .map(|r| r.json()["sequence"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = expected.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, want, "every event, in order, without waiting");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn attempts_stop_after_the_schedule_and_redelivery_starts_over(pool: PgPool) {
    let (app, clock) = spawn_with_manual_clock(
        pool,
        Options {
            // The migration stays queued, so cancelling it is its only transition.
            background_worker: false,
            webhooks: WebhookConfig {
                allow_private: true,
                schedule: vec![Duration::from_secs(10), Duration::from_secs(20)],
                ..WebhookConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    let consumer = Consumer::start().await;
    consumer.down.store(true, Ordering::SeqCst);
    let id = create_with_callback(&app, "+14155550503", &consumer.url).await;
    cancel(&app, &id).await;
    for _ in 0..5 {
        app.dispatcher.run_until_idle().await.unwrap();
        clock.advance(Duration::from_secs(30));
    }
    let log = deliveries(&app, &id).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    let first = &log[0];
    assert_eq!(first["status"], "failed", "{first:#}");
    assert_eq!(first["attempts"].as_array().unwrap().len(), 3);
    assert!(first["attempts"][2]["next_attempt_at"].is_null());
    assert!(first["next_attempt_at"].is_null());

    // Back up; the partner asks for it again: same id, delivered.
    consumer.down.store(false, Ordering::SeqCst);
    let delivery_id = first["id"].as_str().unwrap().to_owned();
    let res = app.redeliver(&delivery_id).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let queued: Value = res.json().await.unwrap();
    assert_eq!(queued["status"], "pending");
    // The answer shows the attempts so far, as the log does.
    assert_eq!(queued["attempts"], first["attempts"], "{queued:#}");
    for _ in 0..3 {
        app.dispatcher.run_until_idle().await.unwrap();
        clock.advance(Duration::from_secs(30));
    }
    let accepted = consumer.accepted();
    assert_eq!(accepted[0].id(), delivery_id);
    let log = deliveries(&app, &id).await;
    assert!(log.iter().all(|d| d["status"] == "succeeded"), "{log:#?}");
    assert_eq!(log[0]["attempt_count"], 4);

    // Another tenant cannot see or redeliver it.
    let (_, other_key) = app.other_partner().await;
    let res = app
        .post_as(
            &other_key,
            &format!("/v1/webhook_deliveries/{delivery_id}/redeliver"),
            json!({}),
        )
        .await;
    assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    let res = app
        .get_as(
            &other_key,
            &format!("/v1/migrations/{id}/webhook_deliveries"),
        )
        .await;
    assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn after_a_rotation_both_secrets_sign_until_the_overlap_ends(pool: PgPool) {
    let (app, clock) = spawn_with_manual_clock(pool, Options::default()).await;
    let consumer = Consumer::start().await;
    let old_secret = app.webhook_secret.clone();
    let res = app
        .post_as(
            ADMIN_KEY,
            &format!("/v1/partners/{}/webhook_secret/rotate", app.partner_id),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let rotated: Value = res.json().await.unwrap();
    let new_secret = rotated["webhook_secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    assert!(rotated["previous_secret_expires_at"].is_string());

    let id = create_with_callback(&app, "+14155550504", &consumer.url).await;
    cancel(&app, &id).await;
    app.dispatcher.run_until_idle().await.unwrap();
    let during = consumer.accepted();
    assert!(!during.is_empty());
    for r in &during {
        let sigs = r.headers["webhook-signature"].to_str().unwrap();
        assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
        Webhook::new(&old_secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .unwrap();
        Webhook::new(&new_secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .unwrap();
    }

    // A day later the old secret no longer signs.
    clock.advance(Duration::from_secs(24 * 3600 + 60));
    let delivery_id = deliveries(&app, &id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.redeliver(&delivery_id).await;
    app.dispatcher.run_until_idle().await.unwrap();
    let after = consumer.accepted().last().unwrap().clone();
    assert_eq!(after.id(), delivery_id);
    assert_eq!(
        after.headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        1
    );
    Webhook::new(&new_secret)
        .unwrap()
        .verify(&after.body, &after.headers)
        .unwrap();
    assert!(
        Webhook::new(&old_secret)
            .unwrap()
            .verify(&after.body, &after.headers)
            .is_err()
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_second_rotation_inside_the_overlap_keeps_the_first_secret_signing(pool: PgPool) {
    let (app, clock) = spawn_with_manual_clock(pool, Options::default()).await;
    let consumer = Consumer::start().await;
    let rotate = || async {
        let res = app
            .post_as(
                ADMIN_KEY,
                &format!("/v1/partners/{}/webhook_secret/rotate", app.partner_id),
                json!({}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        body["webhook_secret"].as_str().unwrap().to_owned()
    };
    // The consumer verifies with the original secret; the first rotation's answer was lost
    // and the call retried an hour later.
    let original = app.webhook_secret.clone();
    let lost = rotate().await;
    clock.advance(Duration::from_secs(3600));
    let latest = rotate().await;

    let id = create_with_callback(&app, "+14155550505", &consumer.url).await;
    cancel(&app, &id).await;
    app.dispatcher.run_until_idle().await.unwrap();
    let during = consumer.accepted();
    assert!(!during.is_empty());
    for r in &during {
        let sigs = r.headers["webhook-signature"].to_str().unwrap();
        assert_eq!(sigs.split(' ').count(), 3, "{sigs}");
        for secret in [&original, &lost, &latest] {
            Webhook::new(secret)
                .unwrap()
                .verify(&r.body, &r.headers)
                .unwrap();
        }
    }

    // The original's overlap ends a day after the first rotation, the lost one's a day after
    // the second.
    clock.advance(Duration::from_secs(23 * 3600 + 60));
    let delivery_id = deliveries(&app, &id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.redeliver(&delivery_id).await;
    app.dispatcher.run_until_idle().await.unwrap();
    let after = consumer.accepted().last().unwrap().clone();
    assert_eq!(after.id(), delivery_id);
    let verifies = |secret: &str| {
        Webhook::new(secret)
            .unwrap()
            .verify(&after.body, &after.headers)
            .is_ok()
    };
    assert!(!verifies(&original));
    assert!(verifies(&lost));
    assert!(verifies(&latest));
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn callbacks_to_private_addresses_are_refused(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            background_dispatcher: false,
            webhooks: WebhookConfig {
                allow_private: false,
                ..WebhookConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    let consumer = Consumer::start().await;
    for url in [
        consumer.url.clone(),
        "https://127.0.0.1/hook".into(),
        "https://169.254.169.254/latest/meta-data".into(),
        "https://[::1]/hook".into(),
        "https://user:pass@hooks.example.com/".into(),
    ] {
        let mut body = TestApp::create_body("+14155550505");
        body["callback_url"] = json!(url);
        let res = app.post("/v1/migrations", body).await;
        let problem =
            assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(problem["errors"][0]["pointer"], "/callback_url", "{url}");
    }
    assert_eq!(app.count_migrations().await, 0);

    // A name is accepted, but one that resolves to loopback is refused at delivery time.
    let port = consumer
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let res = app
        .http
        .patch(app.url(&format!("/v1/partners/{}", app.partner_id)))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "callback_url": format!("https://localhost:{port}/hook") }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let id = app.create("+14155550506").await;
    cancel(&app, &id).await;
    app.dispatcher.run_until_idle().await.unwrap();
    assert!(consumer.received().is_empty(), "nothing reached loopback");
    let log = deliveries(&app, &id).await;
    let attempt = &log[0]["attempts"][0];
    assert_eq!(attempt["outcome"], "failed");
    assert!(attempt["response_status"].is_null());
    let error = attempt["error"].as_str().unwrap();
    assert!(error.contains("no public address"), "{error}");
    // The partner reads this: the kind of address, not the address its name resolved to.
    assert!(
        !error.contains("127.0.0.1") && !error.contains("::1"),
        "{error}"
    );
    assert_eq!(log[0]["status"], "pending", "retried later, on schedule");
}

/// Issue 15: 6to4 (`2002:7f00:1::`) and local-use NAT64 (`64:ff9b:1::7f00:1`) spell 127.0.0.1.
/// Teredo (`2001::/32`) hides its client's address inverted in the last 32 bits.
const LOOPBACK_IN_DISGUISE: [&str; 3] = [
    "https://[2002:7f00:1::]/",
    "https://[64:ff9b:1::7f00:1]/",
    "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",
];

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn transition_addresses_of_loopback_are_refused_and_never_dialled(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            background_dispatcher: false,
            webhooks: WebhookConfig {
                allow_private: false,
                ..WebhookConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    let partners = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM partners")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let partners_before = partners().await;
    for url in LOOPBACK_IN_DISGUISE {
        // A partner's default callback, at creation and by PATCH.
        let res = app
            .post_as(
                ADMIN_KEY,
                "/v1/partners",
                json!({ "name": "Probe", "d360_partner_id": "probePA", "d360_api_key": "k",
                        "callback_url": url }),
            )
            .await;
        let problem =
            assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(problem["errors"][0]["pointer"], "/callback_url", "{url}");
        assert!(
            problem["errors"][0]["message"]
                .as_str()
                .is_some_and(|d| d.contains("carrying 127.0.0.1")),
            "{url}: {problem:#}"
        );
        let res = app
            .http
            .patch(app.url(&format!("/v1/partners/{}", app.partner_id)))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "callback_url": url }))
            .send()
            .await
            .unwrap();
        let problem =
            assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(problem["errors"][0]["pointer"], "/callback_url", "{url}");
        // A migration's own callback.
        let mut body = TestApp::create_body("+14155550509");
        body["callback_url"] = json!(url);
        let res = app.post("/v1/migrations", body).await;
        let problem =
            assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(problem["errors"][0]["pointer"], "/callback_url", "{url}");
    }
    assert_eq!(app.count_migrations().await, 0);
    assert_eq!(partners().await, partners_before);
    let partner = app
        .get_as(ADMIN_KEY, &format!("/v1/partners/{}", app.partner_id))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert!(partner["callback_url"].is_null(), "{partner:#}");

    // A URL stored before this rule (written straight into the table) is refused again at
    // delivery, before any connection: the attempt records the refusal, not a connect error.
    sqlx::query("UPDATE partners SET callback_url = $1 WHERE id = $2::uuid")
        .bind(LOOPBACK_IN_DISGUISE[0])
        .bind(&app.partner_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let id = app.create("+14155550510").await;
    cancel(&app, &id).await;
    app.dispatcher.run_until_idle().await.unwrap();
    let log = deliveries(&app, &id).await;
    assert_eq!(log[0]["url"], LOOPBACK_IN_DISGUISE[0]);
    let attempt = &log[0]["attempts"][0];
    assert_eq!(attempt["outcome"], "failed");
    assert!(attempt["response_status"].is_null());
    let error = attempt["error"].as_str().unwrap();
    assert!(
        error.starts_with("callback URL refused: points to a non-public address: 2002:7f00:1:: is 6to4 carrying 127.0.0.1"),
        "{error}"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn partner_default_callback_is_used_and_can_be_cleared(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let consumer = Consumer::start().await;
    let patch = |body: Value| {
        app.http
            .patch(app.url(&format!("/v1/partners/{}", app.partner_id)))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
    };
    let res = patch(json!({ "callback_url": consumer.url }))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap()["callback_url"],
        json!(consumer.url)
    );

    let id = app.create("+14155550507").await;
    cancel(&app, &id).await;
    let mut log = Vec::new();
    for _ in 0..100 {
        log = deliveries(&app, &id).await;
        if log.last().is_some_and(|d| d["status"] == "succeeded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log.last().unwrap()["event_type"], "migration.cancelled");
    assert_eq!(log[0]["url"], json!(consumer.url));

    // Cleared: no deliveries for new migrations.
    let res = patch(json!({ "callback_url": null })).await.unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["callback_url"],
        Value::Null
    );
    let id = app.create("+14155550508").await;
    cancel(&app, &id).await;
    assert!(deliveries(&app, &id).await.is_empty());

    // A partner key may set its own default, not its name, nor another partner's.
    let as_partner = |id: &str, body: Value| {
        app.http
            .patch(app.url(&format!("/v1/partners/{id}")))
            .bearer_auth(&app.partner_key)
            .json(&body)
            .send()
    };
    let own = app.partner_id.clone();
    let res = as_partner(&own, json!({ "callback_url": consumer.url }))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = as_partner(&own, json!({ "name": "Mine now" }))
        .await
        .unwrap();
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
    let (other, _) = app.other_partner().await;
    let res = as_partner(&other, json!({ "callback_url": null }))
        .await
        .unwrap();
    assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
}

/// A new default callback URL applies to the webhooks not delivered yet that go to the
/// default, at once (not on the old consumer's retry schedule, hours out after a few failures),
/// in order; a redelivery goes where webhooks go now; with the default removed, what is left
/// ends `failed` and a redelivery is 409 `no_callback_url`.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn undelivered_webhooks_follow_the_partners_new_default_url(pool: PgPool) {
    let (app, clock) = spawn_with_manual_clock(pool, Options::default()).await;
    let (old, new) = (Consumer::start().await, Consumer::start().await);
    old.down.store(true, Ordering::SeqCst);
    let patch = |body: Value| {
        app.http
            .patch(app.url(&format!("/v1/partners/{}", app.partner_id)))
            .bearer_auth(&app.partner_key)
            .json(&body)
            .send()
    };
    assert_eq!(
        patch(json!({ "callback_url": old.url }))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let id = app.create("+14155550521").await;
    app.wait_for(&id, "awaiting_otp").await;
    // The old consumer fails at 0 s, 5 s, 5 min and 35 min: the next try is 2 h out.
    for step in [0, 5, 300, 1800] {
        clock.advance(Duration::from_secs(step));
        app.dispatcher.run_until_idle().await.unwrap();
    }
    assert_eq!(old.received().len(), 4, "tried the old consumer");
    let expected = transitions(&app, &id).await;

    assert_eq!(
        patch(json!({ "callback_url": new.url }))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // At once: no clock moved.
    app.dispatcher.run_until_idle().await.unwrap();
    let got: Vec<i64> = new
        .accepted()
        .iter()
        .map(|r| r.json()["sequence"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = expected.iter().map(|(s, _)| *s).collect();
    assert_eq!(got, want, "every event, in order, at the new URL");
    assert!(old.accepted().is_empty());
    let log = deliveries(&app, &id).await;
    assert!(log.iter().all(|d| d["url"] == json!(new.url)), "{log:#?}");

    // Redelivered: to where webhooks go now.
    let first = log[0]["id"].as_str().unwrap().to_owned();
    let res = app.redeliver(&first).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    app.dispatcher.run_until_idle().await.unwrap();
    assert_eq!(new.accepted().len(), want.len() + 1);

    // The default removed: pending webhooks end failed (all of a migration's, in one go), and
    // a redelivery has nowhere to go. A PATCH that sends the same URL again changes nothing.
    new.down.store(true, Ordering::SeqCst);
    cancel(&app, &id).await;
    let other = app.create("+14155550522").await;
    app.wait_for(&other, "awaiting_otp").await;
    app.dispatcher.run_until_idle().await.unwrap();
    let due = || async {
        sqlx::query_as::<_, (Option<chrono::DateTime<chrono::Utc>>, Option<i32>)>(
            "SELECT min(next_attempt_at), max(schedule_step) FROM webhook_deliveries
              WHERE status = 'pending'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let before = due().await;
    assert_eq!(before.1, Some(1), "the first one failed once");
    assert_eq!(
        patch(json!({ "callback_url": new.url }))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(due().await, before, "the same URL: the schedule stands");
    let tried = new.received().len();
    assert_eq!(
        patch(json!({ "callback_url": null }))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    app.dispatcher.run_until_idle().await.unwrap();
    assert_eq!(
        new.received().len(),
        tried,
        "nothing sent to the removed URL"
    );
    let log = deliveries(&app, &id).await;
    let last = log.last().unwrap();
    assert_eq!(last["event_type"], "migration.cancelled", "{last:#}");
    assert_eq!(last["status"], "failed", "{last:#}");
    let others = deliveries(&app, &other).await;
    assert!(others.len() >= 2, "{others:#?}");
    assert!(
        others.iter().all(|d| d["status"] == "failed"),
        "{others:#?}"
    );
    let res = app.redeliver(&first).await;
    assert_problem(res, StatusCode::CONFLICT, "no_callback_url").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn requests_over_the_per_key_rate_get_429_with_retry_after(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            rate_limit: Some((1, 5)),
            ..Options::default()
        },
    )
    .await;
    // A burst of 5 passes; then, at one token a second, a refusal comes at once.
    let mut oks = 0;
    let res = loop {
        let res = app.get("/v1/migrations").await;
        if res.status() != StatusCode::OK {
            break res;
        }
        oks += 1;
        assert!(oks < 20, "never limited");
    };
    assert!(oks >= 5, "only {oks} requests before the limit");
    let retry_after = retry_after_secs(&res);
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Each key has its own budget; a bad key is 401, not counted.
    assert_eq!(
        app.get_as(ADMIN_KEY, "/v1/partners").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_as("wm_nope_nope", "/v1/migrations").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// The worker reads the partner's default URL with its claim and renders no webhook body when
/// there is no URL. A default URL set while the step runs must still get that step's event:
/// the write notices and retries with a body.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_default_url_set_while_a_step_runs_still_gets_its_event(pool: PgPool) {
    use waba_migrator::db::events::NewEvent;
    use waba_migrator::db::migrations as store;
    use waba_migrator::domain::MigrationState;

    let app = TestApp::spawn_with(pool, Options::manual()).await;
    let id = app.create("+14155550509").await;
    let mut claimed = store::claim(&app.pool, "test", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let row = claimed.pop().unwrap();
    assert!(row.partner_url_known && row.partner_callback_url.is_none());

    // Meanwhile an operator sets the partner's default URL.
    let res = app
        .http
        .patch(app.url(&format!("/v1/partners/{}", app.partner_id)))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "callback_url": "https://hooks.example.com/waba" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let transition = |row: &store::MigrationRow, to: MigrationState| {
        let (row, token) = (row.clone(), row.lease_token);
        let pool = app.pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            waba_migrator::core::transition::apply(
                &mut conn,
                &row,
                &store::Guard {
                    lease_token: token,
                    ..Default::default()
                },
                &store::Patch {
                    state: Some(to),
                    ..Default::default()
                },
                store::Lease::Keep,
                Some(NewEvent::transition(row.state.clone(), to, json!({}))),
            )
            .await
            .unwrap()
        }
    };
    let next = transition(&row, MigrationState::Prechecking)
        .await
        .expect("the lease is still ours");
    let log = deliveries(&app, &id).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["url"], "https://hooks.example.com/waba");
    assert_eq!(log[0]["sequence"], json!(next.version));
    let payload: (String,) =
        sqlx::query_as("SELECT payload FROM webhook_deliveries WHERE migration_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let body: Value = serde_json::from_str(&payload.0).unwrap();
    let mut shown = app.migration(&id).await;
    shown.as_object_mut().unwrap().remove("client_page");
    assert_eq!(body["data"], shown);

    // A stale copy of the row (an older version) is read again, not written blindly: the
    // event gets the next sequence number and the body shows the row as it really is.
    let after = transition(&row, MigrationState::Initiating)
        .await
        .expect("the lease is still ours");
    assert_eq!(after.version, next.version + 1);
    assert_eq!(after.state, "initiating");
    let events = app.events(&id).await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(
        events[2]["from_state"], "prechecking",
        "the state it really left"
    );
    assert_eq!(deliveries(&app, &id).await.len(), 2);

    // And a lost lease is still a failed guard, not retried into success.
    let stolen = store::MigrationRow {
        lease_token: Some(uuid::Uuid::new_v4()),
        ..after.clone()
    };
    assert!(
        transition(&stolen, MigrationState::RequestingOtp)
            .await
            .is_none()
    );
}

/// One name per change: every transition's audit event has the `type` (and `seq`) of the
/// webhook the consumer received for it, for a completed, a cancelled and a failed migration;
/// and every type in the events table is one the API declares (`EventType`).
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn audit_event_types_equal_the_webhook_types_of_the_same_changes(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let consumer = Consumer::start().await;
    let completed = create_with_callback(&app, "+14155550751", &consumer.url).await;
    app.complete(&completed).await;
    app.stored_key(&completed).await;
    let cancelled = create_with_callback(&app, "+14155550752", &consumer.url).await;
    app.wait_for(&cancelled, "awaiting_otp").await;
    cancel(&app, &cancelled).await;
    // …0001: two-step verification is on, the migration fails.
    let failed = create_with_callback(&app, "+14155550001", &consumer.url).await;
    app.wait_for(&failed, "failed").await;

    for (id, last) in [
        (&completed, "migration.completed"),
        (&cancelled, "migration.cancelled"),
        (&failed, "migration.failed"),
    ] {
        let events: Vec<(i64, String)> = app
            .events(id)
            .await
            .iter()
            .filter(|e| is_transition(e))
            .map(|e| {
                (
                    e["seq"].as_i64().unwrap(),
                    e["type"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(events.last().unwrap().1, last, "{events:?}");
        let mut received = Vec::new();
        for _ in 0..200 {
            received = consumer
                .accepted()
                .iter()
                .map(Received::json)
                .filter(|b| b["data"]["id"] == json!(id))
                .map(|b| {
                    (
                        b["sequence"].as_i64().unwrap(),
                        b["type"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            if received.len() >= events.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(events, received, "events vs webhooks of {last}");
        // The delivery log says the same.
        let logged: Vec<(i64, String)> = deliveries(&app, id)
            .await
            .iter()
            .map(|d| {
                (
                    d["sequence"].as_i64().unwrap(),
                    d["event_type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(events, logged);
    }
    let completed_types: Vec<String> = app
        .events(&completed)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for t in [
        "migration.created",
        "migration.state_changed",
        "migration.awaiting_otp",
        "migration.api_key_generated",
        "migration.api_key_retrieved",
    ] {
        assert!(
            completed_types.iter().any(|c| c == t),
            "{t}: {completed_types:?}"
        );
    }

    // Nothing writes a type the API does not declare.
    let written: Vec<String> = sqlx::query_scalar("SELECT DISTINCT type FROM migration_events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for t in &written {
        assert!(t.parse::<EventType>().is_ok(), "undeclared event type {t}");
    }
}

/// An attempt in flight when the partner's default URL changes: the PATCH takes its lease, so
/// the webhook goes to the new URL at once, the old attempt's answer is not recorded over it,
/// and the dropped attempt is not counted. When the URL is only removed, the attempt in flight
/// keeps its lease: it may still succeed, and its answer is recorded.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_attempt_in_flight_loses_its_lease_to_a_new_default_url(pool: PgPool) {
    use waba_migrator::db::webhooks as store;
    let app = TestApp::spawn_with(pool, Options::manual()).await;
    let (old, new) = (Consumer::start().await, Consumer::start().await);
    let patch = |url: Option<&str>| {
        app.http
            .patch(app.url(&format!("/v1/partners/{}", app.partner_id)))
            .bearer_auth(&app.partner_key)
            .json(&json!({ "callback_url": url }))
            .send()
    };
    assert_eq!(
        patch(Some(&old.url)).await.unwrap().status(),
        StatusCode::OK
    );
    let id = app.create("+14155550523").await;
    // Its one webhook: `migration.cancelled` (creating a migration sends none).
    cancel(&app, &id).await;
    let claim = || async {
        let mut rows = store::claim(&app.pool, chrono::Utc::now(), Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{rows:#?}");
        rows.pop().unwrap()
    };
    let row = || async {
        sqlx::query_as::<_, (Option<uuid::Uuid>, i32, bool)>(
            "SELECT lease_token, attempts, next_attempt_at <= now() FROM webhook_deliveries
              WHERE migration_id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let succeeded = chrono::Utc::now();
    let answer = store::AttemptResult {
        started_at: succeeded,
        status_code: Some(200),
        latency_ms: 5,
        succeeded: true,
        error: None,
        next_attempt_at: None,
    };

    // In flight to the old URL; the default changes meanwhile.
    let first = claim().await;
    assert_eq!(first.url, old.url);
    assert_eq!(first.attempts, 1);
    assert_eq!(
        patch(Some(&new.url)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        row().await,
        (None, 0, true),
        "lease taken, attempt not counted"
    );
    let mut conn = app.pool.acquire().await.unwrap();
    let recorded = store::record_attempt(&mut conn, &first, first.lease_token.unwrap(), &answer)
        .await
        .unwrap();
    assert!(!recorded, "the old attempt's answer was recorded");

    // The next claim sends it to the new URL; removing the URL leaves that attempt its lease.
    let second = claim().await;
    assert_eq!(
        (second.url.as_str(), second.attempts),
        (new.url.as_str(), 1)
    );
    assert_eq!(patch(None).await.unwrap().status(), StatusCode::OK);
    assert_eq!(row().await, (second.lease_token, 1, true));
    let recorded = store::record_attempt(&mut conn, &second, second.lease_token.unwrap(), &answer)
        .await
        .unwrap();
    assert!(recorded, "the attempt to the removed URL lost its answer");
    let log = deliveries(&app, &id).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0]["status"], "succeeded", "{log:#?}");
    assert_eq!(
        log[0]["attempts"].as_array().map(Vec::len),
        Some(1),
        "{log:#?}"
    );
}
