//! Our extractors: JSON bodies, queries and paths whose rejections are problem+json, and the
//! authenticated caller.
//!
//! Bodies and queries are read field by field ([`Fields`], [`QueryParams`]) rather than handed
//! whole to serde, which stops at the first problem: one 422 names every missing, unknown and
//! invalid field, each at its JSON pointer (`/phone_number`, `/query/limit`). Each field's value
//! is still decoded by serde, and the handler only sees a body in which every field was valid.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, RawPathParams};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::problem::{ApiError, FieldError};
use super::strict_json;
use crate::core::AppState;
use crate::core::auth::{self, ClientIp};
use crate::crypto;

/// The problem of a missing required field.
const MISSING: &str = "required, but missing";

/// An example id for messages.
pub const EXAMPLE_ID: &str = "019ac3a2-5b1e-7c4d-9a8e-2f1b3c4d5e6f";

/// A JSON Pointer (RFC 6901) of `segments`.
pub fn pointer<'a>(segments: impl IntoIterator<Item = &'a str>) -> String {
    segments
        .into_iter()
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// A request body read from a JSON object by [`AppJson`].
pub trait JsonBody: Sized {
    /// Reads every field from `f`, recording each problem there (never stopping at the
    /// first). The value is used only if no problem was recorded; fields left unread are
    /// reported as unknown.
    fn read(f: &mut Fields) -> Option<Self>;
}

/// A JSON body with problem+json rejections: 415 wrong content type, 400 malformed JSON, 400
/// `duplicate_json_key` (an object repeats a key, at any depth), 413 too large, 422
/// (`validation_failed`) with one `errors[]` entry per missing, unknown or invalid field. The
/// body must be a JSON object.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: JsonBody,
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let allow_private = AppState::from_ref(state).webhooks.allow_private;
        let value = json_body(req, state).await?;
        let Value::Object(object) = value else {
            return Err(ApiError::field("/", "the body must be a JSON object"));
        };
        let mut fields = Fields::new(object, allow_private);
        let body = T::read(&mut fields);
        fields.finish(body).map(AppJson)
    }
}

/// Body fields that carry secrets (DESIGN §3: never in error messages): a problem with one
/// names its type, never its value.
const SECRET_FIELDS: &[&str] = &["code", "pin", "d360_api_key"];

/// `message` without the values serde quotes in it (`` `123456` ``, `"123456"`).
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut closing = None;
    for c in message.chars() {
        match closing {
            Some(end) if c == end => closing = None,
            Some(_) => {}
            None if c == '`' || c == '"' => closing = Some(c),
            None => out.push(c),
        }
    }
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" ,", ",")
}

/// The fields of a JSON object body, taken one by one; collects every problem.
#[derive(Debug)]
pub struct Fields {
    rest: Map<String, Value>,
    read: Vec<&'static str>,
    errors: Vec<FieldError>,
    allow_private_callbacks: bool,
}

impl Fields {
    pub fn new(object: Map<String, Value>, allow_private_callbacks: bool) -> Self {
        Self {
            rest: object,
            read: Vec::new(),
            errors: Vec::new(),
            allow_private_callbacks,
        }
    }

    /// `ALLOW_PRIVATE_CALLBACKS`: callback URLs may be plain http and private.
    pub fn allow_private_callbacks(&self) -> bool {
        self.allow_private_callbacks
    }

    fn take(&mut self, name: &'static str) -> Option<Value> {
        self.read.push(name);
        self.rest.remove(name)
    }

