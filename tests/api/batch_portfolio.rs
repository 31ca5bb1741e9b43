//! Issue 17's acceptance run: a 300-number batch in the sandbox, 10 % of them failure
//! scenarios, codes submitted as the migrations park. Checks pacing (never more than
//! `max_in_flight` of the batch between `queued` and `awaiting_otp`), the final counts, the CSV
//! report row by row against each migration, `retry_failed`, and `batch.completed`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use waba_migrator::core::WebhookConfig;
use waba_migrator::worker::WorkerConfig;

use crate::helpers::{Options, TestApp};
use crate::webhooks::{Consumer, Received};

const TOTAL: usize = 300;
const MAX_IN_FLIGHT: i64 = 6;
/// Each of the two workers could run this many steps at once: far more than the batch may.
const WORKER_CONCURRENCY: usize = 16;

/// The states a batch's pacing limits: past `queued`, before `awaiting_otp`, not parked.
const PACED: &str = "('prechecking', 'initiating', 'requesting_otp')";

/// Item `i`: every tenth a failure scenario, in turn `…0001` (two_factor_enabled, retryable
/// once resolved), `…0013` (whatsapp_issued_number) and `…0014` (number_on_business_app), each
/// on its own exchange; the others happy-path numbers.
fn number(i: usize) -> String {
    if i % 10 == 9 {
        let scenario = ["0001", "0013", "0014"][(i / 10) % 3];
        format!("+1415{}{scenario}", 560 + i / 30)
    } else {
        format!("+1415555{}", 2000 + i)
    }
}

fn body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    let res = app.get(path).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {body:#}");
    body
}

