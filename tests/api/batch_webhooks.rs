//! The batch's own webhooks, `batch.progress` and `batch.completed` (README "Moving a
//! portfolio"): written by the batch ticker (driven here with `run_once`), delivered by the same
//! dispatcher as migration webhooks and verified with the independent `standardwebhooks` crate.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use standardwebhooks::Webhook;
use waba_migrator::core::WebhookConfig;
use waba_migrator::webhooks::BatchTicker;

use crate::helpers::{ADMIN_KEY, Options, TestApp, batch_item_ids};
use crate::webhooks::{Consumer, Received};

fn options(interval: Duration, background_worker: bool) -> Options {
    Options {
        background_worker,
        background_batch_ticker: false,
        webhooks: WebhookConfig {
            allow_private: true,
            attempt_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(100),
            batch_progress_interval: interval,
            ..WebhookConfig::default()
        },
        ..Options::default()
    }
}

/// Creates a batch of `numbers` (with `callback_url` when given): `(batch id, migration ids)`.
async fn create_batch(
    app: &TestApp,
    numbers: &[&str],
    callback_url: Option<&str>,
) -> (String, Vec<String>) {
    let mut body = json!({
        "name": "Portfolio",
        "migrations": numbers.iter().map(|n| TestApp::create_body(n)).collect::<Vec<_>>(),
    });
    if let Some(url) = callback_url {
        body["callback_url"] = json!(url);
    }
    let res = app.post("/v1/batches", body).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    let ids = batch_item_ids(&body);
    (body["batch"]["id"].as_str().unwrap().to_owned(), ids)
}

