//! The served OpenAPI document says what the server accepts: a request body or query the
//! document's schema allows is accepted, one it refuses gets 422, checked with a JSON Schema
//! 2020-12 validator over `/openapi.json` (as a client generated from the document validates),
//! against the server's answer. Beside scripts/fuzz.sh, which checks the same with generated
//! data, these are the cases the document used to get wrong.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Options, TestApp};

/// A validator for the schema at the JSON pointer `at` of the document (a `#/…` reference):
/// the document itself with a root `$ref` to it, so that its `$ref`s resolve as in the
/// document (the document's other members are keywords JSON Schema ignores).
fn validator(doc: &Value, at: &str) -> jsonschema::Validator {
    let mut root = doc.clone();
    root["$ref"] = json!(at);
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .expect("the document's schemas compile")
}

fn create_body(extra: Value) -> Value {
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
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_create_body_schema_accepts_exactly_what_the_server_accepts(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let schema = validator(&doc, "#/components/schemas/CreateMigration");
    let many_keys: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("k{i}"), json!(i))).collect();
    // (what the case is, the body, whether the server must take it). Each accepted body
    // creates a migration, so each has a number of its own (one active migration per number).
    let cases = [
        ("the happy path", create_body(json!({})), true),
        (
            "+10: too short for +1",
            create_body(json!({ "phone_number": "+10" })),
            false,
        ),
        (
            "+7 with a 14-digit national number not starting with 8",
            create_body(json!({ "phone_number": "+746859440850270" })),
            false,
        ),
        (
            "a trunk prefix after the country code",
            create_body(json!({ "phone_number": "+4407912345678" })),
            false,
        ),
        (
            "an unassigned country code",
            create_body(json!({ "phone_number": "+999123456" })),
            false,
        ),
        (
            "channel_id with the default flow",
            create_body(json!({ "phone_number": "+14155550111", "channel_id": "ch1" })),
            false,
        ),
        (
            "channel_id with flow otp",
            create_body(json!({
                "phone_number": "+14155550112", "flow": "otp", "channel_id": "ch1"
            })),
            false,
        ),
        (
            "channel_id null with flow otp",
            create_body(json!({
                "phone_number": "+14155550113", "flow": "otp", "channel_id": null
            })),
            true,
        ),
        (
            "embedded_signup without channel_id",
            create_body(json!({ "phone_number": "+14155550114", "flow": "embedded_signup" })),
            true,
        ),
        (
            "embedded_signup with channel_id null",
            create_body(json!({
                "phone_number": "+14155550115", "flow": "embedded_signup", "channel_id": null
            })),
            true,
        ),
        (
            "embedded_signup with a blank channel_id",
            create_body(json!({
                "phone_number": "+14155550116", "flow": "embedded_signup", "channel_id": "  "
            })),
            false,
        ),
        (
            "embedded_signup with channel_id",
            create_body(json!({
                "phone_number": "+14155550117",
                "flow": "embedded_signup",
                "channel_id": "esChannel01CH"
            })),
            true,
        ),
        (
            "flow null with no channel_id",
            create_body(json!({ "phone_number": "+14155550118", "flow": null })),
            true,
        ),
        (
            "metadata with 21 keys",
            create_body(json!({ "phone_number": "+14155550119", "metadata": many_keys })),
            false,
        ),
        (
            "metadata with U+0000 deep inside",
            create_body(json!({
                "phone_number": "+14155550120", "metadata": { "k": [{ "v": "a\u{0}" }] }
            })),
            false,
        ),
        (
            "metadata with U+0000 in a nested key",
            create_body(json!({
                "phone_number": "+14155550121", "metadata": { "k": { "a\u{0}": 1 } }
            })),
            false,
        ),
        (
            "nested metadata",
            create_body(json!({
                "phone_number": "+14155550122",
                "metadata": { "k": [1, true, null, { "v": "w" }] }
            })),
            true,
        ),
    ];
    for (case, body, accepted) in cases {
        assert_eq!(
            schema.is_valid(&body),
            accepted,
            "the schema on {case}: {:?}",
            schema
                .iter_errors(&body)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
        let res = app.post("/v1/migrations", body).await;
        let want = if accepted {
            StatusCode::CREATED
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        assert_eq!(res.status(), want, "the server on {case}");
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn the_phone_number_filter_schema_accepts_what_the_server_accepts(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::no_worker()).await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let parameter = doc["paths"]["/v1/migrations"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "phone_number")
        .unwrap();
    let schema = validator(&doc, parameter["schema"]["$ref"].as_str().unwrap());
    for (number, accepted) in [
        ("+5511987654321", true),
        ("+447912345678", true),
        ("+80012345678", true),
        ("+10", false),
        ("+746859440850270", false),
        ("+4407912345678", false),
        ("+15", false),
    ] {
        assert_eq!(
            schema.is_valid(&json!(number)),
            accepted,
            "the schema on {number}"
        );
        let res = app
            .get(&format!(
                "/v1/migrations?phone_number={}",
                number.replace('+', "%2B")
            ))
            .await;
        let want = if accepted {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        assert_eq!(res.status(), want, "the server on {number}");
    }
}
