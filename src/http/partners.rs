//! `/v1/partners…`: tenants and their API keys (admin).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, SubsecRound, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{
    Admin, AppJson, AppQuery, Caller, Fields, FromQuery, IdPath, JsonBody, QueryParams, parse_limit,
};
use super::migrations::validate_callback;
use super::problem::{ApiError, Problem};
use crate::core::{AppState, partners};
use crate::crypto;
use crate::crypto::aad;
use crate::db::{self, partners as store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_partner, list_partners))
        .routes(routes!(get_partner, update_partner))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
        .routes(routes!(rotate_webhook_secret))
}

// `Debug` by hand (below): the Partner API key never shows.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePartner {
    /// 1 to 200 characters, not blank, no control characters.
    #[schema(
        example = "Acme Messaging",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// 360dialog partner id (ends in `PA`).
    #[schema(example = "examplePA", pattern = "^[A-Za-z0-9]{1,64}$")]
    pub d360_partner_id: String,
    /// The partner's 360dialog Partner API key (sent as `X-API-Key`); stored encrypted.
    #[schema(pattern = "^[!-~]{1,512}$")]
    pub d360_api_key: String,
    /// Default webhook URL for this partner's migrations.
    #[serde(default)]
    #[schema(
        pattern = r"^https://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,4})?(/[!-~]*)?$"
    )]
    pub callback_url: Option<String>,
}

impl std::fmt::Debug for CreatePartner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatePartner")
            .field("name", &self.name)
            .field("d360_partner_id", &self.d360_partner_id)
            .field("d360_api_key", &"[redacted]")
            .field("callback_url", &self.callback_url)
            .finish()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Partner {
    pub id: Uuid,
    pub name: String,
    pub d360_partner_id: String,
    pub callback_url: Option<String>,
    /// The partner's 360dialog signup link, which the client page of an Embedded Signup
    /// migration offers as the button to continue; `null` when none is set.
    pub signup_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&store::PartnerRow> for Partner {
    fn from(p: &store::PartnerRow) -> Self {
        Partner {
            id: p.id,
            name: p.name.clone(),
            d360_partner_id: p.d360_partner_id.clone(),
            callback_url: p.callback_url.clone(),
            signup_url: p.signup_url.clone(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerCreated {
    pub partner: Partner,
    /// Our API key for this partner. Shown once: only its hash is stored.
    pub api_key: String,
    /// Standard Webhooks signing secret (`whsec_…`).
    pub webhook_secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyCreated {
    pub id: Uuid,
    /// Shown once.
    pub api_key: String,
    /// Visible part, to recognise the key later.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecret {
    /// The new `whsec_…` secret (shown once).
    pub webhook_secret: String,
    /// Until then webhooks carry a second signature made with the previous secret, so
    /// consumers can switch without rejecting deliveries.
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// Body of `PATCH /v1/partners/{id}`: the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePartner {
    /// New display name: 1 to 200 characters, not blank, no control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: Option<String>,
    /// Default webhook URL for migrations created without one; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(
        value_type = Option<String>,
        pattern = r"^https://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,4})?(/[!-~]*)?$"
    )]
    pub callback_url: Option<Option<String>>,
    /// The partner's 360dialog signup link (its Embedded Signup / Integrated Onboarding URL),
    /// offered to its clients by the client page: an absolute `https://` URL, at most 2048
    /// characters; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(
        value_type = Option<String>,
        max_length = 2048,
        pattern = r"^https://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,4})?(/[!-~]*)?$"
    )]
    pub signup_url: Option<Option<String>>,
}

/// A partner's display name: 1 to 200 characters, not blank, no control characters.
fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 200 && !name.chars().any(char::is_control)
}

/// Tells `"field": null` (Some(None)) from an absent field (None).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartnerPage {
    pub data: Vec<Partner>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PartnerListQuery {
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    pub cursor: Option<Uuid>,
}

/// `Ok(value)` if `ok`, else the `rule` it breaks.
fn ensure<T>(ok: bool, value: T, rule: &str) -> Result<T, String> {
    if ok { Ok(value) } else { Err(rule.to_owned()) }
}

const NAME_RULE: &str = "1 to 200 characters, not blank, no control characters";

impl JsonBody for CreatePartner {
    fn read(f: &mut Fields) -> Option<Self> {
        let name = f.required::<String>("name");
        let d360_partner_id = f.required::<String>("d360_partner_id");
        let d360_api_key = f.required::<String>("d360_api_key");
        let callback_url = f.optional::<String>("callback_url");
        let name = name.and_then(|n| f.check("name", ensure(valid_name(&n), n, NAME_RULE)));
        let d360_partner_id = d360_partner_id.and_then(|id| {
            let ok = !id.trim().is_empty()
                && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric());
            let rule = "the 360dialog partner id: letters and digits, e.g. examplePA";
            f.check("d360_partner_id", ensure(ok, id, rule))
        });
        let d360_api_key = d360_api_key.and_then(|k| {
            let ok = !k.trim().is_empty()
                && k.len() <= 512
                && k.trim().chars().all(|c| c.is_ascii_graphic());
            let rule = "the partner's 360dialog API key (printable characters, at most 512)";
            f.check("d360_api_key", ensure(ok, k, rule))
        });
        let allow_private = f.allow_private_callbacks();
        let callback_url = callback_url
            .and_then(|u| f.check("callback_url", validate_callback(&u, allow_private)));
        // An invalid optional field is `None` here, but its problem rejects the body.
        Some(Self {
            name: name?,
            d360_partner_id: d360_partner_id?,
            d360_api_key: d360_api_key?,
            callback_url,
        })
    }
}

