//! One live 360dialog key per number (issue 14, item 5): a completed number keeps its key, a
//! duplicate create answers 409 `number_already_migrated`, the key is replaced only by the
//! explicit `POST /v1/migrations/{id}/api_key/rotate`, and a number that really left 360dialog
//! (its key no longer accepted) can be migrated again.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{ADMIN_KEY, Options, TestApp, assert_problem};

const NUMBER: &str = "+5511987654321";

async fn create_keyed(
    app: &TestApp,
    key: &str,
    idempotency_key: &str,
    phone: &str,
) -> (StatusCode, Value) {
    let res = app
        .http
        .post(app.url("/v1/migrations"))
        .bearer_auth(key)
        .header("Idempotency-Key", idempotency_key)
        .json(&TestApp::create_body(phone))
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

/// Sends `POST …/api_key/rotate`; the request waits for the new key, which the test's worker
/// makes once driven: see [`finish`].
fn rotate_pending(
    app: &TestApp,
    key: &str,
    id: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let req = app
        .http
        .post(app.url(&format!("/v1/migrations/{id}/api_key/rotate")))
        .bearer_auth(key);
    tokio::spawn(async move { req.send().await.unwrap() })
}

/// Runs the worker until the request answers.
async fn finish(
    app: &TestApp,
    req: tokio::task::JoinHandle<reqwest::Response>,
) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !req.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "no answer");
        app.worker().run_until_idle().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    req.await.unwrap()
}

async fn rotate_as(app: &TestApp, key: &str, id: &str) -> reqwest::Response {
    finish(app, rotate_pending(app, key, id)).await
}

