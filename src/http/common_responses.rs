//! Answers many operations share, declared once in `components.responses` and referenced from
//! each operation instead of written into each `#[utoipa::path]`: on every operation secured by
//! the bearer key, `401` (`Unauthorized`, with its `WWW-Authenticate` challenge) and `429`
//! (`TooManyRequests`, with `Retry-After`); on every operation with a JSON body, `400`
//! (`BadBody`: not JSON, or a repeated key). An operation that names one of these codes itself
//! keeps its own.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
};

const UNAUTHORIZED: &str = "No API key, or one that is unknown or revoked (`unauthorized`). `WWW-Authenticate` says how to authenticate: `Bearer realm=\"waba-migrator\"`, with `error=\"invalid_token\"` when the key sent is not valid.";

const TOO_MANY: &str = "Too many requests with this key (`rate_limited`), or too many invalid keys from this client address (`too_many_auth_failures`: keys that authenticated recently are still served); retry after `Retry-After` seconds.";

const BAD_BODY: &str = "The body is not JSON (`malformed_json`), or an object in it has the same key twice (`duplicate_json_key`, with the repeated key's JSON pointer in `errors[]`, e.g. `/code`); nothing was done.";

/// Declares the shared responses and references them from the operations they apply to.
pub fn add(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, response) in [
        ("Unauthorized", unauthorized()),
        ("TooManyRequests", too_many()),
        ("BadBody", bad_body()),
    ] {
        components
            .responses
            .insert(name.to_owned(), RefOr::T(response));
    }
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in ops.into_iter().flatten() {
            if needs_a_key(op) {
                refer(op, "401", "Unauthorized");
                refer(op, "429", "TooManyRequests");
            }
            if op.request_body.is_some() {
                refer(op, "400", "BadBody");
            }
        }
    }
}

fn needs_a_key(op: &Operation) -> bool {
    op.security
        .as_ref()
        .is_some_and(|s| s.iter().any(|r| *r != SecurityRequirement::default()))
}

fn refer(op: &mut Operation, status: &str, name: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
}

fn problem(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    )
}

fn unauthorized() -> Response {
    let challenge = ObjectBuilder::new()
        .schema_type(Type::String)
        .examples([
            r#"Bearer realm="waba-migrator", error="invalid_token", error_description="The API key is unknown or revoked""#,
        ]);
    problem(UNAUTHORIZED)
        .header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(challenge)
                .description(Some("The RFC 6750 Bearer challenge."))
                .build(),
        )
        .build()
}

fn too_many() -> Response {
    problem(TOO_MANY)
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Seconds to wait before retrying."))
                .build(),
        )
        .build()
}

fn bad_body() -> Response {
    problem(BAD_BODY).build()
}
