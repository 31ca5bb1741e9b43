//! [`MetaApi`] over reqwest: the Meta Graph API (WhatsApp Business Management API and the Cloud
//! API registration endpoints), `meta-graph-api.md` §1–4.
//!
//! * Paths are versioned: `{base}/{version}/{node}[/{edge}]`; the base path is kept.
//! * `Authorization: Bearer <token>` (a sensitive header); POST bodies are JSON.
//! * List edges are read with `limit=100`, following `paging.cursors.after` while `paging.next`
//!   is present, at most [`MAX_PAGES`] pages (more is reported as [`Error::Decode`] rather than
//!   silently returning a partial list).
//! * Errors: the Graph error object becomes [`UpstreamError`]; `retry_after` comes from
//!   `Retry-After`, else from `X-Business-Use-Case-Usage.estimated_time_to_regain_access`.
//! * A WABA or phone-number read that Graph answers "nonexisting field (x)" (Meta removed or
//!   renamed `x` in the configured version) is asked again without `x`, and later reads leave
//!   it out; [`MetaApi::unavailable_fields`] names such fields, so the precheck can say what it
//!   could not check instead of reading an absent field as a fact.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use super::http::{self, RawResponse};
use super::{
    CodeMethod, Error, MetaApi, PhoneNumber, Service, SubscribedApp, Template, TemplateMigration,
    UpstreamError, Waba,
};
use crate::domain::values::display_phone_number;

const SERVICE: Service = Service::Meta;

/// Fields read on `GET /{waba-id}`.
pub const WABA_FIELDS: &str = "id,name,account_review_status,business_verification_status,\
owner_business_info,on_behalf_of_business_info,primary_funding_id,message_template_namespace";

/// Fields read on `GET /{phone-number-id}` and `GET /{waba-id}/phone_numbers`.
pub const PHONE_NUMBER_FIELDS: &str = "id,display_phone_number,verified_name,quality_rating,\
code_verification_status,name_status,new_name_status,status,platform_type,messaging_limit_tier,\
is_official_business_account,is_on_biz_app,account_mode";

/// Fields read on `GET /{waba-id}/message_templates`.
pub const TEMPLATE_FIELDS: &str = "id,name,language,status,category,quality_score";

/// Fields a read is never made without, even when Graph says one does not exist: an item's
/// identity, what numbers are matched by, and what the steps decide on (whether a number is
/// verified and registered: guessing "no" would call `request_code` or `register` again).
const ESSENTIAL_FIELDS: [&str; 4] = [
    "id",
    "display_phone_number",
    "status",
    "code_verification_status",
];

/// Most fields one read leaves out, one "nonexisting field" answer at a time, before the error
/// is the answer.
const MAX_DROPPED_FIELDS: usize = 6;

/// A `fields` list of a node type whose optional fields a read may go without.
#[derive(Debug, Clone, Copy)]
struct FieldSet {
    /// Prefix of the names [`MetaApi::unavailable_fields`] reports, e.g. `waba`.
    node: &'static str,
    /// Graph's name of the node type, as its "nonexisting field" error says it: an error about
    /// another type (an id of another kind of node) says nothing about these fields.
    node_type: &'static str,
    all: &'static str,
}

const WABA_FIELD_SET: FieldSet = FieldSet {
    node: "waba",
    node_type: "WhatsAppBusinessAccount",
    all: WABA_FIELDS,
};
const PHONE_NUMBER_FIELD_SET: FieldSet = FieldSet {
    node: "phone_number",
    node_type: "WhatsAppBusinessPhoneNumber",
    all: PHONE_NUMBER_FIELDS,
};

/// The `fields` of a list read.
#[derive(Debug, Clone, Copy)]
enum ListFields {
    /// None named: Graph's defaults (`subscribed_apps`).
    Defaults,
    /// A fixed list: the read needs every one (templates).
    Fixed(&'static str),
    /// A list whose optional fields the read may go without.
    Optional(FieldSet),
}

/// `limit` of list requests.
const PAGE_LIMIT: &str = "100";

/// Most pages read from one list edge (10,000 items at [`PAGE_LIMIT`]).
pub const MAX_PAGES: usize = 100;

/// Header carrying Graph business-use-case rate-limit usage.
const BUC_USAGE_HEADER: &str = "x-business-use-case-usage";

/// Meta Graph API client. Cheap to clone (the reqwest client is shared).
#[derive(Clone)]
pub struct MetaClient {
    base_url: Url,
    version: String,
    access_token: SecretString,
    http: reqwest::Client,
    /// `node.field` names Graph said do not exist (shared by clones).
    unavailable: Arc<RwLock<Vec<String>>>,
}

impl fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaClient")
            .field("base_url", &self.base_url.as_str())
            .field("version", &self.version)
            .field("access_token", &"[redacted]")
            .finish()
    }
}

impl MetaClient {
    /// `base_url` e.g. `https://graph.facebook.com` (a path, e.g. of a proxy, is kept);
    /// `version` e.g. `v23.0`. Timeouts and the like are configured on `http`.
    pub fn new(
        base_url: Url,
        version: String,
        access_token: SecretString,
        http: reqwest::Client,
    ) -> Self {
        Self {
            base_url,
            version,
            access_token,
            http,
            unavailable: Arc::default(),
        }
    }

