//! [`D360Api`] over reqwest: 360dialog's Partner API on the Hub (`X-API-Key`) and its Messaging
//! API on waba-v2 (`D360-API-KEY`), `360dialog-api.md` §0, §1, §3.
//!
//! Both base URLs keep their path (`https://hub.360dialog.io/api/v2` + `partners/...`). Response
//! shapes that the docs leave open (channel list item, `shared_client_numbers`, `api_keys`) are
//! parsed defensively from [`serde_json::Value`]. Key material never reaches an error message:
//! the `api_keys` response is never quoted, and upstream error text is scrubbed of our keys.
//!
//! Channels are looked up by number with `filters={"setup_info.phone_number": …}`. 360dialog
//! does not document the form it stores the number in, so a lookup that finds nothing with the
//! E.164 digits is asked again with `+` and the digits; the form that last found a channel is
//! tried first from then on, so a found channel costs one call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use async_trait::async_trait;
use reqwest::Method;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use super::http::{self, RawResponse};
use super::{
    Channel, D360Api, Error, GeneratedApiKey, HealthStatus, KeyPermission, PartnerCredentials,
    Service,
};
use super::{UpstreamError, meta};

/// Partner API key header.
const PARTNER_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
/// Messaging API (channel) key header.
const CHANNEL_KEY_HEADER: HeaderName = HeaderName::from_static("d360-api-key");
/// `limit` of channel list requests (one page: a number has a handful of channels at most).
const CHANNEL_LIMIT: &str = "50";
/// Channel status in which an API key can be generated.
const RUNNING: &str = "running";

/// How a number is written in a `setup_info.phone_number` filter. 360dialog does not document
/// the form it stores (E.164 digits, or with `+`), and its filter compares as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum NumberForm {
    /// `4915112345678`
    Digits = 1,
    /// `+4915112345678`
    Plus = 2,
}

impl NumberForm {
    fn write(self, digits: &str) -> String {
        match self {
            Self::Digits => digits.to_owned(),
            Self::Plus => format!("+{digits}"),
        }
    }
}

/// 360dialog client (Partner API + Messaging API). Holds no credentials: partner keys and
/// channel keys are passed per call. Cheap to clone.
#[derive(Debug, Clone)]
pub struct D360Client {
    hub_base: Url,
    waba_base: Url,
    http: reqwest::Client,
    /// The [`NumberForm`] a number filter last found a channel with (0: none yet), shared by
    /// clones: lookups try it first.
    number_form: Arc<AtomicU8>,
}

impl D360Client {
    /// `hub_base` e.g. `https://hub.360dialog.io/api/v2`; `waba_base` e.g.
    /// `https://waba-v2.360dialog.io`. Timeouts and the like are configured on `http`.
    pub fn new(hub_base: Url, waba_base: Url, http: reqwest::Client) -> Self {
        Self {
            hub_base,
            waba_base,
            http,
            number_form: Arc::default(),
        }
    }

    /// The forms to filter a number by, in order: the one that last found a channel first
    /// (digits until one has), then the other.
    fn number_forms(&self) -> [NumberForm; 2] {
        match self.number_form.load(Ordering::Relaxed) {
            2 => [NumberForm::Plus, NumberForm::Digits],
            _ => [NumberForm::Digits, NumberForm::Plus],
        }
    }

    /// Channels listed for `filters` plus the number `digits` in `setup_info.phone_number`, in
    /// the first of [`Self::number_forms`] that `found` accepts an answer of, which is then
    /// remembered.
    async fn list_channels_by_number(
        &self,
        partner: &PartnerCredentials,
        filters: serde_json::Map<String, Value>,
        digits: &str,
        found: impl Fn(&[ChannelItem]) -> bool,
    ) -> Result<Vec<ChannelItem>, Error> {
        let mut channels = Vec::new();
        for form in self.number_forms() {
            let mut filters = filters.clone();
            filters.insert(
                "setup_info.phone_number".into(),
                Value::String(form.write(digits)),
            );
            channels = self.list_channels(partner, &Value::Object(filters)).await?;
            if found(&channels) {
                self.number_form.store(form as u8, Ordering::Relaxed);
                break;
            }
        }
        Ok(channels)
    }

    /// Sends a Partner API request and returns the response whatever its status.
    async fn partner_send(
        &self,
        partner: &PartnerCredentials,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<RawResponse, Error> {
        let mut all = vec!["partners", partner.partner_id.as_str()];
        all.extend_from_slice(segments);
        let mut url = http::build_url(Service::D360Partner, &self.hub_base, &all)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let headers = key_headers(
            Service::D360Partner,
            PARTNER_KEY_HEADER,
            &partner.api_key,
            "partner API key",
        )?;
        http::send(&self.http, Service::D360Partner, method, url, headers, body).await
    }

    /// `GET /partners/{pid}/channels?filters=<json>&limit=50&offset=0`, parsed.
    async fn list_channels(
        &self,
        partner: &PartnerCredentials,
        filters: &Value,
    ) -> Result<Vec<ChannelItem>, Error> {
        let filters = filters.to_string();
        let query = [
            ("filters", filters.as_str()),
            ("limit", CHANNEL_LIMIT),
            ("offset", "0"),
        ];
        let response = self
            .partner_send(partner, Method::GET, &["channels"], &query, None)
            .await?;
        let response = ensure_success(Service::D360Partner, response, partner)?;
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| decode_error(Service::D360Partner, format!("channels: {e}")))?;
        let items = match &body {
            Value::Array(items) => items,
            Value::Object(_) => ["partner_channels", "channels", "data"]
                .iter()
                .find_map(|k| body.get(*k).and_then(Value::as_array))
                .ok_or_else(|| {
                    decode_error(
                        Service::D360Partner,
                        "channels: response has no partner_channels array".into(),
                    )
                })?,
            _ => {
                return Err(decode_error(
                    Service::D360Partner,
                    "channels: response is not an object".into(),
                ));
            }
        };
        Ok(items.iter().filter_map(ChannelItem::parse).collect())
    }
}