    fn decode<T: DeserializeOwned>(&mut self, name: &'static str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut segments = vec![Cow::Borrowed(name)];
                segments.extend(e.path().iter().filter_map(|s| match s {
                    serde_path_to_error::Segment::Seq { index } => {
                        Some(Cow::Owned(index.to_string()))
                    }
                    serde_path_to_error::Segment::Map { key } => Some(Cow::Owned(key.clone())),
                    _ => None,
                }));
                let message = e.into_inner().to_string();
                self.errors.push(FieldError {
                    pointer: pointer(segments.iter().map(AsRef::as_ref)),
                    // serde quotes the value it could not read: not a secret's.
                    message: if SECRET_FIELDS.contains(&name) {
                        without_quoted(&message)
                    } else {
                        message
                    },
                    ..Default::default()
                });
                None
            }
        }
    }

    /// A field that must be present (`null` is a wrong type). `None`, with the problem
    /// recorded, when it is missing or invalid.
    pub fn required<T: DeserializeOwned>(&mut self, name: &'static str) -> Option<T> {
        match self.take(name) {
            Some(v) => self.decode(name, v),
            None => {
                self.error(name, MISSING);
                None
            }
        }
    }

    /// A field that may be absent or `null` (both `None`).
    pub fn optional<T: DeserializeOwned>(&mut self, name: &'static str) -> Option<T> {
        match self.take(name) {
            None | Some(Value::Null) => None,
            Some(v) => self.decode(name, v),
        }
    }

    /// A field whose `null` means "clear it": `None` absent, `Some(None)` null.
    pub fn nullable<T: DeserializeOwned>(&mut self, name: &'static str) -> Option<Option<T>> {
        match self.take(name) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => self.decode(name, v).map(Some),
        }
    }

    /// `r`'s value, or `None` with its message recorded at the field `name`.
    pub fn check<T>(&mut self, name: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|message| self.error(name, message)).ok()
    }

    /// Records a problem with the field `name`.
    pub fn error(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            pointer: pointer([name]),
            message: message.into(),
            ..Default::default()
        });
    }

    /// Whether a problem was recorded for the field `name` (to skip checks across fields
    /// that would only repeat it).
    pub fn failed(&self, name: &str) -> bool {
        let p = pointer([name]);
        self.errors
            .iter()
            .any(|e| e.pointer == p || e.pointer.starts_with(&format!("{p}/")))
    }

    /// Records problems found inside the field `name` (an item of a list, read with its own
    /// [`Fields`]): each at `/name/<its pointer>`.
    pub fn nested(&mut self, name: &str, errors: Vec<FieldError>) {
        let prefix = pointer([name]);
        self.errors.extend(errors.into_iter().map(|e| FieldError {
            pointer: format!("{prefix}{}", e.pointer),
            ..e
        }));
    }

    /// The body, or a 422 listing every problem: the recorded ones in field order, then one
    /// per unknown field.
    pub fn finish<T>(self, body: Option<T>) -> Result<T, ApiError> {
        match self.outcome(body) {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(ApiError::internal(anyhow::anyhow!(
                "a body reader returned nothing and recorded no problem"
            ))),
            Err(errors) => Err(ApiError::validation(errors)),
        }
    }

    /// The body, or every problem ([`Self::finish`] without the 422 around them): for an
    /// object read as one item of a larger body. `Ok(None)`: no body and no problem (a reader
    /// bug).
    pub fn outcome<T>(mut self, body: Option<T>) -> Result<Option<T>, Vec<FieldError>> {
        let expected = self
            .read
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        for name in self.rest.keys() {
            self.errors.push(FieldError {
                pointer: pointer([name.as_str()]),
                message: format!("unknown field; expected one of {expected}"),
                ..Default::default()
            });
        }
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_key(|e| {
            let field = e.pointer.split('/').nth(1).unwrap_or_default();
            self.read
                .iter()
                .position(|n| pointer([*n]) == format!("/{field}"))
                .unwrap_or(usize::MAX)
        });
        if errors.is_empty() {
            Ok(body)
        } else {
            Err(errors)
        }
    }
}

/// Whether `Content-Type` is JSON: `application/json` or `application/<anything>+json`.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(essence) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
    else {
        return false;
    };
    let essence = essence.trim().to_ascii_lowercase();
    essence.split_once('/').is_some_and(|(kind, sub)| {
        kind == "application" && (sub == "json" || sub.ends_with("+json"))
    })
}

/// A route's body limit when it is not [`super::BODY_LIMIT`], set as a request extension next
/// to its `DefaultBodyLimit`, so a 413 states the limit that applied.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A body that could not be read: 413 stating `limit`, else 400.
pub fn body_refused(e: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let limit = if limit >= 1024 * 1024 {
            format!("{} MiB", limit / 1024 / 1024)
        } else {
            format!("{} KiB", limit / 1024)
        };
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The request body is too large: at most {limit}."),
        )
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