    /// `set`'s fields without the ones Graph said do not exist.
    fn fields(&self, set: FieldSet) -> Cow<'static, str> {
        let gone = self
            .unavailable
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let available = |f: &&str| {
            !gone
                .iter()
                .any(|g| g.strip_prefix(set.node).and_then(|g| g.strip_prefix('.')) == Some(*f))
        };
        if gone.is_empty() || set.all.split(',').all(|f| available(&f)) {
            return Cow::Borrowed(set.all);
        }
        Cow::Owned(
            set.all
                .split(',')
                .filter(available)
                .collect::<Vec<_>>()
                .join(","),
        )
    }

    /// When `err` is Graph's "nonexisting field (x)" for an optional field of `set` that the
    /// read asked for (`asked`), remembers that `x` does not exist and says so: the read may be
    /// made again without it. (A concurrent read may have learnt it first.)
    fn went_without(&self, set: FieldSet, asked: &str, err: &Error) -> bool {
        let Some((field, node_type)) = err.upstream().and_then(UpstreamError::nonexisting_field)
        else {
            return false;
        };
        if node_type != set.node_type
            || ESSENTIAL_FIELDS.contains(&field)
            || !asked.split(',').any(|f| f == field)
        {
            return false;
        }
        let name = format!("{}.{field}", set.node);
        let mut gone = self
            .unavailable
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if gone.contains(&name) {
            return true;
        }
        tracing::warn!(
            field = %name,
            version = %self.version,
            "the Meta Graph API does not have this field in the configured version; reads leave it out from now on, and checks that need it report that they could not be made"
        );
        metrics::gauge!("waba_graph_field_unavailable", "field" => name.clone()).set(1.0);
        gone.push(name);
        true
    }

    /// A GET whose URL `url_for` builds around a `fields` list of `set`; asked again without a
    /// field Graph says does not exist (at most [`MAX_DROPPED_FIELDS`] times).
    async fn get_with_fields(
        &self,
        set: Option<FieldSet>,
        url_for: impl Fn(Option<&str>) -> Result<Url, Error>,
    ) -> Result<RawResponse, Error> {
        let mut dropped = 0;
        loop {
            let fields = set.map(|s| (s, self.fields(s)));
            let url = url_for(fields.as_ref().map(|(_, f)| f.as_ref()))?;
            match (self.call(Method::GET, url, None, &[]).await, &fields) {
                (Err(e), Some((set, asked)))
                    if dropped < MAX_DROPPED_FIELDS && self.went_without(*set, asked, &e) =>
                {
                    dropped += 1;
                }
                (answer, _) => return answer,
            }
        }
    }

    fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        let version = self.version.trim_matches('/');
        let mut all = Vec::with_capacity(segments.len() + 1);
        if !version.is_empty() {
            all.push(version);
        }
        all.extend_from_slice(segments);
        http::build_url(SERVICE, &self.base_url, &all)
    }

    fn headers(&self) -> Result<HeaderMap, Error> {
        let mut value =
            HeaderValue::try_from(format!("Bearer {}", self.access_token.expose_secret()))
                .map_err(|_| Error::Transport {
                    service: SERVICE,
                    message: "the Meta access token is not a valid HTTP header value".into(),
                    maybe_applied: false,
                })?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        Ok(headers)
    }

    /// Sends the request; a non-2xx status becomes [`Error::Api`]. `secrets` (besides the token)
    /// are scrubbed from upstream error text.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        secrets: &[&str],
    ) -> Result<RawResponse, Error> {
        let response = http::send(&self.http, SERVICE, method, url, self.headers()?, body).await?;
        if response.status.is_success() {
            return Ok(response);
        }
        let mut all_secrets = vec![self.access_token.expose_secret()];
        all_secrets.extend_from_slice(secrets);
        Err(api_error(&response, &all_secrets))
    }

    async fn get_node<T: DeserializeOwned>(
        &self,
        node: &str,
        fields: FieldSet,
        what: &str,
    ) -> Result<T, Error> {
        let response = self
            .get_with_fields(Some(fields), |fields| {
                let mut url = self.url(&[node])?;
                if let Some(fields) = fields {
                    url.query_pairs_mut().append_pair("fields", fields);
                }
                Ok(url)
            })
            .await?;
        decode(&response.body, what)
    }

    /// All items of a list edge, following the `after` cursor.
    async fn get_all<T: DeserializeOwned>(
        &self,
        node: &str,
        edge: &str,
        fields: ListFields,
    ) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        let (set, fixed) = match fields {
            ListFields::Defaults => (None, None),
            ListFields::Fixed(list) => (None, Some(list)),
            ListFields::Optional(set) => (Some(set), None),
        };
        for _ in 0..MAX_PAGES {
            let response = self
                .get_with_fields(set, |fields| {
                    let mut url = self.url(&[node, edge])?;
                    {
                        let mut query = url.query_pairs_mut();
                        if let Some(fields) = fields.or(fixed) {
                            query.append_pair("fields", fields);
                        }
                        query.append_pair("limit", PAGE_LIMIT);
                        if let Some(after) = &after {
                            query.append_pair("after", after);
                        }
                    }
                    Ok(url)
                })
                .await?;
            let page: Page<T> = decode(&response.body, edge)?;
            items.extend(page.data);

            let Some(paging) = page.paging else {
                return Ok(items);
            };
            if paging.next.as_deref().is_none_or(str::is_empty) {
                return Ok(items);
            }
            let next = paging
                .cursors
                .and_then(|c| c.after)
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    decode_error(format!("{edge}: paging.next without cursors.after"))
                })?;
            if after.as_deref() == Some(next.as_str()) {
                return Err(decode_error(format!(
                    "{edge}: paging cursor did not advance"
                )));
            }
            after = Some(next);
        }
        Err(decode_error(format!(
            "{edge}: more than {MAX_PAGES} pages of {PAGE_LIMIT} items"
        )))
    }

    /// POST expecting `{"success": true}`.
    async fn post_success(
        &self,
        node: &str,
        edge: &str,
        body: &Value,
        secrets: &[&str],
    ) -> Result<(), Error> {
        let url = self.url(&[node, edge])?;
        let response = self.call(Method::POST, url, Some(body), secrets).await?;
        let value: Value = decode(&response.body, edge)?;
        match value.get("success") {
            Some(Value::Bool(true)) => Ok(()),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(()),
            Some(other) => Err(decode_error(format!("{edge}: success was {other}"))),
            None => Err(decode_error(format!(
                "{edge}: response has no success field"
            ))),
        }
    }
}

#[async_trait]
impl MetaApi for MetaClient {
    #[tracing::instrument(skip_all)]
    async fn token_owner(&self) -> Result<String, Error> {
        let mut url = self.url(&["me"])?;
        url.query_pairs_mut().append_pair("fields", "id");
        let response = self.call(Method::GET, url, None, &[]).await?;
        let value: Value = decode(&response.body, "me")?;
        value
            .get("id")
            .and_then(http::value_as_id)
            .ok_or_else(|| decode_error("me: response has no id".into()))
    }

    #[tracing::instrument(skip_all, fields(waba_id = %waba_id))]
    async fn get_waba(&self, waba_id: &str) -> Result<Waba, Error> {
        self.get_node(waba_id, WABA_FIELD_SET, "waba").await
    }

