//! The migration lifecycle through the public API.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use waba_migrator::domain::{EventType, MigrationState};

use crate::helpers::{
    ADMIN_KEY, Options, TestApp, assert_problem, check_in, is_transition, retry_after_secs,
};

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn happy_path_reaches_completed_and_delivers_a_working_key(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+5511987654321";
    let id = app.create(phone).await;

    let m = app.wait_for(&id, "awaiting_otp").await;
    assert_eq!(m["otp"]["method"], "sms");
    assert_eq!(m["otp"]["attempts_left"], 3);
    assert!(m["otp"]["expires_at"].is_string());
    assert!(m["otp"]["resend_available_at"].is_string());
    assert!(m["phone_number_id"].is_string());
    assert_eq!(m["precheck"]["status"], "warn", "{m:#}");

    // Not the code's digits: refused, nothing taken.
    for bad in ["12345", "123_456", "1234567"] {
        assert_problem(
            app.submit_otp(&id, bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    // As WhatsApp's message shows it: the 6 digits are verified.
    let res = app.submit_otp(&id, "123-456").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["api_key"]["status"], "verified");
    assert!(m["completed_at"].is_string());
    assert!(m["channel_id"].is_string());
    assert_eq!(m["templates"]["status"], "completed", "{m:#}");
    assert!(m["templates"]["eligible"].as_u64().unwrap() >= 1);
    assert_eq!(
        m["templates"]["migrated"].as_array().unwrap().len() as u64,
        m["templates"]["eligible"].as_u64().unwrap()
    );
    assert!(!m["templates"]["skipped"].as_array().unwrap().is_empty());
    assert!(m["error"].is_null());
    // The summary shows what the migration kept and that the number can send.
    assert_eq!(m["summary"]["can_send_message"], "AVAILABLE");
    for item in [
        "display_name",
        "quality_rating",
        "messaging_limit_tier",
        "official_business_account",
    ] {
        assert_eq!(
            m["summary"]["preserved"][item]["preserved"], true,
            "{item}: {m:#}"
        );
    }
    assert!(m["summary"]["preserved"]["display_name"]["before"].is_string());

    let res = app.get(&format!("/v1/migrations/{id}/api_key")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let key: Value = res.json().await.unwrap();
    let api_key = key["api_key"].as_str().unwrap();
    assert_eq!(key["channel_id"], m["channel_id"]);
    assert_eq!(app.key_status(api_key).await, StatusCode::OK);

    // Every non-idempotent upstream call happened exactly once.
    for endpoint in [
        "start_migration",
        "request_code",
        "verify_code",
        "register",
        "api_keys",
    ] {
        assert_eq!(app.applied(phone, endpoint), 1, "{endpoint}");
    }

    // The audit trail walks every state in order.
    let events = app.events(&id).await;
    let path: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "migration.created" || is_transition(e))
        .map(|e| e["to_state"].as_str().unwrap())
        .collect();
    assert_eq!(
        path,
        [
            "queued",
            "prechecking",
            "initiating",
            "requesting_otp",
            "awaiting_otp",
            "verifying_otp",
            "registering",
            "copying_templates",
            "awaiting_channel",
            "generating_api_key",
            "completed"
        ]
    );
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // No secret in the audit trail.
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("123456") && !all.contains(api_key));
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn wrong_code_then_right_code(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550101";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;

    assert_eq!(
        app.submit_otp(&id, "000000").await.status(),
        StatusCode::ACCEPTED
    );
    // Back to awaiting_otp with one attempt less and the reason.
    let m = app
        .wait_until(&id, |m| {
            m["state"] == "awaiting_otp" && m["otp"]["attempts_left"] == 2
        })
        .await;
    assert_eq!(m["error"]["code"], "otp_invalid");
    assert_eq!(m["error"]["upstream"]["code"], 136025);

    assert_eq!(
        app.submit_otp(&id, "123456").await.status(),
        StatusCode::ACCEPTED
    );
    app.wait_for(&id, "completed").await;
    // A wrong code never costs a second SMS.
    assert_eq!(app.applied(phone, "request_code"), 1);
    assert_eq!(app.received(phone, "verify_code"), 2);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn wrong_codes_exhaust_attempts_into_failed(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.otp.max_attempts = 1;
    let app = TestApp::spawn_with(pool, opts).await;
    let id = app.create("+14155550102").await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "999999").await;
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "otp_invalid");
    assert_eq!(m["error"]["step"], "verifying_otp");
    assert_eq!(m["otp"]["attempts_left"], 0);
}

/// Issue 15: after the last wrong code the failed migration showed `attempts_left: 1`.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn five_wrong_codes_leave_no_attempt(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.otp.max_attempts = 5;
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550109";
    let id = app.create(phone).await;
    let m = app.wait_for(&id, "awaiting_otp").await;
    assert_eq!(m["otp"]["attempts_left"], 5);
    for left in (1..5).rev() {
        assert_eq!(
            app.submit_otp(&id, "000000").await.status(),
            StatusCode::ACCEPTED
        );
        app.wait_until(&id, |m| {
            m["state"] == "awaiting_otp" && m["otp"]["attempts_left"] == left
        })
        .await;
    }
    assert_eq!(
        app.submit_otp(&id, "000000").await.status(),
        StatusCode::ACCEPTED
    );
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "otp_invalid");
    assert_eq!(m["error"]["retryable"], true);
    assert_eq!(m["otp"]["attempts_left"], 0, "{m:#}");
    assert_eq!(app.received(phone, "verify_code"), 5);
    // No code is accepted any more; `retry` starts over with every attempt.
    let res = app.submit_otp(&id, "123456").await;
    assert_problem(res, StatusCode::CONFLICT, "invalid_state").await;
    let res = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let m = app.wait_for(&id, "awaiting_otp").await;
    assert_eq!(m["otp"]["attempts_left"], 5);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn malformed_codes_are_rejected_without_a_state_change(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+14155550103").await;
    // Not awaiting yet or already: either way a bad code is a 422 first.
    let res = app.submit_otp(&id, "12ab56").await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["pointer"], "/code");
    app.wait_for(&id, "awaiting_otp").await;
    let m = app.migration(&id).await;
    assert_eq!(m["otp"]["attempts_left"], 3);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn resend_inside_cooldown_is_429_with_retry_after(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.otp.resend_cooldown = Duration::from_secs(2);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550104";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;

    let res = app
        .post(
            &format!("/v1/migrations/{id}/otp/resend"),
            json!({ "method": "voice" }),
        )
        .await;
    let retry_after = retry_after_secs(&res);
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body = assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "otp_resend_too_soon").await;
    assert!(body["resend_available_at"].is_string());

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let res = app
        .post(
            &format!("/v1/migrations/{id}/otp/resend"),
            json!({ "method": "voice" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let m = app
        .wait_until(&id, |m| {
            m["state"] == "awaiting_otp" && app.applied(phone, "request_code") == 2
        })
        .await;
    assert_eq!(m["otp"]["method"], "voice");
    app.submit_otp(&id, "123456").await;
    app.wait_for(&id, "completed").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn unanswered_sms_switches_to_a_voice_call_once(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.otp.voice_fallback = Some(Duration::from_secs(1));
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550113";
    let id = app.create(phone).await;
    let m = app.wait_for(&id, "awaiting_otp").await;
    assert_eq!(m["otp"]["method"], "sms");
    // A second later, nobody has submitted the code: the client gets a call instead.
    let m = app
        .wait_until(&id, |m| {
            m["state"] == "awaiting_otp" && app.applied(phone, "request_code") == 2
        })
        .await;
    assert_eq!(m["otp"]["method"], "voice");
    // Only once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.applied(phone, "request_code"), 2);
    app.submit_otp(&id, "123456").await;
    app.wait_for(&id, "completed").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn cancel_stops_the_job_and_frees_the_number(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550105";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;

    let res = app
        .post(&format!("/v1/migrations/{id}/cancel"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let m: Value = res.json().await.unwrap();
    assert_eq!(m["state"], "cancelled");

    let res = app
        .post(&format!("/v1/migrations/{id}/cancel"), json!({}))
        .await;
    assert_problem(res, StatusCode::CONFLICT, "invalid_state").await;
    // A code for a cancelled migration is refused.
    let res = app.submit_otp(&id, "123456").await;
    assert_problem(res, StatusCode::CONFLICT, "invalid_state").await;
    // The number can be migrated again.
    app.create(phone).await;
    assert_eq!(app.applied(phone, "verify_code"), 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn retry_resumes_a_failed_migration_from_its_failed_step(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.otp.ttl = Duration::from_secs(1);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550106";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    // Nobody submits the code: the wait expires.
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "otp_expired");
    assert_eq!(m["error"]["step"], "awaiting_otp");
    assert_eq!(m["error"]["retryable"], true);
    let res = app.submit_otp(&id, "123456").await;
    assert_problem(res, StatusCode::CONFLICT, "invalid_state").await;

    let res = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let m: Value = res.json().await.unwrap();
    assert_eq!(m["state"], "requesting_otp");
    assert!(m["error"].is_null());

    app.wait_for(&id, "awaiting_otp").await;
    // The earlier steps were not repeated; a new code was requested.
    assert_eq!(app.applied(phone, "start_migration"), 1);
    assert_eq!(app.applied(phone, "request_code"), 2);
    app.submit_otp(&id, "123456").await;
    app.wait_for(&id, "completed").await;

    let res = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_problem(res, StatusCode::CONFLICT, "invalid_state").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn idempotent_create(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = TestApp::create_body("+14155550107");
    let send = |body: Value, key: &'static str| {
        app.http
            .post(app.url("/v1/migrations"))
            .bearer_auth(&app.partner_key)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send(body.clone(), "key-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();

    let again = send(body.clone(), "key-1").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    // Same key, different body: refused, nothing written.
    let mut other = body.clone();
    other["otp_method"] = json!("voice");
    let res = send(other, "key-1").await.unwrap();
    assert_problem(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    let list: Value = app
        .get("/v1/migrations?phone_number=%2B14155550107")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn second_active_migration_for_a_number_is_409(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+14155550108").await;
    let res = app
        .post("/v1/migrations", TestApp::create_body("+14155550108"))
        .await;
    let body = assert_problem(res, StatusCode::CONFLICT, "migration_already_active").await;
    assert_eq!(body["migration_id"], id);
    assert!(body["detail"].as_str().unwrap().contains("cancel it"));
    // Another tenant learns that the number is busy, not which migration it is or whose, and
    // is not told to cancel what it cannot see.
    let (_, other_key) = app.other_partner().await;
    let res = app
        .post_as(
            &other_key,
            "/v1/migrations",
            TestApp::create_body("+14155550108"),
        )
        .await;
    let body = assert_problem(res, StatusCode::CONFLICT, "migration_already_active").await;
    assert!(body.get("migration_id").is_none());
    let detail = body["detail"].as_str().unwrap();
    assert_eq!(
        detail,
        "This phone number is being migrated by another partner; it can be migrated again once that migration ends."
    );
    let text = body.to_string();
    assert!(
        !text.contains(&id) && !text.contains(&app.partner_id),
        "{text}"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn other_tenants_migrations_are_404(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+14155550109").await;
    let (_, other_key) = app.other_partner().await;
    for path in [
        format!("/v1/migrations/{id}"),
        format!("/v1/migrations/{id}/events"),
        format!("/v1/migrations/{id}/api_key"),
    ] {
        let res = app.get_as(&other_key, &path).await;
        assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    }
    for path in ["otp", "otp/resend", "cancel", "retry"] {
        let body = if path == "otp" {
            json!({ "code": "123456" })
        } else {
            json!({})
        };
        let res = app
            .post_as(&other_key, &format!("/v1/migrations/{id}/{path}"), body)
            .await;
        assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    }
    let list: Value = app
        .get_as(&other_key, "/v1/migrations")
        .await
        .json()
        .await
        .unwrap();
    assert!(list["data"].as_array().unwrap().is_empty());
    // The admin sees it.
    let res = app.get_as(ADMIN_KEY, &format!("/v1/migrations/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn list_is_newest_first_with_keyset_pages_and_filters(pool: PgPool) {
    let opts = Options::no_worker();
    let app = TestApp::spawn_with(pool, opts).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create(&format!("+1415555021{i}")).await);
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/migrations?limit=2&cursor={c}"),
            None => "/v1/migrations?limit=2".into(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        for m in page["data"].as_array().unwrap() {
            seen.push(m["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let page: Value = app
        .get("/v1/migrations?state=queued&phone_number=%2B14155550212")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let page: Value = app
        .get("/v1/migrations?state=completed")
        .await
        .json()
        .await
        .unwrap();
    assert!(page["data"].as_array().unwrap().is_empty());
    let future = "2999-01-01T00:00:00Z";
    let page: Value = app
        .get(&format!("/v1/migrations?created_before={future}&limit=100"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 5);

    let res = app.get("/v1/migrations?limit=101").await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let res = app.get("/v1/migrations?cursor=nonsense").await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let res = app.get("/v1/migrations?state=bogus").await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn bad_input_gets_problem_json_and_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app
        .post(
            "/v1/migrations",
            json!({
                "phone_number": "5511987654321",
                "source_waba_id": "abc",
                "destination_waba_id": "123",
                "meta_business_id": "456",
                "pin": "12",
                "otp_language": "english",
                "callback_url": "not a url",
            }),
        )
        .await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    for p in [
        "/phone_number",
        "/source_waba_id",
        "/otp_language",
        "/pin",
        "/callback_url",
    ] {
        assert!(pointers.contains(&p), "{p} in {pointers:?}");
    }

    let mut unknown = TestApp::create_body("+14155550110");
    unknown["surprise"] = json!(1);
    let res = app.post("/v1/migrations", unknown).await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["pointer"], "/surprise");

    let res = app
        .http
        .post(app.url("/v1/migrations"))
        .bearer_auth(&app.partner_key)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(
        res,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    let res = app
        .http
        .post(app.url("/v1/migrations"))
        .bearer_auth(&app.partner_key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::BAD_REQUEST, "malformed_json").await;

    let res = app
        .http
        .post(app.url("/v1/migrations"))
        .bearer_auth(&app.partner_key)
        .header("content-type", "application/json")
        .body(format!("{{\"metadata\": \"{}\"}}", "x".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    let res = app
        .http
        .get(app.url("/v1/migrations"))
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let res = app.get_as("wm_nope_nope", "/v1/migrations").await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let res = app.get("/v1/migrations/not-a-uuid").await;
    assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;

    assert_eq!(app.count_migrations().await, 0);
}

/// Only a partner creates migrations: the admin key is a 403 whatever the body, valid or not
/// (it used to be a 422 for an invalid body, as if fixing it would help).
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_admin_key_cannot_create_whatever_the_body(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for body in [
        TestApp::create_body("+14155550110"),
        json!({ "phone_number": "+10" }),
        json!({}),
    ] {
        let res = app.post_as(ADMIN_KEY, "/v1/migrations", body).await;
        assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
    }
    assert_eq!(app.count_migrations().await, 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn api_key_is_not_available_before_completion(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+14155550111").await;
    app.wait_for(&id, "awaiting_otp").await;
    let res = app.get(&format!("/v1/migrations/{id}/api_key")).await;
    assert_problem(res, StatusCode::CONFLICT, "api_key_not_ready").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn number_already_in_destination_skips_initiation(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Sandbox scenario 0004: already migrated and registered in the destination.
    let phone = "+14155550004";
    let id = app.create(phone).await;
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(app.applied(phone, "start_migration"), 0);
    assert_eq!(app.applied(phone, "request_code"), 0);
    assert_eq!(app.applied(phone, "register"), 0);
    let check = m["precheck"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "not_in_destination")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "warn");
    assert_eq!(check["code"], "already_in_destination");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn precheck_dry_run_reports_without_creating(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut body = TestApp::create_body("+5511987650012");
    body.as_object_mut().unwrap().remove("flow");
    let res = app.post("/v1/prechecks", body).await;
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["status"], "fail");
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "fail")
        .unwrap()
        .clone();
    assert_eq!(check["code"], "brazil_ninth_digit_mismatch", "{check:#}");
    assert!(check["message"].as_str().unwrap().contains("+55"));
    assert!(!check["remediation"].as_str().unwrap().is_empty());
    assert_eq!(app.count_migrations().await, 0);
}

/// The form the Brazil check names (registered without the mobile 9, which libphonenumber no
/// longer calls valid) is accepted, and the migration of it completes.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_brazil_form_the_precheck_names_can_be_migrated(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app
        .post("/v1/prechecks", TestApp::create_body("+5521987650012"))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    let check = check_in(&report, "number_on_source");
    assert_eq!(check["code"], "brazil_ninth_digit_mismatch", "{check:#}");
    let named = "+552187650012";
    assert!(
        check["message"].as_str().unwrap().contains(named),
        "{check:#}"
    );

    let id = app.create(named).await;
    let done = app.complete(&id).await;
    assert_eq!(done["phone_number"], named);
    assert_eq!(done["api_key"]["status"], "verified", "{done:#}");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn embedded_signup_flow_skips_the_otp_steps(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550112";
    let mut body = TestApp::create_body(phone);
    body["flow"] = json!("embedded_signup");
    body["channel_id"] = json!("esChannel01CH");
    let res = app.post("/v1/migrations", body).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["channel_id"], "esChannel01CH");
    for endpoint in ["start_migration", "request_code", "verify_code", "register"] {
        assert_eq!(app.received(phone, endpoint), 0, "{endpoint}");
    }
    assert_eq!(app.applied(phone, "api_keys"), 1);
    assert_eq!(m["templates"]["status"], "completed", "{m:#}");
    assert!(!m["templates"]["migrated"].as_array().unwrap().is_empty());
    assert_eq!(m["summary"]["can_send_message"], "AVAILABLE");
    let key = app.stored_key(&id).await;
    assert_eq!(app.key_status(&key).await, StatusCode::OK);
}

/// The 201 of a create is byte for byte what `GET /v1/migrations/{id}` answers for the same
/// migration (same fields in the same order), with `Location`; so is an idempotent replay.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn create_answers_the_get_body_and_its_location(pool: PgPool) {
    // No worker: the migration stays as created, so GET must show exactly the same.
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let mut body = TestApp::create_body("+14155550741");
    body["metadata"] = json!({ "zeta": 1, "alpha": { "b": 2, "a": [1, "x"] } });
    body["callback_url"] = json!("https://hooks.example.com/waba?t=1");
    let send = || {
        app.http
            .post(app.url("/v1/migrations"))
            .bearer_auth(&app.partner_key)
            .header("Idempotency-Key", "same-shape-1")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let created = first.text().await.unwrap();
    let id = serde_json::from_str::<Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(location, format!("/v1/migrations/{id}"));

    let got = app.get(&location).await;
    assert_eq!(got.status(), StatusCode::OK);
    let got = got.text().await.unwrap();
    assert_eq!(top_level_keys(&created), top_level_keys(&got));
    pretty_assertions::assert_eq!(created, got);

    // The replay of the same request: the same bytes and the same Location.
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location.as_str());
    pretty_assertions::assert_eq!(again.text().await.unwrap(), created);
}

/// The keys of a JSON object in the order the text has them (serde_json's `Value` sorts them).
fn top_level_keys(json: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut de = serde_json::Deserializer::from_str(json);
    struct Keys<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                self.0.push(k);
            }
            Ok(())
        }
    }
    serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys)).unwrap();
    keys
}

/// `migrations/20261126000008_event_types.sql` renames the events written before one naming
/// (transitions into `awaiting_otp`, `completed`, `failed`, `cancelled` recorded as
/// `migration.state_changed`) to what the service writes now, and touches nothing else.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn old_transition_events_are_renamed_like_their_webhooks(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let id = app.create("+14155550742").await;
    let old = [
        (
            "migration.state_changed",
            Some("queued"),
            Some("prechecking"),
        ),
        (
            "migration.state_changed",
            Some("requesting_otp"),
            Some("awaiting_otp"),
        ),
        (
            "migration.state_changed",
            Some("verifying_otp"),
            Some("awaiting_otp"),
        ),
        (
            "migration.state_changed",
            Some("awaiting_otp"),
            Some("requesting_otp"),
        ),
        (
            "migration.state_changed",
            Some("generating_api_key"),
            Some("completed"),
        ),
        (
            "migration.state_changed",
            Some("registering"),
            Some("failed"),
        ),
        (
            "migration.state_changed",
            Some("failed"),
            Some("registering"),
        ),
        (
            "migration.state_changed",
            Some("awaiting_otp"),
            Some("cancelled"),
        ),
        (
            "migration.step_retry_scheduled",
            Some("registering"),
            Some("registering"),
        ),
        ("migration.api_key_retrieved", None, None),
    ];
    for (i, (kind, from, to)) in old.iter().enumerate() {
        sqlx::query(
            "INSERT INTO migration_events (migration_id, seq, type, from_state, to_state)
             VALUES ($1::uuid, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(100 + i as i32)
        .bind(kind)
        .bind(from)
        .bind(to)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let sql = include_str!("../../migrations/20261126000008_event_types.sql");
    sqlx::raw_sql(sql).execute(&app.pool).await.unwrap();
    // Idempotent: a second run (after a rolling deploy) changes nothing more.
    sqlx::raw_sql(sql).execute(&app.pool).await.unwrap();

    let renamed: Vec<String> = app
        .events(&id)
        .await
        .iter()
        .filter(|e| e["seq"].as_i64().unwrap() >= 100)
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        renamed,
        [
            "migration.state_changed",
            "migration.awaiting_otp",
            "migration.awaiting_otp",
            "migration.state_changed",
            "migration.completed",
            "migration.failed",
            "migration.state_changed",
            "migration.cancelled",
            "migration.step_retry_scheduled",
            "migration.api_key_retrieved",
        ]
    );
    // What the service writes for the same transitions today.
    for (kind, (_, from, to)) in renamed.iter().zip(&old) {
        if let (Some(from), Some(to)) = (from, to)
            && from != to
        {
            let to: MigrationState = to.parse().unwrap();
            assert_eq!(kind, EventType::for_transition(to).as_str());
        }
    }
}

/// A number that is already a running 360dialog channel on the WABA it leaves (a change of
/// WABA inside 360dialog): the channel list shows that one beside the new one on the
/// destination, which is not running yet at the first look. The migration waits for the
/// destination's channel and makes its key there; the old channel gets none.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_key_is_made_on_the_destination_channel_not_the_one_the_number_leaves(pool: PgPool) {
    let mut opts = Options::default();
    opts.sandbox.channel_running_after = Duration::from_millis(1500);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155552312";
    app.channel_on_source(phone, "leavingWaba01CH").await;

    let id = app.create(phone).await;
    let m = app.complete(&id).await;
    let channel_id = m["channel_id"].as_str().unwrap();
    assert_ne!(channel_id, "leavingWaba01CH", "{m:#}");
    assert_eq!(m["api_key"]["status"], "verified");
    for (channel, keys) in [("leavingWaba01CH", 0), (channel_id, 1)] {
        let c = app.sandbox_channel(channel).await;
        assert_eq!(c["keys_issued"], keys, "{c:#}");
    }
}

/// Meta's 133006 at `register` ("re-verification needed") fails the migration with
/// `otp_expired`; its retry requests a new code instead of registering again.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_retry_after_a_lapsed_verification_requests_a_new_code(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let phone = "+14155550488";
    let id = app.create(phone).await;
    app.worker().run_until_idle().await.unwrap();
    app.wait_for(&id, "awaiting_otp").await;
    // As the register step leaves a 133006: failed in registering with otp_expired (due now,
    // as the worker's failures are).
    sqlx::query(
        "UPDATE migrations SET state = 'failed', failed_step = 'registering', error = $2,
                run_at = now()
          WHERE id = $1::uuid",
    )
    .bind(&id)
    .bind(json!({
        "code": "otp_expired", "message": "Meta asks for the number to be verified again",
        "remediation": "Retry", "actor": "partner", "step": "registering", "retryable": true,
    }))
    .execute(&app.pool)
    .await
    .unwrap();
    let res = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let m: Value = res.json().await.unwrap();
    assert_eq!(m["state"], "requesting_otp", "{m:#}");
    let sent = app.received(phone, "request_code");
    app.worker().run_until_idle().await.unwrap();
    let m = app.wait_for(&id, "awaiting_otp").await;
    assert_eq!(
        app.received(phone, "request_code"),
        sent + 1,
        "a new code: {m:#}"
    );
}

/// An `Idempotency-Key` answers its first response for 24 hours; after that it names a new
/// request, and the housekeeping deletes it.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_idempotency_key_is_kept_24_hours(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let send = |phone: &str| {
        app.http
            .post(app.url("/v1/migrations"))
            .bearer_auth(&app.partner_key)
            .header("idempotency-key", "kept-1")
            .json(&TestApp::create_body(phone))
            .send()
    };
    assert_eq!(
        send("+14155550671").await.unwrap().status(),
        StatusCode::CREATED
    );
    let res = send("+14155550672").await.unwrap();
    assert_problem(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let res = send("+14155550672").await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(res.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.count_migrations().await, 2);

    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let deleted = waba_migrator::core::migrations::forget_old_idempotency_keys(&app.state)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
}