async fn batch(app: &TestApp, id: &str) -> Value {
    let res = app.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

async fn cancel_batch(app: &TestApp, id: &str) {
    let res = app
        .post(&format!("/v1/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// The batch's delivery rows: `(event_type, sequence, generation, url, payload)`, in order.
async fn rows(app: &TestApp, batch_id: &str) -> Vec<(String, i32, i32, String, Value)> {
    let rows: Vec<(String, i32, i32, String, String)> = sqlx::query_as(
        "SELECT event_type, sequence, batch_generation, url, payload FROM webhook_deliveries
          WHERE batch_id = $1::uuid ORDER BY sequence",
    )
    .bind(batch_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(t, s, g, u, p)| (t, s, g, u, serde_json::from_str(&p).unwrap()))
        .collect()
}

fn body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn webhook_id(r: &Received) -> String {
    r.headers["webhook-id"].to_str().unwrap().to_owned()
}

/// Waits until the consumer acknowledged `n` requests; returns them.
async fn accepted(consumer: &Consumer, n: usize) -> Vec<Received> {
    for _ in 0..200 {
        let got = consumer.accepted();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {n} deliveries, got {:#?}", consumer.accepted());
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_batch_sends_progress_while_it_moves_and_one_completed_at_the_end(pool: PgPool) {
    let app = TestApp::spawn_with(pool, options(Duration::from_secs(1), true)).await;
    let consumer = Consumer::start().await;
    // Three happy-path numbers and one that fails (`…0001`: two_factor_enabled).
    let numbers = [
        "+14155552101",
        "+14155552102",
        "+14155552103",
        "+14155550001",
    ];
    let (batch_id, ids) = create_batch(&app, &numbers, Some(&consumer.url)).await;

    // Nothing moved yet that a look could report: all queued (or the worker just took them).
    for id in &ids[..3] {
        app.wait_for(id, "awaiting_otp").await;
    }
    app.wait_for(&ids[3], "failed").await;
    let first = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((first.progress, first.completed), (1, 0));
    // At once again: within the interval, and nothing changed anyway.
    let again = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((again.progress, again.completed), (0, 0));

    app.complete(&ids[0]).await;
    // Let the interval pass (the gate is the database's clock; see the spacing check below).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((second.progress, second.completed), (1, 0));

    app.complete(&ids[1]).await;
    app.complete(&ids[2]).await;
    let last = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((last.progress, last.completed), (0, 1));
    // Done: the batch is not looked at again.
    let after = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((after.progress, after.completed), (0, 0));

    let got = accepted(&consumer, 3).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let verifier = Webhook::new(&app.webhook_secret).unwrap();
    for r in &got {
        verifier
            .verify(&r.body, &r.headers)
            .unwrap_or_else(|e| panic!("{e:?}: {}", body(r)));
        assert_eq!(r.headers["content-type"], "application/json");
    }
    let types: Vec<Value> = got.iter().map(|r| body(r)["type"].clone()).collect();
    assert_eq!(
        types,
        [
            json!("batch.progress"),
            json!("batch.progress"),
            json!("batch.completed")
        ]
    );
    let sequences: Vec<i64> = got
        .iter()
        .map(|r| body(r)["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3]);

    // The first progress: three waiting for their code, one failed.
    let p1 = body(&got[0]);
    assert_eq!(p1["generation"], 1);
    assert_eq!(p1["data"]["id"], json!(batch_id));
    assert_eq!(p1["data"]["state"], "active");
    assert_eq!(
        p1["data"]["counts_by_state"],
        json!({"awaiting_otp": 3, "failed": 1})
    );
    assert_eq!(
        p1["data"]["counts_by_error_code"],
        json!({"two_factor_enabled": 1})
    );
    assert_eq!(p1["data"]["finished"], 1);
    assert_eq!(
        body(&got[1])["data"]["counts_by_state"],
        json!({"awaiting_otp": 2, "completed": 1, "failed": 1})
    );

    // batch.completed: the final counts, exactly as GET /v1/batches/{id} shows the batch.
    let done = body(&got[2]);
    assert_eq!(done["generation"], 1);
    let shown = batch(&app, &batch_id).await;
    assert_eq!(done["data"], shown);
    assert_eq!(shown["state"], "finished");
    assert_eq!(shown["total"], 4);
    assert_eq!(shown["finished"], 4);
    assert_eq!(shown["progress"], 1.0);
    assert_eq!(shown["estimated_seconds_left"], 0);
    assert_eq!(
        shown["counts_by_state"],
        json!({"completed": 3, "failed": 1})
    );
    assert_eq!(
        shown["counts_by_error_code"],
        json!({"two_factor_enabled": 1})
    );
    assert!(shown["finished_at"].is_string(), "{shown:#}");
    assert!(!done.to_string().contains("client_page"));

    // Exactly one batch.completed row; progress rows at least the interval apart (by the
    // time the database stamped them).
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries
          WHERE batch_id = $1::uuid AND event_type = 'batch.completed'",
    )
    .bind(&batch_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(completed, 1);
    let stamps: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM webhook_deliveries
          WHERE batch_id = $1::uuid AND event_type = 'batch.progress' ORDER BY sequence",
    )
    .bind(&batch_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(stamps.len(), 2);
    assert!(
        stamps[1] - stamps[0] >= chrono::Duration::seconds(1),
        "{stamps:?}"
    );

    // The delivery log of the batch (partner and admin alike), with the ids sent as webhook-id.
    let log = app
        .all_pages(&format!("/v1/batches/{batch_id}/webhook_deliveries"))
        .await;
    assert_eq!(log.len(), 3);
    for (d, r) in log.iter().zip(&got) {
        assert_eq!(d["id"].as_str().unwrap(), webhook_id(r));
        assert_eq!(d["batch_id"], json!(batch_id));
        assert_eq!(d["migration_id"], Value::Null);
        assert_eq!(d["status"], "succeeded");
        assert_eq!(d["attempts"][0]["response_status"], 204);
        assert_eq!(d["payload"], body(r));
    }
    let res = app
        .get_as(
            ADMIN_KEY,
            &format!("/v1/batches/{batch_id}/webhook_deliveries"),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["data"], json!(log));
    let (_, other_key) = app.other_partner().await;
    let res = app
        .get_as(
            &other_key,
            &format!("/v1/batches/{batch_id}/webhook_deliveries"),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // The migrations' own logs hold none of the batch's events.
    let own = app
        .all_pages(&format!("/v1/migrations/{}/webhook_deliveries", ids[0]))
        .await;
    assert!(own.is_empty(), "{own:#?}");

    // Redelivery: the same body under the same webhook-id.
    let completed_id = log[2]["id"].as_str().unwrap();
    let res = app.redeliver(completed_id).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let again = accepted(&consumer, 4).await;
    assert_eq!(webhook_id(&again[3]), completed_id);
    assert_eq!(again[3].body, got[2].body);
    verifier.verify(&again[3].body, &again[3].headers).unwrap();
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn progress_needs_a_change_and_the_interval(pool: PgPool) {
    // No worker: the only changes are the cancels below.
    let app = TestApp::spawn_with(pool, options(Duration::from_secs(3600), false)).await;
    let consumer = Consumer::start().await;
    let numbers = ["+14155552201", "+14155552202", "+14155552203"];
    let (batch_id, ids) = create_batch(&app, &numbers, Some(&consumer.url)).await;

    // All queued, as created: nothing moved.
    let t = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((t.progress, t.completed), (0, 0));

    let res = app
        .post(&format!("/v1/migrations/{}/cancel", ids[0]), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let t = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((t.progress, t.completed), (1, 0));

    // Another change, but within the hour: no second progress.
    let res = app
        .post(&format!("/v1/migrations/{}/cancel", ids[1]), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let t = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((t.progress, t.completed), (0, 0));

    // The end does not wait for the interval.
    let res = app
        .post(&format!("/v1/migrations/{}/cancel", ids[2]), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let t = app.batch_ticker.run_once().await.unwrap();
    assert_eq!((t.progress, t.completed), (0, 1));

    let rows = rows(&app, &batch_id).await;
    let kinds: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(kinds, ["batch.progress", "batch.completed"]);
    assert_eq!(
        rows[0].4["data"]["counts_by_state"],
        json!({"cancelled": 1, "queued": 2})
    );
    // Migrations cancelled one by one: the batch itself was not cancelled.
    assert_eq!(rows[1].4["data"]["state"], "finished");
    assert_eq!(
        rows[1].4["data"]["counts_by_state"],
        json!({"cancelled": 3})
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn batch_webhooks_go_to_the_batch_url_else_the_partner_url_else_nowhere(pool: PgPool) {
    let app = TestApp::spawn_with(pool, options(Duration::from_secs(60), false)).await;
    let batch_hook = Consumer::start().await;
    let partner_hook = Consumer::start().await;

    // No URL anywhere: the batch completes (finished_at recorded), nothing is written.
    let (silent, _) = create_batch(&app, &["+14155552301"], None).await;
    cancel_batch(&app, &silent).await;
    let t = app.batch_ticker.run_once().await.unwrap();
    assert_eq!(t.completed, 1);
    assert!(rows(&app, &silent).await.is_empty());
    let finished_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT finished_at FROM batches WHERE id = $1::uuid")
            .bind(&silent)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(finished_at.is_some());

    let res = app
        .http
        .patch(app.url(&format!("/v1/partners/{}", app.partner_id)))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "callback_url": partner_hook.url }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );

    // The batch's own URL wins over the partner's; without one, the partner's.
    let (own, _) = create_batch(&app, &["+14155552302"], Some(&batch_hook.url)).await;
    let (inherits, _) = create_batch(&app, &["+14155552303"], None).await;
    cancel_batch(&app, &own).await;
    cancel_batch(&app, &inherits).await;
    let t = app.batch_ticker.run_once().await.unwrap();
    assert_eq!(t.completed, 2);
    // The silent batch stays done: no late batch.completed now that a URL exists.
    assert!(rows(&app, &silent).await.is_empty());

    let own_rows = rows(&app, &own).await;
    assert_eq!(own_rows.len(), 1);
    assert_eq!(own_rows[0].3, batch_hook.url);
    let inherited = rows(&app, &inherits).await;
    assert_eq!(inherited.len(), 1);
    assert_eq!(inherited[0].3, partner_hook.url);

    // A cancelled batch's batch.completed says so.
    for r in [&own_rows[0], &inherited[0]] {
        assert_eq!(r.0, "batch.completed");
        assert_eq!(r.4["data"]["state"], "cancelled");
        assert_eq!(r.4["data"]["counts_by_state"], json!({"cancelled": 1}));
        assert!(r.4["data"]["cancelled_at"].is_string());
    }
    let got = accepted(&batch_hook, 1).await;
    assert_eq!(body(&got[0])["data"]["id"], json!(own));
    // The partner's URL also gets the migrations' own webhooks (`migration.cancelled`): two
    // of them and the inheriting batch's batch.completed.
    let got = accepted(&partner_hook, 3).await;
    let batch_events: Vec<Value> = got
        .iter()
        .map(body)
        .filter(|b| b["type"] == "batch.completed")
        .collect();
    assert_eq!(batch_events.len(), 1, "{got:#?}");
    assert_eq!(batch_events[0]["data"]["id"], json!(inherits));
    assert_eq!(
        got.iter()
            .filter(|r| body(r)["type"] == "migration.cancelled")
            .count(),
        2
    );
    // The batch's URL gets the batch's events only, not its migrations'.
    assert!(
        batch_hook
            .received()
            .iter()
            .all(|r| body(r)["type"] == "batch.completed")
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn concurrent_tickers_write_one_completed_per_batch(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), options(Duration::from_secs(60), false)).await;
    let consumer = Consumer::start().await;
    let mut batches = Vec::new();
    for i in 0..6 {
        let number = format!("+1415555240{i}");
        let (id, _) = create_batch(&app, &[number.as_str()], Some(&consumer.url)).await;
        cancel_batch(&app, &id).await;
        batches.push(id);
    }
    // Four tickers, as on several replicas, looking at once.
    let tickers: Vec<BatchTicker> = (0..4)
        .map(|_| BatchTicker::new(app.state.clone(), Duration::from_secs(60)))
        .collect();
    let results = futures::future::join_all(
        tickers
            .iter()
            .map(|t| async { t.run_once().await.unwrap() }),
    )
    .await;
    let completed: usize = results.iter().map(|t| t.completed).sum();
    assert_eq!(completed, batches.len(), "{results:?}");
    for id in &batches {
        let rows = rows(&app, id).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].0.as_str(), rows[0].2), ("batch.completed", 1));
    }
    let again = app.batch_ticker.run_once().await.unwrap();
    assert_eq!(again.completed, 0);

    // Not luck: the database refuses a second batch.completed of the same generation.
    let dup = sqlx::query(
        "INSERT INTO webhook_deliveries (id, partner_id, batch_id, batch_generation, sequence,
             event_type, payload, url, next_attempt_at)
         SELECT gen_random_uuid(), partner_id, batch_id, batch_generation, sequence + 1,
                event_type, payload, url, now()
           FROM webhook_deliveries WHERE batch_id = $1::uuid",
    )
    .bind(&batches[0])
    .execute(&app.pool)
    .await
    .unwrap_err();
    let db = dup.as_database_error().expect("a database error");
    assert_eq!(db.constraint(), Some("webhook_deliveries_batch_completed"));
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_retry_after_completion_opens_a_new_generation_with_its_own_completed(pool: PgPool) {
    let app = TestApp::spawn_with(pool, options(Duration::from_secs(60), true)).await;
    let consumer = Consumer::start().await;
    // `…0001` fails at initiating (two_factor_enabled) every time.
    let (batch_id, ids) = create_batch(&app, &["+14155550001"], Some(&consumer.url)).await;
    app.wait_for(&ids[0], "failed").await;
    let t = app.batch_ticker.run_once().await.unwrap();
    assert_eq!(t.completed, 1);
    assert_eq!(batch(&app, &batch_id).await["state"], "finished");

    let res = app
        .post(&format!("/v1/migrations/{}/retry", ids[0]), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // Wait for the retried run to fail again.
    for _ in 0..200 {
        let m = app.migration(&ids[0]).await;
        let failed_twice = app.event_count(&ids[0], Some("migration.failed")).await == 2;
        if failed_twice && m["state"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.event_count(&ids[0], Some("migration.failed")).await, 2);
    let t = app.batch_ticker.run_once().await.unwrap();
    assert_eq!(t.completed, 1);

    let rows = rows(&app, &batch_id).await;
    let completed: Vec<(i32, i32)> = rows
        .iter()
        .filter(|r| r.0 == "batch.completed")
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(completed.len(), 2, "{rows:?}");
    assert_eq!(completed[0].1, 1);
    assert_eq!(completed[1].1, 2);
    assert!(completed[1].0 > completed[0].0);
    let last = &rows.last().unwrap().4;
    assert_eq!(last["type"], "batch.completed");
    assert_eq!(last["generation"], 2);
    assert_eq!(last["data"]["state"], "finished");
    assert_eq!(last["data"]["counts_by_state"], json!({"failed": 1}));
    let got = accepted(&consumer, rows.len()).await;
    let ids: Vec<String> = got.iter().map(webhook_id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "distinct events, distinct webhook-ids"
    );
}