    fn unavailable_fields(&self) -> Vec<String> {
        self.unavailable
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[tracing::instrument(skip_all, fields(waba_id = %waba_id))]
    async fn list_phone_numbers(&self, waba_id: &str) -> Result<Vec<PhoneNumber>, Error> {
        self.get_all(
            waba_id,
            "phone_numbers",
            ListFields::Optional(PHONE_NUMBER_FIELD_SET),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(waba_id = %waba_id))]
    async fn find_phone_numbers(
        &self,
        waba_id: &str,
        e164: &str,
    ) -> Result<Option<Vec<PhoneNumber>>, Error> {
        let filter = json!([{
            "field": "display_phone_number",
            "operator": "EQUAL",
            "value": display_phone_number(e164),
        }]);
        let filter = filter.to_string();
        let answer = self
            .get_with_fields(Some(PHONE_NUMBER_FIELD_SET), |fields| {
                let mut url = self.url(&[waba_id, "phone_numbers"])?;
                url.query_pairs_mut()
                    .append_pair("fields", fields.unwrap_or(PHONE_NUMBER_FIELDS))
                    .append_pair("filtering", &filter)
                    .append_pair("limit", PAGE_LIMIT);
                Ok(url)
            })
            .await;
        match answer {
            Ok(response) => {
                let page: Page<PhoneNumber> = decode(&response.body, "phone_numbers")?;
                Ok(Some(page.data))
            }
            // "Invalid parameter": this Graph does not filter on the display number. Not
            // 100/33: the WABA itself cannot be read, which a full listing would only repeat.
            Err(e)
                if e.upstream()
                    .is_some_and(|u| u.code == Some(100) && u.subcode != Some(33)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    #[tracing::instrument(skip_all, fields(phone_number_id = %phone_number_id))]
    async fn get_phone_number(&self, phone_number_id: &str) -> Result<PhoneNumber, Error> {
        self.get_node(phone_number_id, PHONE_NUMBER_FIELD_SET, "phone_number")
            .await
    }

    #[tracing::instrument(skip_all, fields(waba_id = %waba_id))]
    async fn list_subscribed_apps(&self, waba_id: &str) -> Result<Vec<SubscribedApp>, Error> {
        let items: Vec<Value> = self
            .get_all(waba_id, "subscribed_apps", ListFields::Defaults)
            .await?;
        Ok(items.iter().map(subscribed_app).collect())
    }

    #[tracing::instrument(skip_all, fields(waba_id = %waba_id))]
    async fn list_templates(&self, waba_id: &str) -> Result<Vec<Template>, Error> {
        let items: Vec<TemplateWire> = self
            .get_all(
                waba_id,
                "message_templates",
                ListFields::Fixed(TEMPLATE_FIELDS),
            )
            .await?;
        Ok(items.into_iter().map(Template::from).collect())
    }

    #[tracing::instrument(skip_all, fields(destination_waba_id = %destination_waba_id, cc = %country_code))]
    async fn start_migration(
        &self,
        destination_waba_id: &str,
        country_code: &str,
        national_number: &str,
    ) -> Result<String, Error> {
        let url = self.url(&[destination_waba_id, "phone_numbers"])?;
        let body = json!({
            "cc": country_code,
            "phone_number": national_number,
            "migrate_phone_number": true,
        });
        let response = self.call(Method::POST, url, Some(&body), &[]).await?;
        let value: Value = decode(&response.body, "phone_numbers")?;
        value
            .get("id")
            .and_then(http::value_as_id)
            .ok_or_else(|| decode_error("phone_numbers: response has no id".into()))
    }

    #[tracing::instrument(skip_all, fields(phone_number_id = %phone_number_id, method = ?method))]
    async fn request_code(
        &self,
        phone_number_id: &str,
        method: CodeMethod,
        language: &str,
    ) -> Result<(), Error> {
        let body = json!({ "code_method": method, "language": language });
        self.post_success(phone_number_id, "request_code", &body, &[])
            .await
    }

    #[tracing::instrument(skip_all, fields(phone_number_id = %phone_number_id))]
    async fn verify_code(&self, phone_number_id: &str, code: &SecretString) -> Result<(), Error> {
        let code = code.expose_secret();
        let body = json!({ "code": code });
        self.post_success(phone_number_id, "verify_code", &body, &[code])
            .await
    }

    #[tracing::instrument(skip_all, fields(phone_number_id = %phone_number_id))]
    async fn register(&self, phone_number_id: &str, pin: &SecretString) -> Result<(), Error> {
        let pin = pin.expose_secret();
        let body = json!({ "messaging_product": "whatsapp", "pin": pin });
        self.post_success(phone_number_id, "register", &body, &[pin])
            .await
    }

    #[tracing::instrument(
        skip_all,
        fields(destination_waba_id = %destination_waba_id, source_waba_id = %source_waba_id, page_number)
    )]
    async fn migrate_templates(
        &self,
        destination_waba_id: &str,
        source_waba_id: &str,
        page_number: u32,
        template_ids: Option<&[String]>,
    ) -> Result<TemplateMigration, Error> {
        let url = self.url(&[destination_waba_id, "migrate_message_templates"])?;
        let mut body = json!({ "source_waba_id": source_waba_id, "page_number": page_number });
        if let Some(ids) = template_ids {
            body["template_ids"] = json!(ids);
        }
        let response = self.call(Method::POST, url, Some(&body), &[]).await?;
        let value: Value = decode(&response.body, "migrate_message_templates")?;
        template_migration(&value)
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types

#[derive(Deserialize)]
struct Page<T> {
    data: Vec<T>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    #[serde(default)]
    cursors: Option<Cursors>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Cursors {
    #[serde(default)]
    after: Option<String>,
}

#[derive(Deserialize)]
struct TemplateWire {
    id: String,
    name: String,
    language: String,
    status: String,
    #[serde(default)]
    category: Option<String>,
    /// `{"score": "GREEN", "date": <unix>}` (a bare string is accepted too).
    #[serde(default)]
    quality_score: Option<Value>,
}

impl From<TemplateWire> for Template {
    fn from(w: TemplateWire) -> Self {
        let quality_score = match &w.quality_score {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(v @ Value::Object(_)) => http::str_field(v, "score").map(str::to_owned),
            _ => None,
        };
        Template {
            id: w.id,
            name: w.name,
            language: w.language,
            status: w.status,
            category: w.category,
            quality_score,
        }
    }
}

/// `{"whatsapp_business_api_data": {"id", "link", "name"}}` (a flat `{"id", "name"}` too).
fn subscribed_app(item: &Value) -> SubscribedApp {
    let inner = item
        .get("whatsapp_business_api_data")
        .filter(|v| v.is_object())
        .unwrap_or(item);
    SubscribedApp {
        id: inner.get("id").and_then(http::value_as_id),
        name: http::str_field(inner, "name").map(str::to_owned),
    }
}

/// `{"migrated_templates": [ids], "failed_templates": {id: reason}}`. Missing parts are empty;
/// `failed_templates` is also accepted as an array (the doc's syntax block draws one) of
/// `{id: reason}` maps, `{"id"|"template_id", "reason"|"error"|"message"}` objects, or ids.
fn template_migration(value: &Value) -> Result<TemplateMigration, Error> {
    if !value.is_object() {
        return Err(decode_error(
            "migrate_message_templates: response is not an object".into(),
        ));
    }
    let mut out = TemplateMigration::default();
    if let Some(Value::Array(ids)) = value.get("migrated_templates") {
        out.migrated_templates = ids.iter().filter_map(http::value_as_id).collect();
    }
    let reason_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match value.get("failed_templates") {
        Some(Value::Object(map)) => {
            for (id, reason) in map {
                out.failed_templates.insert(id.clone(), reason_text(reason));
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                let explicit_id = item
                    .get("id")
                    .or_else(|| item.get("template_id"))
                    .and_then(http::value_as_id);
                match (item, explicit_id) {
                    (Value::Object(_), Some(id)) => {
                        let reason = ["reason", "error", "message"]
                            .iter()
                            .find_map(|k| item.get(*k))
                            .map(reason_text)
                            .unwrap_or_default();
                        out.failed_templates.insert(id, reason);
                    }
                    (Value::Object(map), None) => {
                        for (id, reason) in map {
                            out.failed_templates.insert(id.clone(), reason_text(reason));
                        }
                    }
                    (other, _) => {
                        if let Some(id) = http::value_as_id(other) {
                            out.failed_templates.insert(id, String::new());
                        }
                    }
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

fn decode_error(message: String) -> Error {
    Error::Decode {
        service: SERVICE,
        message,
    }
}

/// Parses a 2xx body. Graph success bodies carry no secret of ours, so the serde message (which
/// may quote a value) is kept for diagnosis.
fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| {
        decode_error(http::truncate(
            &format!("{what}: {e}"),
            http::MAX_MESSAGE_CHARS,
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Builds [`Error::Api`] from a non-2xx Graph response.
fn api_error(response: &RawResponse, secrets: &[&str]) -> Error {
    let status = response.status;
    let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
    let upstream = match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(err @ Value::Object(_)) => graph_error_object(SERVICE, status.as_u16(), err, secrets),
        Some(Value::String(text)) if !text.trim().is_empty() => UpstreamError {
            service: SERVICE,
            http_status: Some(status.as_u16()),
            code: None,
            subcode: None,
            fbtrace_id: None,
            message: http::message(text, secrets),
            is_transient: None,
        },
        _ => UpstreamError {
            service: SERVICE,
            http_status: Some(status.as_u16()),
            code: None,
            subcode: None,
            fbtrace_id: None,
            message: http::text_message(status, &response.body, secrets),
            is_transient: None,
        },
    };
    let retry_after =
        http::retry_after_header(&response.headers).or_else(|| buc_retry_after(&response.headers));
    Error::Api {
        upstream,
        retry_after,
    }
}

/// A Graph error object (`{"message", "type", "code", "error_subcode", "error_user_title",
/// "error_user_msg", "fbtrace_id", "is_transient", "error_data": {"details"}}`) as
/// [`UpstreamError`]. Also used for Graph errors proxied by 360dialog's Messaging API.
pub(super) fn graph_error_object(
    service: Service,
    http_status: u16,
    err: &Value,
    secrets: &[&str],
) -> UpstreamError {
    // Every distinct text Meta sent, in this order: 2388103's variants are told apart by
    // their words, which may sit in any of these (`message` is often only `(#100) <title>`).
    let mut message = String::new();
    let texts = [
        http::str_field(err, "message").map(str::to_owned),
        http::str_field(err, "error_user_title").map(str::to_owned),
        http::str_field(err, "error_user_msg").map(str::to_owned),
        error_details(err),
    ];
    for text in texts.into_iter().flatten() {
        let text = text.trim();
        if text.is_empty() || message.contains(text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(" — ");
        }
        message.push_str(text);
    }
    if message.is_empty() {
        message = http::str_field(err, "type")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {http_status}"));
    }
    let is_transient = match err.get("is_transient") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    };
    UpstreamError {
        service,
        http_status: Some(http_status),
        code: err.get("code").and_then(http::value_as_i64),
        subcode: err.get("error_subcode").and_then(http::value_as_i64),
        fbtrace_id: http::str_field(err, "fbtrace_id").map(str::to_owned),
        message: http::message(&message, secrets),
        is_transient,
    }
}

/// `error_data.details` (`error_data` is occasionally a JSON-encoded string).
fn error_details(err: &Value) -> Option<String> {
    match err.get("error_data")? {
        data @ Value::Object(_) => http::str_field(data, "details").map(str::to_owned),
        Value::String(s) => {
            let data: Value = serde_json::from_str(s).ok()?;
            http::str_field(&data, "details").map(str::to_owned)
        }
        _ => None,
    }
}

/// The largest `estimated_time_to_regain_access` (minutes) of `X-Business-Use-Case-Usage`
/// (`{"<id>": [{"type", "call_count", ..., "estimated_time_to_regain_access": N}]}`), when
/// positive.
fn buc_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(BUC_USAGE_HEADER)?.to_str().ok()?;
    let usage: Value = serde_json::from_str(raw).ok()?;
    let minutes = usage
        .as_object()?
        .values()
        .flat_map(|v| match v {
            Value::Array(items) => items.iter().collect::<Vec<_>>(),
            other => vec![other],
        })
        .filter_map(|item| item.get("estimated_time_to_regain_access"))
        .filter_map(|v| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .filter(|m| m.is_finite())
        .fold(0.0_f64, f64::max)
        // A week at most: keeps `from_secs_f64` from overflowing on nonsense.
        .min(7.0 * 24.0 * 60.0);
    (minutes > 0.0).then(|| Duration::from_secs_f64(minutes * 60.0))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;
    use wiremock::matchers::{
        body_json, header, method, path, query_param, query_param_is_missing,
    };
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    use super::super::http::test_support::{closed_port_url, http_client, raw_server};
    use super::*;

    const TOKEN: &str = "EAAGtestTOKENvalue42";
    const BEARER: &str = "Bearer EAAGtestTOKENvalue42";

    fn client_at(base: &str, timeout: Duration) -> MetaClient {
        MetaClient::new(
            Url::parse(base).unwrap(),
            "v23.0".into(),
            SecretString::from(TOKEN),
            http_client(timeout),
        )
    }

    fn client(server: &MockServer) -> MetaClient {
        client_at(&server.uri(), Duration::from_secs(5))
    }

    fn api(err: &Error) -> &UpstreamError {
        err.upstream()
            .unwrap_or_else(|| panic!("expected Error::Api, got {err:?}"))
    }

    async fn error_for(template: ResponseTemplate) -> Error {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/123"))
            .respond_with(template)
            // A GET is retried quickly (twice) on 5xx before the error is returned.
            .expect(1..=3)
            .mount(&server)
            .await;
        client(&server).get_waba("123").await.unwrap_err()
    }

    #[tokio::test]
    async fn reads_are_retried_quickly_but_writes_never() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/77"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(2)
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v23.0/77"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": "77" })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v23.0/88/register"))
            .respond_with(ResponseTemplate::new(503))
            .expect(1)
            .mount(&server)
            .await;
        let c = client(&server);
        assert_eq!(c.get_waba("77").await.unwrap().id, "77");
        let err = c
            .register("88", &SecretString::from("123456"))
            .await
            .unwrap_err();
        assert_eq!(api(&err).http_status, Some(503));
    }

    #[tokio::test]
    async fn get_waba_sends_fields_and_bearer() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001"))
            .and(query_param(
                "fields",
                "id,name,account_review_status,business_verification_status,owner_business_info,\
                 on_behalf_of_business_info,primary_funding_id,message_template_namespace",
            ))
            .and(header("authorization", BEARER))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "1001",
                "name": "Acme",
                "account_review_status": "APPROVED",
                "business_verification_status": "verified",
                "owner_business_info": {"id": "777", "name": "Acme Inc"},
                "primary_funding_id": "555",
                "message_template_namespace": "ns_1",
                "unexpected": {"nested": true}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let waba = client(&server).get_waba("1001").await.unwrap();
        assert_eq!(
            waba,
            Waba {
                id: "1001".into(),
                name: Some("Acme".into()),
                account_review_status: Some("APPROVED".into()),
                business_verification_status: Some("verified".into()),
                owner_business_info: Some(super::super::BusinessInfo {
                    id: "777".into(),
                    name: Some("Acme Inc".into()),
                }),
                on_behalf_of_business_info: None,
                primary_funding_id: Some("555".into()),
                message_template_namespace: Some("ns_1".into()),
            }
        );
        // A GET carries no body and no content type.
        let requests = server.received_requests().await.unwrap();
        assert!(requests[0].body.is_empty());
        assert!(!requests[0].headers.contains_key("content-type"));
    }

    /// Graph's answer to a read naming a field its node type does not have.
    fn nonexisting_field(field: &str, node_type: &str) -> ResponseTemplate {
        ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": format!("(#100) Tried accessing nonexisting field ({field}) on node type ({node_type})"),
            "type": "OAuthException",
            "code": 100,
            "fbtrace_id": "AbCdEf"
        }}))
    }

    #[tokio::test]
    async fn a_field_graph_does_not_have_is_left_out_of_this_and_later_reads() {
        let server = MockServer::start().await;
        let all = WABA_FIELDS;
        let without = all.replace(",primary_funding_id", "");
        Mock::given(method("GET"))
            .and(path("/v23.0/1001"))
            .and(query_param("fields", all))
            .respond_with(nonexisting_field(
                "primary_funding_id",
                "WhatsAppBusinessAccount",
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001"))
            .and(query_param("fields", without.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "1001", "account_review_status": "APPROVED"
            })))
            .expect(2)
            .mount(&server)
            .await;
        let c = client(&server);
        assert!(c.unavailable_fields().is_empty());
        let waba = c.get_waba("1001").await.unwrap();
        assert_eq!(waba.account_review_status.as_deref(), Some("APPROVED"));
        assert_eq!(waba.primary_funding_id, None);
        assert_eq!(c.unavailable_fields(), vec!["waba.primary_funding_id"]);
        // A clone shares what was learnt: the next read asks without the field at once.
        c.clone().get_waba("1001").await.unwrap();
        // The phone-number reads still ask for their own fields.
        Mock::given(method("GET"))
            .and(path("/v23.0/2002"))
            .and(query_param("fields", PHONE_NUMBER_FIELDS))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "2002"})))
            .expect(1)
            .mount(&server)
            .await;
        c.get_phone_number("2002").await.unwrap();
    }

