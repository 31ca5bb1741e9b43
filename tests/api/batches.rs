//! `POST /v1/batches` and the batch reads and commands (README "Moving a portfolio").

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use waba_migrator::core::settings::ManualClock;

use crate::helpers::{
    ADMIN_KEY, BUSINESS, DEST_WABA, Options, SOURCE_WABA, TestApp, assert_problem, batch_item_ids,
};

async fn post_csv(app: &TestApp, query: &str, csv: String, key: Option<&str>) -> reqwest::Response {
    let mut req = app
        .http
        .post(app.url(&format!("/v1/batches{query}")))
        .bearer_auth(app.partner_key.clone())
        .header("content-type", "text/csv")
        .body(csv);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.unwrap()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn json_of(res: reqwest::Response, status: StatusCode) -> Value {
    let got = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body:#}");
    body
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn json_batch_creates_items_and_reports_busy_numbers_per_item(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let (_, other_key) = app.other_partner().await;
    // Busy numbers: one of ours, one of another partner.
    let mine = app.create("+14155551003").await;
    let res = app
        .post_as(
            &other_key,
            "/v1/migrations",
            TestApp::create_body("+14155551004"),
        )
        .await;
    let theirs = json_of(res, StatusCode::CREATED).await["id"].clone();
    let single = app.migration(&mine).await;
    assert_eq!(single["batch_id"], Value::Null, "{single:#}");

    let mut disabled = TestApp::create_body("+14155551002");
    disabled["client_page"] = json!("disabled");
    disabled["reference"] = json!("store-2");
    let mut first = TestApp::create_body("+14155551001");
    first["reference"] = json!("store-1");
    let res = app
        .post(
            "/v1/batches",
            json!({
                "name": "Acme portfolio",
                "max_in_flight": 5,
                "migrations": [first, disabled, TestApp::create_body("+14155551003"),
                               TestApp::create_body("+14155551004")],
            }),
        )
        .await;
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body = json_of(res, StatusCode::CREATED).await;
    let batch = &body["batch"];
    assert_eq!(
        location,
        format!("/v1/batches/{}", batch["id"].as_str().unwrap())
    );
    assert_eq!(batch["name"], "Acme portfolio");
    assert_eq!(batch["max_in_flight"], 5);
    assert_eq!(batch["total"], 2);
    assert_eq!(batch["state"], "active");
    assert_eq!(batch["counts_by_state"], json!({ "queued": 2 }));
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["status"], "created");
    assert_eq!(items[0]["reference"], "store-1");
    assert_eq!(items[0]["index"], 0);
    assert!(
        items[0]["client_page"]["url"]
            .as_str()
            .unwrap()
            .contains("/c/"),
        "{body:#}"
    );
    assert_eq!(items[1]["status"], "created");
    assert_eq!(items[1]["client_page"], Value::Null);
    // Our own busy number: the active migration named.
    assert_eq!(items[2]["status"], "rejected");
    assert_eq!(items[2]["error"]["code"], "migration_already_active");
    assert_eq!(items[2]["error"]["migration_id"], json!(mine));
    assert_eq!(items[2]["migration_id"], Value::Null);
    // Another partner's: busy, but not whose.
    assert_eq!(items[3]["status"], "rejected");
    assert_eq!(items[3]["error"]["code"], "migration_already_active");
    assert!(items[3]["error"].get("migration_id").is_none(), "{body:#}");
    assert!(!body.to_string().contains(theirs.as_str().unwrap()));

    // Each created migration is an ordinary one, with its batch.
    let id = items[0]["migration_id"].as_str().unwrap();
    let m = app.migration(id).await;
    assert_eq!(m["batch_id"], batch["id"]);
    assert_eq!(m["state"], "queued");
    assert_eq!(m["client_page"]["url"], items[0]["client_page"]["url"]);
    assert_eq!(app.event_count(id, Some("migration.created")).await, 1);

    // The admin key cannot create batches.
    let res = app
        .post_as(
            ADMIN_KEY,
            "/v1/batches",
            json!({ "name": "x", "migrations": [] }),
        )
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
}

/// A batch none of whose numbers can move is not made: 409 with each number's reason, and
/// nothing written (not even its `Idempotency-Key`, so the same request works once they are free).
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_batch_whose_every_number_is_busy_is_not_created(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let busy = app.create("+14155551011").await;
    let other = app.create("+14155551012").await;
    // An empty line between the numbers: a spreadsheet shows the second on row 4.
    let csv = format!(
        "phone_number,source_waba_id,destination_waba_id,meta_business_id,reference\n\
         +14155551011,{SOURCE_WABA},{DEST_WABA},{BUSINESS},first\n\
         \n\
         +14155551012,{SOURCE_WABA},{DEST_WABA},{BUSINESS},second\n"
    );
    let res = post_csv(&app, "?name=all-busy", csv.clone(), Some("all-busy-1")).await;
    let body = assert_problem(res, StatusCode::CONFLICT, "batch_all_rejected").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("All 2 numbers are busy"),
        "{body:#}"
    );
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{body:#}");
    for (item, (row, id, reference)) in items
        .iter()
        .zip([(2, &busy, "first"), (4, &other, "second")])
    {
        assert_eq!(item["status"], "rejected", "{body:#}");
        assert_eq!(item["row"], row, "{body:#}");
        assert_eq!(item["reference"], reference);
        assert_eq!(item["error"]["code"], "migration_already_active");
        assert_eq!(item["error"]["migration_id"], id.as_str());
    }
    assert_eq!(count(&app, "batches").await, 0);
    assert_eq!(count(&app, "idempotency_keys").await, 0);
    assert_eq!(app.count_migrations().await, 2);

    // JSON: the same answer, without rows.
    let res = app
        .post(
            "/v1/batches",
            json!({ "name": "j", "migrations": [TestApp::create_body("+14155551012")] }),
        )
        .await;
    let body = assert_problem(res, StatusCode::CONFLICT, "batch_all_rejected").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("Its one number is busy")
    );
    assert!(body["items"][0].get("row").is_none(), "{body:#}");
    assert_eq!(body["items"][0]["index"], 0);

    // One of them free again: the same request with the same key creates the batch.
    let res = app
        .post(&format!("/v1/migrations/{busy}/cancel"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = post_csv(&app, "?name=all-busy", csv, Some("all-busy-1")).await;
    let body = json_of(res, StatusCode::CREATED).await;
    assert_eq!(body["batch"]["total"], 1);
    assert_eq!(body["items"][0]["status"], "created");
    assert_eq!(body["items"][0]["row"], 2);
    assert_eq!(body["items"][1]["status"], "rejected");
    assert_eq!(body["items"][1]["row"], 4);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn batches_taking_the_same_numbers_in_another_order_do_not_deadlock(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let (x, y) = ("+14155551101", "+14155551102");
    // Another writer (standing for a concurrent batch) takes x, and then y, in one
    // transaction: two migrations of other numbers renumbered, uncommitted.
    let first = app.create("+14155551103").await;
    let second = app.create("+14155551104").await;
    let mut other = app.pool.begin().await.unwrap();
    // This side is the one PostgreSQL would abort if the two deadlocked.
    sqlx::query("SET LOCAL deadlock_timeout = '50ms'")
        .execute(&mut *other)
        .await
        .unwrap();
    let renumber = "UPDATE migrations SET phone_number = $2 WHERE id = $1::uuid";
    sqlx::query(renumber)
        .bind(&first)
        .bind(x)
        .execute(&mut *other)
        .await
        .unwrap();
    // The batch lists y before x.
    let batch = {
        let app_base = app.base.clone();
        let key = app.partner_key.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{app_base}/v1/batches"))
                .bearer_auth(key)
                .json(&json!({ "name": "reversed", "migrations": [TestApp::create_body(y), TestApp::create_body(x)] }))
                .send()
                .await
                .unwrap()
        })
    };
    // Until the batch waits on x.
    if !app.until_a_lock_is_waited_for(|| batch.is_finished()).await {
        let res = batch.await.unwrap();
        panic!(
            "the batch never waited: {} {}",
            res.status(),
            res.text().await.unwrap()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query(renumber)
        .bind(&second)
        .bind(y)
        .execute(&mut *other)
        .await
        .expect("not aborted as a deadlock: the batch holds no number the other writer needs");
    other.commit().await.unwrap();

    let res = batch.await.unwrap();
    assert!(!res.status().is_server_error(), "{}", res.status());
    let body: Value = res.json().await.unwrap();
    for item in body["items"].as_array().unwrap() {
        assert_eq!(
            item["error"]["code"], "migration_already_active",
            "{body:#}"
        );
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_invalid_item_is_reported_by_pointer_and_nothing_is_created(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let mut items: Vec<Value> = (0..20)
        .map(|i| TestApp::create_body(&format!("+1415555{:04}", 2000 + i)))
        .collect();
    items[17]["phone_number"] = json!("+1415");
    items[5]["otp_method"] = json!("fax");
    // The same number twice (written another way is still the same number? no: E.164 only).
    items[9]["phone_number"] = items[2]["phone_number"].clone();
    items[11]["reference"] = json!(42);
    let before = app.count_migrations().await;
    let res = app
        .post("/v1/batches", json!({ "name": "Bad", "migrations": items }))
        .await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        [
            "/migrations/5/otp_method",
            "/migrations/9/phone_number",
            "/migrations/11/reference",
            "/migrations/17/phone_number"
        ],
        "{body:#}"
    );
    assert!(
        body["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("item 2"),
        "{body:#}"
    );
    assert_eq!(app.count_migrations().await, before);
    assert_eq!(count(&app, "batches").await, 0);

    // Batch fields and the item count.
    let res = app
        .post(
            "/v1/batches",
            json!({ "name": "", "max_in_flight": 0, "migrations": [] }),
        )
        .await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        ["/name", "/migrations", "/max_in_flight"],
        "{body:#}"
    );
    assert_eq!(count(&app, "batches").await, 0);
}

fn csv_rows(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "+1415555{:04},{SOURCE_WABA},{DEST_WABA},{BUSINESS},ref-{i},",
                1000 + i
            )
        })
        .collect()
}

const CSV_HEADER: &str =
    "phone_number,source_waba_id,destination_waba_id,meta_business_id,reference,metadata";

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_5000_row_csv_is_checked_by_row_and_column_then_created(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let mut rows = csv_rows(5000);
    // Spreadsheet row 4321 (the header is row 1): data row 4319.
    rows[4319] = format!("+1415555,{SOURCE_WABA},{DEST_WABA},{BUSINESS},bad,");
    let csv = format!("{CSV_HEADER}\n{}\n", rows.join("\n"));
    let started = Instant::now();
    let res = post_csv(&app, "?name=Big", csv, None).await;
    println!(
        "5,000-row CSV with one invalid row: {:?}",
        started.elapsed()
    );
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body:#}");
    assert_eq!(errors[0]["pointer"], "/rows/4321/phone_number");
    assert_eq!(errors[0]["row"], 4321);
    assert_eq!(errors[0]["column"], "phone_number");
    assert_eq!(app.count_migrations().await, 0);
    assert_eq!(count(&app, "batches").await, 0);

    // Fixed, with a metadata cell: all 5,000 created in one request.
    let mut rows = csv_rows(5000);
    rows[0] = format!(
        "+14155551000,{SOURCE_WABA},{DEST_WABA},{BUSINESS},ref-0,\"{{\"\"crm\"\": \"\"A-1\"\"}}\""
    );
    let csv = format!("{CSV_HEADER}\n{}\n", rows.join("\n"));
    let started = Instant::now();
    let res = post_csv(&app, "?name=Big&max_in_flight=50", csv, None).await;
    let body = json_of(res, StatusCode::CREATED).await;
    println!("5,000-row CSV created: {:?}", started.elapsed());
    assert_eq!(body["batch"]["total"], 5000);
    assert_eq!(body["batch"]["max_in_flight"], 50);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 5000);
    assert!(items.iter().all(|i| i["status"] == "created"));
    assert_eq!(items[4319]["reference"], "ref-4319");
    assert_eq!(app.count_migrations().await, 5000);
    assert_eq!(count(&app, "client_pages").await, 5000);
    assert_eq!(count(&app, "migration_events").await, 5000);
    let first = app
        .migration(items[0]["migration_id"].as_str().unwrap())
        .await;
    assert_eq!(first["metadata"], json!({ "crm": "A-1" }));
    assert_eq!(first["batch_id"], body["batch"]["id"]);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_csv_row_reports_every_problem_it_has(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let rows = [
        format!("+14155551000,{SOURCE_WABA},{DEST_WABA},{BUSINESS},ok,"),
        // A bad number and a metadata cell that is not JSON: both.
        format!("+1415,{SOURCE_WABA},{DEST_WABA},{BUSINESS},r2,notjson"),
        // The first row's number again and a bad destination id: both.
        format!("+14155551000,{SOURCE_WABA},abc,{BUSINESS},r3,"),
    ];
    let csv = format!("{CSV_HEADER}\n{}\n", rows.join("\n"));
    let res = post_csv(&app, "?name=Mixed", csv, None).await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let mut pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    pointers.sort_unstable();
    assert_eq!(
        pointers,
        [
            "/rows/3/metadata",
            "/rows/3/phone_number",
            "/rows/4/destination_waba_id",
            "/rows/4/phone_number",
        ],
        "{body:#}"
    );
    // The first occurrence named as the spreadsheet numbers it, as the error's own row is.
    let twice = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pointer"] == "/rows/4/phone_number")
        .unwrap();
    assert_eq!(
        twice["message"],
        "+14155551000 is also row 2 of this batch: each number once per batch"
    );
    assert_eq!(count(&app, "batches").await, 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn csv_header_and_query_problems_are_named(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let csv = "phone_number,colour\n+14155551000,red\n".to_owned();
    let res = post_csv(&app, "?name=X", csv, None).await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["pointer"], "/rows/1/colour", "{body:#}");
    assert_eq!(body["errors"][0]["row"], 1);
    assert_eq!(body["errors"][0]["column"], "colour");

    let csv = format!("{CSV_HEADER}\n{}\n", csv_rows(1).join("\n"));
    let res = post_csv(&app, "?name=%20&max_in_flight=2000", csv.clone(), None).await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&"/query/name"), "{body:#}");
    assert!(pointers.contains(&"/query/max_in_flight"), "{body:#}");

    // A bad metadata cell and a missing required cell, each at its row and column.
    let csv = format!(
        "{CSV_HEADER}\n+14155551000,{SOURCE_WABA},{DEST_WABA},{BUSINESS},r,{{not json\n+14155551001,{SOURCE_WABA},,{BUSINESS},r2,\n"
    );
    let res = post_csv(&app, "?name=X", csv, None).await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["pointer"], "/rows/2/metadata", "{body:#}");
    assert_eq!(
        body["errors"][1]["pointer"], "/rows/3/destination_waba_id",
        "{body:#}"
    );
    assert_eq!(body["errors"][1]["row"], 3);
    assert_eq!(app.count_migrations().await, 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_json_body_takes_query_defaults_and_its_own_fields_win(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let body = |n: &str, extra: Value| {
        let mut b = json!({"name": "Q", "migrations": [TestApp::create_body(n)]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    // The query fills what the body leaves out...
    let res = app
        .post(
            "/v1/batches?max_in_flight=5&name=ignored",
            body("+14155551010", json!({})),
        )
        .await;
    let created = json_of(res, StatusCode::CREATED).await;
    assert_eq!(created["batch"]["max_in_flight"], 5, "{created:#}");
    assert_eq!(created["batch"]["name"], "Q", "the body's name wins");
    // ...the body's own field wins...
    let res = app
        .post(
            "/v1/batches?max_in_flight=5",
            body("+14155551011", json!({"max_in_flight": 7})),
        )
        .await;
    let created = json_of(res, StatusCode::CREATED).await;
    assert_eq!(created["batch"]["max_in_flight"], 7, "{created:#}");
    // JSON Schema's integer: a zero fraction is the same number; any other is refused.
    let res = app
        .post(
            "/v1/batches",
            body("+14155551013", json!({"max_in_flight": 9.0})),
        )
        .await;
    let created = json_of(res, StatusCode::CREATED).await;
    assert_eq!(created["batch"]["max_in_flight"], 9, "{created:#}");
    let res = app
        .post(
            "/v1/batches",
            body("+14155551014", json!({"max_in_flight": 9.5})),
        )
        .await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(
        problem["errors"][0]["pointer"], "/max_in_flight",
        "{problem:#}"
    );
    // ...and an invalid query is refused for a JSON body too, creating nothing.
    let before = app.count_migrations().await;
    let res = app
        .post(
            "/v1/batches?max_in_flight=0",
            body("+14155551012", json!({})),
        )
        .await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(
        problem["errors"][0]["pointer"], "/query/max_in_flight",
        "{problem:#}"
    );
    assert_eq!(app.count_migrations().await, before);
    // An oversized JSON batch states the batch limit, not the other routes' one.
    let huge = json!({"name": "big", "migrations": ["x".repeat(9 * 1024 * 1024)]});
    let res = app.post("/v1/batches", huge).await;
    let problem = assert_problem(res, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("8 MiB"),
        "{problem:#}"
    );
}

/// A CSV upload without `name` is named after its time; a repeat of it a minute later (say,
/// after a timeout) is the same request, replayed, not 422 `idempotency_key_reused`.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_repeated_csv_upload_without_a_name_is_replayed(pool: PgPool) {
    let clock = ManualClock::default();
    let app = TestApp::spawn_with(
        pool,
        Options {
            clock: Arc::new(clock.clone()),
            ..Options::no_worker()
        },
    )
    .await;
    let csv = format!("{CSV_HEADER}\n{}\n", csv_rows(2).join("\n"));
    let res = post_csv(&app, "", csv.clone(), Some("unnamed-1")).await;
    let first = json_of(res, StatusCode::CREATED).await;
    assert!(
        first["batch"]["name"]
            .as_str()
            .unwrap()
            .starts_with("CSV upload "),
        "{first:#}"
    );
    clock.advance(Duration::from_secs(61));
    let res = post_csv(&app, "", csv, Some("unnamed-1")).await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let again = json_of(res, StatusCode::CREATED).await;
    assert_eq!(again["batch"]["id"], first["batch"]["id"]);
    assert_eq!(again["batch"]["name"], first["batch"]["name"]);
    assert_eq!(count(&app, "batches").await, 1);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn idempotency_key_replays_a_batch(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let csv = format!("{CSV_HEADER}\n{}\n", csv_rows(3).join("\n"));
    let res = post_csv(&app, "?name=Once", csv.clone(), Some("batch-1")).await;
    assert!(res.headers().get("idempotent-replayed").is_none());
    let first = json_of(res, StatusCode::CREATED).await;
    let res = post_csv(&app, "?name=Once", csv.clone(), Some("batch-1")).await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(
        res.headers()["location"].to_str().unwrap(),
        format!("/v1/batches/{}", first["batch"]["id"].as_str().unwrap())
    );
    let again = json_of(res, StatusCode::CREATED).await;
    assert_eq!(again["batch"]["id"], first["batch"]["id"]);
    assert_eq!(again["items"], first["items"], "the links are shown again");
    assert_eq!(app.count_migrations().await, 3);
    assert_eq!(count(&app, "batches").await, 1);
    // The stored answer holds no link.
    let stored: Value =
        sqlx::query_scalar("SELECT response FROM idempotency_keys WHERE key LIKE 'batches%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!stored.to_string().contains("/c/"), "{stored}");
    // The same key on a single create is another key: batches and single creates are apart.
    let res = app
        .http
        .post(app.url("/v1/migrations"))
        .bearer_auth(app.partner_key.clone())
        .header("idempotency-key", "batch-1")
        .json(&TestApp::create_body("+14155552290"))
        .send()
        .await
        .unwrap();
    json_of(res, StatusCode::CREATED).await;
    // Another body with the same key.
    let res = post_csv(&app, "?name=Other", csv, Some("batch-1")).await;
    assert_problem(
        res,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(count(&app, "batches").await, 1);
}

async fn batch_of(app: &TestApp, id: &str) -> Value {
    json_of(app.get(&format!("/v1/batches/{id}")).await, StatusCode::OK).await
}

/// Polls the batch until `done` holds (panics after 30 s).
async fn wait_batch(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let b = batch_of(app, id).await;
        if done(&b) {
            return b;
        }
        assert!(tokio::time::Instant::now() < deadline, "{b:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn reads_report_retry_failed_and_cancel(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // 0013: whatsapp_issued_number (not retryable); 0001: two_factor_enabled (retryable).
    let numbers = ["+14155551101", "+14155550013", "+14155550001"];
    let items: Vec<Value> = numbers
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut b = TestApp::create_body(n);
            b["reference"] = json!(format!("r{i}"));
            b
        })
        .collect();
    let res = app
        .post(
            "/v1/batches",
            json!({ "name": "Reads", "migrations": items }),
        )
        .await;
    let created = json_of(res, StatusCode::CREATED).await;
    let id = created["batch"]["id"].as_str().unwrap().to_owned();
    let ids = batch_item_ids(&created);
    let batch = wait_batch(&app, &id, |b| {
        b["counts_by_state"] == json!({ "awaiting_otp": 1, "failed": 2 })
    })
    .await;
    assert_eq!(
        batch["counts_by_error_code"],
        json!({ "two_factor_enabled": 1, "whatsapp_issued_number": 1 })
    );
    assert_eq!(batch["total"], 3);
    assert_eq!(batch["finished"], 2);
    assert!((batch["progress"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(batch["state"], "active");
    assert!(
        batch["estimated_seconds_left"].as_i64().is_some(),
        "{batch:#}"
    );
    assert_eq!(batch["finished_at"], Value::Null);

    // Filters and paging.
    let mut failed = Vec::new();
    let mut path = format!("/v1/batches/{id}/migrations?state=failed&limit=1");
    loop {
        let page = json_of(app.get(&path).await, StatusCode::OK).await;
        failed.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                path = format!("/v1/batches/{id}/migrations?state=failed&limit=1&cursor={c}")
            }
            None => break,
        }
    }
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|m| m["state"] == "failed" && m["batch_id"] == json!(id))
    );
    let res = app
        .get(&format!(
            "/v1/batches/{id}/migrations?error_code=two_factor_enabled"
        ))
        .await;
    let page = json_of(res, StatusCode::OK).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], json!(ids[2]));
    // A wrong code leaves `otp_invalid` in `error` of a migration that awaits a code again:
    // not a failed one, as counts_by_error_code agrees.
    let res = app
        .get(&format!("/v1/batches/{id}/migrations?state=awaiting_otp"))
        .await;
    let waiting = json_of(res, StatusCode::OK).await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.submit_otp(&waiting, "111111").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = app.migration(&waiting).await;
        if m["state"] == "awaiting_otp" && m["error"]["code"] == "otp_invalid" {
            break;
        }
        assert!(Instant::now() < deadline, "{m:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = app
        .get(&format!(
            "/v1/batches/{id}/migrations?error_code=otp_invalid"
        ))
        .await;
    let page = json_of(res, StatusCode::OK).await;
    assert_eq!(page["data"], json!([]), "{page:#}");
    let res = app
        .get(&format!("/v1/batches/{id}/migrations?limit=2"))
        .await;
    let page = json_of(res, StatusCode::OK).await;
    assert_eq!(page["data"][0]["id"], json!(ids[0]), "in the order sent");
    let cursor = page["next_cursor"].as_str().unwrap();
    let res = app
        .get(&format!(
            "/v1/batches/{id}/migrations?limit=2&cursor={cursor}"
        ))
        .await;
    let rest = json_of(res, StatusCode::OK).await;
    assert_eq!(rest["data"][0]["id"], json!(ids[2]));
    assert_eq!(rest["next_cursor"], Value::Null);

    // The report, row by row against the migrations.
    let res = app.get(&format!("/v1/batches/{id}/report.csv")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = res.text().await.unwrap();
    // UTF-8 with a byte order mark, for Excel.
    let text = text.strip_prefix('\u{feff}').expect("a byte order mark");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "reference",
            "phone_number",
            "migration_id",
            "state",
            "error_code",
            "actor",
            "remediation",
            "templates_migrated",
            "templates_failed",
            "templates_skipped",
            "api_key_ready"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        let m = app.migration(&ids[i]).await;
        assert_eq!(&row[0], format!("r{i}"));
        assert_eq!(&row[1], numbers[i]);
        assert_eq!(&row[2], ids[i]);
        assert_eq!(&row[3], m["state"].as_str().unwrap());
        assert_eq!(&row[10], "no");
        if m["state"] == "failed" {
            assert_eq!(&row[4], m["error"]["code"].as_str().unwrap());
            assert_eq!(&row[5], m["error"]["actor"].as_str().unwrap());
            assert_eq!(&row[6], m["error"]["remediation"].as_str().unwrap());
        } else {
            assert_eq!(&row[4], "");
            assert_eq!(&row[5], m["waiting_for"]["actor"].as_str().unwrap());
        }
    }

    // retry_failed: only the retryable failure.
    let res = app
        .post(&format!("/v1/batches/{id}/retry_failed"), json!({}))
        .await;
    let out = json_of(res, StatusCode::OK).await;
    assert_eq!(out["retried"], 1, "{out:#}");
    assert_eq!(out["skipped"], 1, "{out:#}");
    let events = app.events(&ids[2]).await;
    assert!(
        events.iter().any(|e| e["data"]["retry_of"].is_string()),
        "{events:#?}"
    );
    let not_retried = app.migration(&ids[1]).await;
    assert_eq!(not_retried["state"], "failed");
    assert_eq!(
        app.events(&ids[1])
            .await
            .iter()
            .filter(|e| e["data"]["retry_of"].is_string())
            .count(),
        0
    );

    // cancel: every migration not finished, through the single cancel.
    let res = app
        .post(&format!("/v1/batches/{id}/cancel"), json!({}))
        .await;
    let batch = json_of(res, StatusCode::OK).await;
    assert_eq!(batch["state"], "cancelled", "{batch:#}");
    assert_eq!(batch["finished"], 3, "{batch:#}");
    let m = app.migration(&ids[0]).await;
    assert_eq!(m["state"], "cancelled");
    assert_eq!(
        app.event_count(&ids[0], Some("migration.cancelled")).await,
        1
    );
    assert!(batch["finished_at"].is_string(), "{batch:#}");
    assert_eq!(batch["estimated_seconds_left"], 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn another_partners_batch_is_not_found(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let (_, other_key) = app.other_partner().await;
    let res = app
        .post(
            "/v1/batches",
            json!({ "name": "Mine", "migrations": [TestApp::create_body("+14155551200")] }),
        )
        .await;
    let id = json_of(res, StatusCode::CREATED).await["batch"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        format!("/v1/batches/{id}"),
        format!("/v1/batches/{id}/migrations"),
        format!("/v1/batches/{id}/report.csv"),
    ] {
        let res = app.get_as(&other_key, &path).await;
        assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    }
    for path in [
        format!("/v1/batches/{id}/cancel"),
        format!("/v1/batches/{id}/retry_failed"),
    ] {
        let res = app.post_as(&other_key, &path, json!({})).await;
        assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    }
    let theirs = json_of(app.get_as(&other_key, "/v1/batches").await, StatusCode::OK).await;
    assert_eq!(theirs["data"], json!([]));
    let mine = json_of(app.get("/v1/batches").await, StatusCode::OK).await;
    assert_eq!(mine["data"][0]["id"], json!(id));
    let all = json_of(app.get_as(ADMIN_KEY, "/v1/batches").await, StatusCode::OK).await;
    assert_eq!(all["data"][0]["id"], json!(id));
    // Nothing was cancelled.
    assert_eq!(batch_of(&app, &id).await["state"], "active");
}

/// Marks a migration failed at `prechecking` with a retryable error.
async fn fail_retryably(app: &TestApp, id: &str) {
    sqlx::query(
        r#"UPDATE migrations SET state = 'failed', failed_step = 'prechecking',
                  error = '{"code": "upstream_unavailable", "message": "m", "remediation": "r",
                            "actor": "none", "step": "prechecking", "retryable": true}'
            WHERE id = $1::uuid"#,
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// A batch cancel writes the batch's `cancelled_at` first; if the request is cut short (a
/// restart, an error) the migrations it did not reach would run on, and those that never
/// started (held for a slot, which admission no longer releases) stay active forever: the
/// batch ticker cancels them, each through the single cancel (`source: "batch"`), except one
/// retried on its own since. A cancelled batch's failures are not retried together.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_batch_cancel_cut_short_is_finished_in_the_background(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            background_batch_ticker: false,
            ..Options::no_worker()
        },
    )
    .await;
    let numbers: Vec<String> = (0..5).map(|i| format!("+1415555130{i}")).collect();
    let res = app
        .post(
            "/v1/batches",
            json!({
                "name": "Cut short",
                "max_in_flight": 1,
                "migrations": numbers.iter().map(|n| TestApp::create_body(n)).collect::<Vec<_>>(),
            }),
        )
        .await;
    let created = json_of(res, StatusCode::CREATED).await;
    let id = created["batch"]["id"].as_str().unwrap().to_owned();
    let ids = batch_item_ids(&created);
    // The last one failed (retryable) before the cancel.
    fail_retryably(&app, &ids[4]).await;
    // The cancel's first write, and nothing after it.
    sqlx::query("UPDATE batches SET cancelled_at = now() WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    // Retried on its own after the cancel: it runs.
    let res = app
        .post(&format!("/v1/migrations/{}/retry", ids[4]), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let ticked = app.batch_ticker.run_once().await.unwrap();
    assert_eq!(ticked.cancelled, 4, "{ticked:?}");
    for member in &ids[..4] {
        let m = app.migration(member).await;
        assert_eq!(m["state"], "cancelled", "{m:#}");
        let cancelled = app.event_into(member, "cancelled").await;
        assert_eq!(cancelled["data"]["source"], "batch", "{cancelled:#}");
    }
    assert_eq!(app.migration(&ids[4]).await["state"], "prechecking");
    assert_eq!(app.batch_ticker.run_once().await.unwrap().cancelled, 0);

    let res = app
        .post(&format!("/v1/batches/{id}/retry_failed"), json!({}))
        .await;
    assert_problem(res, StatusCode::CONFLICT, "invalid_state").await;
}

/// A `retry_failed` the batch's cancel overtook (it read the batch before the cancel, and
/// retried a migration after the cancel had listed the batch's members): the batch ticker
/// cancels that migration too, its retry event saying it was the batch's.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_batch_retry_overtaken_by_the_batch_cancel_is_cancelled_too(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            background_batch_ticker: false,
            ..Options::no_worker()
        },
    )
    .await;
    let res = app
        .post(
            "/v1/batches",
            json!({
                "name": "Overtaken",
                "migrations": [TestApp::create_body("+14155551311"),
                               TestApp::create_body("+14155551312")],
            }),
        )
        .await;
    let created = json_of(res, StatusCode::CREATED).await;
    let id = created["batch"]["id"].as_str().unwrap().to_owned();
    let member = batch_item_ids(&created)[0].clone();
    fail_retryably(&app, &member).await;
    // The cancel: it cancels the other one, and finds this one failed (terminal).
    let res = app
        .post(&format!("/v1/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(json_of(res, StatusCode::OK).await["state"], "cancelled");
    // Then the overtaken retry_failed's retry of it lands.
    let partner = uuid::Uuid::parse_str(&app.partner_id).unwrap();
    waba_migrator::core::migrations::retry_as(
        &app.state,
        waba_migrator::core::Caller::Partner(partner),
        uuid::Uuid::parse_str(&member).unwrap(),
        waba_migrator::core::migrations::Source::Api,
        true,
    )
    .await
    .unwrap();
    let retry = app.event_into(&member, "prechecking").await;
    assert_eq!(retry["data"]["batch_retry"], true, "{retry:#}");

    let ticked = app.batch_ticker.run_once().await.unwrap();
    assert_eq!(ticked.cancelled, 1, "{ticked:?}");
    assert_eq!(app.migration(&member).await["state"], "cancelled");
}
