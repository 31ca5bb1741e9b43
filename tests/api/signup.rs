//! Embedded Signup before the channel exists: `flow: "embedded_signup"` without `channel_id`
//! waits in `awaiting_signup` (`waiting_for.code` `signup_not_completed`, actor client) until
//! 360dialog shows a channel for the number, or the partner sends it with
//! `PATCH /v1/migrations/{id}`; at its deadline it fails with `signup_not_completed`. Partners
//! store their signup link as `signup_url`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{
    ADMIN_KEY, Options, SOURCE_WABA, TestApp, assert_problem, check_in, is_transition,
};

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap()
}

/// The states an Embedded Signup migration that names its channel goes through.
const NAMED_CHANNEL_PATH: [&str; 6] = [
    "queued",
    "prechecking",
    "copying_templates",
    "awaiting_channel",
    "generating_api_key",
    "completed",
];

/// An Embedded Signup create body without `channel_id`.
fn signup_body(phone: &str) -> Value {
    let mut body = TestApp::create_body(phone);
    body["flow"] = json!("embedded_signup");
    body
}

async fn patch_as(app: &TestApp, key: &str, path: &str, body: Value) -> reqwest::Response {
    app.http
        .request(Method::PATCH, app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The states the migration entered, in order (`queued` first).
async fn path_of(app: &TestApp, id: &str) -> Vec<String> {
    app.events(id)
        .await
        .iter()
        .filter(|e| e["type"] == "migration.created" || is_transition(e))
        .map(|e| e["to_state"].as_str().unwrap().to_owned())
        .collect()
}

/// The stored row's `updated_at` and its number of events: what a refused request must leave.
async fn footprint(app: &TestApp, id: &str) -> (DateTime<Utc>, i64) {
    let updated_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT updated_at FROM migrations WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    (updated_at, app.event_count(id, None).await)
}

/// The precheck passed but for its reminder that two-step verification must be off, which the
/// signup needs as much as the OTP flow does.
fn only_two_step_verification_warns(m: &Value) {
    assert_eq!(m["precheck"]["status"], "warn", "{m:#}");
    let not_passed: Vec<&str> = m["precheck"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "pass")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(not_passed, ["two_factor_disabled"], "{m:#}");
}

/// Created without a channel id, the migration prechecks and waits for the client's signup
/// (on the client, with a deadline); when the client finishes it (the sandbox's
/// `complete_signup`), it finds the channel by the number and completes with that channel and
/// a verified key.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn without_a_channel_id_it_waits_for_the_signup_then_completes(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155552301";
    let res = app.post("/v1/migrations", signup_body(phone)).await;
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["flow"], "embedded_signup", "{created:#}");
    assert_eq!(created["channel_id"], Value::Null);
    let id = created["id"].as_str().unwrap().to_owned();

    let m = app.wait_for(&id, "awaiting_signup").await;
    let w = &m["waiting_for"];
    assert_eq!(w["code"], "signup_not_completed", "{m:#}");
    assert_eq!(w["actor"], "client");
    let remediation = w["remediation"].as_str().unwrap();
    assert!(remediation.contains("signup link"), "{remediation}");
    assert!(
        remediation.contains("PATCH /v1/migrations/{id}"),
        "{remediation}"
    );
    assert!(w["message"].as_str().unwrap().contains("Embedded Signup"));
    // The test configuration waits 60 s for the signup.
    assert_eq!(
        at(&w["deadline"]) - at(&w["since"]),
        chrono::Duration::seconds(60)
    );
    assert_eq!(m["channel_id"], Value::Null);
    only_two_step_verification_warns(&m);
    // It keeps looking without moving on while there is no channel.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(app.received(phone, "list_channels") >= 2);
    assert_eq!(app.migration(&id).await["state"], "awaiting_signup");

    let (status, channel) = app.complete_signup(phone, None).await;
    assert_eq!(status, StatusCode::OK, "{channel:#}");
    assert_eq!(channel["status"], "running");
    assert_eq!(channel["permission"], true);
    assert_eq!(channel["phone_number"], phone);
    let channel_id = channel["id"].as_str().unwrap().to_owned();

    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["channel_id"], channel_id.as_str());
    assert_eq!(m["api_key"]["status"], "verified", "{m:#}");
    assert_eq!(m["waiting_for"], Value::Null);
    let key = app.stored_key(&id).await;
    assert_eq!(app.key_status(&key).await, StatusCode::OK);
    for endpoint in ["start_migration", "request_code", "verify_code", "register"] {
        assert_eq!(app.received(phone, endpoint), 0, "{endpoint}");
    }
    assert_eq!(
        path_of(&app, &id).await,
        [
            "queued",
            "prechecking",
            "awaiting_signup",
            "copying_templates",
            "awaiting_channel",
            "generating_api_key",
            "completed"
        ]
    );
}

