//! Tenant isolation, route by route: every operation of the OpenAPI document is classified in
//! [`ROUTES`] (a route missing there fails [`every_route_is_classified`]), and
//! [`tenant_isolation_matrix`] calls each one as nobody, as a stranger and as the rightful caller:
//!
//! - partner-scoped routes on a migration `{id}`: another tenant's key → 404 problem+json and
//!   nothing changes in the database, while the owner is allowed (so the 404 is tenant scoping,
//!   not a state error: the migration is in a state where the action is allowed);
//! - admin routes: any partner key → 403 problem+json and nothing changes, also on the partner's
//!   own `{id}`; the admin key is allowed;
//! - routes on a partner `{id}` open to that partner (its own settings): another partner's key
//!   → 404 and nothing changes; the partner itself and the admin are allowed;
//! - every non-ops route → 401 without a key or with an unknown one;
//! - ops routes are public.
//!
//! It also checks that another tenant's migrations are absent from `GET /v1/migrations`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{ADMIN_KEY, Options, TestApp};

/// The state a partner-scoped route's migration is put in first: one where the owner may do
/// what the route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fixture {
    AwaitingOtp,
    /// An Embedded Signup migration created without a channel id, waiting for the signup.
    AwaitingSignup,
    Failed,
    Completed,
}

/// How a route treats callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Ops: answers without a key.
    Public,
    /// Partner-scoped, no id (create, list, dry run): acts only for the caller's own tenant.
    Tenant,
    /// Partner-scoped on the migration `{id}` in this state: another tenant's id is a 404.
    Migration(Fixture),
    /// Partner-scoped on a webhook delivery `{id}` (of a migration in `awaiting_otp`).
    Delivery,
    /// Partner-scoped on a batch `{id}` (one `queued` migration).
    Batch,
    /// Admin only (`ADMIN_API_KEY`): a partner key is a 403, even on its own partner `{id}`.
    Admin,
    /// On a partner `{id}`: the admin, or that partner itself; another partner's key is a 404.
    OwnPartner,
}

use Class::{Admin, Batch, Delivery, Migration, OwnPartner, Public, Tenant};
use Fixture::{AwaitingOtp, AwaitingSignup, Completed, Failed};

struct Route {
    method: &'static str,
    path: &'static str,
    class: Class,
    /// JSON body sent with every call (valid, so only the caller decides the answer).
    body: Option<&'static str>,
    /// Status of the rightful caller (the owner, the admin, or anyone for ops routes).
    ok: u16,
}

const fn route(
    method: &'static str,
    path: &'static str,
    class: Class,
    body: Option<&'static str>,
    ok: u16,
) -> Route {
    Route {
        method,
        path,
        class,
        body,
        ok,
    }
}

const CREATE: &str = r#"{"phone_number": "+14155554999", "source_waba_id": "200000000000001",
    "destination_waba_id": "300000000000001", "meta_business_id": "100000000000000"}"#;
const PRECHECK: &str = r#"{"phone_number": "+14155554998", "source_waba_id": "200000000000001",
    "destination_waba_id": "300000000000001", "meta_business_id": "100000000000000"}"#;
const BATCH: &str = r#"{"name": "Matrix batch", "migrations": [{"phone_number": "+14155554997",
    "source_waba_id": "200000000000001", "destination_waba_id": "300000000000001",
    "meta_business_id": "100000000000000", "reference": "m-1"}]}"#;
const PARTNER: &str = r#"{"name": "Matrix", "d360_partner_id": "matrixPA", "d360_api_key": "k"}"#;