/// Runs the app's worker (no background worker) until the migration is in `state`.
async fn drive(app: &TestApp, id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        app.worker().run_until_idle().await.unwrap();
        let m = app.migration(id).await;
        if m["state"] == state {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {state}: {m:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn manual() -> Options {
    Options::no_worker()
}

/// Problem 1 of issue 14. On main before this change the second create answered 201 (the
/// status assertion below failed: the body was a new `queued` migration), and that migration
/// then generated a key for the same channel, which revoked the first one.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_duplicate_create_for_a_completed_number_is_refused_and_the_key_stays_live(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (status, body) = create_keyed(&app, &app.partner_key, "retry-loop-1", NUMBER).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let first = body["id"].as_str().unwrap().to_owned();
    app.complete(&first).await;
    let key = app.stored_key(&first).await;
    assert_eq!(app.key_status(&key).await, StatusCode::OK);

    // The partner's retry loop sends the same create with a new Idempotency-Key.
    let (status, body) = create_keyed(&app, &app.partner_key, "retry-loop-2", NUMBER).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body:#}");
    assert_eq!(body["code"], "number_already_migrated", "{body:#}");
    assert_eq!(body["migration_id"], first.as_str(), "{body:#}");
    assert!(
        body["detail"].as_str().unwrap().contains("/api_key/rotate"),
        "{body:#}"
    );
    assert_eq!(app.count_migrations().await, 1);
    // The same without an Idempotency-Key, through the usual helper.
    let res = app
        .post("/v1/migrations", TestApp::create_body(NUMBER))
        .await;
    assert_problem(res, StatusCode::CONFLICT, "number_already_migrated").await;
    // Another partner learns that the number is migrated, not by which migration.
    let (_, other_key) = app.other_partner().await;
    let (status, body) = create_keyed(&app, &other_key, "other-1", NUMBER).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body:#}");
    assert_eq!(body["code"], "number_already_migrated");
    assert!(body.get("migration_id").is_none(), "{body:#}");
    assert!(
        !body["detail"].as_str().unwrap().contains(&first),
        "{body:#}"
    );
    // A replay of the first request still answers what it answered then.
    let (status, body) = create_keyed(&app, &app.partner_key, "retry-loop-1", NUMBER).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["id"], first.as_str());

    // Nothing generated another key: the first one still works and is the one we hold.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count_migrations().await, 1);
    assert_eq!(app.applied(NUMBER, "api_keys"), 1);
    assert_eq!(app.key_status(&key).await, StatusCode::OK);
    assert_eq!(app.stored_key(&first).await, key);
    let m = app.migration(&first).await;
    assert_eq!(m["api_key"]["status"], "verified", "{m:#}");
    assert_eq!(m["state"], "completed");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn rotate_supersedes_the_old_key_and_delivers_a_new_verified_one(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let id = app.create(NUMBER).await;
    drive(&app, &id, "awaiting_otp").await;
    assert_eq!(
        app.submit_otp(&id, "123456").await.status(),
        StatusCode::ACCEPTED
    );
    let done = drive(&app, &id, "completed").await;
    let old = app.stored_key(&id).await;
    assert_eq!(app.key_status(&old).await, StatusCode::OK);

    let rotation = rotate_pending(&app, &app.partner_key, &id);
    // While the request waits for the worker: superseded, no key to fetch, no second
    // rotation, no cancelling it.
    let m = app
        .wait_until(&id, |m| m["state"] == "generating_api_key")
        .await;
    assert_eq!(m["api_key"]["status"], "superseded", "{m:#}");
    assert_problem(
        app.get(&format!("/v1/migrations/{id}/api_key")).await,
        StatusCode::CONFLICT,
        "api_key_not_ready",
    )
    .await;
    assert_problem(
        // Refused at once (the worker must not run here: it would finish the first one).
        rotate_pending(&app, &app.partner_key, &id).await.unwrap(),
        StatusCode::CONFLICT,
        "invalid_state",
    )
    .await;
    assert_problem(
        app.post(&format!("/v1/migrations/{id}/cancel"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "invalid_state",
    )
    .await;
    // The migration is active again: the number cannot be migrated meanwhile.
    assert_problem(
        app.post("/v1/migrations", TestApp::create_body(NUMBER))
            .await,
        StatusCode::CONFLICT,
        "migration_already_active",
    )
    .await;
    assert_eq!(app.migration(&id).await["api_key"]["status"], "superseded");

    // The new key is stored, then its first health check fails: the retry verifies the stored
    // key and never generates another one.
    app.faults(json!([{ "endpoint": "health_status", "phone_number": NUMBER, "fault": "server_error", "times": 1 }]))
        .await;
    let m = drive(&app, &id, "completed").await;
    assert_eq!(m["api_key"]["status"], "verified", "{m:#}");
    assert_eq!(
        m["completed_at"], done["completed_at"],
        "completed_at is kept"
    );
    assert_eq!(app.applied(NUMBER, "api_keys"), 2);
    let new = app.stored_key(&id).await;
    assert_ne!(new, old);
    // The waiting request answers the new key.
    let res = finish(&app, rotation).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["api_key"], new.as_str(), "{body:#}");
    assert_eq!(app.key_status(&old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.key_status(&new).await, StatusCode::OK);

    // The audit trail: the request, the new key (naming the one it replaces), completed again.
    let events = app.events(&id).await;
    let requested = events
        .iter()
        .find(|e| e["from_state"] == "completed" && e["to_state"] == "generating_api_key")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(requested["type"], "migration.state_changed");
    assert_eq!(requested["data"]["api_key"], "rotation_requested");
    assert_eq!(requested["data"]["by"], "partner");
    let generated: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "migration.api_key_generated")
        .collect();
    assert_eq!(generated.len(), 2, "{events:#?}");
    assert_eq!(
        generated[1]["data"]["replaces_api_key_id"],
        generated[0]["data"]["api_key_id"]
    );
    assert_eq!(
        requested["data"]["superseded_api_key_id"],
        generated[0]["data"]["api_key_id"]
    );
    let completed = events
        .iter()
        .filter(|e| e["type"] == "migration.completed")
        .count();
    assert_eq!(completed, 2, "{events:#?}");

    // The admin may rotate too; a lost response of the api_keys call (applied, then no answer)
    // leaves a key nobody holds, so the retry generates again, and the stored key is the one
    // that works.
    app.faults(json!([{ "endpoint": "api_keys", "phone_number": NUMBER, "fault": "lost_response", "times": 1 }]))
        .await;
    let res = rotate_as(&app, ADMIN_KEY, &id).await;
    assert_eq!(res.status(), StatusCode::OK);
    let answered: Value = res.json().await.unwrap();
    let m = drive(&app, &id, "completed").await;
    assert_eq!(m["api_key"]["status"], "verified");
    assert_eq!(app.applied(NUMBER, "api_keys"), 4);
    let newest = app.stored_key(&id).await;
    assert_eq!(answered["api_key"], newest.as_str());
    assert_eq!(app.key_status(&new).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.key_status(&newest).await, StatusCode::OK);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn rotate_only_a_completed_migration_of_ones_own(pool: PgPool) {
    let app = TestApp::spawn_with(pool, manual()).await;
    let id = app.create("+14155550177").await;
    drive(&app, &id, "awaiting_otp").await;
    let body = assert_problem(
        rotate_as(&app, &app.partner_key, &id).await,
        StatusCode::CONFLICT,
        "invalid_state",
    )
    .await;
    assert_eq!(body["state"], "awaiting_otp");
    assert_eq!(app.applied("+14155550177", "api_keys"), 0);

    assert_eq!(
        app.submit_otp(&id, "123456").await.status(),
        StatusCode::ACCEPTED
    );
    drive(&app, &id, "completed").await;
    let key = app.stored_key(&id).await;
    let (_, other_key) = app.other_partner().await;
    let body = assert_problem(
        rotate_as(&app, &other_key, &id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(!body.to_string().contains("+14155550177"));
    app.worker().run_until_idle().await.unwrap();
    let m = app.migration(&id).await;
    assert_eq!(m["state"], "completed");
    assert_eq!(m["api_key"]["status"], "verified");
    assert_eq!(app.applied("+14155550177", "api_keys"), 1);
    assert_eq!(app.key_status(&key).await, StatusCode::OK);
}

/// The number's key was replaced outside this service (another key generated for the channel):
/// the create asks 360dialog, which rejects the old key, so the number is migrated again, the
/// old migration's key is `superseded` for good, and that old migration may not take the
/// channel back while the new one's key works.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_number_whose_key_was_superseded_elsewhere_can_be_migrated_again(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let first = app.create(NUMBER).await;
    let done = app.complete(&first).await;
    let old = app.stored_key(&first).await;
    let channel = done["channel_id"].as_str().unwrap().to_owned();
    // Someone generates a key for the channel in the Partner Hub.
    let res = app
        .http
        .post(format!(
            "{}/api/v2/partners/testPA/channels/{channel}/api_keys",
            app.sandbox_url
        ))
        .header("X-API-Key", "partner-secret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(app.key_status(&old).await, StatusCode::UNAUTHORIZED);
    // Still `verified` as far as we know: nothing asked 360dialog yet.
    assert_eq!(app.migration(&first).await["api_key"]["status"], "verified");

    let (status, body) = create_keyed(&app, &app.partner_key, "again-1", NUMBER).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let second = body["id"].as_str().unwrap().to_owned();
    let m = app.migration(&first).await;
    assert_eq!(m["state"], "completed");
    assert_eq!(m["api_key"]["status"], "superseded", "{m:#}");
    assert_problem(
        app.get(&format!("/v1/migrations/{first}/api_key")).await,
        StatusCode::CONFLICT,
        "api_key_superseded",
    )
    .await;
    let superseded: Vec<Value> = app
        .events(&first)
        .await
        .into_iter()
        .filter(|e| e["type"] == "migration.api_key_superseded")
        .collect();
    assert_eq!(superseded.len(), 1);
    assert_eq!(superseded[0]["data"]["reason"], "rejected_by_360dialog");

    // The number is already in the destination: no code, straight to templates, channel, key.
    let m = app.wait_for(&second, "completed").await;
    assert_eq!(m["api_key"]["status"], "verified");
    let new = app.stored_key(&second).await;
    assert_eq!(app.key_status(&new).await, StatusCode::OK);
    // The old migration may not take the channel back: that would revoke the live key.
    let body = assert_problem(
        rotate_as(&app, &app.partner_key, &first).await,
        StatusCode::CONFLICT,
        "number_already_migrated",
    )
    .await;
    assert_eq!(body["migration_id"], second.as_str());
    assert_eq!(app.key_status(&new).await, StatusCode::OK);
    // And the number is now refused again, naming the new migration.
    let (status, body) = create_keyed(&app, &app.partner_key, "again-2", NUMBER).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body:#}");
    assert_eq!(body["migration_id"], second.as_str());
}

/// The number left 360dialog (the sandbox forgets its channel): 360dialog rejects the key we
/// hold, and the number is migrated again from the start.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_number_that_left_and_came_back_can_be_migrated_again(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let first = app.create(NUMBER).await;
    app.complete(&first).await;
    let old = app.stored_key(&first).await;
    let res = app
        .http
        .post(format!("{}/_sandbox/reset", app.sandbox_url))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(app.key_status(&old).await, StatusCode::UNAUTHORIZED);

    let second = app.create(NUMBER).await;
    assert_eq!(
        app.migration(&first).await["api_key"]["status"],
        "superseded"
    );
    let m = app.complete(&second).await;
    assert_eq!(m["api_key"]["status"], "verified");
    let new = app.stored_key(&second).await;
    assert_eq!(app.key_status(&new).await, StatusCode::OK);
}

/// The worker's own guard (a duplicate that got past the create, e.g. one created before this
/// check existed): the `generating_api_key` step asks 360dialog about the other completed
/// migration's key and, since it still works, fails with `number_already_migrated` instead of
/// revoking it.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_key_step_never_revokes_another_migrations_live_key(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let first = app.create(NUMBER).await;
    app.complete(&first).await;
    let key = app.stored_key(&first).await;
    // Let a duplicate past the create, as if it had been created before the check.
    let set = |superseded: bool| {
        let pool = app.pool.clone();
        let first = first.clone();
        async move {
            sqlx::query(
                "UPDATE migrations SET api_key_superseded_at = CASE WHEN $2 THEN now() END
                 WHERE id = $1::uuid",
            )
            .bind(first)
            .bind(superseded)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    set(true).await;
    let second = app.create(NUMBER).await;
    set(false).await;

    let m = app.wait_for(&second, "failed").await;
    assert_eq!(m["error"]["code"], "number_already_migrated", "{m:#}");
    assert_eq!(m["error"]["step"], "generating_api_key");
    assert!(
        m["error"]["message"].as_str().unwrap().contains(&first),
        "{m:#}"
    );
    assert_eq!(m["api_key"]["status"], "pending");
    assert_eq!(app.applied(NUMBER, "api_keys"), 1);
    assert_eq!(app.key_status(&key).await, StatusCode::OK);
    assert_eq!(app.migration(&first).await["api_key"]["status"], "verified");
}

/// 360dialog allows one new key per channel every 30 s (the sandbox's window, shortened here):
/// a rotation right after the first key waits for its `Retry-After` and then succeeds, with one
/// key applied per request.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_rotation_inside_the_key_rate_window_waits_for_it(pool: PgPool) {
    let mut opts = manual();
    opts.sandbox.api_key_rate_window = Duration::from_millis(1500);
    let app = TestApp::spawn_with(pool, opts).await;
    let id = app.create(NUMBER).await;
    drive(&app, &id, "awaiting_otp").await;
    assert_eq!(
        app.submit_otp(&id, "123456").await.status(),
        StatusCode::ACCEPTED
    );
    drive(&app, &id, "completed").await;
    let old = app.stored_key(&id).await;

    assert_eq!(
        rotate_as(&app, &app.partner_key, &id).await.status(),
        StatusCode::OK
    );
    let m = drive(&app, &id, "completed").await;
    assert_eq!(m["api_key"]["status"], "verified");
    assert_eq!(app.applied(NUMBER, "api_keys"), 2);
    assert!(
        app.received(NUMBER, "api_keys") >= 3,
        "the first try was refused with 429"
    );
    let retried = app
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "migration.step_retry_scheduled")
        .count();
    assert!(retried >= 1);
    let new = app.stored_key(&id).await;
    assert_eq!(app.key_status(&old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.key_status(&new).await, StatusCode::OK);
}

/// A cancel does not cut off an `api_keys` call in flight (its key would be lost, and 360dialog
/// revoked the channel's earlier keys when it made it): 409 `call_in_flight` with
/// `Retry-After`, nothing written; the migration completes with the one key generated.
/// Once nothing is in flight the cancel is judged by the state as usual.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_cancel_does_not_cut_off_the_key_generation_in_flight(pool: PgPool) {
    let mut opts = Options::default();
    opts.sandbox.hang_for = Duration::from_secs(2);
    opts.upstream_timeout = Duration::from_secs(10);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550771";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.faults(json!([{ "endpoint": "api_keys", "phone_number": phone, "fault": "slow" }]))
        .await;
    assert_eq!(app.submit_otp(&id, "123456").await.status(), 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.received(phone, "api_keys") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "api_keys never sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let res = app
        .post(&format!("/v1/migrations/{id}/cancel"), json!({}))
        .await;
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let problem = assert_problem(res, StatusCode::CONFLICT, "call_in_flight").await;
    assert_eq!(problem["state"], "generating_api_key", "{problem:#}");

    let done = app.wait_for(&id, "completed").await;
    assert_eq!(done["api_key"]["status"], "verified", "{done:#}");
    assert_eq!(app.applied(phone, "api_keys"), 1);
    assert_eq!(app.event_count(&id, Some("migration.cancelled")).await, 0);
    let stored = app.stored_key(&id).await;
    assert_eq!(app.key_status(&stored).await, StatusCode::OK);
    let res = app
        .post(&format!("/v1/migrations/{id}/cancel"), json!({}))
        .await;
    assert_problem(res, StatusCode::CONFLICT, "invalid_state").await;
}

/// A batch that names numbers already migrated asks 360dialog about their keys (several at
/// once): a number whose key still works is rejected with `number_already_migrated`, one whose
/// key 360dialog refuses now is created again, and a new number is created.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_batch_rejects_only_the_numbers_whose_key_still_works(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let migrated = ["+14155550791", "+14155550792", "+14155550793"];
    let mut ids = Vec::new();
    for n in migrated {
        let id = app.create(n).await;
        app.complete(&id).await;
        ids.push(id);
    }
    // The third number's key no longer works (rotated elsewhere, revoked at 360dialog).
    let channel = app.migration(&ids[2]).await["channel_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .http
        .post(format!(
            "{}/api/v2/partners/testPA/channels/{channel}/api_keys",
            app.sandbox_url
        ))
        .header("X-API-Key", "sandbox")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());

    let mut numbers: Vec<&str> = migrated.to_vec();
    numbers.push("+14155550794");
    let res = app
        .post(
            "/v1/batches",
            json!({
                "name": "Again",
                "migrations": numbers.iter().map(|n| TestApp::create_body(n)).collect::<Vec<_>>(),
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    let status: Vec<(&str, &str)> = items
        .iter()
        .map(|i| {
            (
                i["status"].as_str().unwrap(),
                i["error"]["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("rejected", "number_already_migrated"),
            ("rejected", "number_already_migrated"),
            ("created", ""),
            ("created", ""),
        ],
        "{body:#}"
    );
}