/// With `channel_id` at create the path is the one it always was: no `awaiting_signup`.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn with_a_channel_id_the_path_is_unchanged(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut body = signup_body("+14155552302");
    body["channel_id"] = json!("esKnown01CH");
    let id = app.create_with(body).await;
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["channel_id"], "esKnown01CH");
    assert_eq!(path_of(&app, &id).await, NAMED_CHANNEL_PATH);
    assert_eq!(
        app.event_count(&id, Some("migration.channel_id_set")).await,
        0
    );
}

/// `PATCH …` `{"channel_id"}` while it waits: the migration looks the channel up at once (the
/// next poll would be 60 s away) and completes with it; the audit trail records who set it.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_patched_channel_id_continues_at_once(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.channel_poll = Duration::from_secs(60);
    opts.worker.signup_poll_max = Duration::from_secs(60);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155552303";
    let id = app.create_with(signup_body(phone)).await;
    app.wait_for(&id, "awaiting_signup").await;
    // The first look found nothing; the next is 60 s away.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.received(phone, "list_channels") == 0 {
        assert!(Instant::now() < deadline, "no first look");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sent = Instant::now();
    let res = patch_as(
        &app,
        &app.partner_key,
        &format!("/v1/migrations/{id}"),
        json!({ "channel_id": " esPatched01CH " }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let patched: Value = res.json().await.unwrap();
    assert_eq!(patched["channel_id"], "esPatched01CH", "trimmed");
    assert_eq!(patched["id"], id.as_str());
    // The owner's answer carries the client page link, like every other answer.
    assert!(patched["client_page"]["url"].is_string(), "{patched}");

    let m = app.wait_for(&id, "completed").await;
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "continued at once, not at the next poll: {:?}",
        sent.elapsed()
    );
    assert_eq!(m["channel_id"], "esPatched01CH");
    assert_eq!(m["api_key"]["status"], "verified");

    let events = app.events(&id).await;
    let set: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "migration.channel_id_set")
        .collect();
    assert_eq!(set.len(), 1, "{events:#?}");
    assert_eq!(
        set[0]["data"],
        json!({ "channel_id": "esPatched01CH", "previous": null, "by": "partner" })
    );
    // No state change, so no states and no webhook.
    assert_eq!(set[0]["from_state"], Value::Null);
    assert_eq!(set[0]["to_state"], Value::Null);
    let webhooks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE migration_id = $1::uuid AND event_type = 'migration.channel_id_set'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(webhooks, 0);
}

