//! Commands that race a worker: a command reads the row, the worker changes it, the command
//! writes. The command's write must not undo what the worker did (issue 14, problem 4).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Options, TestApp};

/// Waits until some session is blocked on a lock (the command's UPDATE behind our row lock).
async fn wait_for_blocked_update(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query ILIKE '%UPDATE migrations%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if blocked > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the command never reached its UPDATE"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn memo(pool: &PgPool, id: &str) -> Value {
    sqlx::query_scalar("SELECT step_memo FROM migrations WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Puts migration `id` in the state `setup` writes, then races `command` (a POST to `path`
/// with `body`) against `meanwhile`, a write that lands after the command read the row and
/// before it writes; returns the memo the command leaves (it must have answered 202).
async fn race(
    app: &TestApp,
    id: &str,
    setup: &str,
    path: &str,
    body: Value,
    meanwhile: &str,
) -> Value {
    let res = race_for(app, id, setup, path, body, meanwhile).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    memo(&app.pool, id).await
}

/// [`race`], answering the command's response.
async fn race_for(
    app: &TestApp,
    id: &str,
    setup: &str,
    path: &str,
    body: Value,
    meanwhile: &str,
) -> reqwest::Response {
    let pool = &app.pool;
    sqlx::query(setup).bind(id).execute(pool).await.unwrap();
    // Hold the row so the command's write waits after its read.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM migrations WHERE id = $1::uuid FOR UPDATE")
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let command = {
        let (http, url, key) = (
            app.http.clone(),
            app.url(&format!("/v1/migrations/{id}/{path}")),
            app.partner_key.clone(),
        );
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    wait_for_blocked_update(pool).await;
    sqlx::query(meanwhile)
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    holder.commit().await.unwrap();
    command.await.unwrap()
}

async fn parked_app(pool: PgPool) -> TestApp {
    TestApp::spawn_with(pool, Options::no_worker()).await
}

/// `retry` read the memo with `templates_copied`; a worker removed that key before `retry`
/// wrote. Before the memo was edited by key, `retry` wrote back the whole memo it had read, so
/// the removed key came back.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn retry_does_not_bring_back_a_key_removed_meanwhile(pool: PgPool) {
    let app = parked_app(pool).await;
    let id = app.create("+5511987654321").await;
    let memo = race(
        &app,
        &id,
        "UPDATE migrations SET state = 'failed', failed_step = 'copying_templates', \
         step_memo = '{\"channel_polls\": 3, \"templates_copied\": true}' WHERE id = $1::uuid",
        "retry",
        json!(null),
        "UPDATE migrations SET step_memo = step_memo - 'templates_copied', \
         version = version + 1 WHERE id = $1::uuid",
    )
    .await;
    // retry removed channel_polls (its own edit); templates_copied stays removed.
    assert_eq!(memo, json!({}));
}

/// The same race for `resend`: it removes only the code intent and keeps what the worker
/// recorded meanwhile.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn resend_keeps_a_key_added_meanwhile(pool: PgPool) {
    let app = parked_app(pool).await;
    let id = app.create("+5511987654321").await;
    let memo = race(
        &app,
        &id,
        "UPDATE migrations SET state = 'awaiting_otp', otp_expires_at = now() + interval '1 hour', \
         otp_resend_available_at = now() - interval '1 second', \
         step_memo = '{\"request_code\": \"2026-12-06T00:00:00Z\"}' WHERE id = $1::uuid",
        "otp/resend",
        json!({}),
        "UPDATE migrations SET step_memo = step_memo || '{\"voice_fallback\": \"t\"}', \
         version = version + 1 WHERE id = $1::uuid",
    )
    .await;
    assert_eq!(memo, json!({ "voice_fallback": "t" }));
}

/// The cancel's guard against a call in flight holds on its own, in SQL: a row read before a
/// worker's claim armed the `register` intent (a claim does not bump the version) is not
/// cancelled by a write guarded with `no_call_in_flight`, in `registering` and in
/// `generating_api_key`; without a live lease, or in another state, it is.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_no_call_in_flight_guard_refuses_in_sql(pool: PgPool) {
    use waba_migrator::db::migrations as store;
    use waba_migrator::domain::MigrationState;
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let id = app.create("+14155550661").await;
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let cancel = |row: store::MigrationRow| {
        let pool = app.pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            let guard = store::Guard {
                no_call_in_flight: true,
                ..Default::default()
            };
            let patch = store::Patch {
                state: Some(MigrationState::Cancelled),
                ..Default::default()
            };
            store::update(
                &mut conn,
                &row,
                &guard,
                &patch,
                store::Lease::Keep,
                None,
                &|_, _| String::new(),
            )
            .await
            .unwrap()
        }
    };
    // A worker's claim, as the command never saw it: a live lease and the step's intent.
    let claim = |state: &'static str, intent: &'static str, lease: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(&format!(
                "UPDATE migrations SET state = $2, lease_token = gen_random_uuid(),
                        lease_expires_at = now() + interval '{lease}',
                        step_memo = jsonb_build_object($3::text, now())
                  WHERE id = $1"
            ))
            .bind(uuid)
            .bind(state)
            .bind(intent)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    for (state, intent) in [
        ("registering", "register"),
        ("generating_api_key", "api_keys"),
    ] {
        let before = store::get(&app.pool, uuid, None).await.unwrap();
        claim(state, intent, "60 seconds").await;
        assert!(
            cancel(before).await.is_none(),
            "{state}: cancelled mid-call"
        );
        assert_eq!(app.migration(&id).await["state"], state);
    }
    // Its lease expired (the worker died): nothing is in flight any more.
    let before = store::get(&app.pool, uuid, None).await.unwrap();
    claim("registering", "register", "-1 seconds").await;
    assert!(cancel(before).await.is_some());
    assert_eq!(app.migration(&id).await["state"], "cancelled");
}

