//! `waiting_for`: while a migration waits on someone, the object (and its webhooks) say on whom,
//! for what, since when and until when; at the deadline it fails with that code.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Options, TestApp};
use crate::webhooks::Consumer;

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap()
}

async fn create_with_callback(app: &TestApp, phone: &str, url: &str) -> String {
    let mut body = TestApp::create_body(phone);
    body["callback_url"] = json!(url);
    app.create_with(body).await
}

/// The bodies the consumer acknowledged for migration `id`, in order.
async fn webhooks_of(
    consumer: &Consumer,
    id: &str,
    until: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<Value> = consumer
            .accepted()
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
            .filter(|b| b["data"]["id"] == json!(id))
            .collect();
        if until(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks so far: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn waiting_code(app: &TestApp, id: &str, code: &str) -> Value {
    app.wait_until(id, |m| m["waiting_for"]["code"] == code)
        .await
}

/// (a) Scenario 0020 (a direct-payment client that has not granted API-key permission), with a
/// channel that runs only after 2.5 s: the migration parks in `awaiting_channel` and says
/// first that the channel is not running, then that the client must grant the permission; each
/// change of reason is an audit event and a webhook carrying the new `waiting_for`.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_parked_channel_wait_says_on_whom_and_until_when(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.channel_timeout = Duration::from_secs(120);
    opts.sandbox.channel_running_after = Duration::from_millis(2500);
    let app = TestApp::spawn_with(pool, opts).await;
    let consumer = Consumer::start().await;
    let id = create_with_callback(&app, "+14155550020", &consumer.url).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;

    // Fails on main (no `waiting_for`): the wait below times out.
    let m = waiting_code(&app, &id, "api_key_permission_missing").await;
    assert_eq!(m["state"], "awaiting_channel");
    assert_eq!(m["error"], Value::Null);
    let w = &m["waiting_for"];
    assert_eq!(w["actor"], "client", "{w:#}");
    assert!(w["remediation"].as_str().unwrap().contains("permission"));
    assert!(!w["message"].as_str().unwrap().is_empty());
    // The deadline is CHANNEL_TIMEOUT_SECONDS after the wait began.
    assert_eq!(
        at(&w["deadline"]) - at(&w["since"]),
        chrono::Duration::seconds(120)
    );
    assert!(at(&w["since"]) <= Utc::now() && at(&w["deadline"]) > Utc::now());
    // The object has it right after `error`.
    let raw = app
        .get(&format!("/v1/migrations/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        raw.contains(r#""error":null,"waiting_for":{"code":"api_key_permission_missing","#),
        "{raw}"
    );

    // The audit trail records each reason, oldest first.
    let reasons = app.waiting_reasons(&id).await;
    assert_eq!(
        reasons,
        [
            json!("channel_not_running"),
            json!("api_key_permission_missing")
        ]
    );

    // The webhooks carry it: the transition into `awaiting_channel` already says what it
    // waits for, and every change of reason is sent with the same `since` and `deadline`.
    let hooks = webhooks_of(&consumer, &id, |got| {
        got.iter()
            .any(|b| b["data"]["waiting_for"]["code"] == "api_key_permission_missing")
    })
    .await;
    let entered = hooks
        .iter()
        .find(|b| b["data"]["state"] == "awaiting_channel")
        .unwrap();
    assert_eq!(entered["type"], "migration.state_changed");
    assert_eq!(entered["data"]["waiting_for"]["code"], "channel_timeout");
    assert_eq!(entered["data"]["waiting_for"]["deadline"], w["deadline"]);
    let changes: Vec<&Value> = hooks
        .iter()
        .filter(|b| b["type"] == "migration.waiting_for_changed")
        .collect();
    assert_eq!(changes.len(), 2, "{hooks:#?}");
    assert_eq!(
        changes[0]["data"]["waiting_for"]["code"],
        "channel_not_running"
    );
    assert_eq!(changes[0]["data"]["waiting_for"]["actor"], "meta");
    assert_eq!(changes[1]["data"]["waiting_for"], *w);
    assert_eq!(changes[1]["data"]["state"], "awaiting_channel");
    // Earlier webhooks (before the wait) had none.
    assert!(
        hooks
            .iter()
            .filter(|b| b["data"]["state"] == "registering")
            .all(|b| b["data"]["waiting_for"].is_null())
    );
}

/// (b) The client grants the permission (`resolve`): the migration continues by itself,
/// `waiting_for` is cleared with the transition that leaves the state, and it completes.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn resolving_the_wait_clears_waiting_for_and_completes(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.channel_timeout = Duration::from_secs(120);
    let app = TestApp::spawn_with(pool, opts).await;
    let consumer = Consumer::start().await;
    let phone = "+14155550020";
    let id = create_with_callback(&app, phone, &consumer.url).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    waiting_code(&app, &id, "api_key_permission_missing").await;

    let res = app
        .http
        .post(format!(
            "{}/_sandbox/numbers/%2B14155550020/resolve",
            app.sandbox_url
        ))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());

    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["waiting_for"], Value::Null);
    assert_eq!(m["error"], Value::Null);
    assert_eq!(app.applied(phone, "api_keys"), 1);
    // The webhook of the transition out of the wait already shows it cleared.
    let hooks = webhooks_of(&consumer, &id, |got| {
        got.iter().any(|b| b["type"] == "migration.completed")
    })
    .await;
    let left = hooks
        .iter()
        .find(|b| b["data"]["state"] == "generating_api_key")
        .unwrap();
    assert_eq!(left["data"]["waiting_for"], Value::Null);
    assert!(
        hooks
            .iter()
            .any(|b| b["data"]["waiting_for"]["code"] == "api_key_permission_missing")
    );
}

