//! Batch pacing (README "Moving a portfolio"): at most `max_in_flight` of a batch's migrations
//! in `queued` (admitted), `prechecking`, `initiating` or `requesting_otp` at once, with any
//! number of workers; Meta's throttling of one batch's migration pauses that batch only;
//! retries and resends wait for a slot; a cancel cancels the held ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use waba_migrator::sandbox::SandboxConfig;

use crate::helpers::{Options, TestApp, batch_item_ids};

/// The `run_at` of a held migration (`db::migrations::HELD`).
const HELD: &str = "'9999-12-31 00:00:00+00'::timestamptz";
const PACED: &str = "('queued', 'prechecking', 'initiating', 'requesting_otp')";

async fn json_of(res: reqwest::Response, status: StatusCode) -> Value {
    let got = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body:#}");
    body
}

/// Creates a batch of `numbers`; returns its id and its migrations' ids, in order.
async fn create_batch(
    app: &TestApp,
    max_in_flight: i64,
    numbers: &[String],
) -> (String, Vec<String>) {
    let items: Vec<Value> = numbers.iter().map(|n| TestApp::create_body(n)).collect();
    let res = app
        .post(
            "/v1/batches",
            json!({ "name": "Paced", "max_in_flight": max_in_flight, "migrations": items }),
        )
        .await;
    let created = json_of(res, StatusCode::CREATED).await;
    let ids = batch_item_ids(&created);
    (created["batch"]["id"].as_str().unwrap().to_owned(), ids)
}

fn numbers(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{:02}", i + 10)).collect()
}

/// `(slots taken, held)`: the batch's migrations in the paced states, runnable or held.
async fn slots(pool: &PgPool, batch: &str) -> (i64, i64) {
    sqlx::query_as(&format!(
        "SELECT count(*) FILTER (WHERE run_at < {HELD}), count(*) FILTER (WHERE run_at >= {HELD})
           FROM migrations WHERE batch_id = $1::uuid AND state IN {PACED}"
    ))
    .bind(batch)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The batch's migrations by state.
async fn states(pool: &PgPool, batch: &str) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT state, count(*) FROM migrations WHERE batch_id = $1::uuid GROUP BY state",
    )
    .bind(batch)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn only(state: &str, n: i64) -> HashMap<String, i64> {
    HashMap::from([(state.to_owned(), n)])
}

/// Three replicas (the app's worker with 4 tasks and two more) move two batches and a single
/// migration; an observer samples the database all along. Neither batch ever has more than its
/// `max_in_flight` holding a slot, and everything reaches `awaiting_otp`.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn replicas_never_exceed_max_in_flight(pool: PgPool) {
    // Each upstream call takes a while, so migrations overlap in the paced states.
    let app = TestApp::spawn_with(
        pool.clone(),
        Options {
            sandbox: SandboxConfig {
                latency: Duration::from_millis(15),
                ..Options::default().sandbox
            },
            ..Options::default()
        },
    )
    .await;
    let replicas = CancellationToken::new();
    for _ in 0..2 {
        let w = app.another_worker();
        let stop = replicas.clone();
        tokio::spawn(async move { w.run(stop).await });
    }
    let done = Arc::new(AtomicBool::new(false));
    let observe = |batch: String| {
        let (pool, done) = (pool.clone(), done.clone());
        tokio::spawn(async move {
            let (mut max, mut samples) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                let (taken, _) = slots(&pool, &batch).await;
                max = max.max(taken);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (max, samples)
        })
    };
    let (a, a_ids) = create_batch(&app, 3, &numbers("+141555511", 30)).await;
    let watch_a = observe(a.clone());
    let (b, _) = create_batch(&app, 2, &numbers("+141555522", 8)).await;
    let watch_b = observe(b.clone());
    let single = app.create("+14155553301").await;

    let last = a_ids.last().unwrap();
    app.wait_for(&single, "awaiting_otp").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while states(&pool, &a).await != only("awaiting_otp", 30)
        || states(&pool, &b).await != only("awaiting_otp", 8)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            states(&pool, &a).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    let (max_a, samples_a) = watch_a.await.unwrap();
    let (max_b, samples_b) = watch_b.await.unwrap();
    replicas.cancel();
    assert!(max_a <= 3, "batch A had {max_a} holding a slot at once");
    assert!(max_b <= 2, "batch B had {max_b} holding a slot at once");
    assert!(max_a >= 1 && samples_a > 10 && samples_b > 10);
    // Once parked, a migration shows no slot; the batch shows nothing paused.
    let m = app.migration(last).await;
    assert_eq!(m["batch_slot"], Value::Null);
    let batch = json_of(app.get(&format!("/v1/batches/{a}")).await, StatusCode::OK).await;
    assert_eq!(batch["paused_until"], Value::Null);
    assert_eq!(batch["throttles"], 0);
}