/// Set while still queued (the admin key may too), the channel id makes the precheck go
/// straight to the templates: no `awaiting_signup`.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_channel_id_set_before_the_precheck_skips_the_wait(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let id = app.create_with(signup_body("+14155552304")).await;
    let res = patch_as(
        &app,
        ADMIN_KEY,
        &format!("/v1/migrations/{id}"),
        json!({ "channel_id": "esEarly01CH" }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let m: Value = res.json().await.unwrap();
    assert_eq!(
        (m["state"].as_str(), m["channel_id"].as_str()),
        (Some("queued"), Some("esEarly01CH"))
    );
    // The same id again changes nothing.
    let before = footprint(&app, &id).await;
    let res = patch_as(
        &app,
        &app.partner_key,
        &format!("/v1/migrations/{id}"),
        json!({ "channel_id": "esEarly01CH" }),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(footprint(&app, &id).await, before);

    app.worker().run_until_idle().await.unwrap();
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["channel_id"], "esEarly01CH");
    let path = path_of(&app, &id).await;
    assert!(!path.contains(&"awaiting_signup".to_owned()), "{path:?}");
    let set = app.events(&id).await;
    let set = set
        .iter()
        .find(|e| e["type"] == "migration.channel_id_set")
        .unwrap();
    assert_eq!(set["data"]["by"], "admin");
}

/// Refusals write nothing: an OTP-flow migration (409 `flow_mismatch`), a state past the
/// signup (409 `invalid_state`), bad bodies (422 with pointers), another partner's migration
/// (404).
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn refused_patches_write_nothing(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let key = app.partner_key.clone();
    let otp = app.create("+14155552305").await;
    let es = app.create_with(signup_body("+14155552306")).await;
    let cancelled = app.create_with(signup_body("+14155552307")).await;
    let res = app
        .post(&format!("/v1/migrations/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    let before_otp = footprint(&app, &otp).await;
    let res = patch_as(
        &app,
        &key,
        &format!("/v1/migrations/{otp}"),
        json!({ "channel_id": "x1CH" }),
    )
    .await;
    let problem = assert_problem(res, StatusCode::CONFLICT, "flow_mismatch").await;
    assert_eq!(problem["flow"], "otp");
    assert_eq!(footprint(&app, &otp).await, before_otp);

    let before_cancelled = footprint(&app, &cancelled).await;
    let res = patch_as(
        &app,
        &key,
        &format!("/v1/migrations/{cancelled}"),
        json!({ "channel_id": "x2CH" }),
    )
    .await;
    let problem = assert_problem(res, StatusCode::CONFLICT, "invalid_state").await;
    assert_eq!(problem["state"], "cancelled");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("queued, prechecking or awaiting_signup"),
        "{problem:#}"
    );
    assert_eq!(footprint(&app, &cancelled).await, before_cancelled);

    let before = footprint(&app, &es).await;
    for (body, pointers) in [
        (json!({}), vec!["/channel_id"]),
        (json!({ "channel_id": null }), vec!["/channel_id"]),
        (json!({ "channel_id": 42 }), vec!["/channel_id"]),
        (json!({ "channel_id": "" }), vec!["/channel_id"]),
        (json!({ "channel_id": "   " }), vec!["/channel_id"]),
        (json!({ "channel_id": "a".repeat(65) }), vec!["/channel_id"]),
        (
            json!({ "channel_id": "ok1CH", "state": "completed" }),
            vec!["/state"],
        ),
        (
            json!({ "channel": "ok1CH" }),
            vec!["/channel_id", "/channel"],
        ),
    ] {
        let res = patch_as(&app, &key, &format!("/v1/migrations/{es}"), body.clone()).await;
        let problem =
            assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let got: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(got, pointers, "{body}: {problem:#}");
    }
    // A key twice is refused before the body is read.
    let res = app
        .http
        .patch(app.url(&format!("/v1/migrations/{es}")))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{"channel_id": "a1CH", "channel_id": "b1CH"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::BAD_REQUEST, "duplicate_json_key").await;
    assert_eq!(footprint(&app, &es).await, before);

    // Another partner's migration does not exist for its key.
    let (_, other_key) = app.other_partner().await;
    let res = patch_as(
        &app,
        &other_key,
        &format!("/v1/migrations/{es}"),
        json!({ "channel_id": "x3CH" }),
    )
    .await;
    assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(footprint(&app, &es).await, before);
    assert_eq!(app.migration(&es).await["channel_id"], Value::Null);
}

/// `MAX_STEP_ATTEMPTS` counts tries in a row: a poll that got its answer starts the count
/// again, so transient failures days apart in a wait of up to 7 days do not add up to a
/// failure.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_answered_poll_starts_the_count_of_tries_again(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let id = app.create_with(signup_body("+14155552317")).await;
    app.worker().run_until_idle().await.unwrap();
    assert_eq!(app.migration(&id).await["state"], "awaiting_signup");
    // Three failed looks in a row so far (one short of the tests' `max_attempts`, 4).
    sqlx::query("UPDATE migrations SET attempt = 3, run_at = now() WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.worker().run_until_idle().await.unwrap();
    let m = app.migration(&id).await;
    assert_eq!(m["state"], "awaiting_signup", "{m:#}");
    assert_eq!(m["waiting_for"]["code"], "signup_not_completed");
    let attempt: i32 = sqlx::query_scalar("SELECT attempt FROM migrations WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempt, 0);
}

/// At `SIGNUP_TIMEOUT_SECONDS` the migration fails with `signup_not_completed` on the client,
/// saying how long it waited. `retry` can help (the client may still finish the signup): it
/// waits again, and completes once the channel is there.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_wait_times_out_with_signup_not_completed(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.signup_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155552308";
    let id = app.create_with(signup_body(phone)).await;
    let waiting = app.wait_for(&id, "awaiting_signup").await;
    let m = app.wait_for(&id, "failed").await;
    let e = &m["error"];
    assert_eq!(e["code"], "signup_not_completed", "{m:#}");
    assert_eq!(e["actor"], "client");
    assert_eq!(e["step"], "awaiting_signup");
    assert_eq!(e["retryable"], true);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .ends_with("Waited 2 s for it."),
        "{e:#}"
    );
    assert_eq!(m["waiting_for"], Value::Null);
    // It failed at the deadline it announced, not a poll interval later.
    let failed_at = at(&m["updated_at"]);
    let deadline = at(&waiting["waiting_for"]["deadline"]);
    assert!(failed_at >= deadline, "{failed_at} < {deadline}");
    assert!(
        failed_at - deadline < chrono::Duration::seconds(5),
        "{failed_at} vs {deadline}"
    );

    let (status, channel) = app.complete_signup(phone, None).await;
    assert_eq!(status, StatusCode::OK, "{channel:#}");
    let res = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["channel_id"], channel["id"]);
}