/// (c) At the deadline the migration fails with the code it was waiting with, and the error
/// carries that code's actor and remediation; the deadline is kept to the poll (not up to a
/// poll interval late).
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_wait_fails_at_its_deadline_with_its_code(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.channel_timeout = Duration::from_secs(3);
    // Longest poll delay: 60 s cap, so only the deadline itself can end the wait in time.
    opts.worker.channel_poll = Duration::from_secs(2);
    let app = TestApp::spawn_with(pool, opts).await;
    let id = app.create("+14155550020").await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    let parked = waiting_code(&app, &id, "api_key_permission_missing").await;
    let w = parked["waiting_for"].clone();
    let deadline = at(&w["deadline"]);

    let m = app.wait_for(&id, "failed").await;
    let e = &m["error"];
    assert_eq!(e["code"], w["code"], "{m:#}");
    assert_eq!(e["actor"], w["actor"]);
    assert_eq!(e["remediation"], w["remediation"]);
    assert_eq!(e["step"], "awaiting_channel");
    assert_eq!(e["retryable"], true);
    assert_eq!(m["waiting_for"], Value::Null);
    let failed_at = at(&m["updated_at"]);
    assert!(
        failed_at >= deadline,
        "failed at {failed_at}, deadline {deadline}"
    );
    assert!(
        failed_at - deadline < chrono::Duration::milliseconds(1500),
        "failed at {failed_at}, deadline {deadline}"
    );
    assert_eq!(app.applied("+14155550020", "api_keys"), 0);
}

/// (c) The other reasons of `awaiting_channel`: a channel that is listed but never runs, and
/// one that never appears (scenario 0019), each fail at the deadline with their own code.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn each_channel_reason_has_its_own_code(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.channel_timeout = Duration::from_secs(2);
    opts.sandbox.channel_running_after = Duration::from_secs(3600);
    let app = TestApp::spawn_with(pool, opts).await;
    let not_running = app.create("+14155550801").await;
    let never_listed = app.create("+14155550019").await;
    for id in [&not_running, &never_listed] {
        app.wait_for(id, "awaiting_otp").await;
        app.submit_otp(id, "123456").await;
    }
    let cases = [
        (&not_running, "channel_not_running", "meta"),
        (&never_listed, "channel_timeout", "partner"),
    ];
    for (id, code, actor) in cases {
        let m = waiting_code(&app, id, code).await;
        assert_eq!(m["waiting_for"]["actor"], actor, "{m:#}");
    }
    for (id, code, actor) in cases {
        let m = app.wait_for(id, "failed").await;
        assert_eq!(m["error"]["code"], code, "{m:#}");
        assert_eq!(m["error"]["actor"], actor);
        assert_eq!(m["waiting_for"], Value::Null);
    }
}

