//! Transient upstream failures are retried to completion; permanent ones fail precisely.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Options, TestApp};

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn transient_failures_are_retried_until_completed(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550301";
    app.faults(json!([
        { "endpoint": "get_waba", "fault": "server_error", "times": 1 },
        { "endpoint": "start_migration", "phone_number": phone, "fault": "timeout", "times": 1 },
        { "endpoint": "request_code", "phone_number": phone, "fault": "rate_limited", "times": 1 },
        { "endpoint": "register", "phone_number": phone, "fault": "server_error", "times": 2 },
        { "endpoint": "list_channels", "fault": "connection_reset", "times": 1 },
        { "endpoint": "api_keys", "phone_number": phone, "fault": "rate_limited", "times": 1 },
    ]))
    .await;
    let id = app.create(phone).await;
    let m = app.complete(&id).await;
    assert!(m["error"].is_null());

    for endpoint in ["start_migration", "request_code", "register", "api_keys"] {
        assert_eq!(app.applied(phone, endpoint), 1, "{endpoint}");
    }
    assert_eq!(app.received(phone, "register"), 3);

    let retries: Vec<Value> = app
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "migration.step_retry_scheduled")
        .collect();
    assert!(retries.len() >= 5, "{retries:#?}");
    let register_retry = retries
        .iter()
        .find(|e| e["to_state"] == "registering")
        .unwrap();
    assert_eq!(
        register_retry["data"]["error"]["code"],
        "upstream_unavailable"
    );
    assert_eq!(
        register_retry["data"]["error"]["upstream"]["http_status"],
        500
    );
    // A 5xx may be a gateway that gave up while Meta still applies the call: the retry (which
    // reads the number's status first) waits as long as a call may take (2 s here), not the
    // backoff's 50 ms.
    for retry in retries.iter().filter(|e| e["to_state"] == "registering") {
        let delay = retry["data"]["retry_in_seconds"].as_f64().unwrap();
        assert!(delay >= 2.0, "{retry:#}");
    }
    // A throttled request_code was refused, not left unsettled: the backoff's delay.
    let request_code_retry = retries
        .iter()
        .find(|e| e["to_state"] == "requesting_otp")
        .unwrap();
    let delay = request_code_retry["data"]["retry_in_seconds"]
        .as_f64()
        .unwrap();
    assert!(delay < 2.0, "{request_code_retry:#}");

    let key = app.stored_key(&id).await;
    assert_eq!(app.key_status(&key).await, StatusCode::OK);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_upstream_that_keeps_failing_fails_with_upstream_unavailable(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Scenario 0022: Meta's "There was an error migrating this phone number", every time.
    let phone = "+14155550022";
    let id = app.create(phone).await;
    let m = app.wait_for(&id, "failed").await;
    let e = &m["error"];
    assert_eq!(e["code"], "upstream_unavailable");
    assert_eq!(e["step"], "initiating");
    assert_eq!(e["retryable"], true);
    assert_eq!(e["upstream"]["subcode"], 2388103);
    assert!(e["upstream"]["fbtrace_id"].as_str().unwrap().len() > 3);
    // "Try again after some time": tried again with the long backoff for the configured total
    // (50 ms doubling to 200 ms, 1.5 s in tests), not max_attempts (4) times, and the message
    // says truthfully how many tries were made.
    let tries = app.received(phone, "start_migration");
    assert!(tries > 4, "{tries} tries");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("to each of {tries} tries over")),
        "{tries} tries: {e:#}"
    );
    let retries = app
        .events(&id)
        .await
        .into_iter()
        .filter(|ev| ev["type"] == "migration.step_retry_scheduled")
        .count();
    assert_eq!(retries as u64, tries - 1);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_permanent_upstream_error_fails_with_the_right_code_and_trace(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Scenario 0001: two-step verification still on.
    let phone = "+14155550001";
    let id = app.create(phone).await;
    let m = app.wait_for(&id, "failed").await;
    let e = &m["error"];
    assert_eq!(e["code"], "two_factor_enabled", "{m:#}");
    assert_eq!(e["step"], "initiating");
    assert_eq!(e["actor"], "client");
    assert!(!e["remediation"].as_str().unwrap().is_empty());
    assert_eq!(e["upstream"]["service"], "meta");
    assert_eq!(e["upstream"]["http_status"], 400);
    assert_eq!(e["upstream"]["code"], 100);
    assert_eq!(e["upstream"]["subcode"], 2388103);
    assert!(e["upstream"]["fbtrace_id"].as_str().unwrap().len() > 3);
    // Permanent: tried once.
    assert_eq!(app.received(phone, "start_migration"), 1);
    assert_eq!(app.received(phone, "request_code"), 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_waba_graph_cannot_load_fails_the_precheck_naming_it(pool: PgPool) {
    // Not seeded, the sandbox answers 100/33 "Object with ID … does not exist, cannot be loaded
    // due to missing permissions" for an unknown id of this form, as Graph does for a WABA not
    // shared with the token's system user.
    let app = TestApp::spawn_with(
        pool,
        Options {
            seed_sandbox: false,
            ..Options::default()
        },
    )
    .await;
    let unreadable = "1090000000000077";
    let phone = "+14155550733";
    let mut body = TestApp::create_body(phone);
    body["source_waba_id"] = json!(unreadable);
    let id = app.create_with(body).await;
    let m = app.wait_for(&id, "failed").await;
    let e = &m["error"];
    assert_eq!(e["code"], "upstream_auth", "{m:#}");
    assert_eq!(e["step"], "prechecking");
    assert_eq!(e["upstream"]["code"], 100);
    assert_eq!(e["upstream"]["subcode"], 33);
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("cannot read an object the precheck needs"),
        "{message}"
    );
    assert!(message.contains(unreadable), "{message}");
    assert!(
        e["remediation"].as_str().unwrap().contains("share"),
        "{e:#}"
    );
    // Permanent: the number's listing was not tried again without the filter.
    assert_eq!(app.received(phone, "start_migration"), 0);

    // The dry run answers with the code the migration failed with.
    let mut body = TestApp::create_body("+14155550734");
    body["source_waba_id"] = json!(unreadable);
    let res = app.post("/v1/prechecks", body).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "upstream_auth", "{problem:#}");
    assert_eq!(problem["upstream"]["subcode"], 33, "{problem:#}");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn precheck_failures_stop_before_anything_changes_upstream(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Scenario 0003: display name not approved.
    let phone = "+14155550003";
    let id = app.create(phone).await;
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "display_name_not_approved");
    assert_eq!(m["error"]["step"], "prechecking");
    assert_eq!(m["precheck"]["status"], "fail");
    assert_eq!(app.received(phone, "start_migration"), 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn register_limit_is_not_retried(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550017";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "register_limit_reached");
    assert_eq!(m["error"]["upstream"]["code"], 133016);
    assert_eq!(app.received(phone, "register"), 1);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn register_is_called_at_most_five_times_in_72_hours_across_retries(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550315";
    app.faults(json!([
        { "endpoint": "register", "phone_number": phone, "fault": "server_error", "times": 20 },
    ]))
    .await;
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    // MAX_STEP_ATTEMPTS is 4 in tests: the step gives up after four calls.
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "upstream_unavailable", "{m:#}");
    assert_eq!(app.received(phone, "register"), 4);

    // The partner retries: one more call fails, and the step stops at five in 72 hours,
    // before Meta's cap of ten (the old provider's calls count there too) blocks the number.
    let r = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let m = app.wait_for_failures(&id, 2, None).await;
    assert_eq!(m["error"]["code"], "register_limit_reached", "{m:#}");
    assert_eq!(m["error"]["step"], "registering");
    assert_eq!(m["error"]["retryable"], true);
    assert!(
        m["error"]["message"]
            .as_str()
            .unwrap()
            .contains("register was called 5 times for this number in the last 72 hours"),
        "{m:#}"
    );
    assert!(
        m["error"].get("upstream").is_none(),
        "no call was made: {m:#}"
    );
    assert_eq!(app.received(phone, "register"), 5);
}

/// Meta counts register calls per number: a new migration of the number inherits the calls of
/// the one before it.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_new_migration_of_the_number_counts_the_register_calls_of_the_last(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550316";
    app.faults(json!([
        { "endpoint": "register", "phone_number": phone, "fault": "server_error", "times": 20 },
    ]))
    .await;
    let first = app.create(phone).await;
    app.wait_for(&first, "awaiting_otp").await;
    app.submit_otp(&first, "123456").await;
    let m = app.wait_for(&first, "failed").await;
    assert_eq!(m["error"]["code"], "upstream_unavailable", "{m:#}");
    assert_eq!(app.received(phone, "register"), 4);

    // The number is verified already: the second goes from requesting_otp to registering.
    let second = app.create(phone).await;
    let m = app.wait_for(&second, "failed").await;
    assert_eq!(m["error"]["step"], "registering", "{m:#}");
    assert_eq!(m["error"]["code"], "register_limit_reached", "{m:#}");
    assert_eq!(
        app.received(phone, "register"),
        5,
        "one call left to the second"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn channel_that_never_runs_times_out(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.channel_timeout = std::time::Duration::from_secs(1);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550019";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "channel_timeout");
    assert_eq!(m["error"]["step"], "awaiting_channel");
    assert_eq!(app.applied(phone, "api_keys"), 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn missing_key_permission_is_explained(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.channel_timeout = std::time::Duration::from_secs(1);
    let app = TestApp::spawn_with(pool, opts).await;
    let id = app.create("+14155550020").await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "api_key_permission_missing");
    assert_eq!(m["error"]["actor"], "client");
}

/// 360dialog documents neither the path nor the answer of `shared_client_numbers`: when it
/// cannot be read (here `{"success": false}`), the migration does not wait on it. Generating
/// the key decides: it works with permission, and without it fails at once with
/// `api_key_permission_missing`, retryable, instead of waiting out the channel deadline.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_unreadable_permission_answer_lets_key_generation_decide(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.faults(json!([
        { "endpoint": "shared_client_numbers", "fault": "success_false", "times": 100 },
    ]))
    .await;
    let granted = "+14155550314";
    let id = app.create(granted).await;
    let m = app.complete(&id).await;
    assert!(m["error"].is_null(), "{m:#}");
    assert!(app.received(granted, "shared_client_numbers") >= 1);
    assert_eq!(app.applied(granted, "api_keys"), 1);

    // Without permission (scenario 0020): no wait in awaiting_channel, a 403 at generation.
    let denied = "+14155550020";
    let id = app.create(denied).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "api_key_permission_missing", "{m:#}");
    assert_eq!(m["error"]["step"], "generating_api_key", "{m:#}");
    assert_eq!(m["error"]["retryable"], true, "{m:#}");
    // The client grants it; the partner retries; the key is made.
    app.sandbox.resolve(denied).unwrap();
    let res = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let m = app.wait_for(&id, "completed").await;
    assert!(m["error"].is_null(), "{m:#}");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_undecryptable_secret_fails_visibly_instead_of_looping(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+14155550302").await;
    app.wait_for(&id, "awaiting_otp").await;
    // As if ENCRYPTION_KEY had changed: the partner's 360dialog key no longer decrypts.
    sqlx::query("UPDATE partners SET d360_api_key_enc = '\\x00010203'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.submit_otp(&id, "123456").await;
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "internal_error");
    assert_eq!(m["error"]["step"], "awaiting_channel");
    assert!(
        m["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be decrypted")
    );
}