/// The sandbox's `complete_signup` takes the destination WABA when it does not know it, and
/// says so when it cannot tell.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_sandbox_completes_a_signup_it_was_told_about(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let (status, body) = app.complete_signup("+14155552309", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("destination_waba_id"),
        "{body}"
    );
    let (status, channel) = app
        .complete_signup(
            "+14155552309",
            Some(json!({ "partner_id": "testPA", "destination_waba_id": "300000000000009" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{channel}");
    assert_eq!(
        (channel["status"].as_str(), channel["permission"].as_bool()),
        (Some("running"), Some(true))
    );
    // Done twice: the same channel.
    let (_, again) = app.complete_signup("+14155552309", None).await;
    assert_eq!(again["id"], channel["id"]);
}

/// `signup_url` on the partner: set, shown, cleared; refused (and unchanged) when it is not an
/// absolute https URL.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn partners_store_their_signup_url(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let path = format!("/v1/partners/{}", app.partner_id);
    let partner_uuid: uuid::Uuid = app.partner_id.parse().unwrap();
    let get = || async {
        let res = app.get_as(ADMIN_KEY, &path).await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<Value>().await.unwrap()
    };
    assert_eq!(get().await["signup_url"], Value::Null);
    assert_eq!(
        waba_migrator::core::partners::signup_url(&app.state, partner_uuid)
            .await
            .unwrap(),
        None
    );

    let url = "https://hub.360dialog.com/dashboard/app/testPA/permissions?redirect_url=https%3A%2F%2Fexample.com";
    let res = patch_as(&app, ADMIN_KEY, &path, json!({ "signup_url": url })).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["signup_url"], url);
    let shown = get().await;
    assert_eq!(shown["signup_url"], url);
    assert_eq!(shown["name"], "Test partner", "other fields kept");
    assert_eq!(
        waba_migrator::core::partners::signup_url(&app.state, partner_uuid)
            .await
            .unwrap()
            .as_deref(),
        Some(url)
    );

    for bad in [
        json!("http://hub.360dialog.com/x"),
        json!("not a url"),
        json!("/relative"),
        json!(7),
        json!(format!("https://example.com/{}", "a".repeat(2048))),
    ] {
        let res = patch_as(&app, ADMIN_KEY, &path, json!({ "signup_url": bad })).await;
        let problem =
            assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(
            problem["errors"][0]["pointer"], "/signup_url",
            "{bad}: {problem:#}"
        );
        assert_eq!(get().await["signup_url"], url, "unchanged after {bad}");
    }
    // The partner itself may change it (not its name).
    let res = patch_as(&app, &app.partner_key, &path, json!({ "signup_url": null })).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(get().await["signup_url"], Value::Null);
    let res = patch_as(&app, &app.partner_key, &path, json!({ "name": "Renamed" })).await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;

    let res = patch_as(&app, ADMIN_KEY, &path, json!({ "signup_url": url })).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(get().await["signup_url"], url);
}

/// The new WABA the client's Embedded Signup creates (360dialog's guide has the client create
/// one), which is not the `destination_waba_id` the migration was created with.
const NEW_WABA: &str = "300000000000777";

/// A number that is already a running 360dialog channel on its source WABA (a change of WABA
/// inside 360dialog). Found by the number, that channel is passed over and the wait goes on,
/// saying so; named with `PATCH`, the wait says `channel_waba_mismatch` (the partner's to
/// fix). The channel the client's signup makes, on a new WABA, named next, completes it; the
/// channel the number leaves never gets a key.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_channel_the_number_leaves_is_not_taken(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155552310";
    app.channel_on_source(phone, "esLeaving01CH").await;
    let id = app.create_with(signup_body(phone)).await;
    let m = app
        .wait_until(&id, |m| {
            m["waiting_for"]["message"]
                .as_str()
                .is_some_and(|s| s.contains("esLeaving01CH"))
        })
        .await;
    assert_eq!(m["state"], "awaiting_signup", "{m:#}");
    assert_eq!(m["channel_id"], Value::Null);
    let w = &m["waiting_for"];
    assert_eq!(w["code"], "signup_not_completed", "{m:#}");
    let message = w["message"].as_str().unwrap();
    assert!(message.contains(SOURCE_WABA), "{message}");
    assert!(message.contains("leaving"), "{message}");

    let path = format!("/v1/migrations/{id}");
    let patch = |channel: &'static str| {
        patch_as(
            &app,
            &app.partner_key,
            &path,
            json!({ "channel_id": channel }),
        )
    };
    assert_eq!(patch("esLeaving01CH").await.status(), StatusCode::OK);
    let m = app
        .wait_until(&id, |m| m["waiting_for"]["code"] == "channel_waba_mismatch")
        .await;
    assert_eq!(m["state"], "awaiting_signup", "{m:#}");
    assert_eq!(m["waiting_for"]["actor"], "partner");

    let (status, made) = app
        .complete_signup(
            phone,
            Some(json!({ "destination_waba_id": NEW_WABA, "channel_id": "esNewWaba01CH" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made:#}");
    assert_eq!(made["id"], "esNewWaba01CH");
    assert_eq!(patch("esNewWaba01CH").await.status(), StatusCode::OK);
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["channel_id"], "esNewWaba01CH");
    assert_eq!(m["api_key"]["status"], "verified", "{m:#}");
    assert_eq!(app.sandbox_channel("esLeaving01CH").await["keys_issued"], 0);
    assert_eq!(app.sandbox_channel("esNewWaba01CH").await["keys_issued"], 1);
}

/// Found by the number, the channel the client's signup made on a new WABA is taken over the
/// running one the number leaves, though that one is newer (both are listed before the first
/// look), and its WABA becomes the destination the templates are copied to.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_signup_channel_on_a_new_waba_is_found_by_the_number(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let phone = "+14155552312";
    for (waba, channel) in [(NEW_WABA, "esNewWaba02CH"), (SOURCE_WABA, "esLeaving02CH")] {
        let (status, made) = app
            .complete_signup(
                phone,
                Some(json!({ "destination_waba_id": waba, "channel_id": channel })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{made:#}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let id = app.create_with(signup_body(phone)).await;
    app.worker().run_until_idle().await.unwrap();
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["channel_id"], "esNewWaba02CH", "{m:#}");
    assert_eq!(app.sandbox_channel("esLeaving02CH").await["keys_issued"], 0);
    // The number is in the new WABA: it is the destination now, and the templates went there.
    assert_eq!(m["destination_waba_id"], NEW_WABA, "{m:#}");
    let copied = m["templates"]["migrated"].as_array().unwrap();
    assert!(!copied.is_empty(), "{m:#}");
    let events = app.events(&id).await;
    let left = events
        .iter()
        .find(|e| e["from_state"] == "awaiting_signup")
        .unwrap();
    assert_eq!(left["data"]["destination_waba_id"], NEW_WABA, "{left:#}");
    assert_eq!(
        left["data"]["previous_destination_waba_id"],
        crate::helpers::DEST_WABA
    );
}

/// The signup put the number in a new WABA without a payment method (the sandbox's scenario
/// 0009 by the WABA id). The destination checks, made again against that WABA once the signup
/// is done, find it: a new WABA gets its credit line after the signup, so the migration waits
/// in `awaiting_signup` (`waiting_for` `destination_no_payment_method`, naming the WABA) with
/// no template copied and nothing adopted, and fails with that code at the signup's deadline.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_new_waba_not_set_up_is_waited_for_before_the_templates(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.signup_timeout = Duration::from_secs(10);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155552314";
    let unpaid = "300000000090009";
    let id = app.create_with(signup_body(phone)).await;
    let m = app.wait_for(&id, "awaiting_signup").await;
    only_two_step_verification_warns(&m);
    let (status, made) = app
        .complete_signup(
            phone,
            Some(json!({ "destination_waba_id": unpaid, "channel_id": "esUnpaid01CH" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made:#}");
    let m = app
        .wait_until(&id, |m| {
            m["waiting_for"]["code"] == "destination_no_payment_method"
                || m["state"] != "awaiting_signup"
        })
        .await;
    assert_eq!(m["state"], "awaiting_signup", "{m:#}");
    let message = m["waiting_for"]["message"].as_str().unwrap();
    assert!(message.contains(unpaid), "{message}");
    assert!(message.contains("esUnpaid01CH"), "{message}");
    assert_eq!(m["channel_id"], Value::Null, "{m:#}");
    assert_eq!(m["destination_waba_id"], crate::helpers::DEST_WABA);
    // The report shows what the wait is about.
    let paid = check_in(&m["precheck"], "destination_payment_method");
    assert_eq!(paid["status"], "fail", "{paid:#}");

    let m = app.wait_for(&id, "failed").await;
    let e = &m["error"];
    assert_eq!(e["code"], "destination_no_payment_method", "{m:#}");
    assert_eq!(e["step"], "awaiting_signup");
    assert!(e["message"].as_str().unwrap().contains(unpaid), "{e:#}");
    assert_eq!(app.received(phone, "migrate_message_templates"), 0);
    assert_eq!(app.received(phone, "api_keys"), 0);
}

/// Created with the channel its signup made on a new WABA that is not set up yet, the migration
/// takes that WABA in `prechecking` and waits for it in `awaiting_signup`, as if it had found
/// the channel there, rather than failing.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_named_channel_on_a_waba_not_set_up_is_waited_for(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155552316";
    let unpaid = "300000000190009";
    let (status, made) = app
        .complete_signup(
            phone,
            Some(json!({ "destination_waba_id": unpaid, "channel_id": "esUnpaid02CH" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made:#}");
    let mut body = signup_body(phone);
    body["channel_id"] = json!("esUnpaid02CH");
    let id = app.create_with(body).await;
    let m = app
        .wait_until(&id, |m| {
            m["waiting_for"]["code"] == "destination_no_payment_method"
                || !["queued", "prechecking", "awaiting_signup"]
                    .contains(&m["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(m["state"], "awaiting_signup", "{m:#}");
    assert_eq!(m["destination_waba_id"], unpaid);
    assert_eq!(m["channel_id"], "esUnpaid02CH");
    assert_eq!(app.received(phone, "migrate_message_templates"), 0);
}

/// The usual course after a signup into a new WABA: 360dialog has not set it up yet when the
/// channel appears (the sandbox's `"set_up": false`: no payment method, no subscribed app).
/// The migration waits in `awaiting_signup`, then, once the WABA is set up, takes it as its
/// destination and completes with the templates copied there.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_new_waba_is_taken_once_it_is_set_up(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155552318";
    let id = app.create_with(signup_body(phone)).await;
    app.wait_for(&id, "awaiting_signup").await;
    let (status, made) = app
        .complete_signup(
            phone,
            Some(json!({
                "destination_waba_id": NEW_WABA,
                "channel_id": "esSettingUp01CH",
                "set_up": false,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made:#}");
    let m = app
        .wait_until(&id, |m| m["waiting_for"]["code"] != "signup_not_completed")
        .await;
    assert_eq!(m["state"], "awaiting_signup", "{m:#}");
    assert_eq!(m["waiting_for"]["code"], "destination_no_payment_method");
    assert_eq!(app.received(phone, "migrate_message_templates"), 0);

    app.set_up_waba(NEW_WABA).await;
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["destination_waba_id"], NEW_WABA, "{m:#}");
    assert_eq!(m["channel_id"], "esSettingUp01CH");
    only_two_step_verification_warns(&m);
    assert!(
        !m["templates"]["migrated"].as_array().unwrap().is_empty(),
        "{m:#}"
    );
    assert_eq!(
        app.waiting_reasons(&id).await,
        [json!("destination_no_payment_method")]
    );
}

/// 360dialog shares a WABA the signup made with the partner's app after the signup: until then
/// Graph answers its reads 100/33 ("cannot be loaded due to missing permissions"; the
/// sandbox's `"shared": false`). The migration waits in `awaiting_signup` saying so
/// (`upstream_auth`, actor partner), copies nothing, and completes once the WABA is shared.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_new_waba_graph_cannot_read_yet_is_waited_for(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155552319";
    let id = app.create_with(signup_body(phone)).await;
    app.wait_for(&id, "awaiting_signup").await;
    let (status, made) = app
        .complete_signup(
            phone,
            Some(json!({
                "destination_waba_id": NEW_WABA,
                "channel_id": "esUnshared01CH",
                "shared": false,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made:#}");
    let m = app
        .wait_until(&id, |m| m["waiting_for"]["code"] != "signup_not_completed")
        .await;
    assert_eq!(m["state"], "awaiting_signup", "{m:#}");
    let w = &m["waiting_for"];
    assert_eq!(w["code"], "upstream_auth", "{m:#}");
    assert!(w["message"].as_str().unwrap().contains(NEW_WABA), "{w:#}");
    assert_eq!(w["actor"], "partner", "{w:#}");
    assert_eq!(m["channel_id"], Value::Null, "{m:#}");
    assert_eq!(app.received(phone, "migrate_message_templates"), 0);

    app.share_waba(NEW_WABA).await;
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["destination_waba_id"], NEW_WABA, "{m:#}");
    assert_eq!(m["channel_id"], "esUnshared01CH");
    assert_eq!(app.waiting_reasons(&id).await, [json!("upstream_auth")]);
}

/// The client's signup put the number in a WABA of another business than the one the
/// migration names (`business_id` of the sandbox's `complete_signup`): the templates cannot be
/// copied there, so the migration fails in `awaiting_signup` with `business_mismatch` at once.
/// Nothing of that signup is adopted, and the report keeps what the first precheck found about
/// the source and the number.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_new_waba_of_another_business_fails_before_the_templates(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155552315";
    let foreign = "300000000000555";
    let id = app.create_with(signup_body(phone)).await;
    let first = app.wait_for(&id, "awaiting_signup").await;
    assert!(first["precheck"]["source"].is_object(), "{first:#}");
    let (status, made) = app
        .complete_signup(
            phone,
            Some(json!({
                "destination_waba_id": foreign,
                "channel_id": "esForeign01CH",
                "business_id": "100000000000999",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made:#}");
    let m = app.wait_for(&id, "failed").await;
    let e = &m["error"];
    assert_eq!(e["code"], "business_mismatch", "{m:#}");
    assert_eq!(e["step"], "awaiting_signup");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(foreign), "{message}");
    assert!(message.contains("100000000000999"), "{message}");
    assert_eq!(m["channel_id"], Value::Null, "{m:#}");
    assert_eq!(m["destination_waba_id"], crate::helpers::DEST_WABA);
    assert_eq!(app.received(phone, "migrate_message_templates"), 0);

    let report = &m["precheck"];
    assert_eq!(report["status"], "fail", "{report:#}");
    assert_eq!(report["source"], first["precheck"]["source"]);
    let check = |id: &str| check_in(report, id);
    assert_eq!(check("same_business")["status"], "fail");
    // The number is in the new WABA now; the first report's checks of it on the source stay.
    let was = |id: &str| check_in(&first["precheck"], id);
    assert_eq!(check("number_on_source"), was("number_on_source"));
    assert_eq!(check("display_name_approved"), was("display_name_approved"));
    assert_eq!(check("not_in_destination")["status"], "pass");
    assert_ne!(check("not_in_destination"), was("not_in_destination"));
    let events = app.events(&id).await;
    let left = events
        .iter()
        .find(|e| e["from_state"] == "awaiting_signup")
        .unwrap();
    assert_eq!(left["data"]["signup_waba_id"], foreign, "{left:#}");
    assert_eq!(left["data"]["precheck_status"], "fail", "{left:#}");
}

/// Created with a channel id 360dialog does not list yet (here: never, scenario 0019), the
/// migration does not copy templates into the WABA it was created with: it waits for the
/// channel in `awaiting_signup`, which takes the channel's WABA when it appears.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_named_channel_not_listed_yet_is_waited_for_before_the_templates(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550019";
    let mut body = signup_body(phone);
    body["channel_id"] = json!("esNotYet01CH");
    let id = app.create_with(body).await;
    let m = app.wait_for(&id, "awaiting_signup").await;
    assert_eq!(m["waiting_for"]["code"], "signup_not_completed", "{m:#}");
    assert!(
        m["waiting_for"]["message"]
            .as_str()
            .unwrap()
            .contains("esNotYet01CH"),
        "{m:#}"
    );
    assert_eq!(app.received(phone, "migrate_message_templates"), 0);
}

/// Created with the id of the number's channel on its source WABA, the migration fails in
/// `prechecking` with `channel_waba_mismatch`, before any template is copied, and no key is
/// made.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_named_channel_the_number_leaves_fails_the_migration(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155552311";
    app.channel_on_source(phone, "esLeaving03CH").await;
    let mut body = signup_body(phone);
    body["channel_id"] = json!("esLeaving03CH");
    let id = app.create_with(body).await;
    let m = app.wait_for(&id, "failed").await;
    let e = &m["error"];
    assert_eq!(e["code"], "channel_waba_mismatch", "{m:#}");
    assert_eq!(e["step"], "prechecking");
    assert_eq!(app.received(phone, "migrate_message_templates"), 0);
    assert_eq!(e["actor"], "partner");
    assert_eq!(e["retryable"], false);
    let message = e["message"].as_str().unwrap();
    assert!(message.contains(SOURCE_WABA), "{message}");
    assert_eq!(app.received(phone, "api_keys"), 0);
    assert_eq!(app.sandbox_channel("esLeaving03CH").await["keys_issued"], 0);
}

/// Created after the signup with the id of the channel it made on a new WABA (as 360dialog's
/// guide has it), the migration takes that WABA as its destination before the precheck: the
/// checks and the template copy are about the WABA the number is in.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn created_with_the_signup_channel_it_takes_its_waba(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155552313";
    let (status, made) = app
        .complete_signup(
            phone,
            Some(json!({
                "destination_waba_id": NEW_WABA,
                "channel_id": "esNewWaba03CH",
                "business_id": crate::helpers::BUSINESS,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made:#}");
    let mut body = signup_body(phone);
    body["channel_id"] = json!("esNewWaba03CH");
    let id = app.create_with(body).await;
    let m = app.wait_for(&id, "completed").await;
    assert_eq!(m["destination_waba_id"], NEW_WABA, "{m:#}");
    assert_eq!(m["channel_id"], "esNewWaba03CH");
    assert!(
        !m["templates"]["migrated"].as_array().unwrap().is_empty(),
        "{m:#}"
    );
    let events = app.events(&id).await;
    let checked = events
        .iter()
        .find(|e| e["from_state"] == "prechecking")
        .unwrap();
    assert_eq!(
        checked["data"]["destination_waba_id"], NEW_WABA,
        "{checked:#}"
    );
    assert_eq!(
        checked["data"]["previous_destination_waba_id"],
        crate::helpers::DEST_WABA
    );
    assert_eq!(path_of(&app, &id).await, NAMED_CHANNEL_PATH);
}