/// Concurrent admission rounds (as several replicas run them) release exactly the free slots.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn concurrent_admissions_release_only_free_slots(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), Options::no_worker()).await;
    let (batch, ids) = create_batch(&app, 3, &numbers("+141555544", 12)).await;
    // The create admitted the first three, in the order sent.
    assert_eq!(slots(&pool, &batch).await, (3, 9));
    assert_eq!(app.migration(&ids[2]).await["batch_slot"], "taken");
    let held = app.migration(&ids[3]).await;
    assert_eq!(held["batch_slot"], "waiting", "{held:#}");
    assert_eq!(held["state"], "queued");
    let workers: Vec<_> = (0..4).map(|_| app.another_worker()).collect();
    let admit_all = || async {
        let rounds = workers.iter().map(|w| w.admit());
        futures::future::join_all(rounds)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .sum::<u64>()
    };
    assert_eq!(admit_all().await, 0, "no slot is free");
    // Free the slots by cancelling the admitted ones, three times over.
    for round in 0..3 {
        let taken: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT id::text FROM migrations WHERE batch_id = $1::uuid AND state IN {PACED}
                AND run_at < {HELD}"
        ))
        .bind(&batch)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(taken.len(), 3, "round {round}");
        for id in &taken {
            let res = app
                .post(&format!("/v1/migrations/{id}/cancel"), json!({}))
                .await;
            assert_eq!(res.status(), StatusCode::OK);
        }
        assert_eq!(admit_all().await, 3, "round {round}");
        assert_eq!(slots(&pool, &batch).await, (3, 9 - 3 * (round + 1)));
    }
}

/// An admission round looks at most at 200 batches; full ones are passed over before that
/// limit, so a batch with a free slot is reached however many batches are full ahead of it
/// (here 201, each with one migration waiting).
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn admission_reaches_a_free_slot_behind_more_than_200_full_batches(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), Options::no_worker()).await;
    let pair = |i: usize| {
        vec![
            format!("+1415555{:04}", 2000 + 2 * i),
            format!("+1415555{:04}", 2001 + 2 * i),
        ]
    };
    for i in 0..201 {
        create_batch(&app, 1, &pair(i)).await;
    }
    // Created last: its id (a UUIDv7) comes after every full batch's.
    let (last, ids) = create_batch(&app, 1, &pair(201)).await;
    assert_eq!(slots(&pool, &last).await, (1, 1));
    assert_eq!(
        app.worker().admit().await.unwrap(),
        0,
        "every batch is full"
    );
    let res = app
        .post(&format!("/v1/migrations/{}/cancel", ids[0]), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.worker().admit().await.unwrap(), 1);
    assert_eq!(app.migration(&ids[1]).await["batch_slot"], "taken");
}

/// Meta throttles one migration of batch A (HTTP 400, Graph 80008, as Graph throttles): A admits nothing
/// more until the pause ends, while batch B and a single migration go on.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn throttling_pauses_that_batch_only(pool: PgPool) {
    // The throttled migration retries (and its batch waits) at least 2 s later: longer than
    // the rest of this batch and the others take to park, however slow the machine.
    let mut opts = Options::no_worker();
    opts.worker.retry.base = Duration::from_secs(4);
    opts.worker.retry.cap = Duration::from_secs(4);
    let app = TestApp::spawn_with(pool.clone(), opts).await;
    let a_numbers = numbers("+141555566", 4);
    app.faults(
        json!([{ "endpoint": "start_migration", "phone_number": a_numbers[0],
                        "fault": "rate_limited", "times": 1 }]),
    )
    .await;
    let (a, a_ids) = create_batch(&app, 2, &a_numbers).await;
    let (b, _) = create_batch(&app, 2, &numbers("+141555577", 3)).await;
    let single = app.create("+14155558801").await;
    app.worker().run_until_idle().await.unwrap();

    // A's first migration was throttled while initiating and keeps its slot; the second
    // parked, which freed a slot, but the pause keeps the others waiting.
    let first = app.migration(&a_ids[0]).await;
    assert_eq!(first["state"], "initiating", "{first:#}");
    assert_eq!(first["batch_slot"], "taken");
    assert_eq!(app.migration(&a_ids[1]).await["state"], "awaiting_otp");
    for id in &a_ids[2..] {
        let m = app.migration(id).await;
        assert_eq!(
            (&m["state"], &m["batch_slot"]),
            (&json!("queued"), &json!("waiting"))
        );
    }
    let batch = json_of(app.get(&format!("/v1/batches/{a}")).await, StatusCode::OK).await;
    assert_eq!(batch["throttles"], 1, "{batch:#}");
    assert!(batch["paused_until"].is_string(), "{batch:#}");
    // B and the single migration were not held back.
    assert_eq!(states(&pool, &b).await, only("awaiting_otp", 3));
    assert_eq!(app.migration(&single).await["state"], "awaiting_otp");
    let b_batch = json_of(app.get(&format!("/v1/batches/{b}")).await, StatusCode::OK).await;
    assert_eq!(b_batch["throttles"], 0);
    assert_eq!(b_batch["paused_until"], Value::Null);

    // After the pause (and the throttled one's own retry delay), A goes on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while states(&pool, &a).await != only("awaiting_otp", 4) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            states(&pool, &a).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.worker().run_until_idle().await.unwrap();
    }
    assert_eq!(app.applied(&a_numbers[0], "start_migration"), 1);
}