/// The request body as one JSON value: 415 unless the content type is JSON, 413 over
/// [`super::BODY_LIMIT`], 400 `malformed_json`, 400 `duplicate_json_key` when an object
/// repeats a key (at any depth; the pointer in `errors[]`).
async fn json_body<S: Send + Sync>(
    req: axum::extract::Request,
    state: &S,
) -> Result<Value, ApiError> {
    if !is_json(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as JSON with `Content-Type: application/json`.",
        ));
    }
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map_or(super::BODY_LIMIT, |l| l.0);
    let bytes = Bytes::from_request(req, state)
        .await
        .map_err(|e| body_refused(e, limit))?;
    strict_json::parse(&bytes).map_err(|e| match e {
        strict_json::Error::Syntax(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("The body is not valid JSON: {e}"),
        ),
        strict_json::Error::DuplicateKey(pointer) => {
            let mut err = ApiError::new(
                StatusCode::BAD_REQUEST,
                "duplicate_json_key",
                "An object in the body has the same key twice; send each key once (see `errors`).",
            );
            err.errors = vec![FieldError {
                pointer,
                message: "this key appears more than once in its object".to_owned(),
                ..Default::default()
            }];
            err
        }
    })
}

/// A query string read by [`AppQuery`].
pub trait FromQuery: Sized {
    /// Reads every parameter from `q`, recording each problem there. The value is used only
    /// if no problem was recorded; parameters left unread are reported as unknown.
    fn read(q: &mut QueryParams) -> Option<Self>;
}

/// Query parameters with problem+json rejections: 422 (`validation_failed`) with one
/// `errors[]` entry per unknown, repeated or invalid parameter, at `/query/<name>`.
#[derive(Debug)]
pub struct AppQuery<T>(pub T);

impl<T: FromQuery, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut q = QueryParams::parse(parts.uri.query().unwrap_or_default());
        let value = T::read(&mut q);
        q.finish(value).map(AppQuery)
    }
}

#[derive(Debug)]
struct Param {
    name: String,
    value: String,
    /// As sent, before percent-decoding: a `+` in it was decoded to a space.
    raw: String,
}

/// The parameters of a query string, taken one by one; collects every problem.
#[derive(Debug)]
pub struct QueryParams {
    rest: Vec<Param>,
    read: Vec<&'static str>,
    errors: Vec<FieldError>,
}

impl QueryParams {
    /// Splits and decodes `query` (`application/x-www-form-urlencoded`, as browsers and curl
    /// send it: `+` is a space).
    pub fn parse(query: &str) -> Self {
        let rest = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = url::form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .unwrap_or_default();
                Param {
                    name: name.into_owned(),
                    value: value.into_owned(),
                    raw: pair.split_once('=').map_or("", |(_, v)| v).to_owned(),
                }
            })
            .collect();
        Self {
            rest,
            read: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The parameter `name` parsed by `parse` (`None` when absent). `parse`'s message should
    /// say what is expected, with an example. A value that is only wrong because its `+` was
    /// sent bare (a query string decodes it to a space) gets a message saying so.
    pub fn get<T>(
        &mut self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        self.read.push(name);
        let (mine, rest): (Vec<Param>, Vec<Param>) = std::mem::take(&mut self.rest)
            .into_iter()
            .partition(|p| p.name == name);
        self.rest = rest;
        let param = match <[Param; 1]>::try_from(mine) {
            Ok([param]) => param,
            Err(mine) if mine.is_empty() => return None,
            Err(_) => {
                self.error(name, "given more than once; send it once");
                return None;
            }
        };
        let message = match parse(&param.value) {
            Ok(v) => return Some(v),
            Err(message) => message,
        };
        let encoded = param.raw.replace('+', "%2B");
        let literal = url::form_urlencoded::parse(format!("v={encoded}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned());
        if param.raw.contains('+') && literal.is_some_and(|v| parse(&v).is_ok()) {
            self.error(
                name,
                format!(
                    "a `+` in a query string decodes to a space: send it URL-encoded as `%2B`, as in `{name}={encoded}`"
                ),
            );
        } else {
            self.error(name, message);
        }
        None
    }

    /// Records a problem with the parameter `name`.
    pub fn error(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            pointer: pointer(["query", name]),
            message: message.into(),
            ..Default::default()
        });
    }

    /// The value, or a 422 listing every problem: the recorded ones, then one per unknown
    /// parameter.
    pub fn finish<T>(mut self, value: Option<T>) -> Result<T, ApiError> {
        let expected = self.read.join(", ");
        let mut unknown: Vec<String> = Vec::new();
        for p in std::mem::take(&mut self.rest) {
            if !unknown.contains(&p.name) {
                unknown.push(p.name);
            }
        }
        for name in unknown {
            self.error(
                &name,
                format!("unknown query parameter; expected one of {expected}"),
            );
        }
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ if self.errors.is_empty() => Err(ApiError::internal(anyhow::anyhow!(
                "a query reader returned nothing and recorded no problem"
            ))),
            _ => Err(ApiError::validation(self.errors)),
        }
    }
}

