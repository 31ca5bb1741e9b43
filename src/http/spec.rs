//! What the OpenAPI document says beyond the annotations: the rules of the create body that
//! depend on `flow`, and the links between operations (what a response's ids lead to), which
//! clients and Schemathesis' stateful phase follow.

use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{OpenApi, Ref, RefOr};

/// Applies both to the document the routes generate.
pub(super) fn finish(doc: &mut OpenApi) {
    create_migration_rules(doc);
    links(doc);
}

/// A string without U+0000, which PostgreSQL's `jsonb` cannot store.
const NO_NUL: &str = r"^[^\u0000]*$";

/// What `CreateMigration` cannot say through its annotations: `metadata` has at most 20 keys and
/// no U+0000 at any depth (`MetadataValue`, a recursive schema), and which `flow` takes a `channel_id`: the
/// object of every field (as derived), and `oneOf` the two flows, told apart by `flow` (absent
/// means `otp`).
fn create_migration_rules(doc: &mut OpenApi) {
    let Some(schemas) = doc.components.as_mut().map(|c| &mut c.schemas) else {
        return;
    };
    let Some(RefOr::T(Schema::Object(mut fields))) = schemas.remove("CreateMigration") else {
        panic!("CreateMigration is an object schema");
    };
    let Some(RefOr::T(Schema::Object(metadata))) = fields.properties.get_mut("metadata") else {
        panic!("CreateMigration.metadata is an object schema");
    };
    metadata.max_properties = Some(20);
    metadata.property_names = Some(Box::new(no_nul_string().into()));
    metadata.additional_properties = Some(Box::new(
        RefOr::Ref(Ref::from_schema_name("MetadataValue")).into(),
    ));
    let value = RefOr::Ref(Ref::from_schema_name("MetadataValue"));
    let metadata_value = AnyOfBuilder::new()
        .description(Some(
            "A value in `metadata`: any JSON without U+0000 in its strings or keys.",
        ))
        .item(ObjectBuilder::new().schema_type(SchemaType::from_iter([
            Type::Null,
            Type::Boolean,
            Type::Number,
        ])))
        .item(no_nul_string())
        .item(ArrayBuilder::new().items(value.clone()))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property_names(Some(no_nul_string()))
                .additional_properties(Some(value)),
        );
    schemas.insert(
        "MetadataValue".to_owned(),
        Schema::AnyOf(metadata_value.build()).into(),
    );
    let description = fields.description.take();
    let otp = ObjectBuilder::new()
        .schema_type(Type::Object)
        .title(Some("flow otp"))
        .description(Some(
            "`flow` `otp` (or absent or null: the default): no `channel_id` (absent or null).",
        ))
        .property(
            "flow",
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                .enum_values(Some([Some("otp"), None])),
        )
        .property("channel_id", ObjectBuilder::new().schema_type(Type::Null));
    let embedded_signup = ObjectBuilder::new()
        .schema_type(Type::Object)
        .title(Some("flow embedded_signup"))
        .description(Some(
            "`flow` `embedded_signup`: `channel_id` (from the onboarding redirect) when the \
             client already finished Embedded Signup; without it (absent or null) the migration \
             waits in `awaiting_signup` until 360dialog shows a channel for the number.",
        ))
        .property(
            "flow",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["embedded_signup"])),
        )
        .property(
            "channel_id",
            ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null])),
        )
        .required("flow");
    let schema = AllOfBuilder::new()
        .schema_type(Type::Object)
        .description(description)
        .item(Schema::Object(fields))
        .item(OneOfBuilder::new().item(otp).item(embedded_signup));
    schemas.insert(
        "CreateMigration".to_owned(),
        Schema::AllOf(schema.build()).into(),
    );
}

fn no_nul_string() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL))
}