/// Every operation the service serves. A new route must be added here, with its class.
#[rustfmt::skip]
const ROUTES: &[Route] = &[
    // Ops.
    route("GET", "/healthz", Public, None, 200),
    route("GET", "/readyz", Public, None, 200),
    route("GET", "/metrics", Public, None, 200),
    route("GET", "/openapi.yaml", Public, None, 200),
    route("GET", "/openapi.json", Public, None, 200),
    route("GET", "/docs", Public, None, 200),
    // Partner-scoped collections.
    route("GET", "/v1/migrations", Tenant, None, 200),
    route("POST", "/v1/migrations", Tenant, Some(CREATE), 201),
    route("POST", "/v1/prechecks", Tenant, Some(PRECHECK), 200),
    route("GET", "/v1/batches", Tenant, None, 200),
    route("POST", "/v1/batches", Tenant, Some(BATCH), 201),
    // Partner-scoped, on a batch.
    route("GET", "/v1/batches/{id}", Batch, None, 200),
    route("GET", "/v1/batches/{id}/migrations", Batch, None, 200),
    route("GET", "/v1/batches/{id}/report.csv", Batch, None, 200),
    route("POST", "/v1/batches/{id}/cancel", Batch, None, 200),
    route("POST", "/v1/batches/{id}/retry_failed", Batch, None, 200),
    route("GET", "/v1/batches/{id}/webhook_deliveries", Batch, None, 200),
    // Partner-scoped, on a migration.
    route("GET", "/v1/migrations/{id}", Migration(Completed), None, 200),
    route("PATCH", "/v1/migrations/{id}", Migration(AwaitingSignup), Some(r#"{"channel_id": "isoSignup01CH"}"#), 200),
    route("GET", "/v1/migrations/{id}/events", Migration(Completed), None, 200),
    route("GET", "/v1/migrations/{id}/api_key", Migration(Completed), None, 200),
    // No worker runs here: the rotation answers 202 once its 25 s wait for the new key ends.
    route("POST", "/v1/migrations/{id}/api_key/rotate", Migration(Completed), None, 202),
    route("POST", "/v1/migrations/{id}/otp", Migration(AwaitingOtp), Some(r#"{"code": "123456"}"#), 202),
    route("POST", "/v1/migrations/{id}/otp/resend", Migration(AwaitingOtp), Some(r#"{"method": "voice"}"#), 202),
    route("POST", "/v1/migrations/{id}/cancel", Migration(AwaitingOtp), None, 200),
    route("POST", "/v1/migrations/{id}/client_page/rotate", Migration(Failed), None, 200),
    route("POST", "/v1/migrations/{id}/retry", Migration(Failed), None, 202),
    // Webhook deliveries.
    route("GET", "/v1/migrations/{id}/webhook_deliveries", Migration(Completed), None, 200),
    route("POST", "/v1/webhook_deliveries/{id}/redeliver", Delivery, None, 202),
    // Admin.
    route("GET", "/v1/partners", Admin, None, 200),
    route("POST", "/v1/partners", Admin, Some(PARTNER), 201),
    route("GET", "/v1/partners/{id}", OwnPartner, None, 200),
    route("PATCH", "/v1/partners/{id}", OwnPartner, Some(r#"{"signup_url": "https://hub.360dialog.com/dashboard/app/matrix/permissions"}"#), 200),
    route("GET", "/v1/partners/{id}/api_keys", Admin, None, 200),
    route("POST", "/v1/partners/{id}/api_keys", Admin, None, 201),
    route("DELETE", "/v1/partners/{id}/api_keys/{key_id}", Admin, None, 204),
    route("POST", "/v1/partners/{id}/webhook_secret/rotate", Admin, None, 200),
];

/// `(METHOD, path)` of every operation in the OpenAPI document.
fn served_operations() -> Vec<(String, String)> {
    let spec = serde_json::to_value(waba_migrator::http::openapi()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if item.get(method).is_some() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

fn classified(method: &str, path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

#[test]
fn every_route_is_classified() {
    let ops = served_operations();
    let missing: Vec<String> = ops
        .iter()
        .filter(|(m, p)| classified(m, p).is_none())
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a tenancy class: add them to ROUTES in tests/api/isolation.rs: {missing:#?}"
    );
    let stale: Vec<String> = ROUTES
        .iter()
        .filter(|r| !ops.iter().any(|(m, p)| m == r.method && p == r.path))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        stale.is_empty(),
        "ROUTES lists routes that are not served: {stale:#?}"
    );
}

/// Everything a rejected call could have changed.
async fn snapshot(pool: &PgPool) -> Value {
    let mut out = serde_json::Map::new();
    for table in [
        "partners",
        "partner_api_keys",
        "migrations",
        "migration_events",
        "idempotency_keys",
        "webhook_deliveries",
        "batches",
    ] {
        let rows: Option<Value> = sqlx::query_scalar(&format!(
            "SELECT jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text) FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(table.into(), rows.unwrap_or(Value::Null));
    }
    Value::Object(out)
}

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

async fn call(app: &TestApp, r: &Route, path: &str, key: Option<&str>) -> Reply {
    let mut req = app.http.request(
        Method::from_bytes(r.method.as_bytes()).unwrap(),
        app.url(path),
    );
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = r.body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let res = req.send().await.unwrap();
    Reply {
        status: res.status(),
        content_type: res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        text: res.text().await.unwrap(),
    }
}

/// A call the service must refuse with `status`/`code` and no change to the database.
async fn assert_refused(
    app: &TestApp,
    r: &Route,
    path: &str,
    key: Option<&str>,
    status: StatusCode,
    code: &str,
) -> Reply {
    let before = snapshot(&app.pool).await;
    let reply = call(app, r, path, key).await;
    let who = match key {
        None => "no key".to_owned(),
        Some(k) => format!("key {}…", &k[..k.len().min(11)]),
    };
    assert_eq!(
        reply.status, status,
        "{} {path} with {who}: {}",
        r.method, reply.text
    );
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/problem+json"),
        "{} {path}",
        r.method
    );
    assert_eq!(
        reply.json()["code"],
        code,
        "{} {path}: {}",
        r.method,
        reply.text
    );
    assert_eq!(
        snapshot(&app.pool).await,
        before,
        "{} {path} with {who} was refused but changed the database",
        r.method
    );
    reply
}

/// Runs the worker until the migration (owned by `app.partner_key`) is in `state`.
async fn drive(app: &TestApp, id: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        app.worker().run_until_idle().await.unwrap();
        let m = app.migration(id).await;
        if m["state"] == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {state}: {m:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A migration of the app's partner in the fixture's state.
async fn fixture(app: &TestApp, fixture: Fixture, n: u32) -> String {
    // Numbers ending in 0011 fail their precheck (number_not_found_on_source).
    let phone = match fixture {
        Failed => format!("+1415{:03}0011", 550 + n),
        _ => format!("+1415555{:04}", 4100 + n),
    };
    let mut body = TestApp::create_body(&phone);
    if fixture == AwaitingSignup {
        body["flow"] = json!("embedded_signup");
    }
    let id = app.create_with(body).await;
    match fixture {
        AwaitingOtp => drive(app, &id, "awaiting_otp").await,
        AwaitingSignup => drive(app, &id, "awaiting_signup").await,
        Failed => drive(app, &id, "failed").await,
        Completed => {
            drive(app, &id, "awaiting_otp").await;
            assert_eq!(
                app.submit_otp(&id, "123456").await.status(),
                StatusCode::ACCEPTED
            );
            drive(app, &id, "completed").await;
        }
    }
    id
}

/// The id of a migration's first webhook delivery.
async fn first_delivery(app: &TestApp, migration: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries WHERE migration_id = $1 ORDER BY sequence LIMIT 1",
    )
    .bind(uuid::Uuid::parse_str(migration).unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    id.to_string()
}

async fn partner_key_id(app: &TestApp, partner_id: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM partner_api_keys WHERE partner_id = $1 ORDER BY id LIMIT 1",
    )
    .bind(uuid::Uuid::parse_str(partner_id).unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    id.to_string()
}

fn ids_in(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn tenant_isolation_matrix(pool: PgPool) {
    let mut opts = Options {
        background_worker: false,
        // Deliveries stay as written, so the snapshots compare.
        background_dispatcher: false,
        // Its writes (a cancelled batch's completion) would show in the before/after snapshots.
        background_batch_ticker: false,
        ..Options::default()
    };
    // So that resending is allowed to the owner right away.
    opts.worker.otp.resend_cooldown = Duration::ZERO;
    let app = TestApp::spawn_with(pool, opts).await;
    let (own_id, own_key) = (app.partner_id.clone(), app.partner_key.clone());
    let (other_id, other_key) = app.other_partner().await;
    // Transitions of the app partner's migrations write webhook deliveries.
    let res = app
        .http
        .patch(app.url(&format!("/v1/partners/{own_id}")))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "callback_url": "http://127.0.0.1:9/hook" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let own_key_id = partner_key_id(&app, &own_id).await;
    let other_key_id = partner_key_id(&app, &other_id).await;
    // A third partner the admin's own calls may change (revoking its key, rotating its secret).
    let res = app
        .post_as(
            ADMIN_KEY,
            "/v1/partners",
            json!({ "name": "Third", "d360_partner_id": "thirdPA", "d360_api_key": "k3" }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let third_id = res.json::<Value>().await.unwrap()["partner"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let third_key_id = partner_key_id(&app, &third_id).await;

    let ops = served_operations();
    let mut checked = 0;
    for (n, (method, path)) in ops.iter().enumerate() {
        let r = classified(method, path)
            .unwrap_or_else(|| panic!("{method} {path} is not classified in ROUTES"));
        if r.class != Public {
            for key in [None, Some("wm_unknown_key_0123456789")] {
                let concrete = path
                    .replace("{id}", &own_id)
                    .replace("{key_id}", &own_key_id);
                assert_refused(
                    &app,
                    r,
                    &concrete,
                    key,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                )
                .await;
            }
        }
        match r.class {
            Public => {
                let reply = call(&app, r, path, None).await;
                assert_eq!(
                    reply.status.as_u16(),
                    r.ok,
                    "{method} {path}: {}",
                    reply.text
                );
            }
            Tenant => {
                let reply = call(&app, r, path, Some(&own_key)).await;
                assert_eq!(
                    reply.status.as_u16(),
                    r.ok,
                    "{method} {path}: {}",
                    reply.text
                );
            }
            Migration(_) | Delivery | Batch => {
                // A fresh migration (or batch) per route: the owner's call below may change it.
                let f = match r.class {
                    Migration(f) => f,
                    _ => AwaitingOtp,
                };
                let (id, phone) = if r.class == Batch {
                    let phone = format!("+1415555{:04}", 4600 + n);
                    let res = app
                        .post_as(
                            &own_key,
                            "/v1/batches",
                            json!({ "name": "Fixture", "migrations": [TestApp::create_body(&phone)] }),
                        )
                        .await;
                    assert_eq!(res.status(), StatusCode::CREATED);
                    let body: Value = res.json().await.unwrap();
                    (
                        body["batch"]["id"].as_str().unwrap().to_owned(),
                        json!(phone),
                    )
                } else {
                    let migration = fixture(&app, f, n as u32).await;
                    let phone = app.migration(&migration).await["phone_number"].clone();
                    if r.class == Delivery {
                        (first_delivery(&app, &migration).await, phone)
                    } else {
                        (migration, phone)
                    }
                };
                let concrete = path.replace("{id}", &id);
                assert_refused(
                    &app,
                    r,
                    &concrete,
                    None,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                )
                .await;
                let reply = assert_refused(
                    &app,
                    r,
                    &concrete,
                    Some(&other_key),
                    StatusCode::NOT_FOUND,
                    "not_found",
                )
                .await;
                assert!(
                    !reply.text.contains(phone.as_str().unwrap()),
                    "the 404 tells about the migration: {}",
                    reply.text
                );
                let owner = call(&app, r, &concrete, Some(&own_key)).await;
                assert_eq!(
                    owner.status.as_u16(),
                    r.ok,
                    "{method} {concrete} as the owner: {}",
                    owner.text
                );
            }
            OwnPartner => {
                for (key, id) in [(&own_key, &other_id), (&other_key, &own_id)] {
                    let concrete = path.replace("{id}", id);
                    assert_refused(
                        &app,
                        r,
                        &concrete,
                        Some(key),
                        StatusCode::NOT_FOUND,
                        "not_found",
                    )
                    .await;
                }
                for (key, id) in [(own_key.as_str(), &own_id), (ADMIN_KEY, &third_id)] {
                    let concrete = path.replace("{id}", id);
                    let reply = call(&app, r, &concrete, Some(key)).await;
                    assert_eq!(
                        reply.status.as_u16(),
                        r.ok,
                        "{method} {concrete}: {}",
                        reply.text
                    );
                }
            }
            Admin => {
                // The caller's own partner and another one, with a key of that partner.
                for (key, id, key_id) in [
                    (&own_key, &own_id, &own_key_id),
                    (&own_key, &other_id, &other_key_id),
                    (&other_key, &other_id, &other_key_id),
                    (&other_key, &own_id, &own_key_id),
                ] {
                    let concrete = path.replace("{id}", id).replace("{key_id}", key_id);
                    assert_refused(
                        &app,
                        r,
                        &concrete,
                        Some(key),
                        StatusCode::FORBIDDEN,
                        "forbidden",
                    )
                    .await;
                }
                let concrete = path
                    .replace("{id}", &third_id)
                    .replace("{key_id}", &third_key_id);
                let admin = call(&app, r, &concrete, Some(ADMIN_KEY)).await;
                assert_eq!(
                    admin.status.as_u16(),
                    r.ok,
                    "{method} {concrete} as the admin: {}",
                    admin.text
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, ops.len());
    assert!(checked >= 24, "only {checked} routes");

    // Lists: each tenant sees only its own migrations, whatever the filters; the admin all.
    let other_phone = "+14155554201";
    let res = app
        .post_as(
            &other_key,
            "/v1/migrations",
            TestApp::create_body(other_phone),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let other_migration = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mine: Vec<String> =
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM migrations WHERE partner_id = $1")
            .bind(uuid::Uuid::parse_str(&own_id).unwrap())
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.to_string())
            .collect();
    assert!(mine.len() >= 8);
    for query in [
        "/v1/migrations?limit=100".to_owned(),
        "/v1/migrations?phone_number=%2B14155554201".to_owned(),
        "/v1/migrations?state=queued&limit=100".to_owned(),
    ] {
        let own_list: Value = app.get_as(&own_key, &query).await.json().await.unwrap();
        let seen = ids_in(&own_list);
        assert!(!seen.contains(&other_migration), "{query}: {own_list:#}");
        assert!(seen.iter().all(|id| mine.contains(id)), "{query}");
        let other_list: Value = app.get_as(&other_key, &query).await.json().await.unwrap();
        let seen = ids_in(&other_list);
        assert!(
            seen.iter().all(|id| *id == other_migration),
            "{query}: {other_list:#}"
        );
    }
    let all: Value = app
        .get_as(ADMIN_KEY, "/v1/migrations?limit=100")
        .await
        .json()
        .await
        .unwrap();
    let all = ids_in(&all);
    assert!(all.contains(&other_migration) && mine.iter().all(|id| all.contains(id)));
}