/// Page size: `limit`, 1 to 100.
pub fn parse_limit(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| "expected an integer from 1 to 100, such as 50".to_owned())
}

/// A page's `next_cursor`: the key of its last item, opaque (base64url, no padding).
pub fn encode_cursor(key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// A `cursor` parameter: the key [`encode_cursor`] wrote, read back by `key` (`None` for bytes
/// that are not such a key, e.g. another list's cursor).
pub fn parse_cursor<T>(s: &str, key: impl FnOnce(&[u8]) -> Option<T>) -> Result<T, String> {
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| key(&b))
        .ok_or_else(|| "expected the next_cursor of a previous page, unchanged".to_owned())
}

/// `limit`, `cursor` (an id) and the admin's `partner_id` of a list keyset-paged on UUIDv7
/// ids (migrations, batches): read once here for every such list.
pub fn read_id_paging(q: &mut QueryParams) -> (Option<i64>, Option<Uuid>, Option<Uuid>) {
    let limit = q.get("limit", parse_limit);
    let cursor = q.get("cursor", |s| parse_cursor(s, |b| Uuid::from_slice(b).ok()));
    let partner_id = q.get("partner_id", |s| {
        Uuid::parse_str(s)
            .map_err(|_| format!("expected a partner id (a UUID such as {EXAMPLE_ID})"))
    });
    (limit, cursor, partner_id)
}

/// Whose rows a list shows: a partner its own (403 when it asks for another's), the admin
/// everyone's or the one partner it asks for.
pub fn list_scope(caller: Caller, asked: Option<Uuid>) -> Result<Option<Uuid>, ApiError> {
    match (caller, asked) {
        (Caller::Partner(p), None) => Ok(Some(p)),
        (Caller::Partner(p), Some(asked)) if asked == p => Ok(Some(p)),
        (Caller::Partner(_), Some(_)) => Err(ApiError::forbidden(
            "partner_id filters are for the admin key",
        )),
        (Caller::Admin, p) => Ok(p),
    }
}

/// Cuts `rows` (fetched with `limit + 1`) to the page; the cursor after its last row's id when
/// more follow.
pub fn finish_id_page<R>(rows: &mut Vec<R>, limit: i64, id: impl Fn(&R) -> Uuid) -> Option<String> {
    if rows.len() as i64 <= limit {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(|r| encode_cursor(id(r).as_bytes()))
}

/// `limit` and `cursor` of a list ordered by a migration's event sequence (its audit trail, its
/// webhook deliveries): oldest first, keyset-paged on the sequence.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SequencePage {
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^[A-Za-z0-9_-]{5}[AQgw]$")]
    pub cursor: Option<i32>,
}

impl SequencePage {
    /// The page size when `limit` is not given.
    pub const DEFAULT_LIMIT: i64 = 50;

    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(Self::DEFAULT_LIMIT)
    }

    /// Cuts `rows` (fetched with `limit + 1`) to the page; the cursor after its last row when
    /// more follow.
    pub fn finish<R>(&self, rows: &mut Vec<R>, sequence: impl Fn(&R) -> i32) -> Option<String> {
        let limit = self.limit() as usize;
        if rows.len() <= limit {
            return None;
        }
        rows.truncate(limit);
        rows.last()
            .map(|r| encode_cursor(&sequence(r).to_be_bytes()))
    }
}