/// Submits `123456` for every migration of the batch that waits for its code, until the batch
/// has finished; returns how many codes were taken.
async fn submit_codes_until_finished(app: &TestApp, batch: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut taken = 0;
    loop {
        let b = get_ok(app, &format!("/v1/batches/{batch}")).await;
        if b["state"] == "finished" {
            return taken;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b:#}");
        let parked = app
            .all_pages(&format!(
                "/v1/batches/{batch}/migrations?state=awaiting_otp"
            ))
            .await;
        for m in parked {
            let res = app.submit_otp(m["id"].as_str().unwrap(), "123456").await;
            if res.status() == StatusCode::ACCEPTED || res.status() == StatusCode::OK {
                taken += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the consumer to have acknowledged a `batch.completed` of `generation`.
async fn completed_events(consumer: &Consumer, generation: i64) -> Vec<Value> {
    for _ in 0..400 {
        let got: Vec<Value> = consumer
            .accepted()
            .iter()
            .map(body)
            .filter(|b| b["type"] == "batch.completed")
            .collect();
        if got.iter().any(|b| b["generation"] == generation) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no batch.completed of generation {generation}");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_300_number_batch_is_paced_counted_reported_and_retried(pool: PgPool) {
    let defaults = Options::default();
    let app = TestApp::spawn_with(
        pool,
        Options {
            worker: WorkerConfig {
                concurrency: WORKER_CONCURRENCY,
                ..defaults.worker.clone()
            },
            webhooks: WebhookConfig {
                allow_private: true,
                attempt_timeout: Duration::from_secs(2),
                poll_interval: Duration::from_millis(100),
                batch_progress_interval: Duration::from_secs(1),
                ..WebhookConfig::default()
            },
            ..Options::default()
        },
    )
    .await;
    // A second replica claiming from the same database.
    let replica = app.another_worker();
    let replica_stop = CancellationToken::new();
    let replica_task = {
        let stop = replica_stop.clone();
        tokio::spawn(async move { replica.run(stop).await })
    };
    let consumer = Consumer::start().await;
    let items: Vec<Value> = (0..TOTAL)
        .map(|i| {
            let mut b = TestApp::create_body(&number(i));
            b["reference"] = json!(format!("store-{i}"));
            b
        })
        .collect();
    let res = app
        .post(
            "/v1/batches",
            json!({"name": "Acme portfolio", "max_in_flight": MAX_IN_FLIGHT,
                   "callback_url": consumer.url, "migrations": items}),
        )
        .await;
    let status = res.status();
    let created: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created:#}");
    let batch = created["batch"]["id"].as_str().unwrap().to_owned();
    let ids: Vec<String> = created["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["status"], "created", "{i:#}");
            i["migration_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), TOTAL);

    // The observer, as often as the database answers: the batch's migrations working between
    // `queued` and `awaiting_otp` (a retried migration waiting for a slot shows its step's state
    // with `batch_slot` `waiting` and `run_at` held: it does nothing until admitted), and, until
    // the retries, every migration in those states whatever its slot.
    let stop = Arc::new(AtomicBool::new(false));
    let retrying = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let most_by_state = Arc::new(AtomicI64::new(0));
    let observer = {
        let (pool, batch) = (app.pool.clone(), batch.clone());
        let (stop, retrying, most, most_by_state) = (
            stop.clone(),
            retrying.clone(),
            most.clone(),
            most_by_state.clone(),
        );
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (working, by_state): (i64, i64) = sqlx::query_as(&format!(
                    "SELECT count(*) FILTER (WHERE run_at < '9999-12-31'), count(*)
                       FROM migrations WHERE batch_id = $1::uuid AND state IN {PACED}"
                ))
                .bind(&batch)
                .fetch_one(&pool)
                .await
                .unwrap();
                most.fetch_max(working, Ordering::Relaxed);
                if !retrying.load(Ordering::Relaxed) {
                    most_by_state.fetch_max(by_state, Ordering::Relaxed);
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };

    let codes = submit_codes_until_finished(&app, &batch).await;
    assert_eq!(codes, 270, "one code per happy-path number");

    // Final counts.
    let b = get_ok(&app, &format!("/v1/batches/{batch}")).await;
    assert_eq!(b["total"], TOTAL);
    assert_eq!(b["finished"], TOTAL);
    assert_eq!(b["progress"], 1.0);
    assert_eq!(
        b["counts_by_state"],
        json!({"completed": 270, "failed": 30}),
        "{b:#}"
    );
    assert_eq!(
        b["counts_by_error_code"],
        json!({"two_factor_enabled": 10, "whatsapp_issued_number": 10,
               "number_on_business_app": 10}),
        "{b:#}"
    );
    assert!(b["finished_at"].is_string(), "{b:#}");

    // The report, row by row against each migration as the API shows it.
    let res = app.get(&format!("/v1/batches/{batch}/report.csv")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    // UTF-8 with a byte order mark, for Excel.
    let text = text.strip_prefix('\u{feff}').expect("a byte order mark");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), TOTAL);
    for (i, row) in rows.iter().enumerate() {
        let m = app.migration(&ids[i]).await;
        assert_eq!(&row[0], format!("store-{i}"), "row {i}");
        assert_eq!(&row[1], number(i));
        assert_eq!(&row[2], ids[i]);
        assert_eq!(&row[3], m["state"].as_str().unwrap());
        let templates = |k: &str| m["templates"][k].as_array().map_or(0, Vec::len).to_string();
        assert_eq!(&row[7], templates("migrated"), "row {i}");
        assert_eq!(&row[8], templates("failed"), "row {i}");
        assert_eq!(&row[9], templates("skipped"), "row {i}");
        if i % 10 == 9 {
            assert_eq!(m["state"], "failed", "{m:#}");
            assert_eq!(&row[4], m["error"]["code"].as_str().unwrap());
            assert_eq!(&row[5], m["error"]["actor"].as_str().unwrap());
            assert_eq!(&row[6], m["error"]["remediation"].as_str().unwrap());
            assert!(!row[6].is_empty(), "row {i} says what to do");
            assert_eq!(&row[10], "no");
        } else {
            assert_eq!(m["state"], "completed", "{m:#}");
            assert_eq!((&row[4], &row[5], &row[6]), ("", "", ""), "row {i}");
            assert_eq!(&row[10], "yes", "row {i}: the key is ready");
        }
    }

    // batch.completed: one, with the final counts; progress before it, at most once a second.
    let completed = completed_events(&consumer, 1).await;
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert_eq!(
        completed[0]["data"]["counts_by_state"],
        b["counts_by_state"]
    );
    assert_eq!(completed[0]["data"]["state"], "finished");
    let progress: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM webhook_deliveries
          WHERE batch_id = $1::uuid AND event_type = 'batch.progress' ORDER BY sequence",
    )
    .bind(&batch)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        !progress.is_empty(),
        "the batch reported progress while it moved"
    );
    for w in progress.windows(2) {
        assert!(
            w[1] - w[0] >= chrono::Duration::milliseconds(1000),
            "progress more than once per interval: {progress:?}"
        );
    }

    // retry_failed: once two-step verification is off, the `…0001` numbers move; the others'
    // errors are not retryable and stay.
    let retryable: Vec<usize> = (0..TOTAL).filter(|i| i % 30 == 9).collect();
    assert_eq!(retryable.len(), 10);
    for &i in &retryable {
        let res = app
            .http
            .post(format!(
                "{}/_sandbox/numbers/{}/resolve",
                app.sandbox_url,
                number(i).replace('+', "%2B")
            ))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }
    retrying.store(true, Ordering::Relaxed);
    let res = app
        .post(&format!("/v1/batches/{batch}/retry_failed"), json!({}))
        .await;
    let out: Value = res.json().await.unwrap();
    assert_eq!(out["retried"], 10, "{out:#}");
    assert_eq!(out["skipped"], 20, "{out:#}");
    let codes = submit_codes_until_finished(&app, &batch).await;
    assert_eq!(codes, 10);
    let b = get_ok(&app, &format!("/v1/batches/{batch}")).await;
    assert_eq!(
        b["counts_by_state"],
        json!({"completed": 280, "failed": 20}),
        "{b:#}"
    );
    let retried: HashSet<&str> = retryable.iter().map(|&i| ids[i].as_str()).collect();
    for id in &retried {
        assert_eq!(app.migration(id).await["state"], "completed");
    }
    let completed = completed_events(&consumer, 2).await;
    let generations: BTreeMap<i64, usize> = completed.iter().fold(BTreeMap::new(), |mut acc, b| {
        *acc.entry(b["generation"].as_i64().unwrap()).or_default() += 1;
        acc
    });
    assert_eq!(
        generations,
        BTreeMap::from([(1, 1), (2, 1)]),
        "{completed:#?}"
    );

    stop.store(true, Ordering::Relaxed);
    replica_stop.cancel();
    replica_task.await.unwrap().unwrap();
    let samples = observer.await.unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(samples > 10, "the observer looked {samples} times");
    assert!(
        most <= MAX_IN_FLIGHT,
        "{most} of the batch's migrations were between queued and awaiting_otp at once (max_in_flight {MAX_IN_FLIGHT})"
    );
    let most_by_state = most_by_state.load(Ordering::Relaxed);
    assert!(
        most_by_state <= MAX_IN_FLIGHT,
        "{most_by_state} of the batch's migrations were between queued and awaiting_otp at once before the retries"
    );
    assert!(most >= 1, "the observer saw the batch move");
}
