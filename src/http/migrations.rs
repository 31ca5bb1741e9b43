//! `/v1/migrations…` and `/v1/prechecks`: DTOs, handlers and their OpenAPI docs.

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{
    ApiKey, AppJson, AppQuery, Caller, Fields, FromQuery, IdPath, JsonBody, QueryParams,
    SequencePage, finish_id_page, list_scope, read_id_paging,
};
use super::problem::{ApiError, Problem};
pub use crate::api::migration::*;
use crate::core::AppState;
use crate::core::client_page;
use crate::core::migrations as commands;
use crate::db::{self, migrations as store};
use crate::domain::values::{self, E164};
use crate::domain::{EventType, Flow, MigrationState, OtpMethod};
use crate::precheck::PrecheckReport;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_migration, list_migrations))
        .routes(routes!(get_migration, update_migration))
        .routes(routes!(list_events))
        .routes(routes!(submit_otp))
        .routes(routes!(resend_otp))
        .routes(routes!(cancel_migration))
        .routes(routes!(retry_migration))
        .routes(routes!(get_api_key))
        .routes(routes!(rotate_api_key))
        .routes(routes!(rotate_client_page))
        .routes(routes!(run_precheck))
}

/// The `PhoneNumber` schema: a number in E.164 form, as [`E164::parse`] takes it.
pub struct PhoneNumber;

impl utoipa::PartialSchema for PhoneNumber {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "E.164: `+`, the country calling code and the national number, digits only \
                 (`+5511987654321`; no spaces, no trunk prefix such as the `0` of `+44 07…`). \
                 The pattern, built from libphonenumber's metadata, checks the country code and \
                 the national number's length and leading digits; a number outside the ranges \
                 its country assigned to phone lines still fails with 422 `validation_failed` \
                 (`not a valid number for its country`). A Brazilian mobile number in its form \
                 without the leading 9 (`+551187654321`) is taken: WhatsApp may have the number \
                 registered so, and the precheck's `brazil_ninth_digit_mismatch` names that form.",
            ))
            .pattern(Some(values::e164_pattern()))
            .examples(["+5511987654321"])
            .into()
    }
}

impl ToSchema for PhoneNumber {}

/// Body of `POST /v1/migrations`.
// `Debug` by hand (below): the PIN never shows.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMigration {
    /// The number to migrate.
    #[schema(value_type = PhoneNumber)]
    pub phone_number: String,
    /// Meta id of the WABA the number is on today.
    #[schema(example = "102290129340398", pattern = "^[0-9]{1,32}$")]
    pub source_waba_id: String,
    /// Meta id of the 360dialog-served WABA it moves to.
    #[schema(example = "104996122399160", pattern = "^[0-9]{1,32}$")]
    pub destination_waba_id: String,
    /// Meta Business (portfolio) id that owns both WABAs.
    #[schema(example = "180505742745347", pattern = "^[0-9]{1,32}$")]
    pub meta_business_id: String,
    #[serde(default)]
    pub otp_method: Option<OtpMethod>,
    /// `language_REGION`, default `en_US`.
    #[serde(default)]
    #[schema(pattern = "^[a-z]{2}_[A-Z]{2}$")]
    pub otp_language: Option<String>,
    /// 6-digit two-step verification PIN to set at registration. If absent, a random one is
    /// generated, stored encrypted and never shown: pass the client's PIN to keep one it knows
    /// (the client can set a new one in WhatsApp Manager later).
    #[serde(default)]
    #[schema(pattern = "^[0-9]{6}$")]
    pub pin: Option<String>,
    /// Webhook URL for this migration; the partner default otherwise.
    #[serde(default)]
    #[schema(
        pattern = r"^https://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,4})?(/[!-~]*)?$"
    )]
    pub callback_url: Option<String>,
    /// Up to 20 keys of your own data (at most 4 KiB of JSON, no U+0000), returned as given.
    /// Numbers are kept as 64-bit integers when they are integers that fit, else as doubles
    /// (17 significant digits): send longer ones, such as IDs beyond 64 bits, as strings.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub flow: Option<Flow>,
    /// 360dialog channel id from the onboarding redirect (`embedded_signup` only). Without it,
    /// an `embedded_signup` migration waits in `awaiting_signup` until 360dialog shows a channel
    /// for the number (or the id is sent with `PATCH /v1/migrations/{id}`).
    #[serde(default)]
    #[schema(
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub channel_id: Option<String>,
    /// `hosted` (the default): the migration gets an end client page, whose link
    /// (`client_page.url`) you send to your client; `disabled`: no page (you run your own
    /// screens and relay the code).
    // Left out when absent, so a body's idempotency fingerprint is what it was before this
    // field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_page: Option<ClientPageMode>,
}