/// A resend read the row outside the cooldown; meanwhile another resend's code was requested
/// and the worker parked again with a new cooldown. Applied to that fresh row, the stale resend
/// would send a second SMS inside the cooldown: the guard refuses it, and the answer is the
/// cooldown's 429.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_resend_read_before_another_one_does_not_skip_the_cooldown(pool: PgPool) {
    let app = parked_app(pool).await;
    let id = app.create("+5511987654329").await;
    let res = race_for(
        &app,
        &id,
        "UPDATE migrations SET state = 'awaiting_otp', otp_requested_at = now() - interval '2 minutes',
                otp_resend_available_at = now() - interval '1 minute',
                otp_expires_at = now() + interval '1 day' WHERE id = $1::uuid",
        "otp/resend",
        json!({ "method": "sms" }),
        "UPDATE migrations SET otp_requested_at = now(),
                otp_resend_available_at = now() + interval '60 seconds',
                version = version + 2 WHERE id = $1::uuid",
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "otp_resend_too_soon", "{problem:#}");
    assert_eq!(app.migration(&id).await["state"], "awaiting_otp");
}

/// The command was refused with 409 `invalid_state`, its `detail` saying `words`.
async fn assert_invalid_state_saying(res: reqwest::Response, words: &str) {
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_state", "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains(words)),
        "{problem:#}"
    );
}

/// A retry read the migration failed at `registering`; meanwhile it was retried elsewhere and
/// failed again, at `copying_templates`. Applied to that fresh row, the stale retry would
/// resume the step that no longer failed: the `failed_step` guard refuses it, and the answer
/// names the step it failed at now.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_retry_read_before_another_failure_does_not_resume_the_old_step(pool: PgPool) {
    let app = parked_app(pool).await;
    let id = app.create("+5511987654322").await;
    let res = race_for(
        &app,
        &id,
        "UPDATE migrations SET state = 'failed', failed_step = 'registering', \
         error = '{\"code\": \"upstream_unavailable\", \"message\": \"x\"}' WHERE id = $1::uuid",
        "retry",
        json!(null),
        "UPDATE migrations SET failed_step = 'copying_templates', \
         version = version + 2 WHERE id = $1::uuid",
    )
    .await;
    assert_invalid_state_saying(res, "copying_templates").await;
    let row: (String, Option<String>) =
        sqlx::query_as("SELECT state, failed_step FROM migrations WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(row, ("failed".into(), Some("copying_templates".into())));
}

/// The same at the same step for another reason: a retry planned from `upstream_unavailable`
/// at `registering` would register again, where an expired code (failed meanwhile) needs a
/// new one first: the `failed_code` guard refuses it.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_retry_read_before_a_failure_for_another_reason_does_not_apply_its_plan(pool: PgPool) {
    let app = parked_app(pool).await;
    let id = app.create("+5511987654324").await;
    let res = race_for(
        &app,
        &id,
        "UPDATE migrations SET state = 'failed', failed_step = 'registering', \
         error = '{\"code\": \"upstream_unavailable\", \"message\": \"x\"}' WHERE id = $1::uuid",
        "retry",
        json!(null),
        "UPDATE migrations SET error = '{\"code\": \"otp_expired\", \"message\": \"y\"}', \
         version = version + 2 WHERE id = $1::uuid",
    )
    .await;
    assert_invalid_state_saying(res, "failed again, at `registering`").await;
    let row: (String, Option<String>) =
        sqlx::query_as("SELECT state, error->>'code' FROM migrations WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(row, ("failed".into(), Some("otp_expired".into())));
}

/// A cancel read the migration generating its first API key, with no call in flight;
/// meanwhile it completed and a key rotation began (`generating_api_key` again). Applied to
/// that fresh row, the stale cancel would cancel the rotation of a migrated number: the
/// `never_completed` guard refuses it, with the rotation's answer.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_cancel_read_before_completion_does_not_cancel_the_key_rotation(pool: PgPool) {
    let app = parked_app(pool).await;
    let id = app.create("+5511987654323").await;
    let res = race_for(
        &app,
        &id,
        "UPDATE migrations SET state = 'generating_api_key', step_memo = '{}' \
         WHERE id = $1::uuid",
        "cancel",
        json!(null),
        "UPDATE migrations SET completed_at = now(), version = version + 3 \
         WHERE id = $1::uuid",
    )
    .await;
    assert_invalid_state_saying(res, "rotating its API key").await;
    assert_eq!(app.migration(&id).await["state"], "generating_api_key");
}
