//! Errors that teach: every field problem at once, query parameters named and explained,
//! problem+json for the framework's own rejections, and `/` leading to the docs.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{ADMIN_KEY, Options, TestApp, assert_problem};

fn quiet() -> Options {
    Options::no_worker()
}

/// The `(pointer, message)` pairs of a 422 problem, in order.
fn errors(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .expect("errors[]")
        .iter()
        .map(|e| {
            let message = e["message"].as_str().unwrap().to_owned();
            assert!(!message.is_empty(), "{e}");
            (e["pointer"].as_str().unwrap().to_owned(), message)
        })
        .collect()
}

fn pointers(problem: &Value) -> Vec<String> {
    errors(problem).into_iter().map(|(p, _)| p).collect()
}

fn message<'a>(errors: &'a [(String, String)], pointer: &str) -> &'a str {
    &errors
        .iter()
        .find(|(p, _)| p == pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {errors:?}"))
        .1
}

async fn send(app: &TestApp, method: Method, key: &str, path: &str, body: Value) -> Value {
    let res = app
        .http
        .request(method, app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn json_bodies_report_every_wrong_missing_and_unknown_field(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let key = app.partner_key.clone();

    // Create: wrong types, a missing field, values that break rules, two unknown fields.
    let problem = send(
        &app,
        Method::POST,
        &key,
        "/v1/migrations",
        json!({
            "phone_number": 5511987654321u64,
            "destination_waba_id": "abc",
            "meta_business_id": "180505742745347",
            "otp_method": "fax",
            "pin": "12",
            "metadata": "not an object",
            "flow": "embedded_signup",
            "channel_id": " ",
            "surprise": 1,
            "also/this": true,
        }),
    )
    .await;
    let errs = errors(&problem);
    assert_eq!(
        pointers(&problem),
        [
            "/phone_number",
            "/source_waba_id",
            "/destination_waba_id",
            "/otp_method",
            "/pin",
            "/metadata",
            "/channel_id",
            "/also~1this",
            "/surprise",
        ],
        "{problem:#}"
    );
    assert!(message(&errs, "/phone_number").contains("expected a string"));
    assert_eq!(message(&errs, "/source_waba_id"), "required, but missing");
    assert!(message(&errs, "/otp_method").contains("`sms` or `voice`"));
    assert_eq!(message(&errs, "/metadata"), "must be a JSON object");
    assert!(message(&errs, "/surprise").contains("`phone_number`"));
    assert_eq!(app.count_migrations().await, 0, "nothing is written");

    // Precheck.
    let problem = send(
        &app,
        Method::POST,
        &key,
        "/v1/prechecks",
        json!({ "phone_number": "+1", "source_waba_id": 7, "flow": "x", "extra": null }),
    )
    .await;
    assert_eq!(
        pointers(&problem),
        [
            "/phone_number",
            "/source_waba_id",
            "/destination_waba_id",
            "/meta_business_id",
            "/flow",
            "/extra",
        ],
        "{problem:#}"
    );

    // The code and its resend.
    let id = app.create("+14155550130").await;
    let problem = send(
        &app,
        Method::POST,
        &key,
        &format!("/v1/migrations/{id}/otp"),
        json!({ "code": 123456, "otp": "123456" }),
    )
    .await;
    assert_eq!(pointers(&problem), ["/code", "/otp"], "{problem:#}");
    let problem = send(
        &app,
        Method::POST,
        &key,
        &format!("/v1/migrations/{id}/otp/resend"),
        json!({ "method": "fax", "when": "now" }),
    )
    .await;
    assert_eq!(pointers(&problem), ["/method", "/when"], "{problem:#}");
    let events = app.events(&id).await;
    assert_eq!(events.len(), 1, "only the creation: {events:#?}");

    // Partners: create and change.
    let problem = send(
        &app,
        Method::POST,
        ADMIN_KEY,
        "/v1/partners",
        json!({ "name": " ", "d360_partner_id": "not ok", "callback_url": "ftp://x", "x": 1 }),
    )
    .await;
    assert_eq!(
        pointers(&problem),
        [
            "/name",
            "/d360_partner_id",
            "/d360_api_key",
            "/callback_url",
            "/x"
        ],
        "{problem:#}"
    );
    let partner = format!("/v1/partners/{}", app.partner_id);
    let problem = send(
        &app,
        Method::PATCH,
        ADMIN_KEY,
        &partner,
        json!({ "name": 5, "callback_url": "not a url", "colour": "red" }),
    )
    .await;
    assert_eq!(
        pointers(&problem),
        ["/name", "/callback_url", "/colour"],
        "{problem:#}"
    );
    let res = app.get_as(ADMIN_KEY, &partner).await;
    let now: Value = res.json().await.unwrap();
    assert_eq!(now["name"], "Test partner");
    assert_eq!(now["callback_url"], Value::Null);
    let res = app.get_as(ADMIN_KEY, "/v1/partners").await;
    let page: Value = res.json().await.unwrap();
    assert_eq!(
        page["data"].as_array().unwrap().len(),
        1,
        "no partner added"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn query_errors_point_at_each_parameter_and_explain_the_format(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    // A bare `+` (as typed into curl) arrives as a space: said so, with the fix.
    let res = app
        .get(
            "/v1/migrations?state=bogus&phone_number=+5511987654321&created_after=yesterday\
             &created_before=2026-12-01T00:00:00+02:00&limit=0&cursor=nonsense&colour=red",
        )
        .await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let errs = errors(&problem);
    assert_eq!(
        pointers(&problem),
        [
            "/query/state",
            "/query/phone_number",
            "/query/created_after",
            "/query/created_before",
            "/query/limit",
            "/query/cursor",
            "/query/colour",
        ],
        "{problem:#}"
    );
    assert!(message(&errs, "/query/state").contains("awaiting_otp"));
    assert_eq!(
        message(&errs, "/query/phone_number"),
        "a `+` in a query string decodes to a space: send it URL-encoded as `%2B`, \
         as in `phone_number=%2B5511987654321`"
    );
    assert_eq!(
        message(&errs, "/query/created_after"),
        "expected an RFC 3339 timestamp such as 2026-12-01T00:00:00Z"
    );
    assert!(
        message(&errs, "/query/created_before")
            .contains("`created_before=2026-12-01T00:00:00%2B02:00`")
    );
    assert_eq!(
        message(&errs, "/query/limit"),
        "expected an integer from 1 to 100, such as 50"
    );
    assert!(message(&errs, "/query/colour").contains("phone_number"));

    // Not a `+` problem: the E.164 rule and how to send the number.
    let res = app.get("/v1/migrations?phone_number=5511987654321").await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let errs = errors(&problem);
    assert_eq!(pointers(&problem), ["/query/phone_number"]);
    let m = message(&errs, "/query/phone_number");
    assert!(m.contains("E.164") && m.contains("%2B5511987654321"), "{m}");
    assert!(!m.contains("decodes to a space"), "{m}");

    // A repeated parameter is one entry.
    let res = app.get("/v1/migrations?limit=1&limit=2").await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(pointers(&problem), ["/query/limit"]);

    // Sent right, the same filters are accepted.
    let res = app
        .get(
            "/v1/migrations?state=awaiting_otp&phone_number=%2B5511987654321\
             &created_after=2026-01-01T00:00:00Z&created_before=2999-12-01T00:00:00%2B02:00&limit=5",
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    // The partners list's paging parameters, likewise.
    let res = app
        .get_as(ADMIN_KEY, "/v1/partners?limit=101&cursor=x&page=2")
        .await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(
        pointers(&problem),
        ["/query/limit", "/query/cursor", "/query/page"],
        "{problem:#}"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn framework_rejections_are_problem_json_with_stable_codes(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let send = |method: Method, path: &str| {
        app.http
            .request(method, app.url(path))
            .bearer_auth(&app.partner_key)
    };

    // 405 keeps `Allow`, and says which methods the route accepts.
    let res = send(Method::DELETE, "/v1/migrations").send().await.unwrap();
    let allow = res.headers()["allow"].to_str().unwrap().to_owned();
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let problem = assert_problem(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let mut allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["GET", "HEAD", "POST"]);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("DELETE") && detail.contains("POST"),
        "{detail}"
    );
    assert_eq!(problem["request_id"], request_id);
    let res = send(Method::PUT, "/healthz").send().await.unwrap();
    assert!(res.headers().contains_key("allow"));
    assert_problem(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

    // Not an id in the path: 404 that says what an id looks like.
    let res = send(Method::GET, "/v1/migrations/not-a-uuid")
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    assert!(problem["detail"].as_str().unwrap().contains("UUID"));
    let res = app
        .http
        .delete(app.url(&format!(
            "/v1/partners/{}/api_keys/not-a-uuid",
            app.partner_id
        )))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, StatusCode::NOT_FOUND, "not_found").await;
    assert!(problem["detail"].as_str().unwrap().contains("key_id"));

    // Unknown route.
    let res = send(Method::GET, "/nope").send().await.unwrap();
    assert_problem(res, StatusCode::NOT_FOUND, "route_not_found").await;

    // Bodies: no or wrong content type, not JSON, too large.
    let res = send(Method::POST, "/v1/migrations")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(
        res,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let res = send(Method::POST, "/v1/prechecks")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(
        res,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let res = send(Method::POST, "/v1/migrations")
        .header("content-type", "application/json")
        .body("{\"phone_number\": ")
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::BAD_REQUEST, "malformed_json").await;
    let res = send(Method::POST, "/v1/migrations")
        .header("content-type", "application/json")
        .body(format!("{{\"metadata\": \"{}\"}}", "x".repeat(70_000)))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert!(problem["detail"].as_str().unwrap().contains("64 KiB"));
    assert_eq!(app.count_migrations().await, 0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_root_redirects_to_the_docs(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_redirects.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(res.headers()["location"], "/docs");
    // Followed, it is the reference page; other methods are a 405 problem.
    let res = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.url().path(), "/docs");
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let res = app.http.post(app.url("/")).send().await.unwrap();
    assert_problem(res, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}
