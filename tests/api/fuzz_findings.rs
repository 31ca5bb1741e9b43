//! Inputs the API fuzzer (scripts/fuzz.sh) turned into server errors: each is now a 422
//! validation_failed problem naming the field, never a 500.

use reqwest::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{ADMIN_KEY, Options, TestApp, assert_problem};

fn quiet() -> Options {
    Options::no_worker()
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn nul_characters_are_rejected_before_postgres(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let create = |extra: serde_json::Value| {
        let mut body = json!({
            "phone_number": "+5511987654321",
            "source_waba_id": "102290129340398",
            "destination_waba_id": "104996122399160",
            "meta_business_id": "180505742745347",
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, pointer) in [
        (json!({ "metadata": { "k\u{0}": 1 } }), "/metadata"),
        (json!({ "metadata": { "k": ["v\u{0}"] } }), "/metadata"),
        (
            json!({ "callback_url": "https://a.example/\u{0}" }),
            "/callback_url",
        ),
        (
            json!({ "flow": "embedded_signup", "channel_id": "ch\u{0}" }),
            "/channel_id",
        ),
    ] {
        let res = app.post("/v1/migrations", create(extra)).await;
        let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(body["errors"][0]["pointer"], pointer);
    }
    // A backslash followed by u0000 is just text.
    let res = app
        .post(
            "/v1/migrations",
            create(json!({ "metadata": { "k": "\\u0000" } })),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    for (extra, pointer) in [
        (json!({ "name": "Acme\u{0}" }), "/name"),
        (
            json!({ "callback_url": "https://a.example/\u{0}" }),
            "/callback_url",
        ),
    ] {
        let mut body = json!({
            "name": "Acme",
            "d360_partner_id": "acmePA",
            "d360_api_key": "acme-secret",
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let res = app.post_as(ADMIN_KEY, "/v1/partners", body).await;
        let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(body["errors"][0]["pointer"], pointer);
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn list_dates_outside_rfc3339_years_are_rejected(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    for (query, pointer) in [
        (
            "created_after=-100000-01-01T00:00:00Z",
            "/query/created_after",
        ),
        (
            "created_before=%2B200000-01-01T00:00:00Z",
            "/query/created_before",
        ),
    ] {
        let res = app.get(&format!("/v1/migrations?{query}")).await;
        let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(body["errors"][0]["pointer"], pointer);
    }
    let res = app
        .get("/v1/migrations?created_after=0001-01-01T00:00:00Z")
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// serde reads a struct from an array of its field values too: `[null, null]` was a valid
/// `PATCH /v1/partners/{id}` body (a 200 that changed nothing). Bodies must be JSON objects.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn bodies_that_are_not_objects_are_rejected(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let partner = format!("/v1/partners/{}", app.partner_id);
    let res = app
        .http
        .patch(app.url(&partner))
        .bearer_auth(ADMIN_KEY)
        .json(&json!([null, null]))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(problem["errors"][0]["pointer"], "/");
    for body in [
        json!([
            "+5511987654321",
            "102290129340398",
            "104996122399160",
            "180505742745347"
        ]),
        json!("a string"),
        json!(42),
        json!(null),
    ] {
        let res = app.post("/v1/migrations", body.clone()).await;
        assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    assert_eq!(app.count_migrations().await, 0);
    // Field errors still name the field, nested ones by their path.
    let mut body = TestApp::create_body("+14155550901");
    body["otp_method"] = json!("fax");
    let res = app.post("/v1/migrations", body).await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(problem["errors"][0]["pointer"], "/otp_method");
    let mut body = TestApp::create_body("+14155550901");
    body.as_object_mut().unwrap().remove("phone_number");
    let res = app.post("/v1/migrations", body).await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(problem["errors"][0]["pointer"], "/phone_number");
}

/// Metadata numbers at the ends of the f64 range come back as sent: PostgreSQL's jsonb writes
/// 1.7976931348623157e308 out as a 309-digit integer, which serde_json's default (fast, not
/// exact) float parsing read as out of range: the create answered 500 after storing the row.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn metadata_numbers_at_the_ends_of_the_f64_range_round_trip(pool: PgPool) {
    let app = TestApp::spawn_with(pool, quiet()).await;
    let metadata = json!({
        "max": f64::MAX,
        "min": f64::MIN,
        "tiny": 4.9e-324,
        "small": 1.401298464324817e-45,
        "big": 1.0e300,
        "int": u64::MAX,
    });
    let mut body = TestApp::create_body("+14155550902");
    body["metadata"] = metadata.clone();
    let res = app.post("/v1/migrations", body).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: serde_json::Value = res.json().await.unwrap();
    assert_eq!(created["metadata"], metadata);
    let id = created["id"].as_str().unwrap();
    let read: serde_json::Value = app
        .get(&format!("/v1/migrations/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["metadata"], metadata);
}
