//! Tenants and keys.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{ADMIN_KEY, Options, TestApp, assert_problem};

fn quiet() -> Options {
    Options::no_worker()
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn admin_manages_partners_and_keys(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let res = app
        .post_as(
            ADMIN_KEY,
            "/v1/partners",
            json!({
                "name": "Acme",
                "d360_partner_id": "acmePA",
                "d360_api_key": "acme-secret",
                "callback_url": "https://acme.example/hooks"
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // Shown once, and kept by no cache.
    assert_eq!(res.headers()["cache-control"], "no-store");
    let created: Value = res.json().await.unwrap();
    let pid = created["partner"]["id"].as_str().unwrap().to_owned();
    assert!(
        created["webhook_secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    assert!(created["partner"].get("d360_api_key").is_none());
    let key1 = created["api_key"].as_str().unwrap().to_owned();

    let list: Value = app
        .get_as(ADMIN_KEY, "/v1/partners")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    // A partner reads its own record (no secret in it), not another's.
    assert_eq!(
        app.get_as(ADMIN_KEY, &format!("/v1/partners/{pid}"))
            .await
            .status(),
        StatusCode::OK
    );
    let own = app.get_as(&key1, &format!("/v1/partners/{pid}")).await;
    assert_eq!(own.status(), StatusCode::OK);
    assert_eq!(own.headers()["cache-control"], "no-store");
    let own: Value = own.json().await.unwrap();
    assert_eq!(own["id"], json!(pid));
    assert!(own.get("d360_api_key").is_none(), "{own:#}");
    let res = app
        .get_as(&key1, &format!("/v1/partners/{}", app.partner_id))
        .await;
    assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;

    // Issue a second key, revoke the first: effective at once.
    let res = app
        .post_as(
            ADMIN_KEY,
            &format!("/v1/partners/{pid}/api_keys"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let k2: Value = res.json().await.unwrap();
    let key2 = k2["api_key"].as_str().unwrap().to_owned();
    assert!(key2.starts_with(k2["prefix"].as_str().unwrap()));
    assert_eq!(
        app.get_as(&key2, "/v1/migrations").await.status(),
        StatusCode::OK
    );

    // The list shows prefixes only, newest first: find key 1 by its visible prefix.
    let keys: Value = app
        .get_as(ADMIN_KEY, &format!("/v1/partners/{pid}/api_keys"))
        .await
        .json()
        .await
        .unwrap();
    let keys = keys["data"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["id"], k2["id"]);
    assert!(
        !keys
            .iter()
            .any(|k| k.to_string().contains(&key1) || k.to_string().contains(&key2))
    );
    let key1_entry = keys
        .iter()
        .find(|k| key1.starts_with(k["prefix"].as_str().unwrap()))
        .expect("key 1 recognisable by its prefix");
    assert!(key1_entry["revoked_at"].is_null());
    let res = app
        .http
        .delete(app.url(&format!(
            "/v1/partners/{pid}/api_keys/{}",
            key1_entry["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.get_as(&key1, "/v1/migrations").await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let keys: Value = app
        .get_as(ADMIN_KEY, &format!("/v1/partners/{pid}/api_keys"))
        .await
        .json()
        .await
        .unwrap();
    assert!(keys["data"][1]["revoked_at"].is_string());
    // Only the admin lists keys.
    let res = app
        .get_as(&key2, &format!("/v1/partners/{pid}/api_keys"))
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        app.get_as(&key2, "/v1/migrations").await.status(),
        StatusCode::OK
    );

    let res = app
        .post_as(
            ADMIN_KEY,
            &format!("/v1/partners/{pid}/webhook_secret/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let s: Value = res.json().await.unwrap();
    assert_ne!(s["webhook_secret"], created["webhook_secret"]);

    // Only hashes are stored.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_hash FROM partner_api_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(stored.iter().all(|h| h.len() == 32));
    let raw: Vec<u8> = sqlx::query_scalar("SELECT d360_api_key_enc FROM partners WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&pid).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!raw.windows(11).any(|w| w == b"acme-secret"));
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn partner_keys_cannot_use_admin_routes(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let key = app.partner_key.clone();
    let pid = app.partner_id.clone();
    let res = app
        .post_as(
            &key,
            "/v1/partners",
            json!({ "name": "x", "d360_partner_id": "xPA", "d360_api_key": "k" }),
        )
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
    let res = app.get_as(&key, "/v1/partners").await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
    let res = app
        .post_as(&key, &format!("/v1/partners/{pid}/api_keys"), json!({}))
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
    let res = app
        .post_as(
            &key,
            &format!("/v1/partners/{pid}/webhook_secret/rotate"),
            json!({}),
        )
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
    // And the admin cannot create migrations (they belong to a partner).
    let res = app
        .post_as(
            ADMIN_KEY,
            "/v1/migrations",
            TestApp::create_body("+14155550501"),
        )
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn health_and_readiness(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-abc-123");
    let res = app
        .http
        .get(app.url("/v1/nope"))
        .header("x-request-id", "req-xyz")
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, StatusCode::NOT_FOUND, "route_not_found").await;
    assert_eq!(body["request_id"], "req-xyz");
}
