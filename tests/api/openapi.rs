//! The committed `openapi.yaml` is exactly what the code generates.
//! Run with `UPDATE_OPENAPI=1` to rewrite it.

#[test]
fn committed_openapi_matches_the_code() {
    let generated = waba_migrator::http::openapi_yaml();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.yaml is out of date: run `UPDATE_OPENAPI=1 cargo test --test api openapi` (or `cargo run -- openapi > openapi.yaml`)"
    );
}

#[test]
fn every_route_is_documented_with_problem_responses() {
    let doc = waba_migrator::http::openapi();
    let json = serde_json::to_value(&doc).unwrap();
    let paths = json["paths"].as_object().unwrap();
    for p in [
        "/v1/migrations",
        "/v1/migrations/{id}",
        "/v1/migrations/{id}/events",
        "/v1/migrations/{id}/otp",
        "/v1/migrations/{id}/otp/resend",
        "/v1/migrations/{id}/cancel",
        "/v1/migrations/{id}/retry",
        "/v1/migrations/{id}/api_key",
        "/v1/prechecks",
        "/v1/partners",
        "/v1/partners/{id}",
        "/v1/partners/{id}/api_keys",
        "/v1/partners/{id}/api_keys/{key_id}",
        "/v1/partners/{id}/webhook_secret/rotate",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the spec");
    }
    for (p, item) in paths.iter().filter(|(p, _)| p.starts_with("/v1/")) {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("4XX") && responses.contains_key("5XX"),
                "{method} {p} lacks problem responses"
            );
        }
    }
}

/// The audit event's `type` is documented as an enum of exactly the types the service writes
/// (`EventType::ALL`), each explained; the create response declares its `Location` header.
#[test]
fn event_types_and_the_create_location_are_documented() {
    use waba_migrator::domain::EventType;
    let json = serde_json::to_value(waba_migrator::http::openapi()).unwrap();
    let schemas = &json["components"]["schemas"];
    assert_eq!(
        schemas["Event"]["properties"]["type"]["$ref"],
        "#/components/schemas/EventType"
    );
    let schema = &schemas["EventType"];
    let listed: Vec<&str> = schema["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let all: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(listed, all);
    let description = schema["description"].as_str().unwrap();
    assert!(!description.contains('…') && !description.contains("..."));
    for t in EventType::ALL {
        assert!(
            description.contains(&format!("- `{t}`: {}", t.description())),
            "{t} is not explained"
        );
    }

    let created = &json["paths"]["/v1/migrations"]["post"]["responses"]["201"];
    assert_eq!(
        created["headers"]["Location"]["schema"]["type"], "string",
        "{created:#}"
    );
}
