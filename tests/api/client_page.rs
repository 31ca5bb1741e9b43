//! The end client's page (`/c/{token}`): the link in the API, what the database keeps of it,
//! when it is refused, its forms, limits and headers, over real HTTP and PostgreSQL.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::helpers::{ADMIN_KEY, Options, TestApp};
use crate::secrets::{Corpus, Secret, assert_no_secrets, capture_logs};

/// A browser-like client that does not follow redirects (to see the post/redirect/get).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn token_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

async fn link(app: &TestApp, id: &str) -> String {
    app.migration(id).await["client_page"]["url"]
        .as_str()
        .expect("a client page link")
        .to_owned()
}

/// The page's `csrf` form value.
fn csrf_in(html: &str) -> String {
    let re =
        regex::Regex::new(r#"name="csrf"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf""#)
            .unwrap();
    let c = re.captures(html).expect("a csrf field in the page");
    c.get(1).or(c.get(2)).unwrap().as_str().to_owned()
}

/// Opens the page as a browser's navigation does.
async fn open(url: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let res = browser()
        .get(url)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

/// Posts a form of the page, as the page's own form would (same origin).
async fn post_form(url: &str, form: &[(&str, &str)]) -> reqwest::Response {
    browser()
        .post(url)
        .header("sec-fetch-site", "same-origin")
        .form(form)
        .send()
        .await
        .unwrap()
}

async fn submit_code(url: &str, code: &str) -> reqwest::Response {
    let (status, _, html) = open(url).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let csrf = csrf_in(&html);
    post_form(&format!("{url}/otp"), &[("csrf", &csrf), ("code", code)]).await
}

/// `POST …/client_page/rotate` as the owner.
async fn rotate_link(app: &TestApp, id: &str) -> reqwest::Response {
    app.post(
        &format!("/v1/migrations/{id}/client_page/rotate"),
        json!({}),
    )
    .await
}

/// Moves the migration's end (and its completion, if any) an hour back: the linger is over.
async fn ended_an_hour_ago(app: &TestApp, id: &str) {
    sqlx::query(
        "UPDATE migrations SET state_entered_at = now() - interval '1 hour',
                completed_at = completed_at - interval '1 hour' WHERE id = $1::uuid",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn every_migration_has_a_link_stored_only_as_a_hash(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app
        .http
        .post(app.url("/v1/migrations"))
        .bearer_auth(&app.partner_key)
        .header("idempotency-key", "page-1")
        .json(&TestApp::create_body("+5511987651001"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let page = &created["client_page"];
    let url = page["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/c/", app.base)), "{url}");
    let token = token_of(url);
    // 32 base64url characters: 192 bits.
    assert_eq!(token.len(), 32, "{token}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(page["expires_at"].clone()).unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((6.9..=7.0).contains(&days), "{days}");
    assert_eq!(page["opened_at"], Value::Null);
    assert_eq!(page["submissions"], 0);

    // GET, the list and an idempotent replay show the same link.
    assert_eq!(app.migration(id).await["client_page"], *page);
    let list: Value = app.get("/v1/migrations").await.json().await.unwrap();
    assert_eq!(list["data"][0]["client_page"], *page);
    let replay: Value = app
        .http
        .post(app.url("/v1/migrations"))
        .bearer_auth(&app.partner_key)
        .header("idempotency-key", "page-1")
        .json(&TestApp::create_body("+5511987651001"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replay["client_page"], *page);
    // The admin sees it too.
    let admin: Value = app
        .get_as(ADMIN_KEY, &format!("/v1/migrations/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(admin["client_page"], *page);

    // The database holds its SHA-256, and the token nowhere.
    let hash: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM client_pages WHERE migration_id = $1::uuid")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(hash, Sha256::digest(token.as_bytes()).to_vec());
    app.wait_for(id, "awaiting_otp").await;
    let dump: String = sqlx::query_scalar(
        "SELECT concat_ws(' ',
            (SELECT string_agg(m::text, ' ') FROM migrations m),
            (SELECT string_agg(e::text, ' ') FROM migration_events e),
            (SELECT string_agg(i::text, ' ') FROM idempotency_keys i),
            (SELECT string_agg(w::text, ' ') FROM webhook_deliveries w),
            (SELECT string_agg(c::text, ' ') FROM client_pages c))",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!dump.contains(&token), "the token is stored somewhere");
    assert!(dump.contains("awaiting_otp"), "the dump has the rows");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_disabled_page_has_no_link_and_nothing_to_rotate(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut body = TestApp::create_body("+5511987651002");
    body["client_page"] = json!("disabled");
    let id = app.create_with(body).await;
    assert_eq!(app.migration(id.as_str()).await["client_page"], Value::Null);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM client_pages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    let res = rotate_link(&app, &id).await;
    crate::helpers::assert_problem(res, StatusCode::CONFLICT, "client_page_disabled").await;

    let mut bad = TestApp::create_body("+5511987651003");
    bad["client_page"] = json!("maybe");
    let res = app.post("/v1/migrations", bad).await;
    let problem =
        crate::helpers::assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
            .await;
    assert_eq!(problem["errors"][0]["pointer"], "/client_page");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_page_opens_once_with_safe_headers_and_a_webhook(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut body = TestApp::create_body("+5511987651004");
    body["callback_url"] = json!("http://127.0.0.1:9/hook");
    let id = app.create_with(body).await;
    app.wait_for(&id, "awaiting_otp").await;
    let url = link(&app, &id).await;
    let (status, headers, html) = open(&url).await;
    assert_eq!(status, StatusCode::OK);
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    let csp = h("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(h("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(h("cache-control").as_deref(), Some("no-store"));
    assert!(html.contains(r#"name="code""#), "the code form: {html}");
    // The number is masked to its last 4 digits.
    assert!(html.contains("1004"));
    assert!(
        !html.contains("987651004"),
        "the full number is on the page"
    );
    // No inline script.
    let inline = regex::Regex::new(r"<script(?:\s[^>]*)?>").unwrap();
    for tag in inline.find_iter(&html) {
        assert!(
            tag.as_str().contains("src="),
            "inline script: {}",
            tag.as_str()
        );
    }

    open(&url).await;
    open(&format!("{url}?lang=es")).await;
    assert_eq!(
        app.event_count(&id, Some("migration.client_page_opened"))
            .await,
        1
    );
    let m = app.migration(&id).await;
    assert!(m["client_page"]["opened_at"].is_string(), "{m}");
    let webhooks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries
          WHERE migration_id = $1::uuid AND event_type = 'migration.client_page_opened'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(webhooks, 1);
    let payload: String = sqlx::query_scalar(
        "SELECT payload FROM webhook_deliveries
          WHERE migration_id = $1::uuid AND event_type = 'migration.client_page_opened'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        !payload.contains(&token_of(&url)),
        "the link is in a webhook"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_first_opening_during_a_rotation_waits_for_it_instead_of_deadlocking(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651005").await;
    app.wait_for(&id, "awaiting_otp").await;
    let url = link(&app, &id).await;

    // What a rotation does, in its order: the migration's row, then the page's. Between the
    // two, the client opens the link for the first time.
    let mut rotation = app.pool.begin().await.unwrap();
    // This side is the one PostgreSQL would abort if the two deadlocked.
    sqlx::query("SET LOCAL deadlock_timeout = '50ms'")
        .execute(&mut *rotation)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM migrations WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *rotation)
        .await
        .unwrap();
    let opening = tokio::spawn(async move { open(&url).await.0 });
    // Until the opening waits on a lock.
    assert!(
        app.until_a_lock_is_waited_for(|| opening.is_finished())
            .await,
        "the opening never waited"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query(
        "UPDATE client_pages SET generation = generation + 1, opened_at = NULL
          WHERE migration_id = $1::uuid",
    )
    .bind(&id)
    .execute(&mut *rotation)
    .await
    .expect("the rotation is not aborted as a deadlock");
    rotation.commit().await.unwrap();

    assert_eq!(opening.await.unwrap(), StatusCode::OK);
    // The opening was of the link the rotation replaced: not recorded as the new one's.
    assert_eq!(
        app.event_count(&id, Some("migration.client_page_opened"))
            .await,
        0
    );
}

/// `PUBLIC_BASE_URL` with a path (a proxy serving the service under `/migrate`, passing on
/// `/c/…`): the page's forms, assets, redirects and language links go through it. A code
/// pasted as WhatsApp's message shows it (`123-456`) is taken.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn behind_a_proxy_under_a_path_the_page_links_there(pool: PgPool) {
    let mut opts = Options::default();
    opts.client_page.public_base_url = url::Url::parse("http://proxy.invalid/migrate").unwrap();
    let app = TestApp::spawn_with(pool, opts).await;
    let id = app.create("+5511987651015").await;
    app.wait_for(&id, "awaiting_otp").await;
    let public = link(&app, &id).await;
    let token = token_of(&public);
    assert_eq!(public, app.url(&format!("/migrate/c/{token}")));
    // What the proxy passes on.
    let url = app.url(&format!("/c/{token}"));
    let (status, _, html) = open(&url).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    for path in [
        format!("action=\"/migrate/c/{token}/otp?lang="),
        format!("action=\"/migrate/c/{token}/resend?lang="),
        format!("data-status-url=\"/migrate/c/{token}/status\""),
        format!("href=\"/migrate/c/{token}?lang=es\""),
        "src=\"/migrate/c/assets/page.js\"".to_owned(),
        "href=\"/migrate/c/assets/page.css\"".to_owned(),
    ] {
        assert!(html.contains(&path), "{path}: {html}");
    }
    let res = submit_code(&url, "123-456").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("/migrate/c/{token}?notice=received")),
        "{location}"
    );
    app.wait_for(&id, "completed").await;

    // A form sent to a link that is no longer valid: the neutral page's language links go to
    // the link's page (a GET of `…/otp` would be refused), under the path.
    let gone = "A".repeat(32);
    let res = post_form(&app.url(&format!("/c/{gone}/otp")), &[("code", "123456")]).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let html = res.text().await.unwrap();
    assert!(
        html.contains(&format!("href=\"/migrate/c/{gone}?lang=es\"")),
        "{html}"
    );
    assert!(
        html.contains("href=\"/migrate/c/assets/page.css\""),
        "{html}"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn codes_from_the_page_are_recorded_with_their_source(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651005").await;
    app.wait_for(&id, "awaiting_otp").await;
    let url = link(&app, &id).await;

    // Not 6 digits: refused on the page, nothing recorded.
    let res = submit_code(&url, "12").await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A wrong code: taken (post/redirect/get), then refused by Meta.
    let res = submit_code(&url, "000000").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let m = app
        .wait_until(&id, |m| {
            m["state"] == "awaiting_otp" && m["error"]["code"] == "otp_invalid"
        })
        .await;
    let left = m["otp"]["attempts_left"].as_i64().unwrap();
    let (_, _, html) = open(&url).await;
    assert!(
        html.contains(&left.to_string()),
        "attempts left on the page"
    );
    // The right one.
    let res = submit_code(&url, "123456").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("/c/{}", token_of(&url))),
        "{location}"
    );
    app.wait_for(&id, "completed").await;

    let sources: Vec<Value> = app
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["data"]["otp"] == "submitted")
        .map(|e| e["data"]["source"].clone())
        .collect();
    assert_eq!(sources, [json!("client_page"), json!("client_page")]);
    let m = app.migration(&id).await;
    assert_eq!(m["client_page"]["submissions"], 2, "{m}");

    // Through the API, the source is `api`.
    let other = app.create("+5511987651006").await;
    app.complete(&other).await;
    let api: Vec<Value> = app
        .events(&other)
        .await
        .into_iter()
        .filter(|e| e["data"]["otp"] == "submitted")
        .map(|e| e["data"]["source"].clone())
        .collect();
    assert_eq!(api, [json!("api")]);
}

/// The neutral answer: 404 and the same page whatever the reason.
async fn assert_refused(url: &str) -> String {
    let (status, headers, html) = open(url).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{url}: {html}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!html.contains(r#"name="code""#));
    html
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_link_is_refused_after_completion_cancel_rotation_or_expiry(pool: PgPool) {
    let mut opts = Options::default();
    opts.client_page.linger = Duration::ZERO;
    let app = TestApp::spawn_with(pool, opts).await;
    let unknown = assert_refused(&format!("{}/c/{}", app.base, "A".repeat(32))).await;
    let garbage = assert_refused(&format!("{}/c/not-a-token", app.base)).await;
    assert_eq!(unknown, garbage);

    // Completed.
    let done = app.create("+5511987651007").await;
    app.wait_for(&done, "awaiting_otp").await;
    let done_url = link(&app, &done).await;
    let (_, _, html) = open(&done_url).await;
    let csrf = csrf_in(&html);
    app.complete(&done).await;
    assert_eq!(assert_refused(&done_url).await, unknown);
    let res = post_form(
        &format!("{done_url}/otp"),
        &[("csrf", &csrf), ("code", "123456")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Cancelled.
    let cancelled = app.create("+5511987651008").await;
    let cancelled_url = link(&app, &cancelled).await;
    assert_eq!(open(&cancelled_url).await.0, StatusCode::OK);
    let res = app
        .post(&format!("/v1/migrations/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(assert_refused(&cancelled_url).await, unknown);

    // Rotated.
    let rotated = app.create("+5511987651009").await;
    let old = link(&app, &rotated).await;
    let res = rotate_link(&app, &rotated).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let new = body["client_page"]["url"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(link(&app, &rotated).await, new);
    assert_eq!(assert_refused(&old).await, unknown);
    assert_eq!(open(&new).await.0, StatusCode::OK);
    assert_eq!(
        app.event_count(&rotated, Some("migration.client_page_rotated"))
            .await,
        1
    );

    // Expired.
    sqlx::query(
        "UPDATE client_pages SET expires_at = now() - interval '1 second'
          WHERE migration_id = $1::uuid",
    )
    .bind(&rotated)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(assert_refused(&new).await, unknown);
    let m = app.migration(&rotated).await;
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(m["client_page"]["expires_at"].clone()).unwrap();
    assert!(expires < chrono::Utc::now());
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_completed_migration_shows_done_until_the_linger_ends(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651010").await;
    let url = link(&app, &id).await;
    app.complete(&id).await;
    // Shown (15 minutes by default), but it accepts nothing.
    let (status, _, html) = open(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains(r#"name="code""#));
    let m = app.migration(&id).await;
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(m["client_page"]["expires_at"].clone()).unwrap();
    let left = expires - chrono::Utc::now();
    assert!(
        left.num_minutes() <= 15 && left.num_minutes() >= 13,
        "{left}"
    );
    // A form still open on the page is answered with the page as it is now: done.
    let events = app.event_count(&id, None).await;
    let res = post_form(
        &format!("{url}/resend"),
        &[("csrf", "x"), ("method", "sms")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let page = res.text().await.unwrap();
    assert!(page.contains("already over"), "{page}");
    assert!(!page.contains(r#"name="code""#), "{page}");
    assert_eq!(app.event_count(&id, None).await, events);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn another_migrations_link_acts_only_on_its_own(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let a = app.create("+5511987651011").await;
    let b = app.create("+5511987651012").await;
    app.wait_for(&a, "awaiting_otp").await;
    app.wait_for(&b, "awaiting_otp").await;
    let a_url = link(&app, &a).await;
    let b_events = app.event_count(&b, None).await;
    let res = submit_code(&a_url, "123456").await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    app.wait_for(&a, "completed").await;
    let b_now = app.migration(&b).await;
    assert_eq!(b_now["state"], "awaiting_otp");
    assert_eq!(app.event_count(&b, None).await, b_events);
    // Another link's form token does not work on B's link.
    let b_url = link(&app, &b).await;
    let (_, _, b_html) = open(&b_url).await;
    let b_csrf = csrf_in(&b_html);
    let other_csrf = {
        let c = app.create("+5511987651013").await;
        app.wait_for(&c, "awaiting_otp").await;
        let (_, _, html) = open(&link(&app, &c).await).await;
        csrf_in(&html)
    };
    assert_ne!(b_csrf, other_csrf);
    let res = post_form(
        &format!("{b_url}/otp"),
        &[("csrf", &other_csrf), ("code", "123456")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.migration(&b).await["state"], "awaiting_otp");
    assert_eq!(
        app.event_count(&b, None).await,
        b_events + 1,
        "only B's opening"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn forms_need_the_pages_token_and_origin(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651014").await;
    app.wait_for(&id, "awaiting_otp").await;
    let url = link(&app, &id).await;
    let (_, _, html) = open(&url).await;
    let csrf = csrf_in(&html);
    let before = app.event_count(&id, None).await;
    // No form token: the page says nothing was sent (not that the step is over).
    let res = post_form(&format!("{url}/otp"), &[("code", "123456")]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let page = res.text().await.unwrap();
    assert!(page.contains("nothing was sent"), "{page}");
    assert!(!page.contains("already over"), "{page}");
    // Another site's page posting the form.
    let res = browser()
        .post(format!("{url}/otp"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf", csrf.as_str()), ("code", "123456")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = browser()
        .post(format!("{url}/otp"))
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str()), ("code", "123456")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.event_count(&id, None).await, before);
    assert_eq!(app.migration(&id).await["state"], "awaiting_otp");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn twenty_wrong_submissions_from_one_address_are_throttled(pool: PgPool) {
    let mut opts = Options::default();
    // Wrong codes keep the migrations waiting for another (none fails on its attempts).
    opts.worker.otp.max_attempts = 100;
    let app = TestApp::spawn_with(pool, opts).await;
    let mut urls = Vec::new();
    for n in 0..3 {
        let id = app.create(&format!("+55119876520{n:02}")).await;
        app.wait_for(&id, "awaiting_otp").await;
        urls.push(link(&app, &id).await);
    }
    let mut forms = Vec::new();
    for url in &urls {
        let (_, _, html) = open(url).await;
        forms.push((url.clone(), csrf_in(&html)));
    }
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..20 {
        let (url, csrf) = &forms[i % forms.len()];
        let res = post_form(&format!("{url}/otp"), &[("csrf", csrf), ("code", "000000")]).await;
        let status = res.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let html = res.text().await.unwrap();
            assert!(html.contains(r#"role="alert""#) || html.contains(r#"role="status""#));
        }
        statuses.push(status.as_u16());
    }
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    assert!(throttled >= 10, "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    let submitted: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(submissions), 0) FROM client_pages")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(submitted <= 10, "{submitted}");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn no_token_code_or_pin_in_logs(pool: PgPool) {
    let logs = capture_logs();
    let app = TestApp::spawn(pool).await;
    let mut body = TestApp::create_body("+5511987651020");
    body["pin"] = json!("730194");
    let id = app.create_with(body).await;
    app.wait_for(&id, "awaiting_otp").await;
    let url = link(&app, &id).await;
    let token = token_of(&url);
    assert_eq!(
        submit_code(&url, "591736").await.status(),
        StatusCode::SEE_OTHER
    );
    app.wait_until(&id, |m| m["error"]["code"] == "otp_invalid")
        .await;
    let (_, _, html) = open(&format!("{url}/status")).await;
    assert!(html.contains("version"), "{html}");
    assert_eq!(
        submit_code(&url, "123456").await.status(),
        StatusCode::SEE_OTHER
    );
    app.wait_for(&id, "completed").await;
    assert_refused(&format!("{}/c/{}", app.base, "B".repeat(32))).await;

    let mut corpus = Corpus::default();
    corpus.add("logs", logs.text());
    for e in app.events(&id).await {
        corpus.add("event", e.to_string());
    }
    assert!(
        logs.text().contains("/c/{token}"),
        "the access log names the route"
    );
    assert_no_secrets(
        &[
            Secret::new("client page token", token),
            Secret::new("wrong code", "591736"),
            Secret::new("code", "123456"),
            Secret::new("PIN", "730194"),
        ],
        &corpus,
    );
}

/// Once the number moved, a key rotation (`generating_api_key` again) does not bring a link
/// that stopped showing the outcome back, and the link cannot be replaced.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_key_rotation_does_not_bring_a_finished_link_back(pool: PgPool) {
    let mut opts = Options::default();
    opts.sandbox.hang_for = Duration::from_secs(2);
    opts.upstream_timeout = Duration::from_secs(10);
    let app = TestApp::spawn_with(pool, opts).await;
    let phone = "+5511987651030";
    let id = app.create(phone).await;
    let url = link(&app, &id).await;
    app.complete(&id).await;
    ended_an_hour_ago(&app, &id).await;
    assert_eq!(open(&url).await.0, StatusCode::NOT_FOUND);

    app.faults(json!([{ "endpoint": "api_keys", "phone_number": phone, "fault": "slow" }]))
        .await;
    let rotation = {
        let req = app
            .http
            .post(app.url(&format!("/v1/migrations/{id}/api_key/rotate")))
            .bearer_auth(&app.partner_key);
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    let m = app
        .wait_until(&id, |m| m["state"] == "generating_api_key")
        .await;
    assert!(m["completed_at"].is_string(), "{m:#}");
    assert_eq!(open(&url).await.0, StatusCode::NOT_FOUND);
    let res = rotate_link(&app, &id).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_state", "{problem:#}");
    assert_eq!(rotation.await.unwrap().status(), StatusCode::OK);
}

/// A failed migration's link shows the failure for the linger only; replacing it after that
/// would answer a link that is dead on arrival: 409, retry first. Within the linger it works.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_failed_migrations_link_is_replaced_only_while_it_shows_the_failure(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Registered without the mobile 9: fails its precheck.
    let id = app.create("+5511987650012").await;
    app.wait_for(&id, "failed").await;
    let res = rotate_link(&app, &id).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(body["client_page"]["expires_at"].clone()).unwrap();
    assert!(expires > chrono::Utc::now(), "{body:#}");

    ended_an_hour_ago(&app, &id).await;
    let events = app.event_count(&id, None).await;
    let res = rotate_link(&app, &id).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_state", "{problem:#}");
    assert!(
        problem["detail"].as_str().unwrap().contains("/retry"),
        "{problem:#}"
    );
    assert_eq!(app.event_count(&id, None).await, events);
}

/// "Send again" tapped inside the resend cooldown is answered with when it is available, and
/// costs the link's submission budget nothing: the code can still be sent afterwards.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn resend_taps_inside_the_cooldown_cost_the_link_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987651031").await;
    app.wait_for(&id, "awaiting_otp").await;
    let url = link(&app, &id).await;
    let (_, _, html) = open(&url).await;
    let csrf = csrf_in(&html);
    for _ in 0..12 {
        let res = post_form(
            &format!("{url}/resend"),
            &[("csrf", csrf.as_str()), ("method", "sms")],
        )
        .await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key("retry-after"));
    }
    let m = app.migration(&id).await;
    assert_eq!(m["client_page"]["submissions"], 0, "{m:#}");
    let res = post_form(
        &format!("{url}/otp"),
        &[("csrf", csrf.as_str()), ("code", "123456")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    app.wait_for(&id, "completed").await;
}

/// After "Call me instead" the migration asks Meta for a new code (`requesting_otp` again): the
/// page says a new code is on its way, not that the number is being checked from the start.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_new_code_on_its_way_is_shown_as_such(pool: PgPool) {
    let mut opts = Options::no_worker();
    opts.worker.otp.resend_cooldown = Duration::ZERO;
    let app = TestApp::spawn_with(pool, opts).await;
    let id = app.create("+5511987651032").await;
    app.worker().run_until_idle().await.unwrap();
    app.wait_for(&id, "awaiting_otp").await;
    let url = link(&app, &id).await;
    let (_, _, html) = open(&url).await;
    let res = post_form(
        &format!("{url}/resend"),
        &[("csrf", csrf_in(&html).as_str()), ("method", "voice")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.migration(&id).await["state"], "requesting_otp");
    let (status, _, html) = open(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Sending you a new code"), "{html}");
    assert!(!html.contains("We are checking your number"), "{html}");
    app.worker().run_until_idle().await.unwrap();
    let (_, _, html) = open(&url).await;
    assert!(html.contains(r#"name="code""#), "{html}");
}

/// A link preview (the messenger the link was sent with fetching it for a preview, an e-mail
/// scanner) is not the client opening the page: no `migration.client_page_opened`. A browser's
/// navigation is, unless it is a prefetch or prerender (`Sec-Purpose`), and so is the page's
/// script polling (a browser that does not say it navigates).
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_link_preview_is_not_an_opening(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let opened = |id: String| {
        let app = &app;
        async move {
            app.event_count(&id, Some("migration.client_page_opened"))
                .await
        }
    };
    let a = app.create("+5511987651040").await;
    let url = link(&app, &a).await;
    let res = browser()
        .get(&url)
        .header("user-agent", "WhatsApp/2.24.1 A")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(opened(a.clone()).await, 0);
    // A browser prefetching or prerendering the link (speculation rules, the address bar's
    // guess): a navigation that says it is one.
    for purpose in [
        "prefetch",
        "prefetch;prerender",
        "prefetch;anonymous-client-ip",
    ] {
        let res = browser()
            .get(&url)
            .header("sec-fetch-mode", "navigate")
            .header("sec-purpose", purpose)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(opened(a.clone()).await, 0, "Sec-Purpose: {purpose}");
    }
    assert!(app.migration(&a).await["client_page"]["opened_at"].is_null());
    // The page's script: the client has it open.
    let res = browser().get(format!("{url}/status")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(opened(a.clone()).await, 1);

    let b = app.create("+5511987651041").await;
    let url = link(&app, &b).await;
    assert_eq!(open(&url).await.0, StatusCode::OK);
    assert_eq!(opened(b.clone()).await, 1);
    assert!(app.migration(&b).await["client_page"]["opened_at"].is_string());
}