impl std::fmt::Debug for CreateMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateMigration")
            .field("phone_number", &self.phone_number)
            .field("source_waba_id", &self.source_waba_id)
            .field("destination_waba_id", &self.destination_waba_id)
            .field("meta_business_id", &self.meta_business_id)
            .field("flow", &self.flow)
            .field("pin", &self.pin.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// The four ids every migration names, checked.
struct Accounts {
    phone: E164,
    source: String,
    destination: String,
    business: String,
}

/// Reads `phone_number`, `source_waba_id`, `destination_waba_id` and `meta_business_id` (the
/// create and precheck bodies): as sent, and checked once all four are valid.
struct AccountFields {
    phone_number: Option<String>,
    source_waba_id: Option<String>,
    destination_waba_id: Option<String>,
    meta_business_id: Option<String>,
    checked: Option<Accounts>,
}

impl AccountFields {
    fn read(f: &mut Fields) -> Self {
        let phone_number = f.required::<String>("phone_number");
        let source_waba_id = f.required::<String>("source_waba_id");
        let destination_waba_id = f.required::<String>("destination_waba_id");
        let meta_business_id = f.required::<String>("meta_business_id");
        let phone = phone_number
            .as_deref()
            .and_then(|p| f.check("phone_number", E164::parse(p)));
        let mut id = |name, v: &Option<String>| {
            v.as_deref()
                .and_then(|v| f.check(name, values::parse_meta_id(v)))
        };
        let source = id("source_waba_id", &source_waba_id);
        let destination = id("destination_waba_id", &destination_waba_id);
        let business = id("meta_business_id", &meta_business_id);
        if source.is_some() && source == destination {
            f.error("destination_waba_id", "must differ from source_waba_id");
        }
        let checked = match (phone, source, destination, business) {
            (Some(phone), Some(source), Some(destination), Some(business)) => Some(Accounts {
                phone,
                source,
                destination,
                business,
            }),
            _ => None,
        };
        Self {
            phone_number,
            source_waba_id,
            destination_waba_id,
            meta_business_id,
            checked,
        }
    }
}

/// `POST /v1/migrations` (and each item of `POST /v1/batches`): the body as sent (its
/// idempotency fingerprint) and its checked values.
pub(super) struct NewMigrationRequest {
    pub(super) body: CreateMigration,
    accounts: Accounts,
    otp_method: OtpMethod,
    otp_language: String,
    pin: Option<String>,
    callback_url: Option<String>,
    metadata: Value,
    flow: Flow,
    channel_id: Option<String>,
    client_page: ClientPageMode,
}

/// A 360dialog channel id as sent (create, `PATCH`): 1 to 64 characters, not blank, no control
/// characters; surrounding spaces trimmed.
fn check_channel_id(c: &str) -> Result<String, String> {
    if !c.trim().is_empty() && c.chars().count() <= 64 && !c.chars().any(char::is_control) {
        Ok(c.trim().to_owned())
    } else {
        Err("a 360dialog channel id: 1 to 64 characters, not blank, no control characters".into())
    }
}

/// A webhook URL: `https` to a public host (anything http(s) with `ALLOW_PRIVATE_CALLBACKS`).
/// The resolved address is checked again at each delivery.
pub(super) fn validate_callback(url: &str, allow_private: bool) -> Result<String, String> {
    if url.len() > 2048 {
        return Err("at most 2048 characters".into());
    }
    if url.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    crate::core::ssrf::check_url(url, allow_private)
        .map(|_| url.to_owned())
        .map_err(|e| e.to_string())
}

fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// `metadata`: a small JSON object PostgreSQL can store.
fn check_metadata(metadata: &Value) -> Result<(), String> {
    match metadata {
        Value::Object(m) if m.len() > 20 => Err("at most 20 keys".into()),
        Value::Object(_) if metadata.to_string().len() > 4096 => {
            Err("at most 4 KiB of JSON".into())
        }
        // PostgreSQL's jsonb cannot store U+0000.
        Value::Object(_) if contains_nul(metadata) => {
            Err("must not contain U+0000 (NUL) in keys or strings".into())
        }
        Value::Object(_) => Ok(()),
        _ => Err("must be a JSON object".into()),
    }
}

impl NewMigrationRequest {
    /// Reads one create body from a JSON object: the one reader of `POST /v1/migrations`
    /// (through [`AppJson`]) and of each item of `POST /v1/batches`. Every problem, each at
    /// its pointer inside the object.
    pub(super) fn read_object(
        object: serde_json::Map<String, Value>,
        allow_private_callbacks: bool,
    ) -> Result<Self, Vec<super::problem::FieldError>> {
        let mut f = Fields::new(object, allow_private_callbacks);
        let body = <Self as JsonBody>::read(&mut f);
        match f.outcome(body) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(vec![super::problem::FieldError {
                pointer: String::new(),
                message: "invalid".into(),
                ..Default::default()
            }]),
            Err(errors) => Err(errors),
        }
    }

    /// The checked values, for the create command.
    pub(super) fn into_input(self) -> commands::NewMigrationInput {
        commands::NewMigrationInput {
            phone: self.accounts.phone,
            source_waba_id: self.accounts.source,
            destination_waba_id: self.accounts.destination,
            meta_business_id: self.accounts.business,
            flow: self.flow,
            channel_id: self.channel_id,
            otp_method: self.otp_method,
            otp_language: self.otp_language,
            pin: self.pin,
            callback_url: self.callback_url,
            metadata: self.metadata,
            client_page: self.client_page == ClientPageMode::Hosted,
        }
    }
}

