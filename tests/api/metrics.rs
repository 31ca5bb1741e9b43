//! `/metrics` during a sandbox run of 100 migrations: each figure matches what the API (and the
//! sandbox's own counters) say happened.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_parse::{Scrape, Value as Prom};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Options, TestApp, is_transition};
use crate::webhooks::Consumer;

struct Metrics(Scrape);

impl Metrics {
    async fn scrape(app: &TestApp) -> Self {
        let res = app.http.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let text = res.text().await.unwrap();
        Self(Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap())
    }

    /// Sum of a counter, gauge or untyped series over samples whose labels include `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v) => *v,
                Prom::Histogram(_) | Prom::Summary(_) => 0.0,
            })
            .sum()
    }

    /// Observations in a histogram (its `+Inf` bucket) over matching samples.
    fn observations(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Prom::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                _ => 0.0,
            })
            .sum()
    }
}

/// Every migration of the test partner, through the API's pages.
async fn all_migrations(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/migrations?limit=100&cursor={c}"),
            None => "/v1/migrations?limit=100".to_owned(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn metrics_match_the_api_after_100_migrations(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.concurrency = 16;
    let app = TestApp::spawn_with(pool, opts).await;
    let consumer = Consumer::start().await;

    // 90 happy numbers, 6 whose precheck fails (two-step verification on) and 4 that Meta
    // refuses to send a code to (rate limited).
    let phones: Vec<String> = (0..100)
        .map(|i| match i {
            0..90 => format!("+1415557{:04}", 1000 + i),
            90..96 => format!("+14155{:02}0001", 60 + i - 90),
            _ => format!("+14155{:02}0016", 70 + i - 96),
        })
        .collect();
    let mut ids = Vec::new();
    for phone in &phones {
        let mut body = TestApp::create_body(phone);
        body["callback_url"] = json!(consumer.url);
        ids.push(app.create_with(body).await);
    }
    let drive = ids.iter().zip(&phones).map(|(id, phone)| {
        let app = &app;
        async move {
            let m = app
                .wait_until(id, |m| {
                    m["state"] == "awaiting_otp" || m["state"] == "failed"
                })
                .await;
            if m["state"] == "awaiting_otp" {
                assert_eq!(
                    app.submit_otp(id, "123456").await.status(),
                    StatusCode::ACCEPTED,
                    "{phone}"
                );
                app.wait_until(id, |m| m["state"] == "completed" || m["state"] == "failed")
                    .await;
            }
        }
    });
    futures::future::join_all(drive).await;

    // The API's own view.
    let migrations = all_migrations(&app).await;
    assert_eq!(migrations.len(), 100);
    let mut by_state: HashMap<String, f64> = HashMap::new();
    let mut by_code: HashMap<String, f64> = HashMap::new();
    for m in &migrations {
        *by_state
            .entry(m["state"].as_str().unwrap().into())
            .or_default() += 1.0;
        if let Some(code) = m["error"]["code"].as_str()
            && m["state"] == "failed"
        {
            *by_code.entry(code.into()).or_default() += 1.0;
        }
    }
    assert_eq!(by_state.get("completed"), Some(&90.0), "{by_state:?}");
    let mut transitions = 0.0;
    let mut transitions_to: HashMap<String, f64> = HashMap::new();
    for id in &ids {
        for e in app.events(id).await {
            if is_transition(&e) && e["from_state"] != e["to_state"] {
                transitions += 1.0;
                *transitions_to
                    .entry(e["to_state"].as_str().unwrap().into())
                    .or_default() += 1.0;
            }
        }
    }
    // Webhooks: wait until every delivery settled, then count the API's attempts.
    let mut delivered = 0.0;
    for _ in 0..200 {
        delivered = 0.0;
        let mut pending = false;
        for id in &ids {
            for d in crate::webhooks::deliveries(&app, id).await {
                pending |= d["status"] == "pending";
                delivered += f64::from(d["status"] == "succeeded");
            }
        }
        if !pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered, transitions, "one webhook per transition");

    let m = Metrics::scrape(&app).await;

    // Migrations by state, created, transitions, failures by code.
    for (state, n) in &by_state {
        assert_eq!(m.sum("waba_migrations", &[("state", state)]), *n, "{state}");
    }
    assert_eq!(m.sum("waba_migrations", &[("state", "queued")]), 0.0);
    assert_eq!(m.sum("waba_migrations_created_total", &[]), 100.0);
    assert_eq!(m.sum("waba_migration_transitions_total", &[]), transitions);
    for (to, n) in &transitions_to {
        assert_eq!(
            m.sum("waba_migration_transitions_total", &[("to", to)]),
            *n,
            "→ {to}"
        );
    }
    assert_eq!(by_code.get("two_factor_enabled"), Some(&6.0), "{by_code:?}");
    assert_eq!(by_code.get("otp_rate_limited"), Some(&4.0), "{by_code:?}");
    for (code, n) in &by_code {
        assert_eq!(
            m.sum("waba_migration_failures_total", &[("code", code)]),
            *n,
            "{code}"
        );
    }
    assert_eq!(
        m.observations(
            "waba_migration_duration_seconds",
            &[("outcome", "completed")]
        ),
        90.0
    );
    assert_eq!(
        m.observations("waba_migration_duration_seconds", &[]),
        100.0
    );

    // Upstream requests by endpoint agree with what the sandbox received.
    let counters: Value = app
        .http
        .get(format!("{}/_sandbox/counters", app.sandbox_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let received = |endpoint: &str| -> f64 {
        phones
            .iter()
            .map(|p| {
                counters["numbers"][p][endpoint]["received"]
                    .as_f64()
                    .unwrap_or(0.0)
            })
            .sum()
    };
    for (endpoint, label) in [
        ("request_code", "POST /v23.0/:id/request_code"),
        ("verify_code", "POST /v23.0/:id/verify_code"),
        ("register", "POST /v23.0/:id/register"),
    ] {
        let want = received(endpoint);
        assert!(want >= 90.0, "{endpoint}: {want}");
        assert_eq!(
            m.sum(
                "waba_upstream_requests_total",
                &[("service", "meta"), ("endpoint", label)]
            ),
            want,
            "{label}"
        );
    }
    // Meta's refusals carry their error code: 4 numbers could not get a code.
    assert!(
        m.sum(
            "waba_upstream_requests_total",
            &[
                ("endpoint", "POST /v23.0/:id/request_code"),
                ("error_code", "2494158")
            ]
        ) >= 4.0
    );
    assert!(m.observations("waba_upstream_request_duration_seconds", &[]) > 0.0);

    // Workers, webhooks, the API itself, the pool.
    assert!(m.observations("waba_step_duration_seconds", &[("step", "registering")]) >= 90.0);
    assert!(m.observations("waba_claim_lag_seconds", &[]) >= 100.0);
    assert_eq!(
        m.sum("waba_webhook_attempts_total", &[("outcome", "succeeded")]),
        delivered
    );
    assert_eq!(
        m.sum(
            "waba_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/migrations"),
                ("status", "201")
            ]
        ),
        100.0
    );
    assert!(m.sum("waba_db_pool_connections", &[("state", "max")]) >= 1.0);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn counters_with_known_labels_are_served_before_their_first_event(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let m = Metrics::scrape(&app).await;
    let has = |name: &str, labels: &[(&str, &str)]| {
        m.0.samples
            .iter()
            .any(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    };
    for name in [
        "waba_migrations_created_total",
        "waba_batch_admitted_total",
        "waba_batch_throttled_total",
    ] {
        assert!(has(name, &[]), "{name}");
    }
    for step in ["requesting_otp", "generating_api_key", "awaiting_channel"] {
        assert!(has("waba_step_retries_total", &[("step", step)]), "{step}");
    }
    for reason in ["header_timeout", "idle_timeout", "shutdown"] {
        assert!(
            has("waba_http_connections_dropped_total", &[("reason", reason)]),
            "{reason}"
        );
    }
}