impl JsonBody for UpdatePartner {
    fn read(f: &mut Fields) -> Option<Self> {
        let name = f
            .optional::<String>("name")
            .and_then(|n| f.check("name", ensure(valid_name(&n), n, NAME_RULE)));
        let allow_private = f.allow_private_callbacks();
        let callback_url = f
            .nullable::<String>("callback_url")
            .map(|u| u.and_then(|u| f.check("callback_url", validate_callback(&u, allow_private))));
        let signup_url = f.nullable::<String>("signup_url").map(|u| {
            u.and_then(|u| f.check("signup_url", crate::core::partners::check_signup_url(&u)))
        });
        Some(Self {
            name,
            callback_url,
            signup_url,
        })
    }
}

impl FromQuery for PartnerListQuery {
    fn read(q: &mut QueryParams) -> Option<Self> {
        let limit = q.get("limit", parse_limit);
        let cursor = q.get("cursor", |s| {
            Uuid::parse_str(s).map_err(|_| {
                "expected the next_cursor of a previous page (a partner id), unchanged".to_owned()
            })
        });
        Some(Self { limit, cursor })
    }
}

/// Create a partner (tenant); returns its first API key and webhook secret, shown once.
#[utoipa::path(
    post, path = "/v1/partners", tag = "partners",
    request_body = CreatePartner,
    responses(
        (status = 201, description = "Created", body = PartnerCreated),
        (status = 403, description = "Not the admin key", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn create_partner(
    State(state): State<AppState>,
    _admin: Admin,
    AppJson(body): AppJson<CreatePartner>,
) -> Result<(StatusCode, axum::Json<PartnerCreated>), ApiError> {
    let created = create_partner_with_key(&state, &body).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Creates a partner and its first key ([`crate::core::partners::create`]) and answers them.
pub async fn create_partner_with_key(
    state: &AppState,
    body: &CreatePartner,
) -> Result<PartnerCreated, ApiError> {
    let created = crate::core::partners::create(
        state,
        crate::core::partners::NewPartner {
            name: &body.name,
            d360_partner_id: &body.d360_partner_id,
            d360_api_key: &body.d360_api_key,
            callback_url: body.callback_url.clone(),
        },
    )
    .await?;
    Ok(PartnerCreated {
        partner: Partner::from(&created.row),
        api_key: created.api_key.expose_secret().to_owned(),
        webhook_secret: created.webhook_secret.expose_secret().to_owned(),
    })
}

/// List partners, newest first.
#[utoipa::path(
    get, path = "/v1/partners", tag = "partners",
    params(PartnerListQuery),
    responses(
        (status = 200, description = "A page of partners", body = PartnerPage),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_partners(
    State(state): State<AppState>,
    _admin: Admin,
    AppQuery(q): AppQuery<PartnerListQuery>,
) -> Result<axum::Json<PartnerPage>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    let mut rows = store::list(&state.pool, q.cursor, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(axum::Json(PartnerPage {
        data: rows.iter().map(Partner::from).collect(),
        next_cursor,
    }))
}

async fn visible_partner(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<store::PartnerRow, ApiError> {
    partners::own_or_admin(caller, id)?;
    match store::get(&state.pool, id).await {
        Ok(p) => Ok(p),
        Err(db::Error::NotFound) => Err(ApiError::not_found("partner")),
        Err(e) => Err(e.into()),
    }
}

/// Get a partner (admin, or the partner itself).
#[utoipa::path(
    get, path = "/v1/partners/{id}", tag = "partners",
    params(("id" = Uuid, Path, description = "Partner id")),
    responses(
        (status = 200, description = "The partner", body = Partner),
        (status = 404, description = "Not found (also another partner's id with a partner key)", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn get_partner(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<axum::Json<Partner>, ApiError> {
    let p = visible_partner(&state, caller, id).await?;
    Ok(axum::Json(Partner::from(&p)))
}

/// Change a partner's name (admin), default webhook URL or signup link (admin, or the partner
/// itself).
///
/// Only the fields sent change; `null` removes a URL. `signup_url` is the partner's 360dialog
/// signup link, which the client page of an Embedded Signup migration offers as the button to
/// continue. A new default `callback_url` also applies to the webhooks not delivered yet that
/// go to the default (of migrations and batches without their own); once it is removed, those
/// end `failed`.
#[utoipa::path(
    patch, path = "/v1/partners/{id}", tag = "partners",
    params(("id" = Uuid, Path, description = "Partner id")),
    request_body = UpdatePartner,
    responses(
        (status = 200, description = "The updated partner", body = Partner),
        (status = 403, description = "A partner key changing `name` (the admin's)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found (also another partner's id with a partner key)", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn update_partner(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
    AppJson(body): AppJson<UpdatePartner>,
) -> Result<axum::Json<Partner>, ApiError> {
    let change = partners::PartnerChange {
        name: body.name.as_deref().map(str::trim),
        callback_url: body.callback_url.as_ref().map(Option::as_deref),
        signup_url: body.signup_url.as_ref().map(Option::as_deref),
    };
    let p = partners::update(&state, caller, id, change).await?;
    Ok(axum::Json(Partner::from(&p)))
}

/// Issue another API key for a partner (shown once).
#[utoipa::path(
    post, path = "/v1/partners/{id}/api_keys", tag = "partners",
    params(("id" = Uuid, Path, description = "Partner id")),
    responses(
        (status = 201, description = "Created", body = ApiKeyCreated),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<(StatusCode, axum::Json<ApiKeyCreated>), ApiError> {
    caller.require_admin()?;
    visible_partner(&state, caller, id).await?;
    let (key, prefix) = crypto::generate_api_key();
    let row = store::insert_api_key(
        &state.pool,
        Uuid::now_v7(),
        id,
        &prefix,
        &crypto::hash_api_key(key.expose_secret()),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ApiKeyCreated {
            id: row.id,
            api_key: key.expose_secret().to_owned(),
            prefix: row.prefix,
            created_at: row.created_at,
        }),
    ))
}

/// A partner API key as listed: never the key, only its visible prefix.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    /// The start of the key (`wm_<prefix>_…`), to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    /// Set once revoked; the key stops working at that moment.
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKeyInfo>,
}

/// List a partner's API keys (prefixes only), newest first.
#[utoipa::path(
    get, path = "/v1/partners/{id}/api_keys", tag = "partners",
    params(("id" = Uuid, Path, description = "Partner id")),
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 403, description = "Not the admin key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<axum::Json<ApiKeyList>, ApiError> {
    caller.require_admin()?;
    visible_partner(&state, caller, id).await?;
    let rows = store::list_api_keys(&state.pool, id).await?;
    Ok(axum::Json(ApiKeyList {
        data: rows
            .into_iter()
            .map(|k| ApiKeyInfo {
                id: k.id,
                prefix: k.prefix,
                created_at: k.created_at,
                revoked_at: k.revoked_at,
            })
            .collect(),
    }))
}

/// Revoke a partner API key; effective immediately.
#[utoipa::path(
    delete, path = "/v1/partners/{id}/api_keys/{key_id}", tag = "partners",
    params(
        ("id" = Uuid, Path, description = "Partner id"),
        ("key_id" = Uuid, Path, description = "Key id"),
    ),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    IdPath((id, key_id)): IdPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    match store::revoke_api_key(&state.pool, id, key_id).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(db::Error::NotFound) => Err(ApiError::not_found("API key")),
        Err(e) => Err(e.into()),
    }
}

/// Rotate the partner's webhook signing secret; returns the new one (shown once). The previous
/// secret keeps signing, as a second signature, for `WEBHOOK_SECRET_OVERLAP_SECONDS`; rotated
/// again within that time, the secret before it keeps signing too until its own overlap ends.
#[utoipa::path(
    post, path = "/v1/partners/{id}/webhook_secret/rotate", tag = "partners",
    params(("id" = Uuid, Path, description = "Partner id")),
    responses(
        (status = 200, description = "The new secret", body = WebhookSecret),
        (status = "4XX", description = "Client error", body = Problem, content_type = "application/problem+json"),
        (status = "5XX", description = "Server error", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn rotate_webhook_secret(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<Uuid>,
) -> Result<axum::Json<WebhookSecret>, ApiError> {
    caller.require_admin()?;
    visible_partner(&state, caller, id).await?;
    let secret = crypto::generate_webhook_secret();
    let overlap = chrono::Duration::from_std(state.webhooks.secret_overlap)
        .unwrap_or_else(|_| chrono::Duration::days(1));
    // PostgreSQL keeps microseconds: answer what is stored, like every other timestamp.
    let now = state.clock.now();
    let previous_secret_expires_at = (now + overlap).trunc_subsecs(6);
    db::webhooks::rotate_secret(
        &state.pool,
        id,
        &state
            .cipher
            .seal(secret.expose_secret(), &aad::webhook_secret(id)),
        now,
        previous_secret_expires_at,
    )
    .await?;
    tracing::info!(partner.id = %id, "webhook secret rotated; the previous one signs until the overlap ends");
    Ok(axum::Json(WebhookSecret {
        webhook_secret: secret.expose_secret().to_owned(),
        previous_secret_expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::testing::{assert_body_matches_schema, assert_query_matches_params};

    #[test]
    fn readers_take_what_the_openapi_document_describes() {
        assert_body_matches_schema::<CreatePartner, CreatePartner>();
        assert_body_matches_schema::<UpdatePartner, UpdatePartner>();
        assert_query_matches_params::<PartnerListQuery>();
    }

    #[test]
    fn a_create_body_never_shows_the_partner_api_key() {
        let body: CreatePartner = serde_json::from_value(serde_json::json!({
            "name": "Acme", "d360_partner_id": "acmePA", "d360_api_key": "k-7Hq2secret"
        }))
        .unwrap();
        let shown = format!("{body:?}");
        assert!(
            shown.contains("acmePA") && !shown.contains("k-7Hq2secret"),
            "{shown}"
        );
    }
}
