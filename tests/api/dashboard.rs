//! `/dashboard` over plain HTTP (no browser): sessions and their cookie, CSRF, tenant
//! isolation, secrets kept out of the HTML, revocation. `tests/dashboard.rs` drives it in
//! headless Chromium.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use sqlx::PgPool;
use waba_migrator::domain::ErrorCode;

use waba_migrator::core::auth::AuthConfig;

use crate::helpers::{ADMIN_KEY, Options, TestApp, assert_problem};

/// A browser-like client: keeps the dashboard cookies, does not follow redirects.
struct Dash {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
    /// The last page's CSRF token.
    csrf: String,
}

fn csrf_in(html: &str) -> Option<String> {
    let re = regex::Regex::new(r#"name="csrf" value="([^"]+)""#).unwrap();
    re.captures(html).map(|c| c[1].to_owned())
}

impl Dash {
    fn new(app: &TestApp) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
            cookies: Vec::new(),
            csrf: String::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn store(&mut self, headers: &HeaderMap) {
        for h in headers.get_all(SET_COOKIE) {
            let (kv, _) = h.to_str().unwrap().split_once(';').unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
    }

    async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, String) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        self.store(&headers);
        let body = res.text().await.unwrap();
        if let Some(t) = csrf_in(&body) {
            self.csrf = t;
        }
        (status, headers, body)
    }

    async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(form);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        self.store(&headers);
        (status, headers, res.text().await.unwrap())
    }

    /// Signs in with `key`; returns the `Set-Cookie` of the session.
    async fn sign_in(&mut self, key: &str) -> String {
        let (status, _, _) = self.get("/dashboard/login").await;
        assert_eq!(status, StatusCode::OK);
        let csrf = self.csrf.clone();
        let (status, headers, body) = self
            .post("/dashboard/login", &[("key", key), ("csrf", &csrf)], &[])
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        assert_eq!(headers[LOCATION], "/dashboard");
        let set = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("wm_dash="))
            .expect("a session cookie");
        let (status, _, _) = self.get("/dashboard").await;
        assert_eq!(status, StatusCode::OK);
        set
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn sign_in_sets_a_strict_httponly_session_cookie_and_security_headers(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut d = Dash::new(&app);

    // No session: the pages send you to the sign-in page.
    let (status, headers, _) = d.get("/dashboard").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/dashboard/login");

    // A wrong key is refused and opens no session.
    d.get("/dashboard/login").await;
    let csrf = d.csrf.clone();
    let (status, headers, body) = d
        .post(
            "/dashboard/login",
            &[("key", "wm_nope"), ("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("not valid"));
    assert!(!body.contains("wm_nope"), "the key is never echoed");
    assert!(
        headers
            .get_all(SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("wm_dash="))
    );

    let cookie = d.sign_in(&app.partner_key).await;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age="] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(
        !cookie.contains("Secure"),
        "tests run over http (DASHBOARD_SECURE_COOKIE=false)"
    );
    assert!(
        !cookie.contains(&app.partner_key),
        "the cookie holds a session id, not the key"
    );

    let (status, headers, body) = d.get("/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Test partner"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "same-origin");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!body.contains("<script"), "no script at all");

    // Sign-out ends the session server-side.
    let csrf = d.csrf.clone();
    let (status, headers, _) = d.post("/dashboard/logout", &[("csrf", &csrf)], &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/dashboard/login");
    let old = cookie.split(';').next().unwrap().to_owned();
    let res = d
        .http
        .get(format!("{}/dashboard", app.base))
        .header("cookie", old)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn posts_without_the_csrf_token_or_from_another_origin_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+14155550701").await;
    app.wait_for(&id, "awaiting_otp").await;
    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;
    d.get(&format!("/dashboard/migrations/{id}")).await;
    let csrf = d.csrf.clone();
    assert!(!csrf.is_empty());
    let path = format!("/dashboard/migrations/{id}/cancel");

    let (status, _, body) = d.post(&path, &[], &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _) = d.post(&path, &[("csrf", "forged")], &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The right token, but the browser says the form was on another site.
    let (status, _, _) = d
        .post(
            &path,
            &[("csrf", &csrf)],
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = d
        .post(
            &path,
            &[("csrf", &csrf)],
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The sign-in form needs its own token too (login CSRF).
    let (status, _, _) = d
        .post("/dashboard/login", &[("key", &app.partner_key)], &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.migration(&id).await["state"], "awaiting_otp");

    // The genuine form works, through the API's code path (event and all).
    let origin = app.base.clone();
    let (status, headers, _) = d
        .post(&path, &[("csrf", &csrf)], &[("origin", &origin)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[LOCATION],
        format!("/dashboard/migrations/{id}?done=cancel")
    );
    assert_eq!(app.migration(&id).await["state"], "cancelled");
    let events = app.events(&id).await;
    let last = events.last().unwrap();
    assert_eq!(last["to_state"], "cancelled");
    assert_eq!(last["data"]["cancelled_by"], "partner");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_partner_sees_only_its_own_migrations(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550702";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    let (_, other_key) = app.other_partner().await;

    let mut other = Dash::new(&app);
    other.sign_in(&other_key).await;
    let (status, _, body) = other.get(&format!("/dashboard/migrations/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!body.contains(phone));
    let (status, _, body) = other.get("/dashboard/migrations").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains(phone));
    // Asking for the other partner explicitly changes nothing.
    let (_, _, body) = other
        .get(&format!(
            "/dashboard/migrations?partner_id={}",
            app.partner_id
        ))
        .await;
    assert!(!body.contains(phone));
    let (_, _, body) = other.get("/dashboard").await;
    assert!(!body.contains(phone));
    let csrf = other.csrf.clone();
    let (status, _, _) = other
        .post(
            &format!("/dashboard/migrations/{id}/cancel"),
            &[("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(app.migration(&id).await["state"], "awaiting_otp");

    // The owner and the admin see it.
    let mut owner = Dash::new(&app);
    owner.sign_in(&app.partner_key).await;
    let (_, _, body) = owner.get("/dashboard/migrations").await;
    assert!(body.contains(phone));
    let mut admin = Dash::new(&app);
    admin.sign_in(ADMIN_KEY).await;
    let (status, _, body) = admin.get(&format!("/dashboard/migrations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(phone) && body.contains("Test partner"));
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn no_secret_reaches_the_html(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let pin = "246813";
    let mut body = TestApp::create_body("+14155550703");
    body["pin"] = json!(pin);
    let id = app.create_with(body).await;
    app.complete(&id).await;
    let api_key = app.stored_key(&id).await;

    for key in [app.partner_key.clone(), ADMIN_KEY.to_owned()] {
        let mut d = Dash::new(&app);
        let cookie = d.sign_in(&key).await;
        let session_id = cookie
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("wm_dash=")
            .to_owned();
        let mut pages = String::new();
        for path in [
            "/dashboard".to_owned(),
            "/dashboard/migrations".to_owned(),
            format!("/dashboard/migrations/{id}"),
        ] {
            let (status, _, html) = d.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            pages.push_str(&html);
        }
        assert!(pages.contains("verified"), "the key's status is shown");
        for secret in [
            pin,
            api_key.as_str(),
            app.partner_key.as_str(),
            ADMIN_KEY,
            "partner-secret-key",
            app.webhook_secret.as_str(),
            session_id.as_str(),
        ] {
            assert!(
                !pages.contains(secret),
                "a secret ({}…) is in the HTML",
                &secret[..3]
            );
        }
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn revoking_the_key_ends_its_sessions(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let res = app
        .post_as(
            ADMIN_KEY,
            &format!("/v1/partners/{}/api_keys", app.partner_id),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let issued: Value = res.json().await.unwrap();
    let key = issued["api_key"].as_str().unwrap();

    let mut d = Dash::new(&app);
    d.sign_in(key).await;
    let (status, _, _) = d.get("/dashboard/migrations").await;
    assert_eq!(status, StatusCode::OK);

    let res = app
        .http
        .delete(app.url(&format!(
            "/v1/partners/{}/api_keys/{}",
            app.partner_id,
            issued["id"].as_str().unwrap()
        )))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let (status, headers, _) = d.get("/dashboard/migrations").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[LOCATION], "/dashboard/login");

    // A session of another, unrevoked key of the same partner is unaffected.
    let mut other = Dash::new(&app);
    other.sign_in(&app.partner_key).await;
    assert_eq!(other.get("/dashboard").await.0, StatusCode::OK);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_failed_migration_shows_its_remediation_and_retry_resumes_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550704";
    app.faults(json!([
        { "endpoint": "start_migration", "phone_number": phone, "fault": "server_error", "times": 1000 }
    ]))
    .await;
    let id = app.create(phone).await;
    let failed = app.wait_for(&id, "failed").await;
    assert_eq!(failed["error"]["code"], "upstream_unavailable");

    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;
    let (_, _, overview) = d.get("/dashboard").await;
    let (_, remediation, _, _) = ErrorCode::UpstreamUnavailable.describe();
    assert!(overview.contains("upstream_unavailable"));
    assert!(overview.contains(remediation));
    let (_, _, list) = d.get("/dashboard/migrations?state=failed").await;
    assert!(list.contains(phone));
    let (_, _, page) = d.get(&format!("/dashboard/migrations/{id}")).await;
    assert!(page.contains(remediation));
    assert!(page.contains("HTTP status"));

    let res = app
        .http
        .delete(format!("{}/_sandbox/faults", app.sandbox_url))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let csrf = d.csrf.clone();
    let (status, headers, _) = d
        .post(
            &format!("/dashboard/migrations/{id}/retry"),
            &[("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[LOCATION],
        format!("/dashboard/migrations/{id}?done=retry")
    );
    app.wait_for(&id, "awaiting_otp").await;
    // Retrying again is refused with the reason, not a crash.
    let (status, _, body) = d
        .post(
            &format!("/dashboard/migrations/{id}/retry"),
            &[("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.contains("Cannot retry"), "{body}");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_overview_lists_migrations_stuck_longer_than_the_threshold(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (old, fresh) = ("+14155550705", "+14155550706");
    let old_id = app.create(old).await;
    let fresh_id = app.create(fresh).await;
    app.wait_for(&old_id, "awaiting_otp").await;
    app.wait_for(&fresh_id, "awaiting_otp").await;
    // The default threshold is 30 minutes: pretend one has waited 31.
    sqlx::query(
        "UPDATE migrations SET state_entered_at = now() - interval '31 minutes' WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&old_id).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;
    let (_, _, html) = d.get("/dashboard").await;
    let stuck = html
        .split("id=\"h-stuck\"")
        .nth(1)
        .and_then(|s| s.split("id=\"h-fail\"").next())
        .unwrap();
    assert!(stuck.contains("more than 30 min (1)"), "{stuck}");
    assert!(stuck.contains(old), "{stuck}");
    assert!(stuck.contains("31 min"), "{stuck}");
    assert!(stuck.contains("the partner to submit the code"), "{stuck}");
    assert!(!stuck.contains(fresh), "{stuck}");
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_list_filters_by_number_and_date_and_pages_by_keyset(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut phones = Vec::new();
    for i in 0..26 {
        let phone = format!("+1415555{:04}", 1100 + i);
        app.create(&phone).await;
        phones.push(phone);
    }
    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;

    let (_, _, first) = d.get("/dashboard/migrations").await;
    let rows = |html: &str| phones.iter().filter(|p| html.contains(p.as_str())).count();
    assert_eq!(rows(&first), 25);
    assert!(first.contains(phones.last().unwrap()), "newest first");
    let next = regex::Regex::new(r#"href="(/dashboard/migrations\?cursor=[^"]+)" rel="next""#)
        .unwrap()
        .captures(&first)
        .expect("a next-page link")[1]
        .replace("&amp;", "&");
    let (status, _, second) = d.get(&next).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&second), 1);
    assert!(second.contains(&phones[0]));
    assert!(!second.contains("rel=\"next\""));

    let (_, _, one) = d.get("/dashboard/migrations?phone=5551107").await;
    assert_eq!(rows(&one), 1);
    assert!(one.contains("+14155551107"));

    // Day bounds are inclusive and in UTC (a day either side keeps this true at midnight).
    let today = chrono::Utc::now().date_naive();
    let (yesterday, tomorrow) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let (_, _, around_today) = d
        .get(&format!(
            "/dashboard/migrations?from={yesterday}&to={tomorrow}"
        ))
        .await;
    assert_eq!(rows(&around_today), 25);
    let day_after = tomorrow.succ_opt().unwrap();
    let (_, _, none) = d
        .get(&format!("/dashboard/migrations?from={day_after}"))
        .await;
    assert_eq!(rows(&none), 0);
    let before = yesterday.pred_opt().unwrap();
    let (_, _, none) = d.get(&format!("/dashboard/migrations?to={before}")).await;
    assert_eq!(rows(&none), 0);
    let (status, _, _) = d.get("/dashboard/migrations?from=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The resend action and "Resend available" appear exactly when `POST …/otp/resend` would be
/// accepted: while a code is awaited, not once the migration completed (nor failed).
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn resend_is_offered_only_while_a_code_is_awaited(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let resend_marks = ["Resend available", "Resend code", "/resend\""];
    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;

    let id = app.create("+14155550721").await;
    app.wait_for(&id, "awaiting_otp").await;
    let (status, _, page) = d.get(&format!("/dashboard/migrations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    for mark in resend_marks {
        assert!(page.contains(mark), "awaiting_otp page lacks {mark:?}");
    }

    app.complete(&id).await;
    let (status, _, page) = d.get(&format!("/dashboard/migrations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Finished: "), "{page}");
    for mark in resend_marks {
        assert!(!page.contains(mark), "completed page shows {mark:?}");
    }
    // The API agrees: no resend for a completed migration.
    let res = app
        .post(&format!("/v1/migrations/{id}/otp/resend"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);

    // Nor for a failed one (…0001: two-step verification still on).
    let failed = app.create("+14155550001").await;
    app.wait_for(&failed, "failed").await;
    let (_, _, page) = d.get(&format!("/dashboard/migrations/{failed}")).await;
    assert!(page.contains("Retry from the failed step"), "{page}");
    for mark in resend_marks {
        assert!(!page.contains(mark), "failed page shows {mark:?}");
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_detail_page_says_what_a_parked_migration_waits_for(pool: PgPool) {
    let mut opts = crate::helpers::Options::default();
    opts.worker.retry.channel_timeout = std::time::Duration::from_secs(120);
    let app = TestApp::spawn_with(pool, opts).await;
    // Scenario 0020: parked in `awaiting_channel` until the client grants key permission.
    let id = app.create("+14155550020").await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    let m = app
        .wait_until(&id, |m| {
            m["waiting_for"]["code"] == "api_key_permission_missing"
        })
        .await;
    let w = &m["waiting_for"];
    let deadline: chrono::DateTime<chrono::Utc> = w["deadline"].as_str().unwrap().parse().unwrap();

    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;
    let (status, _, page) = d.get(&format!("/dashboard/migrations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("api_key_permission_missing"), "{page}");
    assert!(page.contains(w["message"].as_str().unwrap()), "{page}");
    assert!(page.contains(w["remediation"].as_str().unwrap()), "{page}");
    assert!(page.contains("the client (owner of the number)"), "{page}");
    assert!(
        page.contains(&deadline.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        "{page}"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn failed_sign_ins_count_against_the_address_like_api_keys(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        Options {
            auth: AuthConfig {
                failure_limit: Some((1, 2)),
                trusted_proxies: Vec::new(),
            },
            ..Options::default()
        },
    )
    .await;
    let mut d = Dash::new(&app);
    for i in 0..2 {
        d.get("/dashboard/login").await;
        let csrf = d.csrf.clone();
        let key = format!("wm_guess_{i}");
        let (status, _, _) = d
            .post("/dashboard/login", &[("key", &key), ("csrf", &csrf)], &[])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    d.get("/dashboard/login").await;
    let csrf = d.csrf.clone();
    let (status, headers, body) = d
        .post(
            "/dashboard/login",
            &[("key", "wm_guess_2"), ("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("Too many invalid keys"), "{body}");
    // The API shares the address's budget…
    let res = app.get_as("wm_guess_api", "/v1/migrations").await;
    assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "too_many_auth_failures").await;
    // …and the admin key still signs in.
    d.sign_in(ADMIN_KEY).await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_detail_page_shows_the_client_link_and_replaces_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;
    let id = app.create("+14155550731").await;
    app.wait_for(&id, "awaiting_otp").await;
    let old = app.migration(&id).await["client_page"]["url"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = format!("/dashboard/migrations/{id}");
    let (status, _, page) = d.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    let state = |page: &str| {
        let from = page
            .find(r#"id="client-page-state""#)
            .expect("the link's state");
        let to = from + page[from..].find("</dl>").unwrap();
        page[from..to].to_owned()
    };
    assert!(state(&page).contains("not yet"), "not opened yet: {page}");
    // The state, never the link.
    assert!(
        !page.contains(old.rsplit('/').next().unwrap()),
        "the link is on the page"
    );

    // The client opens it: the dashboard says when.
    assert_eq!(reqwest::get(&old).await.unwrap().status(), StatusCode::OK);
    let (_, _, page) = d.get(&path).await;
    assert!(!state(&page).contains("not yet"), "{page}");

    let csrf = d.csrf.clone();
    let (status, headers, body) = d
        .post(
            &format!("{path}/client_page/rotate"),
            &[("csrf", &csrf)],
            &[("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers[LOCATION], format!("{path}?done=rotate_link"));
    let new = app.migration(&id).await["client_page"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert_eq!(
        reqwest::get(&old).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(reqwest::get(&new).await.unwrap().status(), StatusCode::OK);
    let (_, _, page) = d.get(&format!("{path}?done=rotate_link")).await;
    assert!(page.contains("The client page link was replaced"), "{page}");
    assert_eq!(
        app.event_count(&id, Some("migration.client_page_rotated"))
            .await,
        1
    );
}