impl JsonBody for NewMigrationRequest {
    fn read(f: &mut Fields) -> Option<Self> {
        let accounts = AccountFields::read(f);
        let otp_method = f.optional::<OtpMethod>("otp_method");
        let otp_language = f.optional::<String>("otp_language");
        let pin = f.optional::<String>("pin");
        let callback_url = f.optional::<String>("callback_url");
        let metadata = f.optional::<Value>("metadata");
        let flow = f.optional::<Flow>("flow");
        let channel_id = f.optional::<String>("channel_id");
        let client_page = f.optional::<ClientPageMode>("client_page");

        let language = match &otp_language {
            Some(l) => f.check("otp_language", values::parse_language(l)),
            None => Some("en_US".to_owned()),
        };
        let checked_pin = pin
            .as_deref()
            .and_then(|p| f.check("pin", values::parse_six_digits(p)));
        let allow_private = f.allow_private_callbacks();
        let checked_callback = callback_url
            .as_deref()
            .and_then(|u| f.check("callback_url", validate_callback(u, allow_private)));
        let checked_metadata = metadata.clone().unwrap_or_else(|| json!({}));
        f.check("metadata", check_metadata(&checked_metadata));
        let checked_channel = match (flow.unwrap_or_default(), channel_id.as_deref()) {
            // Already reported; a rule across both would only repeat it.
            _ if f.failed("flow") || f.failed("channel_id") => None,
            (Flow::EmbeddedSignup, Some(c)) => f.check("channel_id", check_channel_id(c)),
            // The client has not finished Embedded Signup yet: `awaiting_signup` waits for it.
            (Flow::EmbeddedSignup, None) => None,
            (Flow::Otp, Some(_)) => {
                f.error("channel_id", "only allowed with flow embedded_signup");
                None
            }
            (Flow::Otp, None) => None,
        };

        // An invalid optional field is `None` here, but its problem rejects the body.
        Some(Self {
            body: CreateMigration {
                phone_number: accounts.phone_number?,
                source_waba_id: accounts.source_waba_id?,
                destination_waba_id: accounts.destination_waba_id?,
                meta_business_id: accounts.meta_business_id?,
                otp_method,
                otp_language,
                pin,
                callback_url,
                metadata,
                flow,
                channel_id,
                client_page,
            },
            accounts: accounts.checked?,
            otp_method: otp_method.unwrap_or_default(),
            otp_language: language?,
            pin: checked_pin,
            callback_url: checked_callback,
            metadata: checked_metadata,
            flow: flow.unwrap_or_default(),
            channel_id: checked_channel,
            client_page: client_page.unwrap_or_default(),
        })
    }
}

