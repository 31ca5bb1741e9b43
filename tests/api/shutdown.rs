//! Graceful shutdown hands in-flight migrations back at once instead of waiting for the lease
//! to expire.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

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
    let mut opts = Options::no_worker();
    // Expiry-based recovery would take 30 s: anything faster proves the lease was released.
    opts.worker.lease = Duration::from_secs(30);
    opts.worker.shutdown_grace = grace;
    opts.sandbox.latency = Duration::from_millis(400);
    opts.upstream_timeout = Duration::from_secs(10);
    opts
}

type WorkerTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// The test's worker, run in the background: its stop token and its task.
fn spawn_worker(app: &TestApp) -> (CancellationToken, WorkerTask) {
    let a = app.worker().clone();
    let stop_a = CancellationToken::new();
    let handle = tokio::spawn({
        let stop = stop_a.clone();
        async move { a.run(stop).await }
    });
    (stop_a, handle)
}

/// The test's worker, run in the background until `register` of `phone` reached the sandbox.
async fn run_until_register_sent(app: &TestApp, phone: &str) -> (CancellationToken, WorkerTask) {
    let (stop_a, handle) = spawn_worker(app);
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.received(phone, "register") == 0 {
        assert!(Instant::now() < deadline, "register never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (stop_a, handle)
}

/// A migration of `phone` whose code was submitted, with Meta holding its `register` for
/// `hang_for` and applying it then (a `slow` fault); returns its id.
async fn code_submitted_with_register_held(app: &TestApp, phone: &str) -> String {
    let id = app.create(phone).await;
    app.worker().run_until_idle().await.unwrap();
    app.wait_for(&id, "awaiting_otp").await;
    app.faults(
        serde_json::json!([{ "endpoint": "register", "phone_number": phone, "fault": "slow" }]),
    )
    .await;
    assert_eq!(app.submit_otp(&id, "123456").await.status(), 202);
    id
}

async fn stop_mid_step_then_resume(app: &TestApp) {
    let id = app.create("+14155550601").await;
    let (stop_a, handle) = spawn_worker(app);
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

/// Past the grace period a step whose irreversible call is in flight is aborted, but its lease is
/// not released: Meta may still apply the call (here `register`, held by a `slow` fault and
/// applied late). Another worker takes over only once the lease expired, reads the number
/// registered and never registers it again. (A zero grace period is what the startup check
/// forbids against any upstream timeout; it makes this fallback reachable.)
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_register_in_flight_past_the_grace_period_keeps_its_lease(pool: PgPool) {
    let mut opts = Options::no_worker();
    opts.worker.lease = Duration::from_secs(4);
    opts.worker.shutdown_grace = Duration::ZERO;
    opts.sandbox.hang_for = Duration::from_secs(2);
    opts.upstream_timeout = Duration::from_secs(10);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550602";
    let id = code_submitted_with_register_held(&app, phone).await;

    let (stop_a, handle) = run_until_register_sent(&app, phone).await;
    let sent_at = Instant::now();
    stop_a.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(app.applied(phone, "register"), 0, "still held by Meta");
    assert!(
        lease_owner(&app, &id).await.is_some(),
        "the lease of a step with register in flight must not be released"
    );

    let b = app.another_worker();
    let stop_b = app.shutdown.clone();
    tokio::spawn(async move { b.run(stop_b).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = app.migration(&id).await;
        if m["state"] != "registering" {
            break;
        }
        assert!(Instant::now() < deadline, "never left registering: {m:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sent_at.elapsed() >= Duration::from_secs(2),
        "taken over {:?} after register was sent, before Meta applied it",
        sent_at.elapsed()
    );
    app.wait_for(&id, "completed").await;
    app.assert_registered_once(phone);
}

/// Past the grace period, a step whose `register` ended unanswered (Meta applies it late) and
/// that is still recording its retry is aborted with its lease kept, as with a call in flight:
/// handed back at once, another worker would read the number before Meta applied the call and
/// register it again.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_unanswered_register_still_recording_past_the_grace_period_keeps_its_lease(
    pool: PgPool,
) {
    let mut opts = Options::no_worker();
    opts.worker.lease = Duration::from_secs(4);
    opts.worker.shutdown_grace = Duration::from_millis(1500);
    opts.sandbox.hang_for = Duration::from_secs(3);
    opts.upstream_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550605";
    let id = code_submitted_with_register_held(&app, phone).await;

    let (stop_a, handle) = run_until_register_sent(&app, phone).await;
    let sent_at = Instant::now();
    // The unanswered register's retry (the next result recorded, 1 s from now) is recorded
    // past the grace period.
    app.fail_points.arm("record_slowly", 1);
    stop_a.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(app.applied(phone, "register"), 0, "still held by Meta");
    assert!(
        lease_owner(&app, &id).await.is_some(),
        "the lease of a step whose register ended unanswered must not be released"
    );

    let b = app.another_worker();
    let stop_b = app.shutdown.clone();
    tokio::spawn(async move { b.run(stop_b).await });
    app.wait_for(&id, "completed").await;
    assert!(sent_at.elapsed() >= Duration::from_secs(3));
    app.assert_registered_once(phone);
}

/// A stopping worker whose `register` ended unanswered (a timeout: Meta may still apply it)
/// records the retry and keeps its lease. The retry's delay holds past the lease's expiry: the
/// migration is taken over when both have passed, not as soon as the lease expired.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_lease_kept_after_an_unanswered_call_does_not_cut_the_retry_delay_short(pool: PgPool) {
    let mut opts = Options::no_worker();
    opts.worker.lease = Duration::from_secs(2);
    opts.worker.retry.base = Duration::from_secs(10);
    opts.worker.retry.cap = Duration::from_secs(10);
    opts.sandbox.hang_for = Duration::from_secs(3);
    opts.upstream_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+14155550604";
    let id = app.create(phone).await;
    app.worker().run_until_idle().await.unwrap();
    app.wait_for(&id, "awaiting_otp").await;
    app.faults(serde_json::json!([
        { "endpoint": "register", "phone_number": phone, "fault": "timeout", "times": 1 }
    ]))
    .await;
    assert_eq!(app.submit_otp(&id, "123456").await.status(), 202);

    let (stop_a, handle) = run_until_register_sent(&app, phone).await;
    stop_a.cancel();
    handle.await.unwrap().unwrap();
    let (owner, run_at, expires): (Option<String>, DateTime<Utc>, Option<DateTime<Utc>>) =
        sqlx::query_as(
            "SELECT lease_owner, run_at, lease_expires_at FROM migrations WHERE id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(owner.is_some(), "the lease of an unanswered call is kept");
    let expires = expires.expect("leased");
    assert!(
        run_at > expires + chrono::Duration::seconds(1),
        "the retry ({run_at}) is due after the lease expires ({expires})"
    );

    // The lease has expired, the retry is not due yet: nobody takes the migration.
    let b = app.another_worker();
    let after_expiry =
        (expires - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(500);
    tokio::time::sleep(after_expiry).await;
    assert_eq!(
        b.run_until_idle().await.unwrap(),
        0,
        "taken before its retry was due"
    );
    assert_eq!(app.received(phone, "register"), 1);

    // Due: taken over, and registered once (the first call was not applied).
    tokio::time::sleep((run_at - Utc::now()).to_std().unwrap_or_default()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        b.run_until_idle().await.unwrap();
        if app.migration(&id).await["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.applied(phone, "register"), 1);
}

/// Stopped after the transition into `requesting_otp` armed its intent but before the code was
/// requested (the step's read of the number is in flight): the worker hands the migration over
/// with the intent forgotten, since it knows no call was made. The next worker sends the code
/// once, instead of taking it for sent.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_worker_stopping_before_its_call_forgets_the_armed_intent(pool: PgPool) {
    let app = TestApp::spawn_with(pool, slow(Duration::from_secs(10))).await;
    let phone = "+14155550603";
    let id = app.create(phone).await;
    let (stop_a, handle) = spawn_worker(&app);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (state, memo): (String, serde_json::Value) =
            sqlx::query_as("SELECT state, step_memo FROM migrations WHERE id = $1::uuid")
                .bind(&id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if state == "requesting_otp" {
            assert!(memo["request_code"].get("armed_by").is_some(), "{memo}");
            break;
        }
        assert!(Instant::now() < deadline, "never reached requesting_otp");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_a.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(lease_owner(&app, &id).await, None, "handed over");
    let memo = app.step_memo(&id).await;
    assert!(memo.get("request_code").is_none(), "{memo}");
    assert_eq!(app.received(phone, "request_code"), 0);

    let b = app.another_worker();
    let stop_b = app.shutdown.clone();
    tokio::spawn(async move { b.run(stop_b).await });
    app.wait_for(&id, "awaiting_otp").await;
    assert_eq!(app.received(phone, "request_code"), 1, "sent once");
    let parked = app.event_into(&id, "awaiting_otp").await;
    assert_eq!(parked["data"]["otp"], "sent", "{parked:#}");
}
