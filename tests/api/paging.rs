//! Bounded reads (issue 14, item 7): a migration's audit trail and its webhook deliveries are
//! paged with `limit` and `cursor` like `GET /v1/migrations`.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Options, TestApp, assert_problem};
use crate::webhooks::Consumer;

/// Every page of `path` (a list answering `{data, next_cursor}`) with `limit`, in order; also
/// checks that only the last page has no `next_cursor` and no page is longer than `limit`.
async fn walk(app: &TestApp, key: &str, path: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit={limit}&cursor={c}"),
            None => format!("{path}?limit={limit}"),
        };
        let res = app.get_as(key, &url).await;
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        let page: Value = res.json().await.unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit, "{url}: {} items", data.len());
        pages += 1;
        items.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(data.len(), limit, "a page before the last one is full");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
        assert!(pages < 1000, "no end");
    }
    (items, pages)
}

/// Adds `n` audit events after the migration's own (a long-lived migration's trail).
async fn add_events(app: &TestApp, id: &str, n: i32) {
    sqlx::query(
        "INSERT INTO migration_events (migration_id, seq, type, from_state, to_state, data)
         SELECT $1::uuid, 1000 + i, 'migration.step_retry_scheduled', 'registering',
                'registering', jsonb_build_object('attempt', i)
           FROM generate_series(1, $2) AS i",
    )
    .bind(id)
    .bind(n)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn events_page_oldest_first_with_no_duplicates_or_gaps(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651110").await;
    app.complete(&id).await;
    add_events(&app, &id, 120).await;
    let total = app.event_count(&id, None).await as usize;
    assert!(total > 130, "{total}");
    let path = format!("/v1/migrations/{id}/events");
    let key = app.partner_key.clone();

    // Small pages: more than two of them, together every event once, oldest first.
    let (events, pages) = walk(&app, &key, &path, 7).await;
    assert!(pages > 2, "{pages} pages");
    assert_eq!(pages, total.div_ceil(7));
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.len(), total);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let stored: Vec<i64> = sqlx::query_scalar(
        "SELECT seq::bigint FROM migration_events WHERE migration_id = $1::uuid ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(seqs, stored, "no gaps, no duplicates");
    assert_eq!(events[0]["type"], "migration.created");

    // The widest page and the page size of the total: the same events.
    let (all, pages) = walk(&app, &key, &path, 100).await;
    assert_eq!((all.len(), pages), (total, total.div_ceil(100)));
    assert_eq!(all, events);
    let exact = (2..=100)
        .rev()
        .find(|l| total.is_multiple_of(*l) && total / l >= 2)
        .unwrap_or(1);
    let (_, pages) = walk(&app, &key, &path, exact).await;
    assert_eq!(
        pages,
        total / exact,
        "an exactly full last page has no next_cursor"
    );

    // Without `limit`: 50, with the cursor of the 50th.
    let page: Value = app.get(&path).await.json().await.unwrap();
    let first = page["data"].as_array().unwrap();
    assert_eq!(first.len(), 50);
    assert_eq!(first[..], events[..50]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let page: Value = app
        .get(&format!("{path}?cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap()[..], events[50..100]);

    // The admin reads the same pages.
    let (admin, _) = walk(&app, crate::helpers::ADMIN_KEY, &path, 40).await;
    assert_eq!(admin, events);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn webhook_deliveries_page_in_event_order(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let consumer = Consumer::start().await;
    let mut body = TestApp::create_body("+5511987651120");
    body["callback_url"] = json!(consumer.url);
    let id = app.create_with(body).await;
    app.complete(&id).await;
    // Every transition's webhook delivered (one attempt each).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let transitions = loop {
        let (all, pending): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status <> 'succeeded')
               FROM webhook_deliveries WHERE migration_id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if pending == 0 {
            break all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks not delivered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(transitions > 6, "{transitions} deliveries");
    assert_eq!(consumer.accepted().len() as i64, transitions);
    let path = format!("/v1/migrations/{id}/webhook_deliveries");
    let key = app.partner_key.clone();

    let (deliveries, pages) = walk(&app, &key, &path, 3).await;
    assert!(pages > 2, "{pages} pages");
    assert_eq!(deliveries.len() as i64, transitions);
    let seqs: Vec<i64> = deliveries
        .iter()
        .map(|d| d["sequence"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let ids: HashSet<&str> = deliveries
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), deliveries.len(), "no duplicates");
    // Each delivery carries its own attempts, whatever page it is on.
    for d in &deliveries {
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{d:#}");
        assert_eq!(attempts[0]["outcome"], "succeeded");
        assert_eq!(d["status"], "succeeded");
    }
    let (all, pages) = walk(&app, &key, &path, 100).await;
    assert_eq!((all.len(), pages), (deliveries.len(), 1));
    assert_eq!(all, deliveries);

    // Without `limit`: up to 50, and no cursor when they all fit.
    let page: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(page["data"], json!(deliveries));
    assert!(page["next_cursor"].is_null());
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn bad_limit_or_cursor_is_a_problem_at_its_parameter(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let id = app.create("+5511987651130").await;
    // A cursor of the migrations list (a migration id): well-formed, but not one of these.
    let foreign = "AZrDoVseck2ajvLxs8TV5g";
    for list in ["events", "webhook_deliveries"] {
        let path = format!("/v1/migrations/{id}/{list}");
        for (query, pointers) in [
            ("limit=0", vec!["/query/limit"]),
            ("limit=101", vec!["/query/limit"]),
            ("limit=-1", vec!["/query/limit"]),
            ("limit=ten", vec!["/query/limit"]),
            ("limit=", vec!["/query/limit"]),
            ("limit=1&limit=2", vec!["/query/limit"]),
            ("cursor=nonsense", vec!["/query/cursor"]),
            ("cursor=", vec!["/query/cursor"]),
            (&format!("cursor={foreign}"), vec!["/query/cursor"]),
            ("limit=0&cursor=%%%", vec!["/query/limit", "/query/cursor"]),
            ("page=2", vec!["/query/page"]),
        ] {
            let res = app.get(&format!("{path}?{query}")).await;
            let problem =
                assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
            let got: Vec<&str> = problem["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["pointer"].as_str().unwrap())
                .collect();
            assert_eq!(got, pointers, "{list}?{query}: {problem:#}");
        }
        // The messages of the migrations list.
        let res = app.get(&format!("{path}?limit=500&cursor=x")).await;
        let problem =
            assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(
            problem["errors"],
            json!([
                {"pointer": "/query/limit", "message": "expected an integer from 1 to 100, such as 50"},
                {"pointer": "/query/cursor", "message": "expected the next_cursor of a previous page, unchanged"},
            ])
        );
        // The bounds themselves are fine.
        for query in ["limit=1", "limit=100"] {
            let res = app.get(&format!("{path}?{query}")).await;
            assert_eq!(res.status(), StatusCode::OK, "{list}?{query}");
        }
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn paged_lists_stay_within_the_tenant(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651140").await;
    app.complete(&id).await;
    let (_, other_key) = app.other_partner().await;
    let page: Value = app
        .get(&format!("/v1/migrations/{id}/events?limit=1"))
        .await
        .json()
        .await
        .unwrap();
    // After seq 1: the other migration below has at least its cancellation after that, however
    // far the worker took it before the cancel.
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let after = page["data"][0]["seq"].as_i64().unwrap();
    for list in ["events", "webhook_deliveries"] {
        for query in ["", "?limit=2", &format!("?limit=2&cursor={cursor}")] {
            let path = format!("/v1/migrations/{id}/{list}{query}");
            let res = app.get_as(&other_key, &path).await;
            assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
            let res = app.get(&path).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
        }
    }
    // The other tenant's own migration (cancelled: its trail no longer moves): its own events
    // only, even after this migration's cursor.
    let res = app
        .post_as(
            &other_key,
            "/v1/migrations",
            TestApp::create_body("+5511987651150"),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let other_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .post_as(
            &other_key,
            &format!("/v1/migrations/{other_id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page: Value = app
        .get_as(
            &other_key,
            &format!("/v1/migrations/{other_id}/events?cursor={cursor}"),
        )
        .await
        .json()
        .await
        .unwrap();
    let got: Vec<(i64, String)> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq::bigint, type FROM migration_events
          WHERE migration_id = $1::uuid AND seq > $2 ORDER BY seq",
    )
    .bind(&other_id)
    .bind(after)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(got, stored);
    assert!(
        got.iter().any(|(_, t)| t == "migration.cancelled"),
        "{got:?}"
    );
}
