//! The edge of the API under abuse: JSON bodies that repeat a key, invalid keys sent over and
//! over, the `WWW-Authenticate` challenge, caller-chosen request ids and the timeout's 408.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waba_migrator::core::auth::{AuthConfig, parse_trusted_proxies};

use crate::helpers::{ADMIN_KEY, Options, TestApp, assert_problem, retry_after_secs};

/// Sends `body` as it is (a `json!` value cannot hold a repeated key).
async fn send_raw(
    app: &TestApp,
    method: Method,
    key: &str,
    path: &str,
    body: &str,
) -> reqwest::Response {
    app.http
        .request(method, app.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// Asserts a 400 `duplicate_json_key` naming exactly `pointer`.
async fn assert_duplicate(res: reqwest::Response, pointer: &str) {
    let problem = assert_problem(res, StatusCode::BAD_REQUEST, "duplicate_json_key").await;
    let errors = problem["errors"].as_array().expect("errors[]");
    assert_eq!(errors.len(), 1, "{problem:#}");
    assert_eq!(errors[0]["pointer"], pointer, "{problem:#}");
    assert!(!errors[0]["message"].as_str().unwrap().is_empty());
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_body_that_repeats_a_key_is_refused_with_its_pointer_and_changes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let key = app.partner_key.clone();
    let create = |phone_twice: &str, metadata: &str| {
        format!(
            r#"{{"phone_number":"+14155550100",{phone_twice}"source_waba_id":"200000000000001","destination_waba_id":"300000000000001","meta_business_id":"100000000000000","metadata":{metadata}}}"#
        )
    };

    // Create: the second `phone_number` would have been migrated.
    let body = create(r#""phone_number":"+14155550199","#, "{}");
    let res = send_raw(&app, Method::POST, &key, "/v1/migrations", &body).await;
    assert_duplicate(res, "/phone_number").await;
    // Nested objects, and objects inside arrays, at any depth.
    let body = create("", r#"{"a":{"b":1,"c":{"d":1,"d":2}}}"#);
    let res = send_raw(&app, Method::POST, &key, "/v1/migrations", &body).await;
    assert_duplicate(res, "/metadata/a/c/d").await;
    let body = create("", r#"{"list":[{"x":1},{"x":1,"x/y":2,"x/y":3}]}"#);
    let res = send_raw(&app, Method::POST, &key, "/v1/migrations", &body).await;
    assert_duplicate(res, "/metadata/list/1/x~1y").await;
    // A repeat is refused before the fields are read: invalid fields do not hide it.
    let res = send_raw(
        &app,
        Method::POST,
        &key,
        "/v1/migrations",
        r#"{"pin":1,"pin":"x"}"#,
    )
    .await;
    assert_duplicate(res, "/pin").await;
    // The same body with an Idempotency-Key: nothing is stored for the key either.
    let res = app
        .http
        .post(app.url("/v1/migrations"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("idempotency-key", "dup-1")
        .body(create(r#""phone_number":"+14155550199","#, "{}"))
        .send()
        .await
        .unwrap();
    assert_duplicate(res, "/phone_number").await;
    assert_eq!(app.count_migrations().await, 0);
    let idempotency_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(idempotency_rows, 0);
    // The same JSON without the repeat is fine (so the refusals above were for the repeat).
    let id = app
        .create_with(serde_json::from_str(&create("", r#"{"a":{"b":1}}"#)).unwrap())
        .await;
    assert_eq!(app.count_migrations().await, 1);

    // The code: `{"code":"000000","code":"123456"}` used to submit 123456.
    let before = app.wait_for(&id, "awaiting_otp").await;
    let events = app.event_count(&id, None).await;
    let path = format!("/v1/migrations/{id}/otp");
    let res = send_raw(
        &app,
        Method::POST,
        &key,
        &path,
        r#"{"code":"000000","code":"123456"}"#,
    )
    .await;
    assert_duplicate(res, "/code").await;
    let resend = format!("/v1/migrations/{id}/otp/resend");
    let res = send_raw(
        &app,
        Method::POST,
        &key,
        &resend,
        r#"{"method":"sms","method":"voice"}"#,
    )
    .await;
    assert_duplicate(res, "/method").await;
    let m = app.migration(&id).await;
    assert_eq!(m["state"], "awaiting_otp", "{m:#}");
    assert_eq!(m["otp"], before["otp"], "{m:#}");
    assert_eq!(app.event_count(&id, None).await, events);

    // Admin bodies: partners, and the precheck.
    let partners: i64 = sqlx::query_scalar("SELECT count(*) FROM partners")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let res = send_raw(
        &app,
        Method::POST,
        ADMIN_KEY,
        "/v1/partners",
        r#"{"name":"A","d360_partner_id":"aPA","d360_api_key":"k","name":"B"}"#,
    )
    .await;
    assert_duplicate(res, "/name").await;
    let path = format!("/v1/partners/{}", app.partner_id);
    let res = send_raw(
        &app,
        Method::PATCH,
        ADMIN_KEY,
        &path,
        r#"{"name":"Renamed","name":"Again"}"#,
    )
    .await;
    assert_duplicate(res, "/name").await;
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM partners")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(after, partners);
    let partner = app
        .get_as(ADMIN_KEY, &path)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(partner["name"], "Test partner", "{partner:#}");
    let body = r#"{"phone_number":"+14155550101","phone_number":"+14155550102","source_waba_id":"200000000000001","destination_waba_id":"300000000000001","meta_business_id":"100000000000000"}"#;
    let res = send_raw(&app, Method::POST, &key, "/v1/prechecks", body).await;
    assert_duplicate(res, "/phone_number").await;

    // Not JSON is still `malformed_json`, and the size limit still holds.
    let res = send_raw(&app, Method::PATCH, ADMIN_KEY, &path, r#"{"name":"#).await;
    assert_problem(res, StatusCode::BAD_REQUEST, "malformed_json").await;
    let big = format!(r#"{{"metadata":"{}"}}"#, "x".repeat(70_000));
    let res = send_raw(&app, Method::POST, &key, "/v1/migrations", &big).await;
    assert_problem(res, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

/// `WWW-Authenticate` of a response.
fn challenge(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Metric samples `name{outcome=…}` summed, from `/metrics`.
async fn lookups_metric(app: &TestApp, outcome: &str) -> f64 {
    let text = app.metrics_text().await;
    let needle = format!("waba_api_key_lookups_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .filter_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .sum()
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_invalid_key_is_looked_up_once_and_answered_401_with_a_bearer_challenge(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let realm = r#"Bearer realm="waba-migrator""#;

    // No credentials, or not Bearer: the challenge names the scheme and realm only.
    let res = app
        .http
        .get(app.url("/v1/migrations"))
        .send()
        .await
        .unwrap();
    assert_eq!(challenge(&res).as_deref(), Some(realm));
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let res = app
        .http
        .get(app.url("/v1/migrations"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(challenge(&res).as_deref(), Some(realm));
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    for scheme in ["BEARER", "bearer", "Bearer"] {
        let res = app
            .http
            .get(app.url("/v1/migrations"))
            .header("authorization", format!("{scheme}  {}", app.partner_key))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{scheme}");
    }

    // A key that is not valid: `error="invalid_token"`, and only the first request of the same
    // key reaches the database.
    let before = app.state.auth.database_lookups();
    let cached_before = lookups_metric(&app, "cached_not_found").await;
    for _ in 0..20 {
        let res = app.get_as("wm_notavalidkey", "/v1/migrations").await;
        let got = challenge(&res).unwrap();
        assert!(
            got.starts_with(realm) && got.contains(r#"error="invalid_token""#),
            "{got}"
        );
        assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    assert_eq!(app.state.auth.database_lookups() - before, 1);
    assert!(lookups_metric(&app, "cached_not_found").await - cached_before >= 19.0);
    // Another invalid key is its own lookup.
    let res = app.get_as("wm_anotherbadkey", "/v1/migrations").await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(app.state.auth.database_lookups() - before, 2);

    // A valid key is looked up on every request (so a revocation takes effect at once).
    for _ in 0..3 {
        assert_eq!(app.get("/v1/migrations").await.status(), StatusCode::OK);
    }
    assert_eq!(app.state.auth.database_lookups() - before, 5);

    // The document declares the challenge on every operation that takes a key.
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shared = &doc["components"]["responses"];
    assert!(
        shared["Unauthorized"]["headers"]["WWW-Authenticate"].is_object(),
        "{shared:#}"
    );
    assert!(
        shared["TooManyRequests"]["headers"]["Retry-After"].is_object(),
        "{shared:#}"
    );
    for (path, method) in [("/v1/migrations", "get"), ("/v1/partners", "post")] {
        let list = &doc["paths"][path][method]["responses"];
        assert_eq!(
            list["401"]["$ref"], "#/components/responses/Unauthorized",
            "{list:#}"
        );
        assert_eq!(
            list["429"]["$ref"], "#/components/responses/TooManyRequests",
            "{list:#}"
        );
    }
    let create = &doc["paths"]["/v1/migrations"]["post"]["responses"];
    assert_eq!(
        create["400"]["$ref"], "#/components/responses/BadBody",
        "{create:#}"
    );
    assert!(doc["paths"]["/healthz"]["get"]["responses"]["401"].is_null());
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn get_with(
    client: &reqwest::Client,
    app: &TestApp,
    key: &str,
    forwarded: Option<&str>,
) -> reqwest::Response {
    let mut req = client.get(app.url("/v1/migrations")).bearer_auth(key);
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    req.send().await.unwrap()
}

/// `Retry-After` of a 429 `too_many_auth_failures`, checked to be 1 to 60 s (1 per minute).
async fn assert_limited(res: reqwest::Response) -> u64 {
    let wait = retry_after_secs(&res);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "too_many_auth_failures").await;
    wait
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn failed_authentications_are_limited_per_client_address(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::auth_failures_limited(3)).await;
    let here = client_from("127.0.0.1");
    let there = client_from("127.0.0.2");

    // The partner's integration is running from this address.
    assert_eq!(
        get_with(&here, &app, &app.partner_key, None).await.status(),
        StatusCode::OK
    );

    // Three wrong keys are answered 401; the fourth failure 429 with Retry-After.
    for i in 0..3 {
        let res = get_with(&here, &app, &format!("wm_guess_{i}"), None).await;
        assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    assert_limited(get_with(&here, &app, "wm_guess_3", None).await).await;

    // From now on new keys from this address are refused before the database…
    let lookups = app.state.auth.database_lookups();
    for i in 4..10 {
        assert_limited(get_with(&here, &app, &format!("wm_guess_{i}"), None).await).await;
    }
    assert_limited(get_with(&here, &app, "wm_guess_0", None).await).await;
    assert_eq!(app.state.auth.database_lookups(), lookups);
    // …while the partner's key from the same address is served as before.
    for _ in 0..5 {
        let res = get_with(&here, &app, &app.partner_key, None).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    // Not the admin key: an operator chose it, so a blocked address must not learn that a
    // guess at it was right. From anywhere else it works.
    assert_limited(get_with(&here, &app, ADMIN_KEY, None).await).await;
    assert_eq!(
        get_with(&there, &app, ADMIN_KEY, None).await.status(),
        StatusCode::OK
    );

    // Another address has its own budget: a wrong key there is a plain 401.
    let res = get_with(&there, &app, "wm_guess_elsewhere", None).await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // X-Forwarded-For is not trusted by default: it does not move the blocked address.
    let res = get_with(&here, &app, "wm_guess_forwarded", Some("198.51.100.7")).await;
    assert_limited(res).await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            auth: AuthConfig {
                failure_limit: Some((1, 2)),
                trusted_proxies: parse_trusted_proxies("127.0.0.1").unwrap(),
            },
            ..Options::default()
        },
    )
    .await;
    let proxy = client_from("127.0.0.1");
    let (attacker, partner) = (Some("203.0.113.66"), Some("203.0.113.10"));
    for i in 0..2 {
        let res = get_with(&proxy, &app, &format!("wm_guess_{i}"), attacker).await;
        assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    assert_limited(get_with(&proxy, &app, "wm_guess_2", attacker).await).await;
    // The proxy carries other clients too: they are not affected…
    let res = get_with(&proxy, &app, "wm_typo", partner).await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // …and a client cannot escape by writing its own X-Forwarded-For: the proxy appends the
    // address it saw, the right-most entry is read.
    let spoofed = Some("192.0.2.1, 203.0.113.66");
    assert_limited(get_with(&proxy, &app, "wm_guess_3", spoofed).await).await;
    // A peer that is not a trusted proxy is itself the client, whatever it forwards.
    let other = client_from("127.0.0.3");
    let res = get_with(&other, &app, "wm_guess_4", attacker).await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_request_id_is_kept_only_when_it_is_short_and_plain(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ask = |id: String| {
        app.http
            .get(app.url("/v1/migrations/not-a-uuid"))
            .bearer_auth(&app.partner_key)
            .header("x-request-id", id)
            .send()
    };
    for kept in [
        "req-abc.1:2_3",
        &"a".repeat(64),
        "0193b1d2-1111-7000-8000-000000000000",
    ] {
        let res = ask(kept.to_owned()).await.unwrap();
        assert_eq!(res.headers()["x-request-id"], kept);
        let problem = assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
        assert_eq!(problem["request_id"], kept);
    }
    for replaced in [
        "a".repeat(65),
        "req 1".to_owned(),
        "<script>alert(1)</script>".to_owned(),
        r#"x","level":"ERROR"#.to_owned(),
        "%0d%0aSet-Cookie:x".to_owned(),
        "ünïcode".to_owned(),
    ] {
        let res = ask(replaced.clone()).await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, replaced);
        let uuid = uuid::Uuid::parse_str(&id).unwrap_or_else(|_| panic!("{replaced:?} → {id}"));
        assert_eq!(uuid.get_version_num(), 7);
        let problem = assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
        assert_eq!(problem["request_id"], id);
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_request_that_outlasts_the_timeout_gets_a_problem_408(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // A body that never finishes arriving: the 30 s request timeout answers, not the client.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/migrations HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"phone_number\":",
        app.partner_key
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(90), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if n == 0 || text.contains("\r\n\r\n{") && text.trim_end().ends_with('}') {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer in 90 s");
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: Value = serde_json::from_str(body).unwrap();
    assert_eq!(problem["code"], "request_timeout", "{problem:#}");
    assert_eq!(problem["status"], 408);
    assert!(problem["request_id"].is_string());
    assert_eq!(app.count_migrations().await, 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_method_the_route_does_not_take_is_a_problem_405(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (method, path) in [
        (Method::PUT, "/v1/migrations"),
        (Method::DELETE, "/v1/prechecks"),
        (Method::PATCH, "/openapi.yaml"),
        (Method::POST, "/healthz"),
    ] {
        let res = app
            .http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert!(res.headers().contains_key("allow"), "{method} {path}");
        let problem =
            assert_problem(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains(method.as_str())
        );
        assert!(problem["request_id"].is_string());
    }
}

/// `GET /v1/migrations/{id}` looks its key up in the statement that reads the migration
/// (`client_page::fetch_with_page_for_key`). It must answer exactly as the routes that
/// authenticate first: the owner's and the admin's 200, another tenant's 404, an unknown or
/// revoked key's 401 counted against the address, and the per-key rate limit.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_one_statement_poll_authenticates_as_every_route_does(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            rate_limit: Some((1, 8)),
            ..Options::auth_failures_limited(2)
        },
    )
    .await;
    let id = app.create("+14155550701").await;
    let path = format!("/v1/migrations/{id}");
    let lookups = app.state.auth.database_lookups();

    let mine: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(mine["id"], id.as_str());
    assert!(mine["client_page"]["url"].is_string(), "{mine}");
    assert_eq!(app.state.auth.database_lookups(), lookups + 1);
    let as_admin: Value = app.get_as(ADMIN_KEY, &path).await.json().await.unwrap();
    assert_eq!(as_admin["id"], id.as_str());
    assert_eq!(as_admin["client_page"], mine["client_page"]);

    // Another partner's key: the migration does not exist for it, nor does a made-up id.
    let (other_id, other_key) = app.other_partner().await;
    let res = app.get_as(&other_key, &path).await;
    assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    let res = app
        .get_as(
            &app.partner_key,
            &format!("/v1/migrations/{}", uuid::Uuid::now_v7()),
        )
        .await;
    assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;

    // A malformed id: the same problem as on another route for a valid key, 401 for a bad one.
    let here = app.get("/v1/migrations/not-an-id").await;
    let there = app.get("/v1/migrations/not-an-id/events").await;
    assert_eq!(here.status(), there.status());
    assert!(here.status().is_client_error() && here.status() != StatusCode::UNAUTHORIZED);
    let (here, there): (Value, Value) = (here.json().await.unwrap(), there.json().await.unwrap());
    assert_eq!(here["code"], there["code"]);

    // Revoked: 401 at once, like an unknown key; two failures, and the address is limited.
    let keys: Value = app
        .get_as(ADMIN_KEY, &format!("/v1/partners/{other_id}/api_keys"))
        .await
        .json()
        .await
        .unwrap();
    let res = app
        .http
        .delete(app.url(&format!(
            "/v1/partners/{other_id}/api_keys/{}",
            keys["data"][0]["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.get_as(&other_key, &path).await;
    let challenge = res.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let res = app
        .get_as("wm_guess_poll", "/v1/migrations/not-an-id")
        .await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let res = app.get_as("wm_guess_poll_again", &path).await;
    assert_limited(res).await;
    // The owner's key is still served from the limited address.
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);

    // The per-key limit counts these polls like any other request.
    let mut oks = 0;
    let res = loop {
        let res = app.get(&path).await;
        if res.status() != StatusCode::OK {
            break res;
        }
        oks += 1;
        assert!(oks < 30, "never limited");
    };
    assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn dry_run_prechecks_are_limited_per_partner(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            precheck_rate_per_minute: 2,
            ..Options::default()
        },
    )
    .await;
    let body = || TestApp::create_body("+14155550777");
    for _ in 0..2 {
        let res = app.post("/v1/prechecks", body()).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    // Each reads the Graph API several times with the service's one token: past the partner's
    // budget, 429 with Retry-After (a minute's share).
    let res = app.post("/v1/prechecks", body()).await;
    let wait = retry_after_secs(&res);
    assert!((1..=30).contains(&wait), "Retry-After {wait}");
    assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another partner has its own budget; creating migrations is not limited by it.
    let (_, other) = app.other_partner().await;
    let res = app.post_as(&other, "/v1/prechecks", body()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .post("/v1/migrations", TestApp::create_body("+14155550778"))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}