/// (d) Waiting for the verification code: on the client, until `otp.expires_at`; back after a
/// wrong code; cleared when the code is accepted or the migration is cancelled.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn awaiting_otp_waits_for_the_client_until_the_code_expires(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let consumer = Consumer::start().await;
    let id = create_with_callback(&app, "+14155550802", &consumer.url).await;
    let m = app.wait_for(&id, "awaiting_otp").await;
    // Fails on main: no `waiting_for`.
    assert_eq!(m["waiting_for"]["code"], "otp_not_submitted", "{m:#}");
    let w = &m["waiting_for"];
    assert_eq!(w["actor"], "client");
    assert_eq!(w["deadline"], m["otp"]["expires_at"]);
    assert!(at(&w["since"]) >= at(&m["otp"]["requested_at"]));
    assert!(w["remediation"].as_str().unwrap().contains("/otp"));
    let hooks = webhooks_of(&consumer, &id, |got| {
        got.iter().any(|b| b["type"] == "migration.awaiting_otp")
    })
    .await;
    let parked = hooks
        .iter()
        .find(|b| b["type"] == "migration.awaiting_otp")
        .unwrap();
    assert_eq!(parked["data"]["waiting_for"], *w);

    // A wrong code: back to waiting for the client, same deadline.
    assert_eq!(
        app.submit_otp(&id, "000000").await.status(),
        StatusCode::ACCEPTED
    );
    let m = app
        .wait_until(&id, |m| {
            m["state"] == "awaiting_otp" && m["otp"]["attempts_left"] == 2
        })
        .await;
    assert_eq!(m["error"]["code"], "otp_invalid");
    assert_eq!(m["waiting_for"]["code"], "otp_not_submitted");
    assert_eq!(m["waiting_for"]["deadline"], m["otp"]["expires_at"]);

    // The right one: the wait is over.
    let m = app.complete(&id).await;
    assert_eq!(m["waiting_for"], Value::Null);

    // Cancelling ends the wait too.
    let other = app.create("+14155550803").await;
    app.wait_for(&other, "awaiting_otp").await;
    let res = app
        .post(&format!("/v1/migrations/{other}/cancel"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let m = app.wait_for(&other, "cancelled").await;
    assert_eq!(m["waiting_for"], Value::Null);
}

/// The schema migration gives migrations that were already waiting for their code when it ran
/// the `waiting_for` the worker writes when it parks one.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_schema_migration_backfills_migrations_waiting_for_their_code(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+14155550804").await;
    let parked = app.wait_for(&id, "awaiting_otp").await;
    sqlx::query("UPDATE migrations SET waiting_for = NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.migration(&id).await["waiting_for"], Value::Null);

    let sql = include_str!("../../migrations/20261206000003_waiting_for.sql");
    sqlx::raw_sql(sql).execute(&app.pool).await.unwrap();
    let mut backfilled = app.migration(&id).await["waiting_for"].clone();
    let mut written = parked["waiting_for"].clone();
    // `since` is when the state was entered: the worker takes it a moment before its write.
    let (a, b) = (at(&backfilled["since"]), at(&written["since"]));
    assert!(a >= b && a - b < chrono::Duration::seconds(1), "{a} vs {b}");
    backfilled["since"] = Value::Null;
    written["since"] = Value::Null;
    assert_eq!(backfilled, written);
}