impl FromQuery for SequencePage {
    fn read(q: &mut QueryParams) -> Option<Self> {
        let limit = q.get("limit", parse_limit);
        let cursor = q.get("cursor", |s| {
            parse_cursor(s, |b| <[u8; 4]>::try_from(b).ok().map(i32::from_be_bytes))
        });
        Some(Self { limit, cursor })
    }
}

/// UUID path segments; anything else is a 404 (it cannot name a resource) that says why.
pub struct IdPath<T>(pub T);

async fn path_ids<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<Vec<Uuid>, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::not_found("resource"))?;
    params
        .iter()
        .map(|(key, value)| {
            Uuid::parse_str(value).map_err(|_| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "Nothing has this {key}: `{{{key}}}` in the path must be a UUID such as {EXAMPLE_ID}."
                    ),
                )
            })
        })
        .collect()
}

impl<S: Send + Sync> FromRequestParts<S> for IdPath<Uuid> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match path_ids(parts, state).await?[..] {
            [id] => Ok(IdPath(id)),
            _ => Err(ApiError::internal(anyhow::anyhow!("route has not one id"))),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdPath<(Uuid, Uuid)> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match path_ids(parts, state).await?[..] {
            [a, b] => Ok(IdPath((a, b))),
            _ => Err(ApiError::internal(anyhow::anyhow!("route has not two ids"))),
        }
    }
}

pub use crate::core::Caller;

/// The admin key, or 403 (or 401). Placed before a body, it refuses a partner key before the
/// body is read.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Caller::from_request_parts(parts, state)
            .await?
            .require_admin()
            .map(|()| Admin)
    }
}

/// A request's API key (`Authorization: Bearer`), hashed but not yet looked up, for a handler
/// that looks it up in the statement that reads what the request asked for
/// (`auth::authenticate_request_and`). `401` when there is none.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// SHA-256 of the key ([`crypto::hash_api_key`]).
    pub hash: Vec<u8>,
    /// The client's address, for the failure limit.
    pub client: Option<std::net::IpAddr>,
}

