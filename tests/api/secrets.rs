//! Secrets never reach logs, the audit trail, migration JSON or error bodies (DESIGN.md §3):
//! a full migration runs with every log line captured at TRACE level, and none of the secrets
//! involved may appear anywhere a partner, an operator or a log pipeline could read them.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::helpers::{ADMIN_KEY, Options, TestApp};

/// Log output collected in memory.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide subscriber: everything at TRACE (including `log` records and span
/// fields, as plain text without colours or timestamps) into the returned buffer. Call it first
/// in the test, before `TestApp::spawn` (nextest runs each test in its own process).
pub fn capture_logs() -> CapturedLogs {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("capture_logs runs before any other subscriber is installed");
    logs
}

/// A value that must not appear.
pub struct Secret {
    pub name: String,
    pub value: String,
}

impl Secret {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    /// Where the value occurs in `text`. Short all-digit values (PINs, codes) only count as a
    /// whole token, so that a code inside a longer number or a hex id is not a false alarm.
    fn find_in(&self, text: &str) -> Option<usize> {
        let digits = self.value.len() <= 8 && self.value.bytes().all(|b| b.is_ascii_digit());
        text.match_indices(&self.value).map(|(i, _)| i).find(|&i| {
            if !digits {
                return true;
            }
            let before = text[..i].bytes().next_back();
            let after = text[i + self.value.len()..].bytes().next();
            !before.is_some_and(|b| b.is_ascii_alphanumeric())
                && !after.is_some_and(|b| b.is_ascii_alphanumeric())
        })
    }
}

/// Texts to search, each named by where it came from.
#[derive(Default)]
pub struct Corpus(pub Vec<(String, String)>);

impl Corpus {
    pub fn add(&mut self, source: impl Into<String>, text: impl Into<String>) {
        self.0.push((source.into(), text.into()));
    }

