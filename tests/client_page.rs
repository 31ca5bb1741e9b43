//! The end client's page in a real browser: headless Chromium at phone size (360 × 740)
//! through chromedriver, against the service spawned in-process on a fresh database, with its
//! script polling for changes as a client's phone would.
//!
//! The screenshots of the main screens go to `target/client-page-screenshots/`, or to
//! `docs/client-page/` (the ones the README shows) with `UPDATE_SCREENSHOTS=1`.

mod browser;
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::path::PathBuf;

use browser::{Browser, wait_text};
use fantoccini::{Client, Locator};
use helpers::{ADMIN_KEY, TestApp};
use serde_json::{Value, json};
use sqlx::PgPool;

fn screenshots() -> PathBuf {
    browser::screenshot_dir("client-page", Some("docs/client-page"))
}

async fn page_link(app: &TestApp, id: &str) -> String {
    app.migration(id).await["client_page"]["url"]
        .as_str()
        .expect("a client page link")
        .to_owned()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
        .click()
        .await
        .unwrap();
}

async fn type_code(c: &Client, code: &str) {
    let input = c.find(Locator::Css("#code")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(code).await.unwrap();
    click(c, "form.code button[type=submit]").await;
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_client_enters_its_code_on_a_phone(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create("+5511987653001").await;
    app.wait_for(&id, "awaiting_otp").await;
    let url = page_link(&app, &id).await;

    let browser = Browser::start_sized(360, 740).await;
    let c = &browser.client;
    c.goto(&url).await.unwrap();
    wait_text(c, "#now-title", |t| t == "Type the code you received").await;
    let header = wait_text(c, "header", |t| !t.is_empty()).await;
    assert!(header.contains("3001"), "{header}");
    assert!(
        !header.contains("987653001"),
        "the full number is shown: {header}"
    );
    browser.save_screenshot(&screenshots(), "enter-code").await;

    // A wrong code: taken, checked, refused; the page comes back by itself with one attempt
    // less (3 in the test configuration).
    type_code(c, "000000").await;
    wait_text(c, "#code-attempts", |t| t.starts_with("2 attempts left")).await;
    wait_text(c, "[role=alert]", |t| {
        t.contains("That code was not accepted")
    })
    .await;

    // "Call me instead" inside the cooldown: the page says when it can be asked.
    click(c, ".resend form:first-of-type button").await;
    let when = wait_text(c, "[role=alert]", |t| {
        t.contains("you can ask for a new code at")
    })
    .await;
    assert!(when.contains(':'), "a time: {when}");
    browser.save_screenshot(&screenshots(), "cooldown").await;

    // The right code: the page follows the migration to the end by itself.
    type_code(c, "123456").await;
    wait_text(c, "#now-title", |t| t.contains("Your number has moved")).await;
    browser.save_screenshot(&screenshots(), "done").await;
    app.wait_for(&id, "completed").await;

    let events = app.events(&id).await;
    let sources: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["otp"] == "submitted")
        .map(|e| &e["data"]["source"])
        .collect();
    assert_eq!(sources, [&json!("client_page"), &json!("client_page")]);
    let opened = events
        .iter()
        .filter(|e| e["type"] == "migration.client_page_opened")
        .count();
    assert_eq!(opened, 1);
    // The voice request inside the cooldown asked Meta for nothing.
    assert_eq!(app.received("+5511987653001", "request_code"), 1);

    // In Spanish, from the language switcher.
    c.goto(&format!("{url}?lang=es")).await.unwrap();
    wait_text(c, "html", |_| true).await;
    let lang = c
        .find(Locator::Css("html"))
        .await
        .unwrap()
        .attr("lang")
        .await
        .unwrap();
    assert_eq!(lang.as_deref(), Some("es"));
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_client_finishes_embedded_signup_from_its_page(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let signup_url = "https://hub.360dialog.com/dashboard/app/pid-example/permissions";
    let res = app
        .http
        .patch(app.url(&format!("/v1/partners/{}", app.partner_id)))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "signup_url": signup_url }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    let phone = "+5511987653002";
    let mut body = TestApp::create_body(phone);
    body["flow"] = json!("embedded_signup");
    let id = app.create_with(body).await;
    app.wait_for(&id, "awaiting_signup").await;
    let url = page_link(&app, &id).await;

    let browser = Browser::start_sized(360, 740).await;
    let c = &browser.client;
    c.goto(&url).await.unwrap();
    wait_text(c, "#now-title", |t| t == "Connect your number to 360dialog").await;
    // The checklist and the button to the partner's signup link.
    let checklist = wait_text(c, "ul.checklist", |t| !t.is_empty()).await;
    assert!(checklist.contains("Two-step verification"), "{checklist}");
    let button = c.find(Locator::Css("a.button")).await.unwrap();
    assert_eq!(
        button.attr("href").await.unwrap().as_deref(),
        Some(signup_url)
    );
    let steps = wait_text(c, "ol.steps", |t| !t.is_empty()).await;
    assert!(
        steps.contains("Yes, this number is connected to WhatsApp Business API"),
        "{steps}"
    );
    browser.save_screenshot(&screenshots(), "signup").await;

    // The client completes the signup (the sandbox plays 360dialog): a channel appears, the
    // worker finds it, and the page follows to the end.
    let res = app
        .http
        .post(format!(
            "{}/_sandbox/numbers/{}/complete_signup",
            app.sandbox_url,
            phone.replace('+', "%2B")
        ))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    wait_text(c, "#now-title", |t| t.contains("Your number has moved")).await;
    let m = app.wait_for(&id, "completed").await;
    assert!(m["channel_id"].is_string(), "{m}");

    // Once the migration ended the link only shows the outcome; with the linger over (as if
    // 15 minutes had passed) it is no longer valid.
    sqlx::query(
        "UPDATE migrations SET state_entered_at = now() - interval '1 hour',
                completed_at = now() - interval '1 hour' WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .unwrap();
    c.goto(&url).await.unwrap();
    let title = wait_text(c, "h1", |t| !t.is_empty()).await;
    assert!(title.contains("no longer valid"), "{title}");
    browser
        .save_screenshot(&screenshots(), "link-invalid")
        .await;
}