/// Meta removes a field in the configured Graph version: reads go without it (one refused read
/// per field, then none), the migration completes, and the precheck says which checks it could
/// not make instead of failing on an absent field.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_graph_version_without_some_fields_still_migrates(pool: PgPool) {
    let mut opts = Options::default();
    opts.sandbox.graph_missing_fields = vec![
        "waba.primary_funding_id".into(),
        "phone_number.is_on_biz_app".into(),
    ];
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550312";
    let id = app.create(phone).await;
    let m = app.complete(&id).await;
    assert!(m["error"].is_null(), "{m:#}");
    assert_eq!(m["precheck"]["status"], "warn", "{m:#}");
    let checks = m["precheck"]["checks"].as_array().expect("checks");
    for (check, field) in [
        ("destination_payment_method", "primary_funding_id"),
        ("not_on_business_app", "is_on_biz_app"),
    ] {
        let c = checks
            .iter()
            .find(|c| c["id"] == check)
            .unwrap_or_else(|| panic!("no {check} in {m:#}"));
        assert_eq!(c["status"], "warn", "{c:#}");
        let message = c["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{c:#}");
    }
    // The first reads that asked for a missing field were refused (the precheck reads both
    // WABAs at once); the reads after them leave it out: another migration meets no refusal.
    let refused =
        |phone: &str, endpoint: &str| app.received(phone, endpoint) - app.applied(phone, endpoint);
    assert!((1..=2).contains(&refused(phone, "get_waba")));
    // Operators see it on /metrics, to alert on.
    let metrics = app.metrics_text().await;
    for field in ["waba.primary_funding_id", "phone_number.is_on_biz_app"] {
        let line = format!("waba_graph_field_unavailable{{field=\"{field}\"}} 1");
        assert!(metrics.contains(&line), "no {line} in /metrics");
    }
    let other = "+14155550313";
    let id = app.create(other).await;
    let m = app.complete(&id).await;
    assert!(m["error"].is_null(), "{m:#}");
    for endpoint in ["get_waba", "list_phone_numbers", "get_phone_number"] {
        assert_eq!(refused(other, endpoint), 0, "{endpoint}");
    }
    assert!(app.received(other, "get_waba") >= 2);
}
