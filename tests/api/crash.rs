//! A worker dies after a non-idempotent upstream call returned but before it recorded the
//! result; another worker finishes the migration once the lease expires, without repeating
//! the call blindly.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{Options, TestApp, is_transition};

async fn drive_until(app: &TestApp, worker: &waba_migrator::worker::Worker, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        worker.run_until_idle().await.unwrap();
        let m = app.migration(id).await;
        if m["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "stuck: {m:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn manual() -> Options {
    Options::no_worker()
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn crash_after_register_does_not_register_twice(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550401";
    let id = app.create(phone).await;
    let first = app.worker().clone();
    drive_until(&app, &first, &id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;

    // Worker 1 registers the number upstream, then "crashes" before recording it.
    app.fail_points.arm("after_register", 1);
    first.run_until_idle().await.unwrap();
    assert_eq!(app.applied(phone, "register"), 1);
    let m = app.migration(&id).await;
    assert_eq!(m["state"], "registering", "the result was never recorded");

    // Worker 2 cannot take it while the lease is live...
    let second = app.another_worker();
    let crashed_at = Instant::now();
    assert_eq!(second.run_until_idle().await.unwrap(), 0);
    // ...and finishes it once the lease (2 s in tests) has expired.
    drive_until(&app, &second, &id, "completed").await;
    assert!(crashed_at.elapsed() >= Duration::from_millis(1500));

    assert_eq!(
        app.received(phone, "register"),
        1,
        "register was not called again"
    );
    assert!(
        app.received(phone, "get_phone_number") >= 1,
        "state was read first"
    );
    let events = app.events(&id).await;
    let reg: Vec<&Value> = events
        .iter()
        .filter(|e| e["from_state"] == "registering" && is_transition(e))
        .collect();
    assert_eq!(
        reg.len(),
        1,
        "exactly one recorded transition out of registering"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn crash_after_api_keys_stores_the_currently_valid_key(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550402";
    let id = app.create(phone).await;
    let first = app.worker().clone();
    drive_until(&app, &first, &id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;

    // Worker 1 gets a key from 360dialog, then dies before storing it: that key is lost
    // and nobody holds it.
    app.fail_points.arm("after_api_keys", 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.applied(phone, "api_keys") == 0 {
        first.run_until_idle().await.unwrap();
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = app.migration(&id).await;
    assert_eq!(m["state"], "generating_api_key");
    assert_eq!(m["api_key"]["status"], "pending");

    let second = app.another_worker();
    drive_until(&app, &second, &id, "completed").await;
    // The lost key was replaced once; the stored key is the channel's current one.
    assert_eq!(app.applied(phone, "api_keys"), 2);
    let key = app.stored_key(&id).await;
    assert_eq!(app.key_status(&key).await, StatusCode::OK);
    // Nothing calls api_keys again once a key is recorded.
    second.run_until_idle().await.unwrap();
    assert_eq!(app.applied(phone, "api_keys"), 2);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_step_that_keeps_dying_fails_once_taken_over_max_attempts_times(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550490";
    let id = app.create(phone).await;
    let worker = app.worker().clone();
    drive_until(&app, &worker, &id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;

    // Every run of the key step dies after 360dialog made a key, before storing it. Unbounded,
    // each lease expiry would run it again and make another key.
    app.fail_points.arm("after_api_keys", 100);
    drive_until(&app, &worker, &id, "failed").await;
    let m = app.migration(&id).await;
    assert_eq!(m["error"]["code"], "internal_error", "{m:#}");
    assert_eq!(m["error"]["step"], "generating_api_key");
    assert_eq!(m["error"]["retryable"], true);
    // MAX_STEP_ATTEMPTS is 4 in tests: four runs called 360dialog, the fifth claim (the fourth
    // take-over in a row) failed the migration without running the step.
    assert_eq!(app.applied(phone, "api_keys"), 4);

    // Fixed, a retry runs the step again from a released row.
    app.fail_points.arm("after_api_keys", 0);
    let r = app
        .post(&format!("/v1/migrations/{id}/retry"), serde_json::json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    drive_until(&app, &worker, &id, "completed").await;
    assert_eq!(app.applied(phone, "api_keys"), 5);
}

/// Register calls whose results were never recorded (the worker died after each) still count
/// against the number's budget of 5 in 72 h.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn register_calls_of_workers_that_died_are_counted(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550491";
    let id = app.create(phone).await;
    let worker = app.worker().clone();
    drive_until(&app, &worker, &id, "awaiting_otp").await;
    app.faults(serde_json::json!([
        { "endpoint": "register", "phone_number": phone, "fault": "server_error", "times": 20 },
    ]))
    .await;
    app.submit_otp(&id, "123456").await;
    // Three runs call register and die before recording anything; the fourth records its
    // failure, which is its fourth try (MAX_STEP_ATTEMPTS is 4 in tests).
    app.fail_points.arm("after_register", 3);
    drive_until(&app, &worker, &id, "failed").await;
    assert_eq!(app.received(phone, "register"), 4);
    let r = app
        .post(&format!("/v1/migrations/{id}/retry"), serde_json::json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let m = app.wait_for_failures(&id, 2, Some(&worker)).await;
    assert_eq!(m["error"]["code"], "register_limit_reached", "{m:#}");
    assert_eq!(
        app.received(phone, "register"),
        5,
        "the dead runs' calls counted"
    );
}

/// A migration cancelled after its worker called register and died before recording it: a
/// new migration of the number counts that call too.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_new_migration_counts_the_unrecorded_register_call_of_a_cancelled_one(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550492";
    let first = app.create(phone).await;
    let worker = app.worker().clone();
    drive_until(&app, &worker, &first, "awaiting_otp").await;
    app.faults(serde_json::json!([
        { "endpoint": "register", "phone_number": phone, "fault": "server_error", "times": 20 },
    ]))
    .await;
    app.submit_otp(&first, "123456").await;
    app.fail_points.arm("after_register", 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.received(phone, "register") == 0 {
        worker.run_until_idle().await.unwrap();
        assert!(Instant::now() < deadline, "register never called");
    }
    // The dead worker's lease still runs: the call may be in flight. Once it expired, the
    // cancel goes through.
    loop {
        let r = app
            .post(
                &format!("/v1/migrations/{first}/cancel"),
                serde_json::json!({}),
            )
            .await;
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "never cancelled");
        let wait = crate::helpers::retry_after_secs(&r);
        let problem: serde_json::Value = r.json().await.unwrap();
        assert_eq!(problem["code"], "call_in_flight", "{problem:#}");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }

    // The number is verified: the second goes to registering, tries 4 times (MAX_STEP_ATTEMPTS
    // in tests), and its retry finds 5 calls for the number, the first one's included.
    let second = app.create(phone).await;
    drive_until(&app, &worker, &second, "failed").await;
    assert_eq!(app.received(phone, "register"), 5);
    let r = app
        .post(
            &format!("/v1/migrations/{second}/retry"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let m = app.wait_for_failures(&second, 2, Some(&worker)).await;
    assert_eq!(m["error"]["code"], "register_limit_reached", "{m:#}");
    assert_eq!(app.received(phone, "register"), 5, "no sixth call");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn crash_after_storing_the_key_never_generates_another(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550403";
    let id = app.create(phone).await;
    let first = app.worker().clone();
    drive_until(&app, &first, &id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    // The key is stored, then the verification call's response is lost: the worker retries
    // the verification only.
    app.faults(serde_json::json!([
        { "endpoint": "health_status", "fault": "lost_response", "times": 1 }
    ]))
    .await;
    drive_until(&app, &first, &id, "completed").await;
    assert_eq!(app.applied(phone, "api_keys"), 1);
    let key = app.stored_key(&id).await;
    assert_eq!(app.key_status(&key).await, StatusCode::OK);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn lost_register_response_is_resolved_by_reading_state(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550404";
    app.faults(serde_json::json!([
        { "endpoint": "register", "phone_number": phone, "fault": "lost_response", "times": 1 },
        { "endpoint": "request_code", "phone_number": phone, "fault": "lost_response", "times": 1 },
    ]))
    .await;
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    // The lost request_code is treated as sent: no second SMS.
    assert_eq!(app.received(phone, "request_code"), 1);
    app.submit_otp(&id, "123456").await;
    app.wait_for(&id, "completed").await;
    assert_eq!(app.received(phone, "register"), 1);
    assert_eq!(app.applied(phone, "register"), 1);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_dead_workers_migration_is_claimed_before_the_backlog(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let waiting = app.create("+14155550405").await;
    let orphan = app.create("+14155550406").await;
    // `waiting` has been due for an hour; `orphan` was being run by a worker that died.
    sqlx::query("UPDATE migrations SET run_at = now() - interval '1 hour' WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&waiting).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE migrations SET lease_token = gen_random_uuid(), lease_owner = 'dead:1:x',
                lease_expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&orphan).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    let claimed = waba_migrator::db::migrations::claim(&app.pool, "me", Duration::from_secs(30), 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id.to_string(), orphan, "rescue comes first");
    assert_eq!(claimed[0].lease_owner.as_deref(), Some("me"));
    let next = waba_migrator::db::migrations::claim(&app.pool, "me", Duration::from_secs(30), 5)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id.to_string(), waiting);
    // Nothing left: a live lease is never taken.
    let none = waba_migrator::db::migrations::claim(&app.pool, "other", Duration::from_secs(30), 5)
        .await
        .unwrap();
    assert!(none.is_empty());
}

/// A `request_code` that Meta applied but answered with a 2xx that is not its JSON (a gateway's
/// HTML page, or `{"success": false}`) is treated as sent: the client is never texted twice,
/// and the register and verify steps after it are unaffected by such answers either.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_garbled_2xx_never_sends_the_code_twice(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (phone, fault) in [
        ("+14155550407", "garbled_success"),
        ("+14155550408", "success_false"),
    ] {
        app.faults(serde_json::json!([
            { "endpoint": "request_code", "phone_number": phone, "fault": fault, "times": 1 },
            { "endpoint": "verify_code", "phone_number": phone, "fault": fault, "times": 1 },
            { "endpoint": "register", "phone_number": phone, "fault": fault, "times": 1 },
        ]))
        .await;
        let id = app.create(phone).await;
        let m = app.wait_for(&id, "awaiting_otp").await;
        assert_eq!(app.received(phone, "request_code"), 1, "{fault}: {m:#}");
        assert_eq!(app.applied(phone, "request_code"), 1, "{fault}");
        app.submit_otp(&id, "123456").await;
        app.wait_for(&id, "completed").await;
        for endpoint in ["request_code", "verify_code", "register"] {
            assert_eq!(app.applied(phone, endpoint), 1, "{fault}: {endpoint}");
        }
        assert_eq!(
            app.received(phone, "register"),
            1,
            "{fault}: read, not called again"
        );
    }
}

/// A worker that dies right after `request_code` was sent (before recording it) leaves its
/// intent behind: the next worker treats the code as sent instead of texting again.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn crash_after_request_code_does_not_text_twice(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550409";
    let id = app.create(phone).await;
    let first = app.worker().clone();
    app.fail_points.arm("after_request_code", 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.applied(phone, "request_code") == 0 {
        first.run_until_idle().await.unwrap();
        assert!(Instant::now() < deadline, "request_code never sent");
    }
    assert_eq!(app.migration(&id).await["state"], "requesting_otp");
    let second = app.another_worker();
    drive_until(&app, &second, &id, "awaiting_otp").await;
    assert_eq!(app.received(phone, "request_code"), 1);
    let sent = app.event_into(&id, "awaiting_otp").await;
    assert_eq!(
        sent["data"]["otp"], "assumed_sent_after_interruption",
        "{sent:#}"
    );
}

/// Every irreversible call reaches the upstream with its intent already committed: held there
/// by a `slow` fault, each call is looked for in the row while it is in flight. The intents of
/// `request_code`, `register` and `api_keys` are armed by the transition into their step, the
/// one of `verify_code` (whose step the API enters) by the claim that picks the migration up:
/// none costs a statement of its own.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn every_irreversible_call_goes_out_with_its_intent_committed(pool: PgPool) {
    let mut opts = Options::default();
    opts.sandbox.hang_for = Duration::from_millis(400);
    opts.upstream_timeout = Duration::from_secs(10);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550410";
    let calls = [
        ("request_code", "request_code"),
        ("verify_code", "verify_code"),
        ("register", "register"),
        ("api_keys", "api_keys"),
    ];
    let rules: Vec<Value> = calls
        .iter()
        .map(|(endpoint, ..)| {
            serde_json::json!({ "endpoint": endpoint, "phone_number": phone, "fault": "slow" })
        })
        .collect();
    app.faults(Value::Array(rules)).await;
    let id = app.create(phone).await;
    for (endpoint, key) in calls {
        if endpoint == "verify_code" {
            app.wait_for(&id, "awaiting_otp").await;
            app.submit_otp(&id, "123456").await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while app.received(phone, endpoint) == 0 {
            assert!(Instant::now() < deadline, "{endpoint} never sent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(app.applied(phone, endpoint), 0, "{endpoint} still held");
        let memo = app.step_memo(&id).await;
        let intent = &memo[key];
        assert!(
            !intent.is_null(),
            "{endpoint} in flight without its intent: {memo}"
        );
        assert!(
            intent.get("armed_by").is_some(),
            "{endpoint}: not armed: {intent}"
        );
    }
    app.wait_for(&id, "completed").await;
    for (endpoint, ..) in calls {
        assert_eq!(app.received(phone, endpoint), 1, "{endpoint}");
    }
    let memo = app.step_memo(&id).await;
    assert!(
        memo.as_object()
            .unwrap()
            .values()
            .all(|v| v.get("armed_by").is_none()),
        "an armed intent is settled by its step: {memo}"
    );
}

/// A worker that dies after the transition into `requesting_otp` armed the intent, before it
/// could call: the next worker cannot tell that from a call sent and lost, so it treats the
/// code as sent (the partner can ask for another), as after a crash right after sending.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn crash_before_request_code_with_an_armed_intent_never_texts_blindly(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550411";
    let id = app.create(phone).await;
    let first = app.worker().clone();
    app.fail_points.arm("before_request_code", 1);
    drive_until(&app, &first, &id, "requesting_otp").await;
    assert_eq!(app.received(phone, "request_code"), 0);
    let memo = app.step_memo(&id).await;
    assert!(memo["request_code"].get("armed_by").is_some(), "{memo}");

    let second = app.another_worker();
    drive_until(&app, &second, &id, "awaiting_otp").await;
    assert_eq!(app.received(phone, "request_code"), 0, "not sent blindly");
    let parked = app.event_into(&id, "awaiting_otp").await;
    assert_eq!(
        parked["data"]["otp"], "assumed_sent_after_interruption",
        "{parked:#}"
    );
}

/// The claim arms the intent of the step its migration is in when none is there (the
/// migration entered the step through the API, a resend, or a hand-back), and leaves an intent
/// that is there as it is: a recorded one, or one armed by an earlier claim, says a call may
/// have been sent, and re-arming it would let the step call again.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_claim_arms_an_absent_intent_and_keeps_one_that_is_there(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let earlier = uuid::Uuid::now_v7().to_string();
    let rows = [
        ("+14155550420", "verifying_otp", serde_json::json!({})),
        (
            "+14155550421",
            "requesting_otp",
            serde_json::json!({ "templates_copied": true }),
        ),
        (
            "+14155550422",
            "registering",
            serde_json::json!({ "register": "2026-12-06T10:00:00Z" }),
        ),
        (
            "+14155550423",
            "generating_api_key",
            serde_json::json!({ "api_keys": { "at": "2026-12-06T10:00:00Z", "armed_by": earlier } }),
        ),
        ("+14155550424", "copying_templates", serde_json::json!({})),
    ];
    let mut ids = Vec::new();
    for (phone, state, memo) in &rows {
        let id = app.create(phone).await;
        sqlx::query(
            "UPDATE migrations SET state = $2, step_memo = $3, run_at = now() WHERE id = $1",
        )
        .bind(uuid::Uuid::parse_str(&id).unwrap())
        .bind(state)
        .bind(memo)
        .execute(&app.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let claimed =
        waba_migrator::db::migrations::claim(&app.pool, "test", Duration::from_secs(60), 10)
            .await
            .unwrap();
    assert_eq!(claimed.len(), rows.len());
    for (id, (_, state, before)) in ids.iter().zip(&rows) {
        let row = claimed.iter().find(|r| r.id.to_string() == *id).unwrap();
        let token = row.lease_token.unwrap().to_string();
        let stored = app.step_memo(id).await;
        assert_eq!(
            stored, row.step_memo,
            "{state}: returned and stored memo differ"
        );
        let expected = match *state {
            "verifying_otp" => {
                let armed = &stored["verify_code"];
                assert_eq!(armed["armed_by"], token.as_str(), "{state}: {stored}");
                let at = armed["at"].as_str().unwrap();
                assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
                serde_json::json!({ "verify_code": armed })
            }
            "requesting_otp" => {
                assert_eq!(
                    stored["request_code"]["armed_by"],
                    token.as_str(),
                    "{stored}"
                );
                serde_json::json!({
                    "templates_copied": true,
                    "request_code": stored["request_code"],
                })
            }
            _ => before.clone(),
        };
        assert_eq!(stored, expected, "{state}");
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_panicking_step_is_retried_and_its_text_stays_out_of_the_events(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let phone = "+14155550411";
    let id = app.create(phone).await;
    app.fail_points.arm("panic_in_step", 1);
    let worker = app.worker().clone();
    drive_until(&app, &worker, &id, "awaiting_otp").await;

    let events = app.events(&id).await;
    let retry = events
        .iter()
        .find(|e| e["type"] == "migration.step_retry_scheduled")
        .expect("the panic scheduled a retry");
    assert!(
        retry["data"]["internal"]
            .as_str()
            .is_some_and(|t| t.contains("panicked")),
        "{retry:#}"
    );
    let all = Value::Array(events).to_string();
    assert!(
        !all.contains("EAAG-secret-token") && !all.contains("upstream body"),
        "the panic's text is in the events: {all}"
    );
}

/// A migration failed on its last attempt by a `register` that went unanswered (Meta applies it
/// late), and retried by the partner at once: the retry waits one call time after the failure,
/// reads the number registered and does not register it again.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_retry_right_after_an_unanswered_last_register_does_not_register_again(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.max_attempts = 1;
    // Meta holds the call 3 s and applies it; we stop waiting after 2 s.
    opts.upstream_timeout = Duration::from_secs(2);
    opts.sandbox.hang_for = Duration::from_secs(3);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550611";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.faults(serde_json::json!([
        { "endpoint": "register", "phone_number": phone, "fault": "slow", "times": 1 },
    ]))
    .await;
    app.submit_otp(&id, "123456").await;
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["step"], "registering", "{m:#}");
    let r = app
        .post(&format!("/v1/migrations/{id}/retry"), serde_json::json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    app.wait_for(&id, "completed").await;
    app.assert_registered_once(phone);
}