/// The operations whose response names a resource, the status that does, and where the id is
/// (a runtime expression): what the `links` of that response are built from.
const MIGRATION_SOURCES: &[(&str, &str, &str)] = &[
    ("create_migration", "201", "$response.body#/id"),
    ("get_migration", "200", "$response.body#/id"),
    ("update_migration", "200", "$response.body#/id"),
    ("submit_otp", "202", "$response.body#/id"),
    ("resend_otp", "202", "$response.body#/id"),
    ("cancel_migration", "200", "$response.body#/id"),
    ("retry_migration", "202", "$response.body#/id"),
    ("rotate_api_key", "202", "$response.body#/id"),
];

/// Partners made or read by the caller. `list_partners` is left out on purpose: its first
/// partner may be one a client (or the fuzzer) depends on, and its links lead to key
/// revocation.
const PARTNER_SOURCES: &[(&str, &str, &str)] = &[
    ("create_partner", "201", "$response.body#/partner/id"),
    ("get_partner", "200", "$response.body#/id"),
    ("update_partner", "200", "$response.body#/id"),
];

/// Batches made or read by the caller.
const BATCH_SOURCES: &[(&str, &str, &str)] = &[
    ("create_batch", "201", "$response.body#/batch/id"),
    ("get_batch", "200", "$response.body#/id"),
    ("cancel_batch", "200", "$response.body#/id"),
    ("retry_failed", "200", "$response.body#/batch/id"),
];

/// Adds `links` to the responses that return a migration, a partner, a batch, an API key or a list of
/// webhook deliveries, to every operation on that resource (each operation under
/// `/v1/migrations/{id}`, `/v1/partners/{id}` or `/v1/batches/{id}`, found in the document, so a new one gets its
/// links without an edit here).
fn links(doc: &mut OpenApi) {
    let targets = |prefix: &str| -> Vec<String> {
        doc.paths
            .paths
            .iter()
            .filter(|(path, _)| *path == prefix || path.starts_with(&format!("{prefix}/")))
            .filter(|(path, _)| !path.contains("{key_id}"))
            .flat_map(|(_, item)| operations(item))
            .filter_map(|op| op.operation_id.clone())
            .collect()
    };
    let migration_ops = targets("/v1/migrations/{id}");
    let partner_ops = targets("/v1/partners/{id}");
    let batch_ops = targets("/v1/batches/{id}");
    for (sources, to) in [
        (MIGRATION_SOURCES, &migration_ops),
        (PARTNER_SOURCES, &partner_ops),
        (BATCH_SOURCES, &batch_ops),
    ] {
        for &(from, status, id) in sources {
            for op in to {
                add_link(doc, from, status, op, &[("id", id)]);
            }
        }
    }
    // A new key of a partner, to its revocation.
    add_link(
        doc,
        "create_api_key",
        "201",
        "revoke_api_key",
        &[("id", "$request.path.id"), ("key_id", "$response.body#/id")],
    );
    // A delivery, to its redelivery.
    add_link(
        doc,
        "list_deliveries",
        "200",
        "redeliver",
        &[("id", "$response.body#/data/0/id")],
    );
}

fn operations(item: &PathItem) -> impl Iterator<Item = &Operation> {
    [&item.get, &item.put, &item.post, &item.delete, &item.patch]
        .into_iter()
        .flatten()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// A link named after the operation `to` on the `status` response of the operation `from`.
fn add_link(doc: &mut OpenApi, from: &str, status: &str, to: &str, parameters: &[(&str, &str)]) {
    let operation = doc
        .paths
        .paths
        .values_mut()
        .flat_map(operations_mut)
        .find(|op| op.operation_id.as_deref() == Some(from))
        .unwrap_or_else(|| panic!("no operation {from}"));
    let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) else {
        panic!("{from} has no {status} response");
    };
    let mut link = LinkBuilder::new();
    for &(name, value) in parameters {
        link = link.parameter(name, value);
    }
    let mut link = link.build();
    // utoipa 5 writes `Link.operation_id` as `operation_id`, which OpenAPI does not know: the
    // field is `operationId`, so it goes in as the link's one extra key.
    let mut extra = Extensions::default();
    extra.insert("operationId".to_owned(), to.into());
    link.extensions = Some(extra);
    response.links.insert(to.to_owned(), link.into());
}