/// Create a migration.
///
/// Starts one durable job for the number. Honours `Idempotency-Key`: the same key with the same
/// body returns the original response; with a different body, 422. A number whose completed
/// migration still holds the channel's live key is refused (`number_already_migrated`); its key
/// is replaced only by `POST /v1/migrations/{id}/api_key/rotate`.
#[utoipa::path(
    post, path = "/v1/migrations", tag = "migrations",
    request_body = CreateMigration,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe (up to 255 characters): for 24 hours the same key and body answer the first response again. After that the key names a new request.", max_length = 255, pattern = "^[!-~]([ -~]*[!-~])?$")),
    responses(
        (status = 201, description = "Created: the migration as `GET /v1/migrations/{id}` shows it (the same fields in the same order). An `Idempotency-Key` replay answers the first response again, with `Idempotent-Replayed: true`.", body = Migration,
            headers(
                ("Location" = String, description = "The migration's URL: `/v1/migrations/{id}`."),
                ("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same `Idempotency-Key`."),
            )),
        (status = 409, description = "The number has an active migration (`migration_already_active`, with `migration_id` when the caller may see it: another partner learns only that the number is busy), or a completed migration of the number holds an API key 360dialog still accepts (`number_already_migrated`, with `migration_id` when the caller may see it): migrating it again would revoke that key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The admin key: migrations belong to a partner (refused before the body is read)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn create_migration(
    State(state): State<AppState>,
    PartnerCaller(caller): PartnerCaller,
    headers: HeaderMap,
    AppJson(v): AppJson<NewMigrationRequest>,
) -> Result<Response, ApiError> {
    let idem_key = idempotency_key(&headers)?;
    let sent = json!(v.body);
    let idempotency = idem_key
        .as_deref()
        .map(|key| commands::Idempotency { key, body: &sent });
    let input = v.into_input();
    match commands::create(&state, caller, idempotency, input).await? {
        commands::Created::New(m) => Ok(created(&m)),
        commands::Created::Replay {
            status,
            body,
            migration,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            // The stored body (jsonb) lost the field order: write it as the first time.
            let mut res = match migration {
                Some(m) => created(&m),
                None => (status, axum::Json(body)).into_response(),
            };
            res.headers_mut().insert(
                "idempotent-replayed",
                "true".parse().expect("static header"),
            );
            Ok(res)
        }
    }
}

/// The `Idempotency-Key` header of a create, checked.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        Some(h) => {
            let k = h
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::field(
                        "/headers/Idempotency-Key",
                        "must be 1 to 255 visible ASCII characters",
                    )
                })?;
            Ok(Some(k.to_owned()))
        }
        None => Ok(None),
    }
}

/// The caller of `POST /v1/migrations`: a partner. The admin key is refused (403) before the
/// body is read, whatever the body: its problems are not the admin's to fix.
pub(super) struct PartnerCaller(pub(super) Caller);

impl<S> FromRequestParts<S> for PartnerCaller
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        commands::partner_of(caller)?;
        Ok(Self(caller))
    }
}

/// The 201 of `POST /v1/migrations`, first or replayed: the body `GET /v1/migrations/{id}`
/// answers (same fields, same order) and the `Location` of the migration.
fn created(m: &Migration) -> Response {
    let mut res = (StatusCode::CREATED, axum::Json(m)).into_response();
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/migrations/{}", m.id)).expect("a path of a uuid"),
    );
    res
}

/// The filters of `GET /v1/migrations`, checked.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only migrations in this state.
    pub state: Option<MigrationState>,
    /// Only this number, E.164 with its `+` URL-encoded: `phone_number=%2B5511987654321`
    /// (a bare `+` in a query string means a space).
    #[param(value_type = Option<PhoneNumber>)]
    pub phone_number: Option<E164>,
    /// Created strictly after this RFC 3339 timestamp, e.g. `2026-12-01T00:00:00Z` (an offset's
    /// `+` URL-encoded as `%2B`).
    pub created_after: Option<DateTime<Utc>>,
    /// Created strictly before this RFC 3339 timestamp.
    pub created_before: Option<DateTime<Utc>>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    pub cursor: Option<Uuid>,
    /// Admin only: one partner's migrations.
    pub partner_id: Option<Uuid>,
}

/// A `created_after`/`created_before` filter: RFC 3339 with a four-digit year (chrono reads
/// more, PostgreSQL stores less).
fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    s.parse::<DateTime<Utc>>()
        .ok()
        .filter(|t| (0..=9999).contains(&chrono::Datelike::year(t)))
        .ok_or_else(|| "expected an RFC 3339 timestamp such as 2026-12-01T00:00:00Z".to_owned())
}