impl<S> FromRequestParts<S> for ApiKey
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, Self::Rejection> {
        let Ok(ClientIp(client)) = ClientIp::from_request_parts(parts, s).await;
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(ApiError::unauthorized)?;
        Ok(ApiKey {
            hash: crypto::hash_api_key(token),
            client,
        })
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, Self::Rejection> {
        let key = ApiKey::from_request_parts(parts, s).await?;
        key.caller(&AppState::from_ref(s)).await
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's name is
/// case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl ApiKey {
    /// Who holds this key, within its rate limit ([`auth::authenticate_request`]): the
    /// [`Caller`] extractor.
    pub async fn caller(&self, state: &AppState) -> Result<Caller, ApiError> {
        auth::authenticate_request(state, self.client, &self.hash).await
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Checks that a reader and the OpenAPI document describe the same input.

    use std::collections::BTreeSet;

    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{RefOr, Required, Schema};

    use super::*;

    /// `B`'s reader takes exactly the properties of the documented body `D`, and reports
    /// exactly its `required` ones as missing from `{}`.
    pub fn assert_body_matches_schema<B: JsonBody, D: utoipa::PartialSchema>() {
        let mut f = Fields::new(Map::new(), false);
        let _ = B::read(&mut f);
        let read: BTreeSet<String> = f.read.iter().map(|n| n.to_string()).collect();
        let missing: BTreeSet<String> = f
            .errors
            .iter()
            .filter(|e| e.message == MISSING)
            .map(|e| e.pointer[1..].to_owned())
            .collect();
        let RefOr::T(Schema::Object(schema)) = D::schema() else {
            panic!("not an object schema");
        };
        let documented: BTreeSet<String> = schema.properties.keys().cloned().collect();
        let required: BTreeSet<String> = schema.required.iter().cloned().collect();
        assert_eq!(read, documented, "fields read vs documented");
        assert_eq!(missing, required, "fields required vs documented");
    }

    /// `Q`'s reader takes exactly the documented query parameters, all optional.
    pub fn assert_query_matches_params<Q: FromQuery + utoipa::IntoParams>() {
        let mut q = QueryParams::parse("");
        let _ = Q::read(&mut q);
        let read: BTreeSet<String> = q.read.iter().map(|n| n.to_string()).collect();
        let params = Q::into_params(|| Some(ParameterIn::Query));
        let documented: BTreeSet<String> = params.iter().map(|p| p.name.clone()).collect();
        assert_eq!(read, documented, "parameters read vs documented");
        assert!(params.iter().all(|p| p.required == Required::False));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_escape_tilde_and_slash() {
        assert_eq!(pointer(["a/b", "c~d", "0"]), "/a~1b/c~0d/0");
        assert_eq!(pointer(["query", "limit"]), "/query/limit");
    }

    fn fields(body: Value) -> Fields {
        let Value::Object(object) = body else {
            unreachable!("a JSON object")
        };
        Fields::new(object, false)
    }

    /// `(pointer, message)` of every problem `f` recorded.
    fn problems(f: Fields) -> Vec<(String, String)> {
        f.finish(Some(()))
            .unwrap_err()
            .errors
            .iter()
            .map(|e| (e.pointer.clone(), e.message.clone()))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
            .collect()
    }

    #[test]
    fn fields_report_every_problem_in_field_order_then_unknowns() {
        let mut f = fields(serde_json::json!({ "zz": 1, "b": 5, "aa": true, "c": null }));
        let a = f.required::<String>("a");
        let b = f.required::<String>("b");
        let c = f.optional::<String>("c");
        let d = f.nullable::<u8>("d");
        f.check::<()>("c", Err("a rule".into()));
        assert_eq!((a, b, c, d), (None, None, None, None));
        assert_eq!(
            problems(f),
            pairs(&[
                ("/a", MISSING),
                ("/b", "invalid type: integer `5`, expected a string"),
                ("/c", "a rule"),
                ("/aa", "unknown field; expected one of `a`, `b`, `c`, `d`"),
                ("/zz", "unknown field; expected one of `a`, `b`, `c`, `d`"),
            ])
        );
    }

    #[test]
    fn a_secret_fields_problem_never_quotes_its_value() {
        let mut f = fields(serde_json::json!({ "code": 123456, "pin": [654321], "name": 777 }));
        let _ = f.required::<String>("code");
        let _ = f.optional::<String>("pin");
        let _ = f.optional::<String>("name");
        assert_eq!(
            problems(f),
            pairs(&[
                ("/code", "invalid type: integer, expected a string"),
                ("/pin", "invalid type: sequence, expected a string"),
                ("/name", "invalid type: integer `777`, expected a string"),
            ])
        );
        assert_eq!(
            without_quoted(r#"invalid value: string "12 34", expected `six digits`"#),
            "invalid value: string, expected"
        );
    }

    #[test]
    fn query_params_spot_a_bare_plus_and_repeats() {
        let mut q = QueryParams::parse("n=+5&n2=+x&t=1&t=2&ok=%2B5&e=");
        let plus = |s: &str| {
            s.strip_prefix('+')
                .map(str::to_owned)
                .ok_or_else(|| "no plus".to_owned())
        };
        assert_eq!(q.get("n", plus), None);
        assert_eq!(
            q.get("n2", |s| s.parse::<i32>().map_err(|e| e.to_string())),
            None
        );
        assert_eq!(q.get("t", |s| Ok::<_, String>(s.to_owned())), None);
        assert_eq!(q.get("ok", plus).as_deref(), Some("5"));
        assert_eq!(q.get("absent", plus), None);
        let err = q.finish(Some(())).unwrap_err();
        let got: Vec<(&str, &str)> = err
            .errors
            .iter()
            .map(|e| (e.pointer.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/query/n",
                    "a `+` in a query string decodes to a space: send it URL-encoded as `%2B`, as in `n=%2B5`"
                ),
                // Still wrong with its `+`: the parser's own message.
                ("/query/n2", "invalid digit found in string"),
                ("/query/t", "given more than once; send it once"),
                (
                    "/query/e",
                    "unknown query parameter; expected one of n, n2, t, ok, absent"
                ),
            ]
        );
    }
}
