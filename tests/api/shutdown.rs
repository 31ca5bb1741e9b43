//! Graceful shutdown hands in-flight migrations back at once instead of waiting for the lease
//! to expire.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{Options, TestApp};

async fn lease_owner(app: &TestApp, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT lease_owner FROM migrations WHERE id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn slow(grace: Duration) -> Options {
    let mut opts = Options {
        background_worker: false,
        ..Options::default()
    };
    // Expiry-based recovery would take 30 s: anything faster proves the lease was released.
    opts.worker.lease = Duration::from_secs(30);
    opts.worker.shutdown_grace = grace;
    opts.sandbox.latency = Duration::from_millis(400);
    opts.upstream_timeout = Duration::from_secs(10);
    opts
}

async fn stop_mid_step_then_resume(app: &TestApp) {
    let id = app.create("+14155550601").await;
    let a = app.worker().clone();
    let stop_a = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop_a.clone();
        async move { a.run(stop).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease_owner(app, &id).await.is_none() {
        assert!(Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_a.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(
        lease_owner(app, &id).await,
        None,
        "the stopped worker released its lease"
    );

    let b = app.another_worker();
    let stop_b = app.shutdown.clone();
    let started = Instant::now();
    tokio::spawn(async move { b.run(stop_b).await });
    app.wait_for(&id, "awaiting_otp").await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "resumed long before the 30 s lease would expire"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn sigterm_finishes_the_step_and_releases_the_lease(pool: PgPool) {
    let app = TestApp::spawn_with(pool, slow(Duration::from_secs(10))).await;
    stop_mid_step_then_resume(&app).await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_step_past_the_grace_period_is_aborted_and_released(pool: PgPool) {
    let app = TestApp::spawn_with(pool, slow(Duration::ZERO)).await;
    stop_mid_step_then_resume(&app).await;
}