impl FromQuery for ListQuery {
    fn read(q: &mut QueryParams) -> Option<Self> {
        let state = q.get("state", |s| {
            s.parse::<MigrationState>().map_err(|_| {
                let all: Vec<&str> = MigrationState::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "expected a migration state such as awaiting_otp: one of {}",
                    all.join(", ")
                )
            })
        });
        let phone_number = q.get("phone_number", |s| {
            E164::parse(s).map_err(|m| {
                format!(
                    "{m}: expected an E.164 number such as +5511987654321, its `+` URL-encoded as `%2B` (`phone_number=%2B5511987654321`)"
                )
            })
        });
        let created_after = q.get("created_after", parse_timestamp);
        let created_before = q.get("created_before", parse_timestamp);
        let (limit, cursor, partner_id) = read_id_paging(q);
        Some(Self {
            state,
            phone_number,
            created_after,
            created_before,
            limit,
            cursor,
            partner_id,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationPage {
    pub data: Vec<Migration>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List migrations, newest first.
#[utoipa::path(
    get, path = "/v1/migrations", tag = "migrations",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of migrations", body = MigrationPage),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_migrations(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<axum::Json<MigrationPage>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    let partner_id = list_scope(caller, q.partner_id)?;
    let filter = store::ListFilter {
        partner_id,
        state: q.state.map(|s| s.as_str().to_owned()),
        phone_number: q.phone_number.map(|p| p.as_str().to_owned()),
        created_after: q.created_after,
        created_before: q.created_before,
        before_id: q.cursor,
        limit,
        ..Default::default()
    };
    let mut rows = store::list(&state.pool, &filter).await?;
    let next_cursor = finish_id_page(&mut rows, limit, |r| r.id);
    let mut data: Vec<Migration> = rows.iter().map(Migration::from).collect();
    client_page::attach(&state, &rows, &mut data).await?;
    Ok(axum::Json(MigrationPage { data, next_cursor }))
}

/// Get one migration.
#[utoipa::path(
    get, path = "/v1/migrations/{id}", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    responses(
        (status = 200, description = "The migration", body = Migration),
        (status = 404, description = "No such migration for this key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_migration(
    State(state): State<AppState>,
    key: ApiKey,
    id: Result<IdPath<Uuid>, ApiError>,
) -> Result<axum::Json<Migration>, ApiError> {
    let IdPath(id) = match id {
        Ok(id) => id,
        // Authenticated first, as on every route: a bad key is 401 whatever the path.
        Err(bad_path) => {
            key.caller(&state).await?;
            return Err(bad_path);
        }
    };
    // The most polled route: the key is looked up by the statement that reads the migration.
    Ok(axum::Json(
        client_page::fetch_with_page_for_key(&state, key.client, &key.hash, id).await?,
    ))
}

/// Body of `PATCH /v1/migrations/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMigration {
    /// The 360dialog channel id of the number, from the Embedded Signup redirect: 1 to 64
    /// characters, not blank, no control characters.
    #[schema(
        example = "abc123CH",
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub channel_id: String,
}

impl JsonBody for UpdateMigration {
    fn read(f: &mut Fields) -> Option<Self> {
        let channel_id = f.required::<String>("channel_id")?;
        let channel_id = f.check("channel_id", check_channel_id(&channel_id))?;
        Some(Self { channel_id })
    }
}

/// Set the 360dialog channel of an Embedded Signup migration.
///
/// For a migration created with `flow` `embedded_signup` and no `channel_id`, once the client
/// finished Embedded Signup and the partner got the channel id from its redirect. Allowed in
/// `queued` and `prechecking` (the migration then skips `awaiting_signup` when 360dialog lists
/// the channel) and in
/// `awaiting_signup`, where it looks the channel up at once instead of at its next poll. The
/// state does not change; the audit trail records `migration.channel_id_set` (no webhook).
/// Sending the id the migration already has outside `awaiting_signup` changes nothing.
#[utoipa::path(
    patch, path = "/v1/migrations/{id}", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    request_body = UpdateMigration,
    responses(
        (status = 200, description = "The migration, with its `channel_id`", body = Migration),
        (status = 404, description = "No such migration for this key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not an Embedded Signup migration (`flow_mismatch`), or past the point where a channel id can be set (`invalid_state`, with `state`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown fields (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn update_migration(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
    AppJson(body): AppJson<UpdateMigration>,
) -> Result<axum::Json<Migration>, ApiError> {
    let row = commands::set_channel_id(&state, caller, id, &body.channel_id).await?;
    shown(&state, &row).await
}

/// An audit-trail entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct Event {
    pub seq: i32,
    /// What happened: `EventType` lists and explains every type.
    #[serde(rename = "type")]
    #[schema(value_type = EventType)]
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<Event>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A migration's audit trail, oldest first.
///
/// A page at a time: `limit` events (default 50, at most 100), then the next page from the
/// `cursor` the previous one returned as `next_cursor` (null on the last page).
///
/// Every transition is one event whose `type` is the `type` of the webhook sent for the same
/// change: `migration.awaiting_otp`, `migration.completed`, `migration.failed` or
/// `migration.cancelled` for those states, `migration.state_changed` for any other. Events that
/// change no state (`migration.created`, `migration.step_retry_scheduled`,
/// `migration.api_key_generated`, `migration.api_key_retrieved`,
/// `migration.api_key_superseded`) send no webhook. `EventType`
/// lists every type.
/// `migration.waiting_for_changed` changes no state either, but is sent as a webhook.
#[utoipa::path(
    get, path = "/v1/migrations/{id}/events", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id"), SequencePage),
    responses(
        (status = 200, description = "A page of events", body = EventList),
        (status = 404, description = "No such migration for this key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
    AppQuery(page): AppQuery<SequencePage>,
) -> Result<axum::Json<EventList>, ApiError> {
    commands::fetch(&state, caller, id).await?;
    let mut rows = db::events::page(&state.pool, id, page.cursor, page.limit()).await?;
    let next_cursor = page.finish(&mut rows, |e| e.seq);
    Ok(axum::Json(EventList {
        next_cursor,
        data: rows
            .into_iter()
            .map(|e| Event {
                seq: e.seq,
                kind: e.kind,
                from_state: e.from_state,
                to_state: e.to_state,
                data: e.data,
                created_at: e.created_at,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitOtp {
    /// The 6-digit code the client received; as WhatsApp's message shows it (`123-456`, or
    /// with a space) it is read as its 6 digits.
    #[schema(example = "123456", pattern = "^[0-9]{3}[ -]?[0-9]{3}$")]
    pub code: String,
}

impl JsonBody for SubmitOtp {
    fn read(f: &mut Fields) -> Option<Self> {
        let code = f.required::<String>("code")?;
        let code = f.check("code", values::parse_verification_code(&code))?;
        Some(Self { code })
    }
}

/// Submit the verification code.
///
/// Accepted in `awaiting_otp`; the job moves to `verifying_otp`. A wrong code brings it back to
/// `awaiting_otp` with `otp.attempts_left` reduced (no new code is requested).
#[utoipa::path(
    post, path = "/v1/migrations/{id}/otp", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    request_body = SubmitOtp,
    responses(
        (status = 202, description = "Accepted for verification", body = Migration),
        (status = 409, description = "Not awaiting a code (`invalid_state`) or the code expired (`otp_expired`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not 6 digits (`123456`, `123-456` or `123 456`)", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn submit_otp(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
    AppJson(SubmitOtp { code }): AppJson<SubmitOtp>,
) -> Result<(StatusCode, axum::Json<Migration>), ApiError> {
    let r = commands::submit_code(&state, caller, id, &code, commands::Source::Api).await?;
    Ok((StatusCode::ACCEPTED, shown(&state, &r).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendOtp {
    /// Default: the migration's current method.
    #[serde(default)]
    pub method: Option<OtpMethod>,
}

impl JsonBody for ResendOtp {
    fn read(f: &mut Fields) -> Option<Self> {
        Some(Self {
            method: f.optional("method"),
        })
    }
}

/// Request a new verification code (SMS or voice).
#[utoipa::path(
    post, path = "/v1/migrations/{id}/otp/resend", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    request_body = ResendOtp,
    responses(
        (status = 202, description = "A new code will be requested", body = Migration),
        (status = 409, description = "Not awaiting a code", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Inside the resend cooldown (`otp_resend_too_soon`), or too many requests with this key (`rate_limited`) or invalid keys from this address (`too_many_auth_failures`); retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn resend_otp(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
    AppJson(body): AppJson<ResendOtp>,
) -> Result<(StatusCode, axum::Json<Migration>), ApiError> {
    let r = commands::resend(&state, caller, id, body.method, commands::Source::Api).await?;
    Ok((StatusCode::ACCEPTED, shown(&state, &r).await?))
}

/// Cancel a migration that has not finished.
///
/// Upstream changes already made (e.g. a registered number) are not undone.
#[utoipa::path(
    post, path = "/v1/migrations/{id}/cancel", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    responses(
        (status = 200, description = "Cancelled", body = Migration),
        (status = 409, description = "Already completed, failed or cancelled (`invalid_state`); or a worker is registering the number or generating its API key right now (`call_in_flight`): cancel again after `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "With `call_in_flight`: seconds until the call in flight has its answer or its time runs out."))),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn cancel_migration(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<axum::Json<Migration>, ApiError> {
    let r = commands::cancel(&state, caller, id, commands::Source::Api).await?;
    shown(&state, &r).await
}

/// Resume a failed migration from the step that failed.
///
/// OTP failures resume by requesting a new code.
#[utoipa::path(
    post, path = "/v1/migrations/{id}/retry", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    responses(
        (status = 202, description = "Resumed", body = Migration),
        (status = 409, description = "Not failed (`invalid_state`), or another migration of the number is active (`migration_already_active`)", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn retry_migration(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<(StatusCode, axum::Json<Migration>), ApiError> {
    let r = commands::retry(&state, caller, id, commands::Source::Api).await?;
    Ok((StatusCode::ACCEPTED, shown(&state, &r).await?))
}

/// The generated 360dialog API key.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyOut {
    /// Send as `D360-API-KEY` to the Messaging API. Generating another key revokes this one.
    pub api_key: String,
    /// Messaging API host for this key.
    pub address: String,
    pub channel_id: Option<String>,
}

/// Fetch the channel's 360dialog API key (after `completed`).
///
/// The first fetch of a key is recorded in the audit trail (`migration.api_key_retrieved`);
/// fetching it again is a pure read: no event, and the migration's `updated_at` stays.
#[utoipa::path(
    get, path = "/v1/migrations/{id}/api_key", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    responses(
        (status = 200, description = "The key", body = ApiKeyOut),
        (status = 409, description = "Not available yet (`api_key_not_ready`: not completed, or a rotation is generating the new key), or 360dialog no longer accepts the key this migration held (`api_key_superseded`)", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_api_key(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<Response, ApiError> {
    let key = commands::reveal_api_key(&state, caller, id).await?;
    Ok(key_response(key))
}

/// A key, never cached.
fn key_response(key: commands::RevealedKey) -> Response {
    let body = ApiKeyOut {
        api_key: key.api_key.expose_secret().to_owned(),
        address: key.address,
        channel_id: key.channel_id,
    };
    let mut res = axum::Json(body).into_response();
    res.headers_mut()
        .insert("cache-control", "no-store".parse().expect("static header"));
    res
}

/// Replace the channel's 360dialog API key of a completed migration.
///
/// Generating a key revokes every earlier key of the channel, so this is the only way this
/// service replaces a key it delivered. The migration goes back to `generating_api_key` with
/// `api_key.status` `superseded` (the key held is never reported `verified` again); the worker
/// generates the new key once (its intent recorded before the call, the key stored the instant
/// it arrives), verifies it and completes the migration again (a `migration.completed`
/// webhook). The request waits for that, up to 25 s, and answers the new key. If 360dialog
/// makes it wait longer (it allows one new key per channel per 30 s), the answer is 202 with
/// the migration, and `GET /v1/migrations/{id}/api_key` answers the new key once it is
/// completed again. Each accepted call generates one new key.
#[utoipa::path(
    post, path = "/v1/migrations/{id}/api_key/rotate", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    responses(
        (status = 200, description = "The new key (the old one is `superseded`)", body = ApiKeyOut,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 202, description = "Still generating after 25 s: the migration, `generating_api_key` with `api_key.status` `superseded`; fetch the key from `/api_key` once it is `completed`", body = Migration),
        (status = 409, description = "Not completed (`invalid_state`, also while a rotation runs), another completed migration of the number holds the channel's live key (`number_already_migrated`, with `migration_id` when the caller may see it), another migration of the number is active (`migration_already_active`), or the rotation failed (the migration's error code, e.g. `api_key_permission_missing`; `retry` resumes it)", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn rotate_api_key(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<Response, ApiError> {
    match commands::rotate_api_key(&state, caller, id, ROTATE_WAIT).await? {
        commands::Rotation::Done(key) => Ok(key_response(key)),
        commands::Rotation::Pending(row) => {
            Ok((StatusCode::ACCEPTED, shown(&state, &row).await?).into_response())
        }
    }
}

/// A migration as its owner sees it: the public JSON with its `client_page`.
async fn shown(
    state: &AppState,
    row: &store::MigrationRow,
) -> Result<axum::Json<Migration>, ApiError> {
    Ok(axum::Json(client_page::with_page(state, row).await?))
}

/// Replace the client page link.
///
/// The migration's end client page gets a new link (`client_page.url`, with a new
/// `expires_at`); the previous link stops working at once and answers 404 "link no longer
/// valid". Use it when a link reached the wrong person, or expired before the client acted.
#[utoipa::path(
    post, path = "/v1/migrations/{id}/client_page/rotate", tag = "migrations",
    params(("id" = Uuid, Path, description = "Migration id")),
    responses(
        (status = 200, description = "The migration with its new `client_page`", body = Migration),
        (status = 404, description = "No such migration for this key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The migration has no client page (`client_page_disabled`: created with `\"client_page\": \"disabled\"`), or it is `completed` or `cancelled` (`invalid_state`)", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn rotate_client_page(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<axum::Json<Migration>, ApiError> {
    let (row, page) = commands::rotate_client_page(&state, caller, id).await?;
    let mut m = Migration::from(&row);
    m.client_page = Some(Some(page));
    Ok(axum::Json(m))
}

/// How long `POST …/api_key/rotate` waits for the new key: inside the request timeout.
const ROTATE_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

/// Body of `POST /v1/prechecks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrecheckRequest {
    #[schema(value_type = PhoneNumber)]
    pub phone_number: String,
    #[schema(example = "102290129340398", pattern = "^[0-9]{1,32}$")]
    pub source_waba_id: String,
    #[schema(example = "104996122399160", pattern = "^[0-9]{1,32}$")]
    pub destination_waba_id: String,
    #[schema(example = "180505742745347", pattern = "^[0-9]{1,32}$")]
    pub meta_business_id: String,
    #[serde(default)]
    pub flow: Option<Flow>,
}

/// `POST /v1/prechecks`, checked.
struct PrecheckBody {
    accounts: Accounts,
    flow: Flow,
}

impl JsonBody for PrecheckBody {
    fn read(f: &mut Fields) -> Option<Self> {
        let accounts = AccountFields::read(f);
        let flow = f.optional::<Flow>("flow");
        Some(Self {
            accounts: accounts.checked?,
            flow: flow.unwrap_or_default(),
        })
    }
}

/// Dry-run the prechecks without creating a migration.
#[utoipa::path(
    post, path = "/v1/prechecks", tag = "migrations",
    request_body = PrecheckRequest,
    responses(
        (status = 200, description = "The report (its `status` says pass, warn or fail)", body = PrecheckReport),
        (status = 502, description = "An upstream API failed, with `upstream` and the code a migration's precheck would have: `upstream_auth` (our token refused, or a WABA it cannot read), `upstream_unavailable` (transient) or `upstream_rejected`", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn run_precheck(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<PrecheckBody>,
) -> Result<axum::Json<PrecheckReport>, ApiError> {
    if let Some(limiter) = &state.precheck_limiter {
        let key = match caller {
            Caller::Partner(id) => *id.as_bytes(),
            Caller::Admin => [0; 16],
        };
        if let Err(wait) = limiter.check(&key) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many dry-run prechecks (PRECHECK_RATE_PER_MINUTE): each reads the Graph API several times; retry after the time in Retry-After.",
            )
            .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u64));
        }
    }
    let PrecheckBody { accounts: v, flow } = body;
    let report = commands::dry_run_precheck(
        &state,
        commands::PrecheckInput {
            phone: &v.phone,
            source_waba_id: &v.source,
            destination_waba_id: &v.destination,
            meta_business_id: &v.business,
            flow,
        },
    )
    .await?;
    Ok(axum::Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::testing::{assert_body_matches_schema, assert_query_matches_params};

    #[test]
    fn readers_take_what_the_openapi_document_describes() {
        assert_body_matches_schema::<NewMigrationRequest, CreateMigration>();
        assert_body_matches_schema::<PrecheckBody, PrecheckRequest>();
        assert_body_matches_schema::<SubmitOtp, SubmitOtp>();
        assert_body_matches_schema::<ResendOtp, ResendOtp>();
        assert_body_matches_schema::<UpdateMigration, UpdateMigration>();
        assert_query_matches_params::<ListQuery>();
        assert_query_matches_params::<SequencePage>();
    }

    #[test]
    fn a_create_body_and_its_checked_input_never_show_the_pin() {
        let body: CreateMigration = serde_json::from_value(serde_json::json!({
            "phone_number": "+14155550100", "source_waba_id": "1", "destination_waba_id": "2",
            "meta_business_id": "3", "pin": "864209"
        }))
        .unwrap();
        let shown = format!("{body:?}");
        assert!(
            shown.contains("+14155550100") && shown.contains("[redacted]"),
            "{shown}"
        );
        assert!(!shown.contains("864209"), "{shown}");
        let mut f = Fields::new(
            serde_json::to_value(&body)
                .unwrap()
                .as_object()
                .unwrap()
                .clone(),
            false,
        );
        let read = NewMigrationRequest::read(&mut f);
        let input = f.finish(read).unwrap().into_input();
        let shown = format!("{input:?}");
        assert!(
            shown.contains("[redacted]") && !shown.contains("864209"),
            "{shown}"
        );
    }
}