    #[tokio::test]
    async fn an_essential_or_unasked_field_error_is_returned_not_worked_around() {
        for (field, node_type) in [
            ("display_phone_number", "WhatsAppBusinessPhoneNumber"),
            ("status", "WhatsAppBusinessPhoneNumber"),
            ("not_asked_for", "WhatsAppBusinessPhoneNumber"),
            // An id of another kind of node (here a business portfolio) read as a number.
            ("is_on_biz_app", "Business"),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("GET"))
                .and(path("/v23.0/2002"))
                .respond_with(nonexisting_field(field, node_type))
                .expect(1)
                .mount(&server)
                .await;
            let c = client(&server);
            let err = c.get_phone_number("2002").await.unwrap_err();
            assert_eq!(api(&err).nonexisting_field(), Some((field, node_type)));
            assert!(c.unavailable_fields().is_empty(), "{field}");
        }
        // Template reads ask for a fixed list: nothing is dropped from it.
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/message_templates"))
            .respond_with(nonexisting_field(
                "quality_score",
                "WhatsAppMessageTemplate",
            ))
            .expect(1)
            .mount(&server)
            .await;
        let c = client(&server);
        assert!(c.list_templates("1001").await.is_err());
        assert!(c.unavailable_fields().is_empty());
    }

    #[tokio::test]
    async fn a_waba_graph_cannot_load_is_an_error_not_a_refused_filter() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/phone_numbers"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
                "message": "Unsupported get request. Object with ID '1001' does not exist, cannot be loaded due to missing permissions, or does not support this operation. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api",
                "type": "GraphMethodException",
                "code": 100,
                "error_subcode": 33,
                "fbtrace_id": "AbCdEf"
            }})))
            .expect(1)
            .mount(&server)
            .await;
        let c = client(&server);
        // Not "this Graph does not filter" (Ok(None), then a full listing that fails the same).
        let err = c
            .find_phone_numbers("1001", "+16315555555")
            .await
            .unwrap_err();
        assert_eq!(api(&err).subcode, Some(33));
    }

    #[tokio::test]
    async fn a_filtered_number_lookup_goes_without_a_missing_field_too() {
        let server = MockServer::start().await;
        let without = PHONE_NUMBER_FIELDS.replace(",is_on_biz_app", "");
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/phone_numbers"))
            .and(query_param("fields", PHONE_NUMBER_FIELDS))
            .respond_with(nonexisting_field(
                "is_on_biz_app",
                "WhatsAppBusinessPhoneNumber",
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/phone_numbers"))
            .and(query_param("fields", without.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [
                {"id": "2002", "display_phone_number": "+1 631-555-5555"}
            ]})))
            .expect(1)
            .mount(&server)
            .await;
        let c = client(&server);
        // Not "Graph refuses the filter" (also code 100): the lookup is answered.
        let found = c
            .find_phone_numbers("1001", "+16315555555")
            .await
            .unwrap()
            .expect("the filter was answered");
        assert_eq!(found.len(), 1);
        assert_eq!(c.unavailable_fields(), vec!["phone_number.is_on_biz_app"]);
    }

    #[tokio::test]
    async fn get_phone_number_sends_fields() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/2002"))
            .and(query_param(
                "fields",
                "id,display_phone_number,verified_name,quality_rating,code_verification_status,\
                 name_status,new_name_status,status,platform_type,messaging_limit_tier,\
                 is_official_business_account,is_on_biz_app,account_mode",
            ))
            .and(header("authorization", BEARER))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "2002",
                "display_phone_number": "+49 151 2345678",
                "verified_name": "Acme",
                "quality_rating": "GREEN",
                "code_verification_status": "NOT_VERIFIED",
                "name_status": "APPROVED",
                "status": "CONNECTED",
                "platform_type": "CLOUD_API",
                "messaging_limit_tier": "TIER_1K",
                "is_official_business_account": false,
                "is_on_biz_app": false,
                "account_mode": "LIVE",
                "throughput": {"level": "STANDARD"}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let phone = client(&server).get_phone_number("2002").await.unwrap();
        assert_eq!(phone.id, "2002");
        assert_eq!(
            phone.display_phone_number.as_deref(),
            Some("+49 151 2345678")
        );
        assert_eq!(phone.name_status.as_deref(), Some("APPROVED"));
        assert_eq!(phone.new_name_status, None);
        assert_eq!(phone.is_on_biz_app, Some(false));
        assert_eq!(phone.account_mode.as_deref(), Some("LIVE"));
    }

    fn phone(id: &str) -> Value {
        json!({"id": id, "display_phone_number": format!("+1 555-{id}"), "status": "CONNECTED"})
    }

    #[tokio::test]
    async fn list_phone_numbers_follows_after_cursor_across_pages() {
        let server = MockServer::start().await;
        let fields = "id,display_phone_number,verified_name,quality_rating,code_verification_status,\
                      name_status,new_name_status,status,platform_type,messaging_limit_tier,\
                      is_official_business_account,is_on_biz_app,account_mode";
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/phone_numbers"))
            .and(query_param("fields", fields))
            .and(query_param("limit", "100"))
            .and(query_param_is_missing("after"))
            .and(header("authorization", BEARER))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [phone("1"), phone("2")],
                "paging": {"cursors": {"before": "B0", "after": "C1"},
                           "next": "https://graph.facebook.com/v23.0/1001/phone_numbers?after=C1"}
            })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/phone_numbers"))
            .and(query_param("fields", fields))
            .and(query_param("limit", "100"))
            .and(query_param("after", "C1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [phone("3")],
                "paging": {"cursors": {"before": "B1", "after": "C2"},
                           "next": "https://graph.facebook.com/v23.0/1001/phone_numbers?after=C2"}
            })))
            .expect(1)
            .mount(&server)
            .await;
        // Last page: cursors present (Graph always sends them) but no `next`.
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/phone_numbers"))
            .and(query_param("after", "C2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [phone("4")],
                "paging": {"cursors": {"before": "B2", "after": "C3"}}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let phones = client(&server).list_phone_numbers("1001").await.unwrap();
        let ids: Vec<_> = phones.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3", "4"]);
        assert_eq!(phones[2].display_phone_number.as_deref(), Some("+1 555-3"));
    }

    #[tokio::test]
    async fn list_templates_maps_quality_score_object() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/message_templates"))
            .and(query_param(
                "fields",
                "id,name,language,status,category,quality_score",
            ))
            .and(query_param("limit", "100"))
            .and(header("authorization", BEARER))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [
                    {"id": "t1", "name": "hello", "language": "en_US", "status": "APPROVED",
                     "category": "MARKETING", "quality_score": {"score": "GREEN", "date": 1700000000}},
                    {"id": "t2", "name": "bye", "language": "de", "status": "PENDING",
                     "category": "UTILITY"},
                    {"id": "t3", "name": "x", "language": "fr", "status": "REJECTED",
                     "quality_score": "UNKNOWN"}
                ],
                "paging": {"cursors": {"before": "a", "after": "b"}}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let templates = client(&server).list_templates("1001").await.unwrap();
        assert_eq!(
            templates[0],
            Template {
                id: "t1".into(),
                name: "hello".into(),
                language: "en_US".into(),
                status: "APPROVED".into(),
                category: Some("MARKETING".into()),
                quality_score: Some("GREEN".into()),
            }
        );
        assert_eq!(templates[1].quality_score, None);
        assert_eq!(templates[2].quality_score.as_deref(), Some("UNKNOWN"));
    }

    #[tokio::test]
    async fn list_subscribed_apps_unwraps_api_data() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/subscribed_apps"))
            .and(header("authorization", BEARER))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [
                    {"whatsapp_business_api_data": {"id": "67084", "link": "https://x", "name": "Our App"}},
                    {"id": "99", "name": "Flat"}
                ]
            })))
            .expect(1)
            .mount(&server)
            .await;
        let apps = client(&server).list_subscribed_apps("1001").await.unwrap();
        assert_eq!(
            apps,
            vec![
                SubscribedApp {
                    id: Some("67084".into()),
                    name: Some("Our App".into())
                },
                SubscribedApp {
                    id: Some("99".into()),
                    name: Some("Flat".into())
                },
            ]
        );
    }

    #[tokio::test]
    async fn start_migration_posts_exact_json() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v23.0/3003/phone_numbers"))
            .and(header("authorization", BEARER))
            .and(header("content-type", "application/json"))
            .and(body_json(json!({
                "cc": "49",
                "phone_number": "15112345678",
                "migrate_phone_number": true
            })))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "4004"})))
            .expect(1)
            .mount(&server)
            .await;
        let id = client(&server)
            .start_migration("3003", "49", "15112345678")
            .await
            .unwrap();
        assert_eq!(id, "4004");
    }

    #[tokio::test]
    async fn start_migration_without_id_is_decode_error() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
            .mount(&server)
            .await;
        let err = client(&server)
            .start_migration("3003", "49", "15112345678")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Decode {
                    service: Service::Meta,
                    ..
                }
            ),
            "{err:?}"
        );
        // A gateway's page is worth another try; whether a retry is safe is `applied`'s call.
        assert!(err.is_retryable() && err.maybe_applied());
    }

    #[tokio::test]
    async fn request_code_verify_code_register_bodies() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v23.0/4004/request_code"))
            .and(header("authorization", BEARER))
            .and(header("content-type", "application/json"))
            .and(body_json(
                json!({"code_method": "SMS", "language": "en_US"}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v23.0/4004/request_code"))
            .and(body_json(
                json!({"code_method": "VOICE", "language": "en_US"}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": "true"})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v23.0/4004/verify_code"))
            .and(header("authorization", BEARER))
            .and(header("content-type", "application/json"))
            .and(body_json(json!({"code": "012345"})))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"success": true, "id": "4004"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v23.0/4004/register"))
            .and(header("authorization", BEARER))
            .and(header("content-type", "application/json"))
            .and(body_json(
                json!({"messaging_product": "whatsapp", "pin": "654321"}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": "true"})))
            .expect(1)
            .mount(&server)
            .await;
        let c = client(&server);
        c.request_code("4004", CodeMethod::Sms, "en_US")
            .await
            .unwrap();
        c.request_code("4004", CodeMethod::Voice, "en_US")
            .await
            .unwrap();
        c.verify_code("4004", &SecretString::from("012345"))
            .await
            .unwrap();
        c.register("4004", &SecretString::from("654321"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn success_false_or_missing_is_decode_error() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v23.0/4004/verify_code"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": false})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v23.0/4004/register"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": 1})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v23.0/4004/request_code"))
            .respond_with(ResponseTemplate::new(200).set_body_string("<html>ok</html>"))
            .mount(&server)
            .await;
        let c = client(&server);
        let err = c
            .verify_code("4004", &SecretString::from("123456"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert!(err.maybe_applied() && err.is_retryable());
        assert!(!format!("{err} {err:?}").contains("123456"));
        let err = c
            .register("4004", &SecretString::from("123456"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        let err = c
            .request_code("4004", CodeMethod::Sms, "en_US")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn migrate_templates_bodies_and_response() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v23.0/3003/migrate_message_templates"))
            .and(header("authorization", BEARER))
            .and(header("content-type", "application/json"))
            .and(body_json(
                json!({"source_waba_id": "1001", "page_number": 0}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "migrated_templates": ["t1", "t2"],
                "failed_templates": {"t3": "Incorrect category"}
            })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v23.0/3003/migrate_message_templates"))
            .and(body_json(json!({
                "source_waba_id": "1001",
                "page_number": 1,
                "template_ids": ["t3", "t4"]
            })))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "migrated_templates": [],
                "failed_templates": [{"t4": "Formatting error - dangling parameter"}]
            })))
            .expect(1)
            .mount(&server)
            .await;
        let c = client(&server);
        let first = c.migrate_templates("3003", "1001", 0, None).await.unwrap();
        assert_eq!(first.migrated_templates, ["t1", "t2"]);
        assert_eq!(
            first.failed_templates.get("t3").map(String::as_str),
            Some("Incorrect category")
        );
        let ids = vec!["t3".to_owned(), "t4".to_owned()];
        let second = c
            .migrate_templates("3003", "1001", 1, Some(&ids))
            .await
            .unwrap();
        assert!(second.migrated_templates.is_empty());
        assert_eq!(
            second.failed_templates.get("t4").map(String::as_str),
            Some("Formatting error - dangling parameter")
        );
    }

    #[tokio::test]
    async fn a_variant_told_only_in_error_user_msg_is_read_from_there() {
        let err = error_for(ResponseTemplate::new(400).set_body_json(json!({
            "error": {
                "message": "(#100) Invalid parameter",
                "type": "OAuthException",
                "code": 100,
                "error_subcode": 2388103,
                "error_user_title": "Cannot migrate phone number",
                "error_user_msg": "There was an error migrating this phone number. Please try again after some time.",
                "fbtrace_id": "AbC"
            }
        })))
        .await;
        let up = api(&err);
        assert_eq!(
            up.message,
            "(#100) Invalid parameter — Cannot migrate phone number — There was an error migrating this phone number. Please try again after some time."
        );
        // The transient variant, although `message` alone does not say so.
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn graph_400_with_subcode_and_fbtrace_is_permanent() {
        let err = error_for(ResponseTemplate::new(400).set_body_json(json!({
            "error": {
                "message": "(#100) Cannot migrate phone number",
                "type": "OAuthException",
                "code": 100,
                "error_subcode": 2388103,
                "error_user_title": "Cannot migrate",
                "error_user_msg": "Webhooks are not subscribed",
                "error_data": {"messaging_product": "whatsapp",
                               "details": "No app is subscribed to the destination WABA"},
                "fbtrace_id": "AbCdEf123"
            }
        })))
        .await;
        let up = api(&err);
        assert_eq!(up.service, Service::Meta);
        assert_eq!(up.http_status, Some(400));
        assert_eq!(up.code, Some(100));
        assert_eq!(up.subcode, Some(2388103));
        assert!(up.has_code(2388103));
        assert_eq!(up.fbtrace_id.as_deref(), Some("AbCdEf123"));
        assert_eq!(
            up.message,
            "(#100) Cannot migrate phone number — Webhooks are not subscribed — No app is subscribed to the destination WABA"
        );
        assert_eq!(up.is_transient, None);
        assert!(!err.is_retryable());
        assert!(!err.maybe_applied());
        assert_eq!(err.retry_after(), None);
    }

    #[tokio::test]
    async fn graph_2388103_error_migrating_variant_is_retryable() {
        let err = error_for(ResponseTemplate::new(400).set_body_json(json!({
            "error": {
                "message": "There was an error migrating this phone number",
                "type": "OAuthException", "code": 100, "error_subcode": 2388103,
                "error_data": {"details": "There was an error migrating this phone number"},
                "fbtrace_id": "X"
            }
        })))
        .await;
        // Identical details are not repeated.
        assert_eq!(
            api(&err).message,
            "There was an error migrating this phone number"
        );
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn http_429_with_retry_after_is_retryable_with_delay() {
        let err = error_for(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_json(json!({"error": {
                    "message": "(#4) Application request limit reached",
                    "type": "OAuthException", "code": 4, "fbtrace_id": "T"}})),
        )
        .await;
        assert_eq!(api(&err).code, Some(4));
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));

        // A proxy's 429 without a Graph error object is retryable too.
        let err = error_for(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "7")
                .set_body_string("Too Many Requests"),
        )
        .await;
        assert_eq!(api(&err).code, None);
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn http_500_without_body_is_retryable() {
        let err = error_for(ResponseTemplate::new(500)).await;
        let up = api(&err);
        assert_eq!(up.http_status, Some(500));
        assert_eq!(up.code, None);
        assert_eq!(up.message, "HTTP 500 Internal Server Error");
        assert!(err.is_retryable());
        assert!(err.maybe_applied());
    }

    #[tokio::test]
    async fn non_json_error_body_is_truncated() {
        let html = format!("<html><body>{}</body></html>", "Bad gateway ".repeat(200));
        let err = error_for(ResponseTemplate::new(502).set_body_string(html)).await;
        let up = api(&err);
        assert!(
            up.message.starts_with("HTTP 502: <html><body>Bad gateway"),
            "{}",
            up.message
        );
        assert!(up.message.chars().count() < 230, "{}", up.message.len());
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn token_error_190_is_permanent_and_never_echoes_the_token() {
        let err = error_for(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": format!("Malformed access token {TOKEN}"),
            "type": "OAuthException", "code": 190, "error_subcode": 463, "fbtrace_id": "F"}})))
        .await;
        let up = api(&err);
        assert_eq!(up.code, Some(190));
        assert_eq!(up.message, "Malformed access token [redacted]");
        assert!(!err.is_retryable());
        assert!(!format!("{err} {err:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn is_transient_is_honoured() {
        let err = error_for(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "(#100) Something", "type": "OAuthException", "code": 100,
            "is_transient": true, "fbtrace_id": "F"}})))
        .await;
        assert_eq!(api(&err).is_transient, Some(true));
        assert!(err.is_retryable());

        let err = error_for(ResponseTemplate::new(503).set_body_json(json!({"error": {
            "message": "(#2) Service temporarily unavailable", "code": 2,
            "is_transient": false}})))
        .await;
        assert_eq!(api(&err).is_transient, Some(false));
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn business_use_case_usage_gives_retry_after() {
        let usage = json!({
            "1001": [
                {"type": "whatsapp_business_management", "call_count": 100, "total_cputime": 20,
                 "total_time": 30, "estimated_time_to_regain_access": 5},
                {"type": "other", "call_count": 100, "estimated_time_to_regain_access": 12}
            ],
            "1002": [{"type": "x", "call_count": 1, "estimated_time_to_regain_access": 0}]
        });
        let body = json!({"error": {"message": "(#80008) There have been too many calls",
                                    "type": "OAuthException", "code": 80008, "fbtrace_id": "B"}});
        let err = error_for(
            ResponseTemplate::new(400)
                .insert_header("x-business-use-case-usage", usage.to_string().as_str())
                .set_body_json(body.clone()),
        )
        .await;
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(12 * 60)));

        // Retry-After wins over the usage header.
        let err = error_for(
            ResponseTemplate::new(400)
                .insert_header("x-business-use-case-usage", usage.to_string().as_str())
                .insert_header("retry-after", "3")
                .set_body_json(body.clone()),
        )
        .await;
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

        // Zero everywhere (not throttled) or garbage: no delay.
        let err = error_for(
            ResponseTemplate::new(400)
                .insert_header(
                    "x-business-use-case-usage",
                    r#"{"1":[{"estimated_time_to_regain_access":0}]}"#,
                )
                .set_body_json(body.clone()),
        )
        .await;
        assert_eq!(err.retry_after(), None);
        let err = error_for(
            ResponseTemplate::new(400)
                .insert_header("x-business-use-case-usage", "not json")
                .set_body_json(body),
        )
        .await;
        assert_eq!(err.retry_after(), None);
    }

    #[tokio::test]
    async fn connect_error_is_transport_not_applied() {
        let c = MetaClient::new(
            closed_port_url(),
            "v23.0".into(),
            SecretString::from(TOKEN),
            http_client(Duration::from_secs(5)),
        );
        let err = c
            .register("4004", &SecretString::from("654321"))
            .await
            .unwrap_err();
        match &err {
            Error::Transport {
                service,
                maybe_applied,
                message,
            } => {
                assert_eq!(*service, Service::Meta);
                assert!(!maybe_applied);
                assert!(message.starts_with("connect error"), "{message}");
            }
            other => panic!("expected transport error, got {other:?}"),
        }
        assert!(err.is_retryable());
        let text = format!("{err} {err:?}");
        assert!(!text.contains(TOKEN) && !text.contains("654321"), "{text}");
    }

    #[tokio::test]
    async fn timeout_is_transport_maybe_applied() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v23.0/4004/register"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"success": true}))
                    .set_delay(Duration::from_secs(3)),
            )
            .mount(&server)
            .await;
        let c = client_at(&server.uri(), Duration::from_millis(200));
        let err = c
            .register("4004", &SecretString::from("654321"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Transport {
                    maybe_applied: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.maybe_applied() && err.is_retryable());
        let text = format!("{err} {err:?}");
        assert!(text.contains("timeout"), "{text}");
        assert!(!text.contains(TOKEN) && !text.contains("654321"), "{text}");
    }

    #[tokio::test]
    async fn body_cut_short_is_transport_not_decode() {
        let base = raw_server(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":",
        )
        .await;
        let c = client_at(base.as_str(), Duration::from_secs(5));
        let err = c.get_waba("1001").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Transport {
                    maybe_applied: true,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn base_path_is_preserved() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/graph/v23.0/1001"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "1001"})))
            .expect(2)
            .mount(&server)
            .await;
        for base in [
            format!("{}/graph", server.uri()),
            format!("{}/graph/", server.uri()),
        ] {
            let waba = client_at(&base, Duration::from_secs(5))
                .get_waba("1001")
                .await
                .unwrap();
            assert_eq!(waba.id, "1001");
        }
    }

    /// Answers every page with a fresh cursor and a `next` link, forever.
    struct EndlessPages(Arc<AtomicUsize>);

    impl Respond for EndlessPages {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            let after = request
                .url
                .query_pairs()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.into_owned());
            assert_eq!(after.is_none(), n == 0);
            ResponseTemplate::new(200).set_body_json(json!({
                "data": [{"id": format!("{n}"), "name": "n", "language": "en", "status": "APPROVED"}],
                "paging": {"cursors": {"after": format!("C{}", n + 1)}, "next": "https://next"}
            }))
        }
    }

    #[tokio::test]
    async fn paging_is_capped() {
        let server = MockServer::start().await;
        let calls = Arc::new(AtomicUsize::new(0));
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/message_templates"))
            .respond_with(EndlessPages(calls.clone()))
            .mount(&server)
            .await;
        let err = client(&server).list_templates("1001").await.unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert_eq!(calls.load(Ordering::SeqCst), MAX_PAGES);
    }

    #[tokio::test]
    async fn paging_cursor_that_does_not_advance_stops() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v23.0/1001/phone_numbers"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [phone("1")],
                "paging": {"cursors": {"after": "SAME"}, "next": "https://next"}
            })))
            .expect(2)
            .mount(&server)
            .await;
        let err = client(&server)
            .list_phone_numbers("1001")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = client_at("https://graph.facebook.com", Duration::from_secs(1));
        let debug = format!("{c:?}");
        assert!(!debug.contains(TOKEN), "{debug}");
        assert!(debug.contains("v23.0"));
    }
}
