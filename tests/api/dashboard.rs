//! `/dashboard` over plain HTTP (no browser): sessions and their cookie, CSRF, tenant
//! isolation, secrets kept out of the HTML, revocation. `tests/dashboard.rs` drives it in
//! headless Chromium.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use sqlx::PgPool;
use waba_migrator::domain::ErrorCode;

use crate::helpers::{
    ADMIN_KEY, BUSINESS, DEST_WABA, Options, SOURCE_WABA, TestApp, assert_problem,
};

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

    /// Posts the batch upload form (`multipart/form-data`): `fields` and a CSV file.
    async fn upload(
        &mut self,
        fields: &[(&str, &str)],
        csv: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let boundary = "wm-test-boundary-7c4d9a8e";
        let mut body = String::new();
        for (k, v) in fields {
            body.push_str(&format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
            ));
        }
        body.push_str(&format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"numbers.csv\"\r\n\
             content-type: text/csv\r\n\r\n{csv}\r\n--{boundary}--\r\n"
        ));
        let mut req = self
            .http
            .post(format!("{}/dashboard/batches", self.base))
            .header("cookie", self.cookie_header())
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
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
    let app = TestApp::spawn_with(pool, Options::auth_failures_limited(2)).await;
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
    // …and so does the admin key: from a blocked address, a right guess at it is refused too.
    d.get("/dashboard/login").await;
    let csrf = d.csrf.clone();
    let (status, _, body) = d
        .post(
            "/dashboard/login",
            &[("key", ADMIN_KEY), ("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
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

    // The client opens it in a browser: the dashboard says when.
    let opened = app
        .http
        .get(&old)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
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

/// A CSV of `numbers`, each with a reference `store-<n>`.
fn batch_csv(numbers: &[&str]) -> String {
    let mut csv =
        "phone_number,source_waba_id,destination_waba_id,meta_business_id,reference\n".to_owned();
    for (i, n) in numbers.iter().enumerate() {
        csv.push_str(&format!(
            "{n},{SOURCE_WABA},{DEST_WABA},{BUSINESS},store-{}\n",
            i + 1
        ));
    }
    csv
}

/// Creates a batch of `numbers` through the API as `key`; returns its id.
async fn api_batch(app: &TestApp, key: &str, name: &str, numbers: &[&str]) -> String {
    let res = app
        .http
        .post(app.url(&format!("/v1/batches?name={name}")))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(batch_csv(numbers))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    body["batch"]["id"].as_str().unwrap().to_owned()
}

async fn count_rows(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn batch_pages_render_for_the_owner_and_are_not_found_for_another_partner(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let numbers = ["+14155550911", "+14155550912"];
    let id = api_batch(&app, &app.partner_key, "Acme-December", &numbers).await;
    let (_, other_key) = app.other_partner().await;

    let mut owner = Dash::new(&app);
    owner.sign_in(&app.partner_key).await;
    let (status, _, list) = owner.get("/dashboard/batches").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.contains(r#"href="/dashboard/batches""#),
        "nav links the batches"
    );
    assert!(list.contains("Acme-December") && list.contains(&format!("/dashboard/batches/{id}")));
    assert!(list.contains("0 / 2"), "finished / total");

    let (status, _, page) = owner.get(&format!("/dashboard/batches/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let migrations = app.all_pages(&format!("/v1/batches/{id}/migrations")).await;
    assert_eq!(migrations.len(), 2);
    for m in &migrations {
        let mid = m["id"].as_str().unwrap();
        assert!(
            page.contains(&format!("/dashboard/migrations/{mid}")),
            "links each migration"
        );
    }
    for n in numbers {
        assert!(page.contains(n));
    }
    assert!(
        page.contains("store-1") && page.contains("store-2"),
        "references"
    );
    // Counts by state (both queued: no worker), the progress and the report link.
    let by_state = regex::Regex::new(r#"<span class="n">2</span><span class="state run"><span aria-hidden="true">▶ </span>queued</span>"#).unwrap();
    assert!(by_state.is_match(&page), "{page}");
    assert!(page.contains("0 of 2"));
    assert!(page.contains(&format!("/dashboard/batches/{id}/report.csv")));
    assert!(
        page.contains(r#"http-equiv="refresh""#),
        "a running batch's page refreshes itself"
    );
    assert!(!page.contains("<script"));
    // Filtered by state: none failed.
    let (status, _, failed_only) = owner
        .get(&format!("/dashboard/batches/{id}?state=failed"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!failed_only.contains(numbers[0]));

    // The report: the API's bytes.
    let res = owner
        .http
        .get(app.url(&format!("/dashboard/batches/{id}/report.csv")))
        .header("cookie", owner.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let mine = res.text().await.unwrap();
    let api = app
        .get(&format!("/v1/batches/{id}/report.csv"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(mine, api);
    assert!(
        mine.starts_with("\u{feff}reference,phone_number,migration_id,state,"),
        "{mine}"
    );

    // The migration page links its batch.
    let mid = migrations[0]["id"].as_str().unwrap();
    let (_, _, detail) = owner.get(&format!("/dashboard/migrations/{mid}")).await;
    assert!(detail.contains(&format!(r#"href="/dashboard/batches/{id}""#)));

    // Another partner: not in its list, and a 404 everywhere.
    let mut other = Dash::new(&app);
    other.sign_in(&other_key).await;
    let (status, _, list) = other.get("/dashboard/batches").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!list.contains("Acme-December"));
    for path in [
        format!("/dashboard/batches/{id}"),
        format!("/dashboard/batches/{id}/report.csv"),
    ] {
        let (status, _, body) = other.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!body.contains(numbers[0]) && !body.contains("Acme-December"));
    }
    let csrf = other.csrf.clone();
    for action in ["cancel", "retry_failed"] {
        let (status, _, _) = other
            .post(
                &format!("/dashboard/batches/{id}/{action}"),
                &[("csrf", &csrf)],
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{action}");
    }
    let b: Value = app
        .get(&format!("/v1/batches/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["state"], "active");

    // The admin sees it, with its partner.
    let mut admin = Dash::new(&app);
    admin.sign_in(ADMIN_KEY).await;
    let (status, _, page) = admin.get(&format!("/dashboard/batches/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Test partner") && page.contains(numbers[0]));
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn a_csv_upload_is_checked_like_the_api_and_creates_nothing_when_a_row_is_invalid(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;
    d.get("/dashboard/batches").await;
    let csrf = d.csrf.clone();
    let bad = format!(
        "phone_number,source_waba_id,destination_waba_id,meta_business_id,otp_method\n\
         +14155550921,{SOURCE_WABA},{DEST_WABA},{BUSINESS},sms\n\
         +14155550922,{SOURCE_WABA},{DEST_WABA},{BUSINESS},fax\n\
         +1415,{SOURCE_WABA},{DEST_WABA},{BUSINESS},\n"
    );
    let (status, _, page) = d
        .upload(&[("csrf", &csrf), ("name", "Bad file")], &bad, &[])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    // One line per problem: row (the header is row 1), column and message, as the API says.
    let api = app
        .http
        .post(app.url("/v1/batches?name=Bad%20file"))
        .bearer_auth(&app.partner_key)
        .header("content-type", "text/csv")
        .body(bad.clone())
        .send()
        .await
        .unwrap();
    let problem = assert_problem(api, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{problem:#}");
    let rows = regex::Regex::new(
        r#"<tr><td class="num">(\d+)</td><td><code>([a-z_]+)</code></td><td>([^<]+)</td></tr>"#,
    )
    .unwrap();
    let shown: Vec<(String, String, String)> = rows
        .captures_iter(&page)
        .map(|c| (c[1].to_owned(), c[2].to_owned(), c[3].to_owned()))
        .collect();
    let expected: Vec<(String, String, String)> = errors
        .iter()
        .map(|e| {
            (
                e["row"].to_string(),
                e["column"].as_str().unwrap().to_owned(),
                // maud escapes what the message holds.
                e["message"]
                    .as_str()
                    .unwrap()
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&quot;"),
            )
        })
        .collect();
    assert_eq!(shown, expected, "{page}");
    assert_eq!(shown[0].0, "3");
    assert_eq!(shown[0].1, "otp_method");
    assert_eq!(shown[1].0, "4");
    assert_eq!(shown[1].1, "phone_number");
    assert!(
        page.contains(r#"value="Bad file""#),
        "the form keeps what was typed"
    );
    assert_eq!(count_rows(&app, "batches").await, 0);
    assert_eq!(count_rows(&app, "migrations").await, 0);

    // A form field the API takes as a query parameter is checked the same way.
    let good = batch_csv(&["+14155550923", "+14155550924"]);
    let (status, _, page) = d
        .upload(&[("csrf", &csrf), ("max_in_flight", "5000")], &good, &[])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("max_in_flight") && page.contains("1 to 1000"),
        "{page}"
    );

    // Without the CSRF token, or from another site: refused, nothing created.
    let (status, _, _) = d.upload(&[("name", "Forged")], &good, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = d
        .upload(
            &[("csrf", &csrf)],
            &good,
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(count_rows(&app, "batches").await, 0);

    // A valid file: created, then its page.
    let (status, headers, body) = d
        .upload(
            &[
                ("csrf", &csrf),
                ("name", "Good file"),
                ("max_in_flight", "7"),
            ],
            &good,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let location = headers[LOCATION].to_str().unwrap().to_owned();
    let page: Vec<Value> = app.all_pages("/v1/batches").await;
    assert_eq!(page.len(), 1);
    let id = page[0]["id"].as_str().unwrap();
    assert_eq!(page[0]["name"], "Good file");
    assert_eq!(page[0]["max_in_flight"], 7);
    assert_eq!(page[0]["total"], 2);
    assert_eq!(page[0]["partner_id"], app.partner_id.as_str());
    assert_eq!(location, format!("/dashboard/batches/{id}?done=created"));
    let (status, _, shown) = d.get(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown.contains("Batch created") && shown.contains("+14155550923"));

    // The same numbers again: valid rows, but all busy: no batch, and the form says which
    // rows and why.
    let (status, _, shown) = d.upload(&[("csrf", &csrf)], &good, &[]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{shown}");
    assert!(
        shown.contains("all 2 numbers in it are busy or already migrated"),
        "{shown}"
    );
    for (row, number) in [(2, "+14155550923"), (3, "+14155550924")] {
        assert!(
            shown.contains(&format!("<td class=\"num\">{row}</td>"))
                && shown.contains(&format!("{number}: ")),
            "row {row}: {shown}"
        );
    }
    assert!(shown.contains("(migration_already_active)"), "{shown}");
    assert_eq!(count_rows(&app, "batches").await, 1);

    // The admin picks the partner.
    let mut admin = Dash::new(&app);
    admin.sign_in(ADMIN_KEY).await;
    admin.get("/dashboard/batches").await;
    let csrf = admin.csrf.clone();
    let other = batch_csv(&["+14155550925"]);
    let (status, _, page) = admin.upload(&[("csrf", &csrf)], &other, &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("choose the partner"));
    let (status, _, _) = admin
        .upload(
            &[
                ("csrf", &csrf),
                ("partner_id", &app.partner_id),
                ("name", "By admin"),
            ],
            &other,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let mine = app.all_pages("/v1/batches").await;
    assert!(
        mine.iter().any(|b| b["name"] == "By admin"),
        "the partner owns it"
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn batch_retry_failed_and_cancel_buttons_need_the_csrf_token_and_work(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let failing = "+14155550931";
    let waiting = "+14155550932";
    app.faults(json!([
        { "endpoint": "start_migration", "phone_number": failing, "fault": "server_error", "times": 1000 }
    ]))
    .await;
    let id = api_batch(&app, &app.partner_key, "Retry-me", &[failing, waiting]).await;
    let migrations = app.all_pages(&format!("/v1/batches/{id}/migrations")).await;
    let mid = |n: &str| {
        migrations.iter().find(|m| m["phone_number"] == n).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (failed_id, waiting_id) = (mid(failing), mid(waiting));
    app.wait_for(&failed_id, "failed").await;
    app.wait_for(&waiting_id, "awaiting_otp").await;

    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;
    let (_, _, page) = d.get(&format!("/dashboard/batches/{id}")).await;
    assert!(
        page.contains("upstream_unavailable"),
        "counts by error code"
    );
    assert!(page.contains(r#"id="retry-failed""#) && page.contains(r#"id="cancel-batch""#));
    let csrf = d.csrf.clone();
    let retry = format!("/dashboard/batches/{id}/retry_failed");
    let cancel = format!("/dashboard/batches/{id}/cancel");

    for path in [&retry, &cancel] {
        let (status, _, _) = d.post(path, &[], &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _, _) = d.post(path, &[("csrf", "forged")], &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _, _) = d
            .post(
                path,
                &[("csrf", &csrf)],
                &[("sec-fetch-site", "cross-site")],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(app.migration(&failed_id).await["state"], "failed");
    assert_eq!(app.migration(&waiting_id).await["state"], "awaiting_otp");

    let res = app
        .http
        .delete(format!("{}/_sandbox/faults", app.sandbox_url))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let (status, headers, _) = d.post(&retry, &[("csrf", &csrf)], &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[LOCATION],
        format!("/dashboard/batches/{id}?done=retry&retried=1&skipped=0")
    );
    app.wait_for(&failed_id, "awaiting_otp").await;
    let (_, _, page) = d.get(headers[LOCATION].to_str().unwrap()).await;
    assert!(page.contains("Retried 1 failed"), "{page}");

    let (status, headers, _) = d.post(&cancel, &[("csrf", &csrf)], &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[LOCATION],
        format!("/dashboard/batches/{id}?done=cancel")
    );
    let b: Value = app
        .get(&format!("/v1/batches/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["state"], "cancelled");
    assert_eq!(app.migration(&failed_id).await["state"], "cancelled");
    assert_eq!(app.migration(&waiting_id).await["state"], "cancelled");
    let (_, _, page) = d.get(&format!("/dashboard/batches/{id}")).await;
    assert!(
        !page.contains(r#"http-equiv="refresh""#),
        "a cancelled batch stays still"
    );
    assert!(!page.contains(r#"id="cancel-batch""#));
}

/// The upload form names its rendering (`upload_id`, the upload's Idempotency-Key): sent twice
/// (a double click, a reload of the POST) it creates one batch, and the second answer leads to
/// it; a form rendered again is a new upload.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_upload_sent_twice_creates_one_batch(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let mut d = Dash::new(&app);
    d.sign_in(&app.partner_key).await;
    let (_, _, list) = d.get("/dashboard/batches").await;
    let id_of = |html: &str| {
        regex::Regex::new(r#"name="upload_id" value="([0-9a-f]{32})""#)
            .unwrap()
            .captures(html)
            .expect("an upload_id in the form")[1]
            .to_owned()
    };
    let upload_id = id_of(&list);
    let csrf = d.csrf.clone();
    let good = batch_csv(&["+14155550931", "+14155550932"]);
    let fields = [
        ("csrf", csrf.as_str()),
        ("name", "Twice"),
        ("upload_id", upload_id.as_str()),
    ];
    let (status, headers, body) = d.upload(&fields, &good, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let first = headers[LOCATION].to_str().unwrap().to_owned();
    let (status, headers, body) = d.upload(&fields, &good, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let again = headers[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(
        again,
        first.replace("done=created", "done=created_before"),
        "the same batch"
    );
    assert_eq!(count_rows(&app, "batches").await, 1);
    assert_eq!(count_rows(&app, "migrations").await, 2);
    let (_, _, shown) = d.get(&again).await;
    assert!(shown.contains("sent twice"), "{shown}");

    let (_, _, list) = d.get("/dashboard/batches").await;
    let second = id_of(&list);
    assert_ne!(second, upload_id, "each rendering is a new upload");

    // A form whose file has a busy number, sent twice: the repeat shows the rows not added
    // again, from the stored answer.
    let mixed = batch_csv(&["+14155550931", "+14155550933"]);
    let fields = [("csrf", csrf.as_str()), ("upload_id", second.as_str())];
    let (status, _, first_page) = d.upload(&fields, &mixed, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{first_page}");
    let (status, _, again_page) = d.upload(&fields, &mixed, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{again_page}");
    assert!(again_page.contains("sent twice"), "{again_page}");
    assert!(
        again_page.contains("migration_already_active") && again_page.contains("+14155550931"),
        "{again_page}"
    );
    assert_eq!(count_rows(&app, "batches").await, 2);
    assert_eq!(count_rows(&app, "migrations").await, 3);
    // The same form with another file: said plainly, nothing created.
    let other = batch_csv(&["+14155550934"]);
    let (status, _, page) = d.upload(&fields, &other, &[]).await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert!(
        page.contains("already used to upload another file"),
        "{page}"
    );
    assert_eq!(count_rows(&app, "batches").await, 2);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn an_admin_session_keeps_no_hash_to_test_admin_key_guesses_against(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut d = Dash::new(&app);
    d.sign_in(ADMIN_KEY).await;
    let (status, _, body) = d.get("/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("Admin"), "{body}");

    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT key_hash FROM dashboard_sessions WHERE partner_id IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_ne!(
        stored,
        waba_migrator::crypto::hash_api_key(ADMIN_KEY).to_vec(),
        "an unsalted hash of an operator-chosen key"
    );
    assert_eq!(stored.len(), 32);
}