/// A retried failure and a resent code enter the paced states again: they wait for a slot like
/// the others, oldest first.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn retry_and_resend_wait_for_a_slot(pool: PgPool) {
    let mut opts = Options::no_worker();
    opts.worker.otp.resend_cooldown = Duration::ZERO;
    let app = TestApp::spawn_with(pool.clone(), opts).await;
    // 0001: two_factor_enabled, fails in `initiating` (retryable).
    let list = vec![
        "+14155550001".to_owned(),
        "+14155559911".to_owned(),
        "+14155559912".to_owned(),
    ];
    let (batch, ids) = create_batch(&app, 1, &list).await;
    app.worker().run_until_idle().await.unwrap();
    assert_eq!(app.migration(&ids[0]).await["state"], "failed");
    assert_eq!(app.migration(&ids[1]).await["state"], "awaiting_otp");
    assert_eq!(app.migration(&ids[2]).await["state"], "awaiting_otp");

    let res = app
        .http
        .post(format!(
            "{}/_sandbox/numbers/%2B14155550001/resolve",
            app.sandbox_url
        ))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let res = app
        .post(&format!("/v1/batches/{batch}/retry_failed"), json!({}))
        .await;
    let out = json_of(res, StatusCode::OK).await;
    assert_eq!(out["retried"], 1, "{out:#}");
    let res = app
        .post(
            &format!("/v1/migrations/{}/otp/resend", ids[2]),
            json!({ "method": "voice" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let retried = app.migration(&ids[0]).await;
    assert_eq!(
        (&retried["state"], &retried["batch_slot"]),
        (&json!("initiating"), &json!("waiting"))
    );
    let resent = app.migration(&ids[2]).await;
    assert_eq!(
        (&resent["state"], &resent["batch_slot"]),
        (&json!("requesting_otp"), &json!("waiting"))
    );
    assert_eq!(slots(&pool, &batch).await, (0, 2));
    // The batch counts the two waiting for a slot as queued (README, "Pacing").
    let view: Value = app
        .get(&format!("/v1/batches/{batch}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["counts_by_state"],
        json!({ "queued": 2, "awaiting_otp": 1 }),
        "{view:#}"
    );
    // And its list filters them as it counts them.
    let listed = |state: &'static str| {
        let app = &app;
        let batch = &batch;
        async move {
            let page: Value = app
                .get(&format!("/v1/batches/{batch}/migrations?state={state}"))
                .await
                .json()
                .await
                .unwrap();
            let mut ids: Vec<String> = page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut waiting = vec![ids[0].clone(), ids[2].clone()];
    waiting.sort();
    assert_eq!(listed("queued").await, waiting);
    assert!(listed("requesting_otp").await.is_empty());
    assert!(listed("initiating").await.is_empty());
    assert_eq!(listed("awaiting_otp").await, [ids[1].clone()]);

    // One slot: the retried one (created first) goes first, the resend waits.
    assert_eq!(app.worker().admit().await.unwrap(), 1);
    assert_eq!(app.migration(&ids[0]).await["batch_slot"], "taken");
    assert_eq!(app.migration(&ids[2]).await["batch_slot"], "waiting");
    assert_eq!(app.worker().admit().await.unwrap(), 0);
    assert_eq!(app.applied("+14155559912", "request_code"), 1);

    app.worker().run_until_idle().await.unwrap();
    assert_eq!(states(&pool, &batch).await, only("awaiting_otp", 3));
    assert_eq!(app.applied("+14155559912", "request_code"), 2);
}

/// Cancelling a batch cancels its held migrations too; nothing of it runs afterwards.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn cancel_cancels_held_migrations(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), Options::no_worker()).await;
    let (batch, ids) = create_batch(&app, 2, &numbers("+141555588", 6)).await;
    assert_eq!(slots(&pool, &batch).await, (2, 4));
    let res = app
        .post(&format!("/v1/batches/{batch}/cancel"), json!({}))
        .await;
    let out = json_of(res, StatusCode::OK).await;
    assert_eq!(out["state"], "cancelled");
    assert_eq!(states(&pool, &batch).await, only("cancelled", 6));
    assert_eq!(app.worker().admit().await.unwrap(), 0);
    assert_eq!(app.worker().run_until_idle().await.unwrap(), 0);
    let m = app.migration(&ids[5]).await;
    assert_eq!(
        (&m["state"], &m["batch_slot"]),
        (&json!("cancelled"), &Value::Null)
    );
    assert_eq!(
        app.event_count(&ids[5], Some("migration.cancelled")).await,
        1
    );
}
