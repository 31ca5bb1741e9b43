//! Every failure the sandbox can play, end to end: the documented test number (or WABA id)
//! drives the migration to `failed` with the right `code`, `step`, `actor`, `retryable` and a
//! remediation, and the upstream's own error where there is one.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use waba_migrator::sandbox::NumberSeed;

use crate::helpers::{BUSINESS, Options, TestApp};

struct Case {
    phone: &'static str,
    /// A destination WABA id ending in these digits (WABA-level scenarios).
    dest_suffix: Option<&'static str>,
    /// Submit `123456` when the migration waits for it.
    submit: bool,
    code: &'static str,
    step: &'static str,
    actor: &'static str,
    retryable: bool,
    /// The upstream code (or subcode) Meta/360dialog answered, when the failure came from one.
    upstream: Option<i64>,
}

const fn case(
    phone: &'static str,
    code: &'static str,
    step: &'static str,
    actor: &'static str,
    retryable: bool,
) -> Case {
    Case {
        phone,
        dest_suffix: None,
        submit: false,
        code,
        step,
        actor,
        retryable,
        upstream: None,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            upstream: Some(2388103),
            ..case(
                "+14155550001",
                "two_factor_enabled",
                "initiating",
                "client",
                true,
            )
        },
        Case {
            upstream: Some(2388103),
            ..case(
                "+14155550002",
                "add_directly_not_migration",
                "initiating",
                "partner",
                false,
            )
        },
        case(
            "+14155550003",
            "display_name_not_approved",
            "prechecking",
            "source_bsp",
            true,
        ),
        case(
            "+14155550005",
            "business_mismatch",
            "prechecking",
            "partner",
            false,
        ),
        case(
            "+14155550006",
            "business_not_verified",
            "prechecking",
            "client",
            true,
        ),
        case(
            "+14155550007",
            "source_waba_not_approved",
            "prechecking",
            "source_bsp",
            true,
        ),
        Case {
            dest_suffix: Some("0008"),
            ..case(
                "+14155551008",
                "destination_waba_not_approved",
                "prechecking",
                "partner",
                true,
            )
        },
        Case {
            dest_suffix: Some("0009"),
            ..case(
                "+14155551009",
                "destination_no_payment_method",
                "prechecking",
                "partner",
                true,
            )
        },
        Case {
            dest_suffix: Some("0010"),
            ..case(
                "+14155551010",
                "destination_no_subscribed_app",
                "prechecking",
                "partner",
                true,
            )
        },
        case(
            "+14155550011",
            "number_not_found_on_source",
            "prechecking",
            "partner",
            false,
        ),
        case(
            "+5511987650012",
            "brazil_ninth_digit_mismatch",
            "prechecking",
            "partner",
            false,
        ),
        case(
            "+14155550013",
            "whatsapp_issued_number",
            "prechecking",
            "partner",
            false,
        ),
        case(
            "+14155550014",
            "number_on_business_app",
            "prechecking",
            "client",
            false,
        ),
        Case {
            submit: true,
            upstream: Some(136025),
            ..case(
                "+14155550015",
                "otp_invalid",
                "verifying_otp",
                "client",
                true,
            )
        },
        Case {
            upstream: Some(2494158),
            ..case(
                "+14155550016",
                "otp_rate_limited",
                "requesting_otp",
                "client",
                true,
            )
        },
        Case {
            submit: true,
            upstream: Some(133016),
            ..case(
                "+14155550017",
                "register_limit_reached",
                "registering",
                "client",
                true,
            )
        },
        Case {
            submit: true,
            ..case(
                "+14155550019",
                "channel_timeout",
                "awaiting_channel",
                "partner",
                true,
            )
        },
        Case {
            submit: true,
            ..case(
                "+14155550020",
                "api_key_permission_missing",
                "awaiting_channel",
                "client",
                true,
            )
        },
        Case {
            upstream: Some(190),
            ..case(
                "+14155550021",
                "upstream_auth",
                "prechecking",
                "partner",
                true,
            )
        },
        Case {
            upstream: Some(2388103),
            ..case(
                "+14155550022",
                "upstream_unavailable",
                "initiating",
                "meta",
                true,
            )
        },
        Case {
            submit: true,
            upstream: Some(133005),
            ..case(
                "+14155550023",
                "pin_mismatch",
                "registering",
                "client",
                true,
            )
        },
        case(
            "+14155550024",
            "display_name_not_approved",
            "prechecking",
            "source_bsp",
            true,
        ),
        // No code submitted before the OTP deadline.
        case(
            "+14155551111",
            "otp_expired",
            "awaiting_otp",
            "partner",
            true,
        ),
    ]
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn template_limit_is_reported_without_failing_the_migrated_number(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app
        .create_with(json!({
            "phone_number": "+14155550018",
            "source_waba_id": "201111111111",
            "destination_waba_id": "301111110018",
            "meta_business_id": BUSINESS,
        }))
        .await;
    let waiting = app.wait_for(&id, "awaiting_otp").await;
    // The precheck saw it coming: the destination is full, so none of the four eligible
    // templates fits (a warning, not a failure).
    let check = waiting["precheck"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "templates_eligible")
        .unwrap();
    assert_eq!(check["status"], "warn", "{check:#}");
    assert_eq!(check["code"], "template_limit_reached");
    assert!(
        check["message"].as_str().unwrap().ends_with(
            "0 of the 4 to copy fit the destination's template limit (6000 of 6000 used)."
        ),
        "{check:#}"
    );
    app.submit_otp(&id, "123456").await;
    // The number is migrated and keyed; the report says what did not make it and why.
    let m = app.wait_for(&id, "completed").await;
    let t = &m["templates"];
    assert_eq!(t["status"], "partial", "{t:#}");
    assert_eq!(t["error"]["code"], "template_limit_reached");
    assert_eq!(t["error"]["upstream"]["subcode"], 2388019);
    assert!(!t["error"]["remediation"].as_str().unwrap().is_empty());
    let eligible = t["eligible"].as_u64().unwrap() as usize;
    let migrated = t["migrated"].as_array().unwrap().len();
    let failed = t["failed"].as_object().unwrap().len();
    let no_room = t["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["reason"] == "destination template limit reached")
        .count();
    assert!(no_room > 0, "{t:#}");
    assert_eq!(eligible, migrated + failed + no_room);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn every_failure_scenario_fails_precisely(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.concurrency = 8;
    opts.worker.otp.ttl = Duration::from_secs(4);
    opts.worker.otp.max_attempts = 1;
    opts.worker.retry.channel_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(pool, opts).await;

    let mut ids = Vec::new();
    for (i, c) in cases().iter().enumerate() {
        // Each case gets its own WABAs so WABA-level scenarios do not leak into other cases.
        let source = format!("2{i:02}0000001111");
        let dest = match c.dest_suffix {
            Some(s) => format!("3{i:02}000000{s}"),
            None => format!("3{i:02}0000001111"),
        };
        let res = app
            .post(
                "/v1/migrations",
                json!({
                    "phone_number": c.phone,
                    "source_waba_id": source,
                    "destination_waba_id": dest,
                    "meta_business_id": BUSINESS,
                }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{}", c.phone);
        let body: Value = res.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<usize> = (0..ids.len()).collect();
    let mut submitted = vec![false; ids.len()];
    while !pending.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running: {:?}",
            pending
                .iter()
                .map(|&i| cases()[i].phone)
                .collect::<Vec<_>>()
        );
        let cases = cases();
        let mut still = Vec::new();
        for i in pending {
            let c = &cases[i];
            let m = app.migration(&ids[i]).await;
            match m["state"].as_str().unwrap() {
                "failed" => {
                    let e = &m["error"];
                    assert_eq!(e["code"], c.code, "{}: {m:#}", c.phone);
                    assert_eq!(e["step"], c.step, "{}", c.phone);
                    assert_eq!(e["actor"], c.actor, "{}", c.phone);
                    assert_eq!(e["retryable"], c.retryable, "{}", c.phone);
                    assert!(e["remediation"].as_str().unwrap().len() > 20, "{}", c.phone);
                    assert!(e["message"].as_str().unwrap().len() > 10, "{}", c.phone);
                    if let Some(code) = c.upstream {
                        let u = &e["upstream"];
                        assert!(
                            u["code"] == code || u["subcode"] == code,
                            "{}: upstream {u:#}",
                            c.phone
                        );
                    }
                }
                "awaiting_otp" if c.submit && !submitted[i] => {
                    submitted[i] = true;
                    app.submit_otp(&ids[i], "123456").await;
                    still.push(i);
                }
                "completed" | "cancelled" => panic!("{} ended {m:#}", c.phone),
                _ => still.push(i),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn twelve_hundred_templates_copy_in_three_pages_and_add_up(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let source = "201212121212";
    app.sandbox.set_templates(source, 1200).unwrap();
    let phone = "+14155550114";
    let id = app
        .create_with(json!({
            "phone_number": phone,
            "source_waba_id": source,
            "destination_waba_id": "301212121212",
            "meta_business_id": BUSINESS,
        }))
        .await;
    let m = app.complete(&id).await;
    let t = &m["templates"];
    let eligible = t["eligible"].as_u64().unwrap() as usize;
    let migrated = t["migrated"].as_array().unwrap().len();
    let failed = t["failed"].as_object().unwrap();
    let skipped = t["skipped"].as_array().unwrap().len();
    // i % 10 in 0..=6 is APPROVED with GREEN/UNKNOWN quality: 840 of 1,200.
    assert_eq!(eligible, 840);
    assert_eq!(eligible, migrated + failed.len(), "{t:#}");
    assert_eq!(eligible + skipped, 1200);
    // The sandbox refuses eligible templates whose index is a multiple of 97, with Meta's reason.
    assert_eq!(failed.len(), 9);
    assert!(
        failed.values().all(|r| r == "Incorrect category"),
        "{failed:?}"
    );
    assert_eq!(t["status"], "partial");
    assert!(t["migrated"][0]["id"].as_str().unwrap().len() > 3);
    // Three pages of 500; templates Meta refused with a reason are not re-sent blindly.
    assert_eq!(app.received(phone, "migrate_message_templates"), 3);
    let precheck = m["precheck"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "templates_eligible")
        .unwrap()
        .clone();
    assert!(
        precheck["message"]
            .as_str()
            .unwrap()
            .starts_with("840 of 1200")
    );
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn missing_permission_parks_then_completes_after_grant_and_retry(pool: PgPool) {
    let mut opts = Options::default();
    opts.worker.retry.channel_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(pool, opts).await;
    // Scenario 0020: a direct-payment client that has not shared API-key permission.
    let phone = "+14155550020";
    let id = app.create(phone).await;
    app.wait_for(&id, "awaiting_otp").await;
    app.submit_otp(&id, "123456").await;
    let m = app.wait_for(&id, "awaiting_channel").await;
    assert_eq!(m["error"], Value::Null);
    let m = app.wait_for(&id, "failed").await;
    assert_eq!(m["error"]["code"], "api_key_permission_missing");
    assert_eq!(m["error"]["step"], "awaiting_channel");
    assert!(
        m["error"]["remediation"]
            .as_str()
            .unwrap()
            .contains("permission")
    );
    assert_eq!(app.applied(phone, "api_keys"), 0);

    // The client grants the permission; the partner retries.
    let channel = m["channel_id"].as_str().unwrap();
    app.sandbox.set_permission(channel, true).unwrap();
    let res = app
        .post(&format!("/v1/migrations/{id}/retry"), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(
        res.json::<Value>().await.unwrap()["state"],
        "awaiting_channel"
    );
    app.wait_for(&id, "completed").await;
    assert_eq!(app.applied(phone, "api_keys"), 1);
    assert_eq!(app.applied(phone, "register"), 1);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn templates_missing_without_a_reason_are_retried_by_id(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let phone = "+14155550115";
    // The first page call is lost after Meta applied nothing: the page reports nothing for
    // the templates, so the step asks again for exactly the missing ids.
    app.faults(json!([
        { "endpoint": "migrate_message_templates", "fault": "server_error", "times": 1 },
    ]))
    .await;
    let id = app.create(phone).await;
    let m = app.complete(&id).await;
    assert_eq!(m["templates"]["status"], "completed", "{m:#}");
    // One failed page call, then a retry by template id (not the page again).
    assert_eq!(app.received(phone, "migrate_message_templates"), 2);
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn precheck_dry_run_explains_each_precheck_scenario_without_side_effects(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    // (number, destination WABA suffix, failing check id and code; None = a good number).
    type DryRun = (
        &'static str,
        &'static str,
        Option<(&'static str, &'static str)>,
    );
    let cases: [DryRun; 14] = [
        ("+14155550120", "1111", None),
        (
            "+14155550003",
            "1111",
            Some(("display_name_approved", "display_name_not_approved")),
        ),
        (
            "+14155550005",
            "1111",
            Some(("same_business", "business_mismatch")),
        ),
        (
            "+14155550006",
            "1111",
            Some(("business_verified", "business_not_verified")),
        ),
        (
            "+14155550007",
            "1111",
            Some(("source_waba_approved", "source_waba_not_approved")),
        ),
        (
            "+14155551008",
            "0008",
            Some(("destination_waba_approved", "destination_waba_not_approved")),
        ),
        (
            "+14155551009",
            "0009",
            Some((
                "destination_payment_method",
                "destination_no_payment_method",
            )),
        ),
        (
            "+14155551010",
            "0010",
            Some((
                "destination_subscribed_app",
                "destination_no_subscribed_app",
            )),
        ),
        (
            "+14155550011",
            "1111",
            Some(("number_on_source", "number_not_found_on_source")),
        ),
        (
            "+5511987650012",
            "1111",
            Some(("number_on_source", "brazil_ninth_digit_mismatch")),
        ),
        (
            "+14155550013",
            "1111",
            Some(("not_whatsapp_issued", "whatsapp_issued_number")),
        ),
        (
            "+14155550014",
            "1111",
            Some(("not_on_business_app", "number_on_business_app")),
        ),
        (
            "+14155550024",
            "1111",
            Some(("display_name_approved", "display_name_not_approved")),
        ),
        ("+5511987650121", "1111", None),
    ];
    for (i, (phone, suffix, expected)) in cases.iter().enumerate() {
        let res = app
            .post(
                "/v1/prechecks",
                json!({
                    "phone_number": phone,
                    "source_waba_id": format!("2{i:02}0000001111"),
                    "destination_waba_id": format!("3{i:02}000000{suffix}"),
                    "meta_business_id": BUSINESS,
                }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{phone}");
        let report: Value = res.json().await.unwrap();
        let checks = report["checks"].as_array().unwrap();
        for c in checks {
            assert!(c["message"].as_str().unwrap().len() > 5, "{c:#}");
            assert!(c["actor"].is_string(), "{c:#}");
        }
        match expected {
            None => {
                // All pass; two-step verification (unreadable through the API) warns.
                let not_pass: Vec<&str> = checks
                    .iter()
                    .filter(|c| c["status"] != "pass")
                    .map(|c| c["id"].as_str().unwrap())
                    .collect();
                assert_eq!(not_pass, ["two_factor_disabled"], "{phone}: {report:#}");
                assert_eq!(report["status"], "warn");
                assert!(checks.len() >= 12, "{phone}: only {} checks", checks.len());
            }
            Some((id, code)) => {
                assert_eq!(report["status"], "fail", "{phone}");
                let failed = checks
                    .iter()
                    .find(|c| c["status"] == "fail" && c["id"] == *id)
                    .unwrap_or_else(|| panic!("{phone}: no failing {id}: {report:#}"));
                assert_eq!(failed["code"], *code, "{phone}");
                assert!(failed["remediation"].as_str().unwrap().len() > 20);
            }
        }
        // A dry run never calls a mutating upstream endpoint.
        for endpoint in [
            "start_migration",
            "request_code",
            "verify_code",
            "register",
            "migrate_message_templates",
            "api_keys",
        ] {
            assert_eq!(app.received(phone, endpoint), 0, "{phone} {endpoint}");
        }
    }
    assert_eq!(app.count_migrations().await, 0);
}

/// Issue 15: the precheck looked through every number of both WABAs (100 a page) to find one;
/// now it looks the number up, so WABAs with thousands of numbers cost one read each.
#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn precheck_reads_one_page_however_many_numbers_the_wabas_hold(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (source, destination) = ("4000000001111", "5000000001111");
    // 3,000 numbers on each WABA, listed before the one migrated.
    for i in 0..3000 {
        for (waba, exchange) in [(source, 201), (destination, 202)] {
            app.sandbox
                .add_number(&NumberSeed {
                    phone_number: format!("+1415{exchange}{:04}", 1000 + i),
                    source_waba_id: waba.into(),
                    destination_waba_id: None,
                    business_id: None,
                })
                .unwrap();
        }
    }
    let phone = "+14155550123";
    let res = app
        .post(
            "/v1/prechecks",
            json!({
                "phone_number": phone,
                "source_waba_id": source,
                "destination_waba_id": destination,
                "meta_business_id": BUSINESS,
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    let status = |id: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["status"].clone())
    };
    assert_eq!(
        status("number_on_source"),
        Some(json!("pass")),
        "{report:#}"
    );
    assert_eq!(
        status("not_in_destination"),
        Some(json!("pass")),
        "{report:#}"
    );
    // The sandbox counts each read of a WABA's phone_numbers against every number on it.
    let reads = |filler: &str| app.sandbox.count(filler, "list_phone_numbers").0;
    assert_eq!(reads("+14152011000"), 1, "reads of the source's numbers");
    assert_eq!(
        reads("+14152021000"),
        1,
        "reads of the destination's numbers"
    );
    // The migrated number counts against both WABAs (its own and the one it is bound for).
    assert_eq!(reads(phone), 2);
}