    /// Records a response's status and body; returns them.
    pub async fn response(&mut self, what: &str, res: Response) -> (StatusCode, Value) {
        let status = res.status();
        let text = res.text().await.unwrap();
        self.add(format!("{what} ({status})"), text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Panics, naming the secret, the source and the surrounding text, if any secret occurs in any
/// text of the corpus. Other texts a test wants checked (webhook payloads, say) are simply
/// added to the corpus first.
pub fn assert_no_secrets(secrets: &[Secret], corpus: &Corpus) {
    let mut leaks = Vec::new();
    for (source, text) in &corpus.0 {
        for secret in secrets {
            if let Some(i) = secret.find_in(text) {
                let mut from = i.saturating_sub(300);
                while !text.is_char_boundary(from) {
                    from -= 1;
                }
                let mut to = (i + secret.value.len() + 300).min(text.len());
                while !text.is_char_boundary(to) {
                    to += 1;
                }
                leaks.push(format!(
                    "{} found in {source}:\n…{}…",
                    secret.name,
                    &text[from..to]
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets leaked:\n\n{}",
        leaks.join("\n\n")
    );
}

const PIN: &str = "730194";
const CODE: &str = "482913";
const WRONG_CODE: &str = "591736";

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn no_secret_in_logs_events_or_errors(pool: PgPool) {
    let logs = capture_logs();
    let mut opts = Options::default();
    opts.worker.otp.resend_cooldown = Duration::ZERO;
    let mut app = TestApp::spawn_with(pool, opts).await;
    let helper_partner_key = app.partner_key.clone();
    let mut seen = Corpus::default();

    // A partner with distinctive secrets (the responses that show them once are not searched).
    let d360_key = format!("d360-partner-api-key-{}", uuid::Uuid::new_v4().simple());
    let res = app
        .post_as(
            ADMIN_KEY,
            "/v1/partners",
            json!({ "name": "Secretive", "d360_partner_id": "secretsPA", "d360_api_key": d360_key }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    let partner_id = created["partner"]["id"].as_str().unwrap().to_owned();
    let partner_key = created["api_key"].as_str().unwrap().to_owned();
    let first_secret = created["webhook_secret"].as_str().unwrap().to_owned();
    let res = app
        .post_as(
            ADMIN_KEY,
            &format!("/v1/partners/{partner_id}/webhook_secret/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let second_secret = res.json::<Value>().await.unwrap()["webhook_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    app.partner_key = partner_key.clone();

    // The migration: an explicit PIN, a distinctive code, a wrong code, a resend.
    let phone = "+14155556101";
    app.sandbox.set_otp_code(phone, CODE).unwrap();
    let consumer = crate::webhooks::Consumer::start().await;
    let mut body = TestApp::create_body(phone);
    body["pin"] = PIN.into();
    body["callback_url"] = consumer.url.clone().into();
    let res = app.post("/v1/migrations", body.clone()).await;
    let (status, m) = seen.response("create", res).await;
    assert_eq!(status, StatusCode::CREATED, "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let res = app.post("/v1/migrations", body).await;
    assert_eq!(
        seen.response("second create", res).await.0,
        StatusCode::CONFLICT
    );
    let m = app.wait_for(&id, "awaiting_otp").await;
    let attempts = m["otp"]["attempts_left"].as_i64().unwrap();

    let res = app.submit_otp(&id, WRONG_CODE).await;
    assert_eq!(
        seen.response("wrong code", res).await.0,
        StatusCode::ACCEPTED
    );
    let m = app
        .wait_until(&id, |m| {
            m["state"] == "awaiting_otp" && m["otp"]["attempts_left"].as_i64() == Some(attempts - 1)
        })
        .await;
    seen.add("migration after a wrong code", m.to_string());
    let requested_at = m["otp"]["requested_at"].clone();

    let res = app
        .post(
            &format!("/v1/migrations/{id}/otp/resend"),
            json!({ "method": "voice" }),
        )
        .await;
    assert_eq!(seen.response("resend", res).await.0, StatusCode::ACCEPTED);
    let m = app
        .wait_until(&id, |m| {
            m["state"] == "awaiting_otp" && m["otp"]["requested_at"] != requested_at
        })
        .await;
    seen.add("migration after a resend", m.to_string());
    let res = app
        .post(
            &format!("/v1/migrations/{id}/otp/resend"),
            json!({ "method": "fax" }),
        )
        .await;
    assert_eq!(
        seen.response("resend with a bad method", res).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let res = app.submit_otp(&id, "48291").await;
    assert_eq!(
        seen.response("malformed code", res).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let res = app.submit_otp(&id, CODE).await;
    assert_eq!(
        seen.response("right code", res).await.0,
        StatusCode::ACCEPTED
    );
    let m = app.wait_for(&id, "completed").await;
    seen.add("completed migration", m.to_string());

    // Every webhook (headers and body) and the delivery log.
    let mut log = Vec::new();
    for _ in 0..200 {
        log = crate::webhooks::deliveries(&app, &id).await;
        if log
            .last()
            .is_some_and(|d| d["event_type"] == "migration.completed")
            && log.iter().all(|d| d["status"] == "succeeded")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log.len() >= 9, "{log:#?}");
    seen.add("webhook delivery log", serde_json::to_string(&log).unwrap());
    let hooks = consumer.received();
    assert_eq!(hooks.len(), log.len());
    for (i, r) in hooks.iter().enumerate() {
        seen.add(
            format!("webhook {i} body"),
            String::from_utf8_lossy(&r.body).into_owned(),
        );
        seen.add(format!("webhook {i} headers"), format!("{:?}", r.headers));
    }
    let res = app.submit_otp(&id, CODE).await;
    assert_eq!(
        seen.response("code after completion", res).await.0,
        StatusCode::CONFLICT
    );
    let res = app
        .post(&format!("/v1/migrations/{id}/otp/resend"), json!({}))
        .await;
    assert_eq!(
        seen.response("resend after completion", res).await.0,
        StatusCode::CONFLICT
    );
    let res = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_eq!(
        seen.response("retry after completion", res).await.0,
        StatusCode::CONFLICT
    );

    // The generated key is shown by its own route only.
    let api_key = app.stored_key(&id).await;
    let res = app
        .get_as(&helper_partner_key, &format!("/v1/migrations/{id}/api_key"))
        .await;
    assert_eq!(
        seen.response("api_key of another tenant", res).await.0,
        StatusCode::NOT_FOUND
    );
    for (what, path) in [
        ("migration", format!("/v1/migrations/{id}")),
        ("events", format!("/v1/migrations/{id}/events")),
        ("list", "/v1/migrations".to_owned()),
    ] {
        let res = app.get(&path).await;
        assert_eq!(seen.response(what, res).await.0, StatusCode::OK);
    }
    for (what, path) in [
        ("admin list", "/v1/migrations".to_owned()),
        ("partner record", format!("/v1/partners/{partner_id}")),
        ("partner list", "/v1/partners".to_owned()),
    ] {
        let res = app.get_as(ADMIN_KEY, &path).await;
        assert_eq!(seen.response(what, res).await.0, StatusCode::OK);
    }
    let res = app.get_as("wm_not_a_key", "/v1/migrations").await;
    assert_eq!(
        seen.response("unknown key", res).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Stop the service so every span is closed and logged.
    app.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let captured = logs.text();
    // The capture is real: many lines, about this migration, at TRACE/DEBUG too.
    let lines = captured.lines().count();
    assert!(lines > 500, "only {lines} log lines captured");
    assert!(captured.contains(&id), "the logs never name the migration");
    assert!(
        captured
            .lines()
            .any(|l| l.trim_start().starts_with("TRACE"))
    );
    assert!(
        captured
            .lines()
            .any(|l| l.trim_start().starts_with("DEBUG"))
    );
    assert!(captured.contains("completed"));
    seen.add("logs", captured);

    let mut secrets = vec![
        Secret::new("the PIN", PIN),
        Secret::new("the verification code", CODE),
        Secret::new("the wrong code", WRONG_CODE),
        Secret::new("the generated 360dialog API key", &api_key),
        Secret::new("the partner's 360dialog Partner API key", &d360_key),
        Secret::new("the partner's API key", &partner_key),
        Secret::new("another partner's API key", &helper_partner_key),
        Secret::new("the admin key", ADMIN_KEY),
        Secret::new("the Meta access token", "sandbox-token"),
    ];
    // API keys are `wm_<8-char prefix>_<secret>`; the prefix is meant to be logged.
    for key in [&partner_key, &helper_partner_key] {
        secrets.push(Secret::new("an API key's secret part", &key[12..]));
    }
    for (i, whsec) in [&first_secret, &second_secret].into_iter().enumerate() {
        secrets.push(Secret::new(format!("webhook secret {}", i + 1), whsec));
        secrets.push(Secret::new(
            format!("webhook secret {} (key part)", i + 1),
            whsec.trim_start_matches("whsec_"),
        ));
    }
    assert_no_secrets(&secrets, &seen);
}
