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
/// before it writes; returns the memo the command leaves.
async fn race(
    app: &TestApp,
    id: &str,
    setup: &str,
    path: &str,
    body: Value,
    meanwhile: &str,
) -> Value {
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
    let res = command.await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    memo(pool, id).await
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
