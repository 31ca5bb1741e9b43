//! The support dashboard in a real browser: headless Chromium (`/usr/bin/chromium`) driven
//! through `chromedriver` (WebDriver) with fantoccini, against the service spawned in-process
//! on a fresh database.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run` installs them); the
//! test fails, saying so, when either is missing. `CHROMIUM` and `CHROMEDRIVER` override the
//! paths. Screenshots go to `target/dashboard-screenshots/` (`$CARGO_TARGET_DIR` when set).

mod browser;
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::path::PathBuf;
use std::time::Duration;

use browser::{Browser, click, text_of, wait_text};
use fantoccini::{Client, Locator};
use helpers::TestApp;
use serde_json::{Value, json};
use sqlx::PgPool;
use waba_migrator::domain::ErrorCode;

fn screenshots() -> PathBuf {
    browser::screenshot_dir("dashboard", None)
}

async fn sign_in(c: &Client, app: &TestApp, key: &str) {
    c.goto(&app.url("/dashboard")).await.unwrap();
    // No session: the dashboard sends the browser to the sign-in page.
    assert_eq!(c.current_url().await.unwrap().path(), "/dashboard/login");
    c.find(Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    click(c, "form.signin button[type=submit]").await;
    wait_text(c, "h1", |t| t == "Overview").await;
}

/// A page on another origin with a form that posts to the dashboard: what a forger would
/// host. Returns its URL.
async fn forger(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let page = format!(
        "<!doctype html><title>win a prize</title><form method=post action=\"{target}\">\
         <button id=go type=submit>Claim</button></form>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(page) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn support_finds_a_failed_migration_retries_it_and_stays_in_its_tenant(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let failing = "+14155550801";
    let waiting = "+14155550802";
    app.faults(json!([
        { "endpoint": "start_migration", "phone_number": failing, "fault": "server_error", "times": 1000 }
    ]))
    .await;
    let failed_id = app.create(failing).await;
    let waiting_id = app.create(waiting).await;
    let (_, other_key) = app.other_partner().await;
    let others = "+14155550803";
    let res = app
        .post_as(&other_key, "/v1/migrations", TestApp::create_body(others))
        .await;
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    app.wait_for(&failed_id, "failed").await;
    app.wait_for(&waiting_id, "awaiting_otp").await;

    let browser = Browser::start().await;
    let c = &browser.client;

    // Sign in with the partner key; the overview shows the failure and its remediation.
    sign_in(c, &app, &app.partner_key).await;
    let (_, remediation, _, _) = ErrorCode::UpstreamUnavailable.describe();
    let failures = wait_text(c, "#h-fail + table", |t| t.contains("upstream_unavailable")).await;
    assert!(failures.contains(remediation), "{failures}");
    let svg = c.find(Locator::Css("svg.chart")).await.unwrap();
    let failed_bars = svg.find_all(Locator::Css("rect.bar-failed")).await.unwrap();
    assert_eq!(failed_bars.len(), 12, "one failed bar per 5 minutes");
    browser.save_screenshot(&screenshots(), "overview").await;

    // Filter the list to failed migrations.
    c.find(Locator::LinkText("Migrations"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "h1", |t| t == "Migrations").await;
    c.find(Locator::Css("#f-state"))
        .await
        .unwrap()
        .select_by_value("failed")
        .await
        .unwrap();
    click(c, "form.filters button[type=submit]").await;
    // The unfiltered list already shows `failing`: wait for the filtered page to load first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !c
        .current_url()
        .await
        .is_ok_and(|u| u.query().is_some_and(|q| q.contains("state=failed")))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the filter never submitted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table = wait_text(c, "#migrations", |t| t.contains(failing)).await;
    assert!(!table.contains(waiting), "{table}");
    assert!(!table.contains(others), "{table}");
    assert!(
        c.current_url()
            .await
            .unwrap()
            .query()
            .unwrap()
            .contains("state=failed")
    );

    // Open it and read what to do.
    c.find(Locator::LinkText(failing))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = wait_text(c, ".remediation", |t| !t.is_empty()).await;
    assert!(shown.contains(remediation), "{shown}");
    let error = text_of(c, ".error-box").await;
    assert!(
        error.contains("upstream_unavailable") && error.contains("500"),
        "{error}"
    );
    let h1 = text_of(c, "h1").await;
    assert!(h1.contains("failed"), "{h1}");
    browser.save_screenshot(&screenshots(), "detail").await;

    // The cause is gone; press retry and watch the migration move.
    let res = app
        .http
        .delete(format!("{}/_sandbox/faults", app.sandbox_url))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    click(c, "#retry").await;
    wait_text(c, "p.notice", |t| t.starts_with("Retried")).await;
    let h1 = text_of(c, "h1").await;
    assert!(!h1.contains("failed"), "{h1}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let h1 = text_of(c, "h1").await;
        if h1.contains("awaiting_otp") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{h1}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.refresh().await.unwrap();
    }
    let timeline = text_of(c, "ol.timeline").await;
    assert!(timeline.contains("failed → initiating"), "{timeline}");
    assert_eq!(app.migration(&failed_id).await["state"], "awaiting_otp");

    // A forged POST from another origin (the session cookie is sent: same site, other port)
    // is refused, and nothing changes.
    let forged = forger(app.url(&format!("/dashboard/migrations/{waiting_id}/cancel"))).await;
    c.goto(&forged).await.unwrap();
    click(c, "#go").await;
    wait_text(c, "h1", |t| t.starts_with("Refused")).await;
    assert_eq!(app.migration(&waiting_id).await["state"], "awaiting_otp");

    // Another partner's key sees none of this partner's migrations.
    c.goto(&app.url("/dashboard")).await.unwrap();
    click(c, "header.top form button").await;
    wait_text(c, "h1", |t| t == "Sign in").await;
    sign_in(c, &app, &other_key).await;
    c.goto(&app.url("/dashboard/migrations")).await.unwrap();
    let table = wait_text(c, "#migrations", |t| t.contains(others)).await;
    assert!(
        !table.contains(failing) && !table.contains(waiting),
        "{table}"
    );
    c.goto(&app.url(&format!("/dashboard/migrations/{failed_id}")))
        .await
        .unwrap();
    wait_text(c, "h1", |t| t.starts_with("Not found")).await;
    let source = c.source().await.unwrap();
    assert!(!source.contains(failing));

    let mine: Value = app.migration(&failed_id).await;
    assert_eq!(mine["state"], "awaiting_otp");
    browser.client.clone().close().await.unwrap();
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn support_uploads_a_batch_watches_its_progress_reads_the_report_and_cancels_it(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let numbers = ["+14155550941", "+14155550942", "+14155550943"];
    let mut csv =
        "phone_number,source_waba_id,destination_waba_id,meta_business_id,reference\n".to_owned();
    for (i, n) in numbers.iter().enumerate() {
        csv.push_str(&format!(
            "{n},{},{},{},store-{}\n",
            helpers::SOURCE_WABA,
            helpers::DEST_WABA,
            helpers::BUSINESS,
            i + 1
        ));
    }
    let file = std::env::temp_dir().join(format!("wm-batch-{}.csv", uuid::Uuid::new_v4()));
    std::fs::write(&file, &csv).unwrap();

    let browser = Browser::start().await;
    let c = &browser.client;
    sign_in(c, &app, &app.partner_key).await;

    // Batches, from the nav; upload the file through the real form.
    c.find(Locator::LinkText("Batches"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "h1", |t| t == "Batches").await;
    c.find(Locator::Css("#u-file"))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    c.find(Locator::Css("#u-name"))
        .await
        .unwrap()
        .send_keys("Browser batch")
        .await
        .unwrap();
    click(c, "#upload-submit").await;

    // Its progress page. The file is removed only now: the browser reads it while it submits
    // the form, after the click returned (removing it at once failed the upload now and then).
    wait_text(c, "p.notice", |t| t.starts_with("Batch created")).await;
    std::fs::remove_file(&file).unwrap();
    let h1 = text_of(c, "h1").await;
    assert!(
        h1.starts_with("Batch Browser batch") && h1.contains("active"),
        "{h1}"
    );
    let url = c.current_url().await.unwrap();
    let id = url
        .path()
        .trim_start_matches("/dashboard/batches/")
        .to_owned();
    let batch: Value = app
        .get(&format!("/v1/batches/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(batch["total"], 3, "{batch:#}");
    assert_eq!(batch["name"], "Browser batch");
    let table = wait_text(c, "#batch-migrations", |t| !t.is_empty()).await;
    for n in numbers {
        assert!(table.contains(n), "{table}");
    }
    assert!(table.contains("store-3"), "{table}");

    // Once every migration waits for its code, the counts say so.
    for m in app.all_pages(&format!("/v1/batches/{id}/migrations")).await {
        app.wait_for(m["id"].as_str().unwrap(), "awaiting_otp")
            .await;
    }
    c.goto(&app.url(&format!("/dashboard/batches/{id}")))
        .await
        .unwrap();
    let counts = wait_text(c, "#by-state", |t| t.contains("awaiting_otp")).await;
    assert!(counts.contains('3'), "{counts}");
    let progress = text_of(c, "#progress-text").await;
    assert!(progress.contains("0 of 3"), "{progress}");
    browser.save_screenshot(&screenshots(), "batch").await;

    // The report link, with the browser's session: the API's CSV.
    let href = c
        .find(Locator::Css("a#report"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(href, format!("/dashboard/batches/{id}/report.csv"));
    let session = c
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name() == waba_migrator::dashboard::SESSION_COOKIE)
        .expect("the session cookie");
    let res = app
        .http
        .get(app.url(&href))
        .header("cookie", format!("{}={}", session.name(), session.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let report = res.text().await.unwrap();
    assert_eq!(
        report.lines().next().unwrap(),
        "\u{feff}reference,phone_number,migration_id,state,error_code,actor,remediation,\
         templates_migrated,templates_failed,templates_skipped,api_key_ready"
    );
    assert_eq!(report.lines().count(), 4, "{report}");

    // Cancel it: open the confirmation, then press the button. (Loaded afresh so that the
    // page's own refresh cannot close the confirmation in between.)
    c.goto(&app.url(&format!("/dashboard/batches/{id}")))
        .await
        .unwrap();
    click(c, "#cancel-open").await;
    click(c, "#cancel-batch").await;
    wait_text(c, "p.notice", |t| t.starts_with("Cancelled")).await;
    let h1 = text_of(c, "h1").await;
    assert!(h1.contains("cancelled"), "{h1}");
    let batch: Value = app
        .get(&format!("/v1/batches/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(batch["state"], "cancelled");
    assert_eq!(batch["counts_by_state"]["cancelled"], 3, "{batch:#}");
    c.find(Locator::LinkText("← All batches"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let list = wait_text(c, "#batches", |t| t.contains("Browser batch")).await;
    assert!(list.contains("cancelled"), "{list}");
    browser.save_screenshot(&screenshots(), "batches").await;
    browser.client.clone().close().await.unwrap();
}