#[async_trait]
impl D360Api for D360Client {
    #[tracing::instrument(skip_all, fields(partner_id = %partner.partner_id))]
    async fn find_channel_by_number(
        &self,
        partner: &PartnerCredentials,
        phone_number_e164: &str,
        waba_id: &str,
        leaving_waba_id: &str,
    ) -> Result<Option<Channel>, Error> {
        let wanted = digits(phone_number_e164);
        if wanted.is_empty() {
            return Ok(None);
        }
        let is_it = |c: &ChannelItem| {
            !c.terminated
                && c.channel
                    .phone_number
                    .as_deref()
                    .is_some_and(|n| digits(n) == wanted)
        };
        let channels = self
            .list_channels_by_number(partner, serde_json::Map::new(), &wanted, |items| {
                items.iter().any(is_it)
            })
            .await?;
        Ok(pick_channel(
            channels.into_iter().filter(is_it),
            waba_id,
            leaving_waba_id,
        ))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %partner.partner_id, channel_id = %channel_id))]
    async fn get_channel(
        &self,
        partner: &PartnerCredentials,
        channel_id: &str,
        phone_number_e164: Option<&str>,
    ) -> Result<Option<Channel>, Error> {
        let mut filters = serde_json::Map::new();
        filters.insert("id".into(), Value::String(channel_id.to_owned()));
        let wanted = phone_number_e164.map(digits).filter(|d| !d.is_empty());
        let is_it = |c: &Channel| {
            c.id == channel_id
                && match (&wanted, &c.phone_number) {
                    (Some(wanted), Some(number)) => digits(number) == *wanted,
                    _ => true,
                }
        };
        // A terminated channel is no number's any more: as good as not listed.
        let pick = |channels: Vec<ChannelItem>| {
            channels
                .into_iter()
                .filter(|c| !c.terminated)
                .map(|c| c.channel)
                .find(is_it)
        };
        let Some(wanted) = &wanted else {
            return Ok(pick(
                self.list_channels(partner, &Value::Object(filters)).await?,
            ));
        };
        let by_number = self
            .list_channels_by_number(partner, filters.clone(), wanted, |items| {
                items.iter().any(|c| !c.terminated && is_it(&c.channel))
            })
            .await?;
        if let Some(found) = pick(by_number) {
            return Ok(Some(found));
        }
        // 360dialog does not document how it writes `setup_info.phone_number` (spaces, dashes,
        // brackets): by the id alone, the number compared by its digits (a national form
        // without the country code still does not match).
        Ok(pick(
            self.list_channels(partner, &Value::Object(filters)).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %partner.partner_id, client_id = %client_id, channel_id = %channel_id))]
    async fn api_key_permission(
        &self,
        partner: &PartnerCredentials,
        client_id: &str,
        channel_id: &str,
        phone_number_e164: Option<&str>,
    ) -> Result<KeyPermission, Error> {
        let response = self
            .partner_send(
                partner,
                Method::GET,
                &["clients", client_id, "shared_client_numbers"],
                &[],
                None,
            )
            .await?;
        if response.status == StatusCode::NOT_FOUND {
            return Ok(KeyPermission::Unknown);
        }
        let response = ensure_success(Service::D360Partner, response, partner)?;
        let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
            decode_error(Service::D360Partner, format!("shared_client_numbers: {e}"))
        })?;
        Ok(key_permission(
            &body,
            channel_id,
            phone_number_e164.map(digits).as_deref(),
        ))
    }

    #[tracing::instrument(skip_all, fields(partner_id = %partner.partner_id, channel_id = %channel_id))]
    async fn generate_api_key(
        &self,
        partner: &PartnerCredentials,
        channel_id: &str,
    ) -> Result<GeneratedApiKey, Error> {
        let body = Value::Object(serde_json::Map::new());
        let response = self
            .partner_send(
                partner,
                Method::POST,
                &["channels", channel_id, "api_keys"],
                &[],
                Some(&body),
            )
            .await?;
        let response = ensure_success(Service::D360Partner, response, partner)?;
        // Never quote this body: it carries the key.
        let body: Value = serde_json::from_slice(&response.body).map_err(|_| {
            decode_error(
                Service::D360Partner,
                "api_keys: response is not valid JSON".into(),
            )
        })?;
        generated_key(&body).ok_or_else(|| {
            decode_error(
                Service::D360Partner,
                "api_keys: response has no api_key".into(),
            )
        })
    }

    #[tracing::instrument(skip_all)]
    async fn health_status(&self, api_key: &SecretString) -> Result<HealthStatus, Error> {
        let service = Service::D360Messaging;
        let url = http::build_url(service, &self.waba_base, &["health_status"])?;
        let headers = key_headers(service, CHANNEL_KEY_HEADER, api_key, "channel API key")?;
        let response = http::send(&self.http, service, Method::GET, url, headers, None).await?;
        if !response.status.is_success() {
            return Err(api_error(service, &response, &[api_key.expose_secret()]));
        }
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| decode_error(service, format!("health_status: {e}")))?;
        if !body.is_object() {
            return Err(decode_error(
                service,
                "health_status: response is not an object".into(),
            ));
        }
        Ok(HealthStatus {
            can_send_message: body
                .get("health_status")
                .and_then(|h| http::str_field(h, "can_send_message"))
                .map(str::to_owned),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn key_headers(
    service: Service,
    name: HeaderName,
    key: &SecretString,
    what: &str,
) -> Result<HeaderMap, Error> {
    let mut value = HeaderValue::from_str(key.expose_secret()).map_err(|_| Error::Transport {
        service,
        message: format!("the {what} is not a valid HTTP header value"),
        maybe_applied: false,
    })?;
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    Ok(headers)
}

fn ensure_success(
    service: Service,
    response: RawResponse,
    partner: &PartnerCredentials,
) -> Result<RawResponse, Error> {
    if response.status.is_success() {
        Ok(response)
    } else {
        Err(api_error(
            service,
            &response,
            &[partner.api_key.expose_secret()],
        ))
    }
}

fn decode_error(service: Service, message: String) -> Error {
    Error::Decode {
        service,
        message: http::truncate(&message, http::MAX_MESSAGE_CHARS),
    }
}

/// The ASCII digits of a phone number (`+49 151-2345` → `491512345`).
fn digits(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

/// A channel list item, with what is needed to choose among several.
struct ChannelItem {
    channel: Channel,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `terminated_at` is set: the channel was cancelled (a number that once was on
    /// 360dialog), so it is no number's channel any more.
    terminated: bool,
}

impl ChannelItem {
    /// `{"id", "client_id", "status", "account_mode", "created_at", "setup_info": {"phone_number"},
    /// "waba_account": {"external_id"}, "client": {"id"}}`; items without an id are skipped.
    fn parse(item: &Value) -> Option<Self> {
        let id = item.get("id").and_then(http::value_as_id)?;
        let nested = |outer: &str, inner: &str| {
            item.get(outer)
                .and_then(|o| o.get(inner))
                .and_then(http::value_as_id)
        };
        let channel = Channel {
            id,
            client_id: item
                .get("client_id")
                .and_then(http::value_as_id)
                .or_else(|| nested("client", "id")),
            status: http::str_field(item, "status").map(str::to_owned),
            account_mode: http::str_field(item, "account_mode").map(str::to_owned),
            phone_number: nested("setup_info", "phone_number"),
            waba_external_id: nested("waba_account", "external_id"),
        };
        let created_at = http::str_field(item, "created_at").and_then(parse_timestamp);
        let terminated = item.get("terminated_at").is_some_and(|t| !t.is_null());
        Some(Self {
            channel,
            created_at,
            terminated,
        })
    }
}

/// RFC 3339, or a naive ISO timestamp taken as UTC.
fn parse_timestamp(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(|t| t.and_utc())
}

/// The channel to take for a migration into `waba_id` from `leaving_waba_id`: one on `waba_id`
/// first, then one whose WABA is not shown, then one on another WABA, and one on the WABA the
/// number leaves last; within each, a `running` one, then the newest (latest `created_at`;
/// among equal or missing timestamps, the first listed).
fn pick_channel(
    candidates: impl Iterator<Item = ChannelItem>,
    waba_id: &str,
    leaving_waba_id: &str,
) -> Option<Channel> {
    let rank = |item: &ChannelItem| {
        let channel = &item.channel;
        let waba = match channel.waba() {
            Some(w) if w == waba_id.trim() => 3,
            None => 2,
            Some(w) if w == leaving_waba_id.trim() => 0,
            Some(_) => 1,
        };
        let running = channel
            .status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(RUNNING));
        (waba, running, item.created_at)
    };
    let mut best: Option<ChannelItem> = None;
    for item in candidates {
        if best.as_ref().is_none_or(|b| rank(&item) > rank(b)) {
            best = Some(item);
        }
    }
    best.map(|b| b.channel)
}

/// Keys of a `shared_client_numbers` entry that name its channel, and its number.
const ENTRY_ID_KEYS: [&str; 2] = ["id", "channel_id"];
const ENTRY_NUMBER_KEYS: [&str; 4] = ["phone_number", "number", "display_phone_number", "phone"];

/// What a `shared_client_numbers` body says about `channel_id` (number `digits_wanted`). The
/// lists are looked for under `shared_client_numbers`, `numbers`, `channels` or `data`, or as
/// the body itself. An entry is the channel's when its `id`/`channel_id` is the channel, or,
/// for an entry without either, when its number (`phone_number`, `number`,
/// `display_phone_number`, `phone`) has the same digits; a bare string entry may be either. The channel's entry grants, unless its `permission` is
/// false (or `"false"`, `"missing"`, `"revoked"`, `"denied"`). Lists whose entries carry none of
/// those keys, or no list at all, are a shape not seen before: [`KeyPermission::Unknown`].
fn key_permission(body: &Value, channel_id: &str, digits_wanted: Option<&str>) -> KeyPermission {
    let arrays: Vec<&Vec<Value>> = match body {
        Value::Array(items) => vec![items],
        Value::Object(_) => ["shared_client_numbers", "numbers", "channels", "data"]
            .iter()
            .filter_map(|k| body.get(*k).and_then(Value::as_array))
            .collect(),
        _ => Vec::new(),
    };
    if arrays.is_empty() {
        return KeyPermission::Unknown;
    }
    let is_number = |v: &Value| {
        digits_wanted
            .is_some_and(|want| !want.is_empty() && v.as_str().is_some_and(|n| digits(n) == want))
    };
    let (mut understood, mut granted, mut denied) = (true, false, false);
    let mut any = false;
    for entry in arrays.into_iter().flatten() {
        any = true;
        let (names_it, readable) = match entry {
            Value::Object(_) => {
                // An entry naming a channel is that channel's, whatever its number (an
                // older channel of the same number says nothing about this one).
                let ids: Vec<String> = ENTRY_ID_KEYS
                    .iter()
                    .filter_map(|k| entry.get(*k).and_then(http::value_as_id))
                    .collect();
                let by_id = ids.iter().any(|id| id == channel_id);
                let by_number = ids.is_empty()
                    && ENTRY_NUMBER_KEYS
                        .iter()
                        .any(|k| entry.get(*k).is_some_and(is_number));
                let readable = ENTRY_ID_KEYS
                    .iter()
                    .chain(ENTRY_NUMBER_KEYS.iter())
                    .any(|k| entry.get(*k).is_some());
                (by_id || by_number, readable)
            }
            other => (
                http::value_as_id(other).as_deref() == Some(channel_id) || is_number(other),
                true,
            ),
        };
        understood &= readable;
        if !names_it {
            continue;
        }
        let refused = match entry.get("permission") {
            Some(Value::Bool(b)) => !b,
            Some(Value::String(s)) => ["false", "missing", "revoked", "denied"]
                .iter()
                .any(|d| s.trim().eq_ignore_ascii_case(d)),
            _ => false,
        };
        if refused {
            denied = true;
        } else {
            granted = true;
        }
    }
    if granted {
        KeyPermission::Granted
    } else if denied || !any || understood {
        KeyPermission::Denied
    } else {
        KeyPermission::Unknown
    }
}

/// Flat `{"id", "api_key", "address", "app_id"}` or wrapped `{"api_keys": [{...}]}`.
fn generated_key(body: &Value) -> Option<GeneratedApiKey> {
    let from = |obj: &Value| {
        let api_key = http::str_field(obj, "api_key")?;
        Some(GeneratedApiKey {
            id: obj.get("id").and_then(http::value_as_id),
            api_key: SecretString::from(api_key.to_owned()),
            address: http::str_field(obj, "address").map(str::to_owned),
            app_id: obj.get("app_id").and_then(http::value_as_id),
        })
    };
    from(body).or_else(|| {
        body.get("api_keys")
            .and_then(Value::as_array)?
            .iter()
            .find_map(from)
    })
}

/// Builds [`Error::Api`] from a non-2xx 360dialog response; `secrets` are scrubbed from the text.
fn api_error(service: Service, response: &RawResponse, secrets: &[&str]) -> Error {
    let status = response.status;
    let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
    let upstream = parsed
        .as_ref()
        .and_then(|body| error_body(service, status.as_u16(), body, secrets))
        .unwrap_or_else(|| UpstreamError {
            service,
            http_status: Some(status.as_u16()),
            code: None,
            subcode: None,
            fbtrace_id: None,
            message: http::text_message(status, &response.body, secrets),
            is_transient: None,
        });
    Error::Api {
        upstream,
        retry_after: http::retry_after_header(&response.headers),
    }
}

/// The error bodies 360dialog is known to send:
/// * `{"meta": {"success": false, "http_code", "developer_message", "details": [...],
///   "error_data": {"code", "message"}}}` (Partner API);
/// * `{"error": "<text>"}` or `{"error", "error_description"}`;
/// * `{"error": {<Graph error object>}}` (the Messaging API proxies Meta's errors);
/// * `{"detail": ...}` / `{"message": ...}` as a last resort.
fn error_body(
    service: Service,
    http_status: u16,
    body: &Value,
    secrets: &[&str],
) -> Option<UpstreamError> {
    let mut code = None;
    let message = if let Some(meta_obj) = body.get("meta").filter(|m| m.is_object()) {
        let error_data = meta_obj.get("error_data");
        code = error_data
            .and_then(|d| d.get("code"))
            .and_then(http::value_as_i64);
        let base = http::str_field(meta_obj, "developer_message")
            .or_else(|| error_data.and_then(|d| http::str_field(d, "message")))
            .or_else(|| http::str_field(meta_obj, "message"))
            .map(str::to_owned);
        let details = meta_obj
            .get("details")
            .map(details_text)
            .unwrap_or_default();
        match (base, details.is_empty()) {
            (Some(base), true) => base,
            (Some(base), false) if base.contains(details.as_str()) => base,
            (Some(base), false) => format!("{base} — {details}"),
            (None, false) => details,
            (None, true) => format!("HTTP {http_status}"),
        }
    } else {
        match body.get("error") {
            Some(err @ Value::Object(_)) => {
                return Some(meta::graph_error_object(service, http_status, err, secrets));
            }
            Some(Value::String(err)) if !err.trim().is_empty() => {
                match http::str_field(body, "error_description") {
                    Some(desc) => format!("{}: {desc}", err.trim()),
                    None => err.trim().to_owned(),
                }
            }
            _ => {
                let text = body
                    .get("detail")
                    .or_else(|| body.get("message"))
                    .map(details_text)
                    .unwrap_or_default();
                if text.is_empty() {
                    return None;
                }
                text
            }
        }
    };
    Some(UpstreamError {
        service,
        http_status: Some(http_status),
        code,
        subcode: None,
        fbtrace_id: None,
        message: http::message(&message, secrets),
        is_transient: None,
    })
}

/// `details` as text: strings as is, objects by their `msg`/`message`, the rest as JSON;
/// array items joined with `; `.
fn details_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.trim().to_owned(),
        Value::Array(items) => items
            .iter()
            .map(details_text)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        Value::Object(_) => http::str_field(v, "msg")
            .or_else(|| http::str_field(v, "message"))
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path, query_param};
    use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

    use super::super::http::test_support::{closed_port_url, http_client};
    use super::*;

    const PARTNER_KEY: &str = "pk_SECRETpartnerKEY_1";
    const CHANNEL_KEY: &str = "ck_SECRETchannelKEY_2";
    const NEW_KEY: &str = "nk_FRESHLYgeneratedKEY_3";

    fn partner() -> PartnerCredentials {
        PartnerCredentials {
            partner_id: "testPA".into(),
            api_key: SecretString::from(PARTNER_KEY),
        }
    }

    fn client_with(hub: &str, waba: &str, timeout: Duration) -> D360Client {
        D360Client::new(
            Url::parse(hub).unwrap(),
            Url::parse(waba).unwrap(),
            http_client(timeout),
        )
    }

    fn client(server: &MockServer) -> D360Client {
        client_with(
            &format!("{}/api/v2", server.uri()),
            &server.uri(),
            Duration::from_secs(5),
        )
    }

    fn api(err: &Error) -> &UpstreamError {
        err.upstream()
            .unwrap_or_else(|| panic!("expected Error::Api, got {err:?}"))
    }

    /// Matches when the `filters` query parameter is JSON equal to `.0`.
    struct FiltersAre(Value);

    impl Match for FiltersAre {
        fn matches(&self, request: &Request) -> bool {
            request
                .url
                .query_pairs()
                .find(|(k, _)| k == "filters")
                .and_then(|(_, v)| serde_json::from_str::<Value>(&v).ok())
                .is_some_and(|v| v == self.0)
        }
    }

    fn channels_mock(filters: Value, items: Value) -> Mock {
        Mock::given(method("GET"))
            .and(path("/api/v2/partners/testPA/channels"))
            .and(header("x-api-key", PARTNER_KEY))
            .and(FiltersAre(filters))
            .and(query_param("limit", "50"))
            .and(query_param("offset", "0"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "count": items.as_array().map_or(0, Vec::len),
                "total": items.as_array().map_or(0, Vec::len),
                "limit": 50,
                "offset": 0,
                "partner_channels": items
            })))
            .expect(1)
    }

    #[tokio::test]
    async fn find_channel_by_number_prefers_running_and_maps_fields() {
        let server = MockServer::start().await;
        channels_mock(
            json!({"setup_info.phone_number": "4915112345678"}),
            json!([
                {"id": "otherCH", "status": "running", "client_id": "c0",
                 "setup_info": {"phone_number": "4915100000000"}},
                {"id": "oldCH", "status": "ready", "client_id": "c1",
                 "created_at": "2025-01-01T10:00:00Z",
                 "setup_info": {"phone_number": "4915112345678"}},
                {"id": "runCH", "status": "running", "account_mode": "live",
                 "created_at": "2024-01-01T10:00:00Z",
                 "setup_info": {"phone_number": "+49 151 12345678", "phone_name": "Acme"},
                 "waba_account": {"id": "abcWA", "external_id": "1001"},
                 "client": {"id": "c2"}},
                {"id": "newCH", "status": "ready", "client_id": "c3",
                 "created_at": "2025-06-01T10:00:00Z",
                 "setup_info": {"phone_number": "4915112345678"}}
            ]),
        )
        .mount(&server)
        .await;
        let channel = client(&server)
            .find_channel_by_number(&partner(), "+4915112345678", "1001", "2002")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            channel,
            Channel {
                id: "runCH".into(),
                client_id: Some("c2".into()),
                status: Some("running".into()),
                account_mode: Some("live".into()),
                phone_number: Some("+49 151 12345678".into()),
                waba_external_id: Some("1001".into()),
            }
        );
    }

    /// A number with a channel on the WABA it leaves (a change of WABA inside 360dialog) or on
    /// another one its client chose: the destination's channel is taken even before it runs;
    /// one whose WABA is not shown comes next, then another WABA's, and the one the number
    /// leaves only when nothing else is listed (the step then sees it is not the migration's).
    /// A terminated channel is no number's.
    #[tokio::test]
    async fn find_channel_by_number_prefers_the_destination_waba() {
        let server = MockServer::start().await;
        let on = |id: &str, status: &str, created: &str, waba: Option<&str>| {
            let mut item = json!({"id": id, "status": status, "created_at": created,
                                  "setup_info": {"phone_number": "4915112345678"}});
            if let Some(w) = waba {
                item["waba_account"] = json!({"id": "xWA", "external_id": w});
            }
            item
        };
        let source = on("sourceCH", "running", "2025-06-01T10:00:00Z", Some("2002"));
        let unknown = on("unknownCH", "running", "2025-05-01T10:00:00Z", None);
        let blank = on("blankCH", "ready", "2025-07-01T10:00:00Z", Some(" "));
        let dest = on("destCH", "ready", "2025-01-01T10:00:00Z", Some("1001"));
        let other = on("otherCH", "ready", "2024-01-01T10:00:00Z", Some("3003"));
        let mut ended = on("endedCH", "running", "2025-08-01T10:00:00Z", Some("1001"));
        ended["terminated_at"] = json!("2025-09-01T10:00:00Z");
        let cases = [
            (
                "4915112345678",
                json!([source, unknown, dest, blank]),
                "destCH",
            ),
            (
                "4915112345679",
                json!([source, unknown, blank]),
                "unknownCH",
            ),
            ("4915112345671", json!([source, other, ended]), "otherCH"),
            ("4915112345670", json!([source]), "sourceCH"),
        ];
        for (number, items, _) in &cases {
            let items: Vec<Value> = items
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    i["setup_info"]["phone_number"] = json!(number);
                    i
                })
                .collect();
            channels_mock(json!({"setup_info.phone_number": number}), json!(items))
                .mount(&server)
                .await;
        }
        let c = client(&server);
        for (number, _, want) in cases {
            let found = c
                .find_channel_by_number(&partner(), &format!("+{number}"), "1001", "2002")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(found.id, want, "{number}");
            let waba = found.waba();
            assert_eq!(waba == Some("2002"), want == "sourceCH", "{number}");
        }
    }

    #[tokio::test]
    async fn a_number_360dialog_holds_with_plus_is_found_and_that_form_kept() {
        let server = MockServer::start().await;
        channels_mock(
            json!({"setup_info.phone_number": "4915112345678"}),
            json!([]),
        )
        .mount(&server)
        .await;
        let item = json!([{"id": "plusCH", "status": "running", "client_id": "c1",
                           "setup_info": {"phone_number": "+4915112345678"}}]);
        channels_mock(
            json!({"setup_info.phone_number": "+4915112345678"}),
            item.clone(),
        )
        .expect(2)
        .mount(&server)
        .await;
        channels_mock(
            json!({"id": "plusCH", "setup_info.phone_number": "+4915112345678"}),
            item,
        )
        .mount(&server)
        .await;
        let c = client(&server);
        let found = c
            .find_channel_by_number(&partner(), "+4915112345678", "1001", "2002")
            .await
            .unwrap()
            .expect("found with +");
        assert_eq!(found.id, "plusCH");
        // From then on (clones too) the `+` form is tried first: one call per found lookup.
        let again = c.clone();
        assert!(
            again
                .find_channel_by_number(&partner(), "+4915112345678", "1001", "2002")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            again
                .get_channel(&partner(), "plusCH", Some("+4915112345678"))
                .await
                .unwrap()
                .is_some()
        );
        // A channel held as digits is still found: the other form is tried next.
        channels_mock(
            json!({"setup_info.phone_number": "+4915100000002"}),
            json!([]),
        )
        .mount(&server)
        .await;
        channels_mock(
            json!({"setup_info.phone_number": "4915100000002"}),
            json!([{"id": "digitsCH", "status": "running",
                    "setup_info": {"phone_number": "4915100000002"}}]),
        )
        .mount(&server)
        .await;
        let digits = c
            .find_channel_by_number(&partner(), "+4915100000002", "1001", "2002")
            .await
            .unwrap()
            .expect("found with digits");
        assert_eq!(digits.id, "digitsCH");
    }

    #[tokio::test]
    async fn find_channel_by_number_else_newest_else_none() {
        let server = MockServer::start().await;
        channels_mock(
            json!({"setup_info.phone_number": "4915112345678"}),
            json!([
                {"id": "oldCH", "status": "ready", "created_at": "2025-01-01T10:00:00Z",
                 "setup_info": {"phone_number": "4915112345678"}},
                {"id": "newCH", "status": "created", "created_at": "2025-06-01T10:00:00.123",
                 "setup_info": {"phone_number": "4915112345678"}},
                {"id": "midCH", "status": "verified", "created_at": "2025-03-01T10:00:00+00:00",
                 "setup_info": {"phone_number": "4915112345678"}}
            ]),
        )
        .mount(&server)
        .await;
        channels_mock(
            json!({"setup_info.phone_number": "15550001111"}),
            // Whatever the filter does upstream, a different number is never returned.
            json!([{"id": "xCH", "status": "running", "setup_info": {"phone_number": "15550001112"}}]),
        )
        .mount(&server)
        .await;
        // Found in neither form: both are asked.
        channels_mock(
            json!({"setup_info.phone_number": "+15550001111"}),
            json!([]),
        )
        .mount(&server)
        .await;
        let c = client(&server);
        let channel = c
            .find_channel_by_number(&partner(), "+49 151 12345678", "1001", "2002")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(channel.id, "newCH");
        assert_eq!(channel.client_id, None);
        assert!(
            c.find_channel_by_number(&partner(), "+15550001111", "1001", "2002")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn get_channel_filters_by_id_and_optional_number() {
        let server = MockServer::start().await;
        let item = json!({"id": "abcCH", "client_id": "abcCL", "status": "running",
                          "setup_info": {"phone_number": "4915112345678"}});
        channels_mock(json!({"id": "abcCH"}), json!([item.clone()]))
            .mount(&server)
            .await;
        channels_mock(
            json!({"id": "abcCH", "setup_info.phone_number": "4915112345678"}),
            json!([item]),
        )
        .mount(&server)
        .await;
        channels_mock(json!({"id": "goneCH"}), json!([]))
            .mount(&server)
            .await;
        // Cancelled: listed with `terminated_at`, and no number's channel any more.
        channels_mock(
            json!({"id": "endedCH"}),
            json!([{"id": "endedCH", "status": "running", "terminated_at": "2025-09-01T10:00:00Z",
                    "setup_info": {"phone_number": "4915112345678"}}]),
        )
        .mount(&server)
        .await;
        let c = client(&server);
        let a = c.get_channel(&partner(), "abcCH", None).await.unwrap();
        let b = c
            .get_channel(&partner(), "abcCH", Some("+4915112345678"))
            .await
            .unwrap();
        assert_eq!(a, b);
        let a = a.unwrap();
        assert_eq!(a.client_id.as_deref(), Some("abcCL"));
        assert_eq!(a.status.as_deref(), Some("running"));
        for gone in ["goneCH", "endedCH"] {
            assert!(
                c.get_channel(&partner(), gone, None)
                    .await
                    .unwrap()
                    .is_none(),
                "{gone}"
            );
        }
    }

    #[tokio::test]
    async fn get_channel_finds_a_named_channel_whatever_form_its_number_is_written_in() {
        let server = MockServer::start().await;
        let spaced = json!({"id": "abcCH", "client_id": "abcCL", "status": "running",
                            "setup_info": {"phone_number": "+49 1511 2345678"}});
        // The number filters, in either form, match nothing; the id alone finds it.
        for form in ["4915112345678", "+4915112345678"] {
            channels_mock(
                json!({"id": "abcCH", "setup_info.phone_number": form}),
                json!([]),
            )
            .mount(&server)
            .await;
        }
        channels_mock(json!({"id": "abcCH"}), json!([spaced]))
            .mount(&server)
            .await;
        let c = client(&server);
        let found = c
            .get_channel(&partner(), "abcCH", Some("+4915112345678"))
            .await
            .unwrap()
            .expect("found by its id");
        assert_eq!(found.client_id.as_deref(), Some("abcCL"));

        // The id of another number's channel is not this number's.
        let server = MockServer::start().await;
        for form in ["4915112345678", "+4915112345678"] {
            channels_mock(
                json!({"id": "otherCH", "setup_info.phone_number": form}),
                json!([]),
            )
            .mount(&server)
            .await;
        }
        channels_mock(
            json!({"id": "otherCH"}),
            json!([{"id": "otherCH", "status": "running",
                    "setup_info": {"phone_number": "+44 7700 900123"}}]),
        )
        .mount(&server)
        .await;
        assert!(
            client(&server)
                .get_channel(&partner(), "otherCH", Some("+4915112345678"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn api_key_permission_parses_defensively() {
        let server = MockServer::start().await;
        let cases: Vec<(&str, ResponseTemplate)> = vec![
            ("cl1", ResponseTemplate::new(200).set_body_json(json!([{"id": "ch1"}]))),
            (
                "cl2",
                ResponseTemplate::new(200).set_body_json(
                    json!({"shared_client_numbers": [{"channel_id": "ch1", "permission": false}]}),
                ),
            ),
            (
                "cl3",
                ResponseTemplate::new(200).set_body_json(
                    json!({"numbers": [{"channel_id": "other"}, {"channel_id": "ch1", "permission": true}]}),
                ),
            ),
            ("cl4", ResponseTemplate::new(404).set_body_json(json!({"meta": {"success": false, "http_code": 404, "developer_message": "Not found"}}))),
            ("cl5", ResponseTemplate::new(200).set_body_json(json!({"data": [{"id": "other"}], "channels": []}))),
            ("cl6", ResponseTemplate::new(200).set_body_json(json!({"channels": [{"id": "ch1", "phone_number": "1"}]}))),
            ("cl8", ResponseTemplate::new(200).set_body_json(json!({"shared_client_numbers": [{"phone_number": "+49 1511 2345678"}]}))),
            ("cl9", ResponseTemplate::new(200).set_body_json(json!({"numbers": [{"client": "cl9", "shared": true}]}))),
            ("cl10", ResponseTemplate::new(200).set_body_json(json!({"count": 1}))),
            ("cl11", ResponseTemplate::new(200).set_body_json(json!({"shared_client_numbers": [{"id": "oldCH", "phone_number": "+4915112345678", "permission": true}]}))),
        ];
        for (client_id, template) in cases {
            Mock::given(method("GET"))
                .and(path(format!(
                    "/api/v2/partners/testPA/clients/{client_id}/shared_client_numbers"
                )))
                .and(header("x-api-key", PARTNER_KEY))
                .respond_with(template)
                .expect(1)
                .mount(&server)
                .await;
        }
        Mock::given(method("GET"))
            .and(path(
                "/api/v2/partners/testPA/clients/cl7/shared_client_numbers",
            ))
            .respond_with(ResponseTemplate::new(403).set_body_json(json!({"meta": {
                "success": false, "http_code": 403,
                "developer_message": "Permission denied for partner testPA"}})))
            .mount(&server)
            .await;
        let c = client(&server);
        let p = partner();
        let number = Some("+4915112345678");
        let answer = async |client_id: &str| {
            c.api_key_permission(&p, client_id, "ch1", number)
                .await
                .unwrap()
        };
        use KeyPermission::*;
        assert_eq!(answer("cl1").await, Granted);
        assert_eq!(answer("cl2").await, Denied);
        assert_eq!(answer("cl3").await, Granted);
        // 360dialog documents neither the path nor the shape: a 404 does not say "denied".
        assert_eq!(answer("cl4").await, Unknown);
        assert_eq!(answer("cl5").await, Denied);
        assert_eq!(answer("cl6").await, Granted);
        // Entries that carry the number, not the channel id.
        assert_eq!(answer("cl8").await, Granted);
        // Lists whose entries say nothing we can match, and no list at all.
        assert_eq!(answer("cl9").await, Unknown);
        assert_eq!(answer("cl10").await, Unknown);
        // Another channel of the same number is not this channel.
        assert_eq!(answer("cl11").await, Denied);
        let err = c
            .api_key_permission(&p, "cl7", "ch1", number)
            .await
            .unwrap_err();
        assert_eq!(api(&err).http_status, Some(403));
        assert_eq!(api(&err).message, "Permission denied for partner testPA");
        assert!(!err.is_retryable());
    }

    fn api_keys_path() -> wiremock::matchers::PathExactMatcher {
        path("/api/v2/partners/testPA/channels/abcCH/api_keys")
    }

    #[tokio::test]
    async fn generate_api_key_flat_201() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(api_keys_path())
            .and(header("x-api-key", PARTNER_KEY))
            .and(header("content-type", "application/json"))
            .and(body_json(json!({})))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "id": "key1", "api_key": NEW_KEY,
                "address": "https://waba-v2.360dialog.io", "app_id": "app9"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let key = client(&server)
            .generate_api_key(&partner(), "abcCH")
            .await
            .unwrap();
        assert_eq!(key.api_key.expose_secret(), NEW_KEY);
        assert_eq!(key.id.as_deref(), Some("key1"));
        assert_eq!(key.address.as_deref(), Some("https://waba-v2.360dialog.io"));
        assert_eq!(key.app_id.as_deref(), Some("app9"));
        let debug = format!("{key:?}");
        assert!(!debug.contains(NEW_KEY), "{debug}");
    }

    #[tokio::test]
    async fn generate_api_key_wrapped_200() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(api_keys_path())
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "api_keys": [{"address": "https://waba.360dialog.io", "api_key": NEW_KEY,
                              "app_id": 12345, "id": "key2"}]
            })))
            .expect(1)
            .mount(&server)
            .await;
        let key = client(&server)
            .generate_api_key(&partner(), "abcCH")
            .await
            .unwrap();
        assert_eq!(key.api_key.expose_secret(), NEW_KEY);
        assert_eq!(key.id.as_deref(), Some("key2"));
        assert_eq!(key.app_id.as_deref(), Some("12345"));
    }

    #[tokio::test]
    async fn generate_api_key_without_key_is_decode_error() {
        for body in [
            json!({"id": "key1", "address": NEW_KEY}),
            json!({"api_keys": []}),
            json!({"api_key": 42}),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(api_keys_path())
                .respond_with(ResponseTemplate::new(201).set_body_json(body))
                .mount(&server)
                .await;
            let err = client(&server)
                .generate_api_key(&partner(), "abcCH")
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Decode {
                        service: Service::D360Partner,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.maybe_applied(), "a 2xx may have revoked the old key");
            assert!(!format!("{err} {err:?}").contains(NEW_KEY));
        }
        // A non-JSON body is never quoted either.
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(api_keys_path())
            .respond_with(ResponseTemplate::new(201).set_body_string(format!("key={NEW_KEY}")))
            .mount(&server)
            .await;
        let err = client(&server)
            .generate_api_key(&partner(), "abcCH")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }));
        assert!(!format!("{err} {err:?}").contains(NEW_KEY));
    }

    #[tokio::test]
    async fn partner_error_envelope_is_parsed() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(api_keys_path())
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({"meta": {
                "success": false, "http_code": 400,
                "developer_message": "Channel is not running",
                "details": ["status is ready", {"msg": "try later"}],
                "error_data": {"code": 1020, "message": "bad state"}}})))
            .mount(&server)
            .await;
        let err = client(&server)
            .generate_api_key(&partner(), "abcCH")
            .await
            .unwrap_err();
        let up = api(&err);
        assert_eq!(up.service, Service::D360Partner);
        assert_eq!(up.http_status, Some(400));
        assert_eq!(up.code, Some(1020));
        assert_eq!(up.subcode, None);
        assert_eq!(
            up.message,
            "Channel is not running — status is ready; try later"
        );
        assert!(!err.is_retryable());
        assert!(!err.maybe_applied());
    }

    #[tokio::test]
    async fn partner_error_other_shapes() {
        async fn err_for(template: ResponseTemplate) -> Error {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(api_keys_path())
                .respond_with(template)
                .mount(&server)
                .await;
            client(&server)
                .generate_api_key(&partner(), "abcCH")
                .await
                .unwrap_err()
        }
        let err = err_for(ResponseTemplate::new(403).set_body_json(json!({"meta": {
            "success": false, "http_code": 403,
            "developer_message": format!("Invalid key {PARTNER_KEY}"),
            "error_data": {"code": "not-a-number"}}})))
        .await;
        assert_eq!(api(&err).code, None);
        assert_eq!(api(&err).message, "Invalid key [redacted]");
        assert!(!format!("{err} {err:?}").contains(PARTNER_KEY));

        let err = err_for(ResponseTemplate::new(401).set_body_json(
            json!({"error": "invalid_grant", "error_description": "Wrong email or password."}),
        ))
        .await;
        assert_eq!(api(&err).message, "invalid_grant: Wrong email or password.");
        assert!(!err.is_retryable());

        let err = err_for(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_json(json!({"error": "Too many requests"})),
        )
        .await;
        assert_eq!(api(&err).message, "Too many requests");
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));

        let err = err_for(ResponseTemplate::new(500)).await;
        assert_eq!(api(&err).message, "HTTP 500 Internal Server Error");
        assert!(err.is_retryable());
        assert!(err.maybe_applied());

        let err = err_for(
            ResponseTemplate::new(422)
                .set_body_json(json!({"detail": [{"loc": ["body"], "msg": "field required"}]})),
        )
        .await;
        assert_eq!(api(&err).message, "field required");
    }

    #[tokio::test]
    async fn health_status_uses_channel_key_and_waba_base_path() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/proxy/health_status"))
            .and(header("d360-api-key", CHANNEL_KEY))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "health_status": {"can_send_message": "AVAILABLE", "entities": [
                    {"entity_type": "PHONE_NUMBER", "id": "4004", "can_send_message": "AVAILABLE"}
                ]}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let c = client_with(
            &format!("{}/api/v2", server.uri()),
            &format!("{}/proxy/", server.uri()),
            Duration::from_secs(5),
        );
        let status = c
            .health_status(&SecretString::from(CHANNEL_KEY))
            .await
            .unwrap();
        assert_eq!(status.can_send_message.as_deref(), Some("AVAILABLE"));
        let requests = server.received_requests().await.unwrap();
        assert!(!requests[0].headers.contains_key("x-api-key"));
    }

    #[tokio::test]
    async fn health_status_errors_are_messaging_errors() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/health_status"))
            .and(header("d360-api-key", CHANNEL_KEY))
            .respond_with(
                ResponseTemplate::new(401).set_body_json(json!({"error": "Invalid api key"})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/health_status"))
            .and(header("d360-api-key", "graphstyle"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
                "message": "(#131056) Pair rate limit hit", "type": "OAuthException",
                "code": 131056, "error_data": {"details": "slow down"}, "fbtrace_id": "FB1"}})))
            .mount(&server)
            .await;
        let c = client(&server);
        let err = c
            .health_status(&SecretString::from(CHANNEL_KEY))
            .await
            .unwrap_err();
        let up = api(&err);
        assert_eq!(up.service, Service::D360Messaging);
        assert_eq!(up.http_status, Some(401));
        assert_eq!(up.message, "Invalid api key");
        assert!(!err.is_retryable());

        let err = c
            .health_status(&SecretString::from("graphstyle"))
            .await
            .unwrap_err();
        let up = api(&err);
        assert_eq!(up.service, Service::D360Messaging);
        assert_eq!(up.code, Some(131056));
        assert_eq!(up.fbtrace_id.as_deref(), Some("FB1"));
        assert_eq!(up.message, "(#131056) Pair rate limit hit — slow down");
    }

    #[tokio::test]
    async fn hub_base_path_is_preserved_with_trailing_slash() {
        let server = MockServer::start().await;
        channels_mock(json!({"id": "abcCH"}), json!([{"id": "abcCH"}]))
            .mount(&server)
            .await;
        let c = client_with(
            &format!("{}/api/v2/", server.uri()),
            &server.uri(),
            Duration::from_secs(5),
        );
        let channel = c.get_channel(&partner(), "abcCH", None).await.unwrap();
        assert_eq!(channel.unwrap().id, "abcCH");
    }

    #[tokio::test]
    async fn connect_error_is_transport_not_applied() {
        let base = closed_port_url();
        let c = client_with(
            base.join("api/v2").unwrap().as_str(),
            base.as_str(),
            Duration::from_secs(5),
        );
        let err = c.generate_api_key(&partner(), "abcCH").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Transport {
                    service: Service::D360Partner,
                    maybe_applied: false,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = c
            .health_status(&SecretString::from(CHANNEL_KEY))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Transport {
                    service: Service::D360Messaging,
                    maybe_applied: false,
                    ..
                }
            ),
            "{err:?}"
        );
        // The filter (a phone number) is not quoted in transport errors.
        let err = c
            .find_channel_by_number(&partner(), "+4915112345678", "1001", "2002")
            .await
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("4915112345678") && !text.contains(PARTNER_KEY),
            "{text}"
        );
    }

    #[tokio::test]
    async fn timeout_is_transport_maybe_applied() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(api_keys_path())
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"api_key": NEW_KEY}))
                    .set_delay(Duration::from_secs(3)),
            )
            .mount(&server)
            .await;
        let c = client_with(
            &format!("{}/api/v2", server.uri()),
            &server.uri(),
            Duration::from_millis(200),
        );
        let err = c.generate_api_key(&partner(), "abcCH").await.unwrap_err();
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
        assert!(err.is_retryable() && err.maybe_applied());
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let c = client_with(
            "https://hub.360dialog.io/api/v2",
            "https://waba-v2.360dialog.io",
            Duration::from_secs(1),
        );
        let text = format!("{c:?} {:?}", partner());
        assert!(!text.contains(PARTNER_KEY), "{text}");
        let key = GeneratedApiKey {
            id: Some("k".into()),
            api_key: SecretString::from(NEW_KEY),
            address: None,
            app_id: None,
        };
        assert!(!format!("{key:?}").contains(NEW_KEY));
    }
}
