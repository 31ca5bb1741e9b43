//! 360dialog endpoints: Partner API (channels, shared client numbers, API-key generation) and
//! Messaging API (`GET /health_status`).

use std::time::Duration;

use chrono::Utc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::exchange::{Api, Ctx, Reply, Target, meta_error_body};
use super::scenarios;
use super::state::{ChannelRec, KeyRec, Role, World, check_id, random_token};
use super::{Sandbox, SandboxConfig};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1000;

fn meta_error(status: StatusCode, message: &str) -> Reply {
    Reply::with_status(status, meta_error_body(status, message))
}

/// `X-API-Key` (or a legacy `Authorization: Bearer`) must be present and non-empty.
fn partner_auth(ctx: &Ctx) -> Option<Reply> {
    let key = ctx.header("x-api-key").is_some();
    let bearer = ctx
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty());
    (!key && !bearer).then(|| meta_error(StatusCode::UNAUTHORIZED, "Invalid API key"))
}

/// Parsed `filters` of the channel list.
#[derive(Default)]
struct ChannelFilters {
    /// The filters object as sent (echoed in the response).
    raw: Map<String, Value>,
    /// `setup_info.phone_number` as sent. Channels hold the number as E.164 digits without `+`
    /// and the filter compares it as held, so `+4915…` or `49 15…` match nothing.
    phone_number: Option<String>,
    id: Option<String>,
}

fn parse_filters(text: Option<&str>) -> Result<ChannelFilters, Reply> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(ChannelFilters::default());
    };
    let Ok(Value::Object(raw)) = serde_json::from_str::<Value>(text) else {
        return Err(meta_error(
            StatusCode::BAD_REQUEST,
            "Wrong payload: filters must be a JSON object",
        ));
    };
    let as_text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let phone_number = raw.get("setup_info.phone_number").and_then(as_text);
    let id = raw.get("id").and_then(as_text);
    Ok(ChannelFilters {
        raw,
        phone_number,
        id,
    })
}

fn query_pairs(ctx: &Ctx) -> Vec<(String, String)> {
    ctx.uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn query_usize(pairs: &[(String, String)], key: &str) -> Result<Option<usize>, Reply> {
    match pairs.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) => v.trim().parse().map(Some).map_err(|_| {
            meta_error(
                StatusCode::BAD_REQUEST,
                &format!("Wrong payload: {key} must be a non-negative integer"),
            )
        }),
    }
}

/// `GET /api/v2/partners/{partner_id}/channels?filters=…&limit=&offset=`.
///
/// Every partner sees every channel. Filters `setup_info.phone_number` (equal to the channel's
/// number as it shows it: E.164 digits without `+`) and `id` are applied, other keys are
/// ignored. Embedded-signup rule: with both filters, no channel of that id and none of that
/// number on the WABA it is registered in (else the destination the service named), the channel
/// is created there, `running`.
pub(crate) async fn list_channels(
    State(sandbox): State<Sandbox>,
    Path(_partner_id): Path<String>,
    ctx: Ctx,
) -> Response {
    let pairs = query_pairs(&ctx);
    let filter_text = pairs
        .iter()
        .find(|(k, _)| k == "filters")
        .map(|(_, v)| v.as_str());
    let parsed = parse_filters(filter_text).and_then(|filters| {
        let limit = query_usize(&pairs, "limit")?
            .filter(|l| *l > 0)
            .unwrap_or(DEFAULT_LIMIT)
            .min(MAX_LIMIT);
        let offset = query_usize(&pairs, "offset")?.unwrap_or(0);
        Ok((filters, limit, offset))
    });
    let refusal = partner_auth(&ctx).or_else(|| parsed.as_ref().err().cloned());
    let (filters, limit, offset) = parsed.unwrap_or((ChannelFilters::default(), DEFAULT_LIMIT, 0));
    let filter_e164 = filters
        .phone_number
        .as_deref()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(scenarios::normalize_e164);

    sandbox
        .exchange(
            Api::Hub,
            "list_channels",
            ctx.conn.as_ref(),
            |w| {
                let number = filter_e164.clone().or_else(|| {
                    let id = filters.id.as_ref()?;
                    w.channels.get(id).map(|c| c.e164.clone())
                });
                Target {
                    numbers: number.into_iter().collect(),
                    refusal,
                }
            },
            |w, config| {
                if let (Some(id), Some(e164)) = (&filters.id, &filter_e164) {
                    w.embedded_signup_channel(id, e164, config);
                }
                let mut channels: Vec<&ChannelRec> = w
                    .channels
                    .values()
                    .filter(|c| {
                        filters
                            .phone_number
                            .as_ref()
                            .is_none_or(|n| scenarios::digits(&c.e164) == *n)
                            && filters.id.as_ref().is_none_or(|id| &c.id == id)
                    })
                    .collect();
                channels.sort_by_key(|c| std::cmp::Reverse(c.created_at));
                let total = channels.len();
                let page: Vec<Value> = channels
                    .into_iter()
                    .skip(offset)
                    .take(limit)
                    .map(ChannelRec::json)
                    .collect();
                Ok(Reply::ok(json!({
                    "count": page.len(),
                    "total": total,
                    "limit": limit,
                    "offset": offset,
                    "sort": ["-created_at"],
                    "filters": filters.raw,
                    "partner_channels": page,
                })))
            },
        )
        .await
}

/// `GET /api/v2/partners/{partner_id}/clients/{client_id}/shared_client_numbers`: the client's
/// channels the partner may generate API keys for.
pub(crate) async fn shared_client_numbers(
    State(sandbox): State<Sandbox>,
    Path((_partner_id, client_id)): Path<(String, String)>,
    ctx: Ctx,
) -> Response {
    let refusal = partner_auth(&ctx);
    sandbox
        .exchange(
            Api::Hub,
            "shared_client_numbers",
            ctx.conn.as_ref(),
            |w| Target {
                numbers: w
                    .channels
                    .values()
                    .filter(|c| c.client_id == client_id)
                    .map(|c| c.e164.clone())
                    .collect(),
                refusal,
            },
            |w, _| {
                let numbers: Vec<Value> = w
                    .channels
                    .values()
                    .filter(|c| c.client_id == client_id && c.permission)
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "phone_number": scenarios::digits(&c.e164),
                            "permission": true,
                        })
                    })
                    .collect();
                Ok(Reply::ok(json!({
                    "count": numbers.len(),
                    "shared_client_numbers": numbers,
                })))
            },
        )
        .await
}

/// `POST /api/v2/partners/{partner_id}/channels/{channel_id}/api_keys` → 201 with a new key;
/// every earlier key of the channel stops working.
pub(crate) async fn generate_api_key(
    State(sandbox): State<Sandbox>,
    Path((partner_id, channel_id)): Path<(String, String)>,
    ctx: Ctx,
) -> Response {
    let refusal = partner_auth(&ctx);
    // The sandbox serves the Messaging API itself, at its root: the key's `address` is where
    // this request came in, so `curl "$address/health_status" -H "D360-API-KEY: …"` works.
    let address = format!("http://{}", ctx.header("host").unwrap_or("localhost"));
    sandbox
        .exchange(
            Api::Hub,
            "api_keys",
            ctx.conn.as_ref(),
            |w| Target {
                numbers: w
                    .channels
                    .get(&channel_id)
                    .map(|c| vec![c.e164.clone()])
                    .unwrap_or_default(),
                refusal,
            },
            |w, config| w.generate_api_key(&partner_id, &channel_id, &address, config),
        )
        .await
}

/// Messaging API `GET /health_status` with `D360-API-KEY`.
pub(crate) async fn health_status(State(sandbox): State<Sandbox>, ctx: Ctx) -> Response {
    let key = ctx.header("d360-api-key").map(str::to_owned);
    let key_for_count = key.clone();
    sandbox
        .exchange(
            Api::Messaging,
            "health_status",
            ctx.conn.as_ref(),
            |w| Target {
                numbers: key_for_count
                    .as_ref()
                    .and_then(|k| w.key_owner.get(k))
                    .and_then(|channel_id| w.channels.get(channel_id))
                    .map(|c| vec![c.e164.clone()])
                    .unwrap_or_default(),
                refusal: None,
            },
            |w, _| {
                let invalid = || {
                    Reply::with_status(
                        StatusCode::UNAUTHORIZED,
                        json!({"error": "Invalid API key"}),
                    )
                };
                let key = key.ok_or_else(invalid)?;
                let channel = w
                    .key_owner
                    .get(&key)
                    .and_then(|channel_id| w.channels.get(channel_id))
                    .filter(|c| c.current_key.as_ref().is_some_and(|k| k.api_key == key))
                    .ok_or_else(invalid)?;
                let waba_id = channel
                    .waba_external_id
                    .clone()
                    .unwrap_or_else(|| channel.waba_account_id.clone());
                Ok(Reply::ok(json!({
                    "health_status": {
                        "can_send_message": "AVAILABLE",
                        "entities": [
                            {"entity_type": "PHONE_NUMBER", "id": channel.phone_number_id, "can_send_message": "AVAILABLE"},
                            {"entity_type": "WABA", "id": waba_id, "can_send_message": "AVAILABLE"},
                        ],
                    }
                })))
            },
        )
        .await
}

impl World {
    /// Embedded-signup rule of the channel list (see [`list_channels`]).
    fn embedded_signup_channel(&mut self, channel_id: &str, e164: &str, config: &SandboxConfig) {
        if self.channels.contains_key(channel_id) || check_id("channel id", channel_id).is_err() {
            return;
        }
        let record = self
            .phones
            .values()
            .find(|p| p.e164 == e164 && p.role == Role::Destination)
            .map(|p| (p.id.clone(), p.waba_id.clone()));
        let (phone_number_id, dest) = match record {
            Some((id, waba)) => (id, Some(waba)),
            None => {
                let dest = self
                    .wabas
                    .values()
                    .find(|w| w.dest_numbers.contains(e164))
                    .map(|w| w.id.clone());
                (self.mint_phone_id(), dest)
            }
        };
        // A channel of the number on that WABA already: the id names another channel.
        if self
            .channel_of_number
            .get(e164)
            .and_then(|id| self.channels.get(id))
            .is_some_and(|c| c.on_waba(dest.as_deref()))
        {
            return;
        }
        let running_now = SandboxConfig {
            channel_running_after: Duration::ZERO,
            ..config.clone()
        };
        self.ensure_channel(
            e164,
            &phone_number_id,
            dest.as_deref(),
            Some(channel_id),
            &running_now,
        );
    }

    fn generate_api_key(
        &mut self,
        partner_id: &str,
        channel_id: &str,
        address: &str,
        config: &SandboxConfig,
    ) -> Result<Reply, Reply> {
        let channel = self
            .channels
            .get_mut(channel_id)
            .ok_or_else(|| meta_error(StatusCode::NOT_FOUND, "Channel not found"))?;
        if !channel.permission {
            return Err(meta_error(
                StatusCode::FORBIDDEN,
                &format!("Permission denied for partner {partner_id}"),
            ));
        }
        if channel.status() != "running" {
            return Err(meta_error(
                StatusCode::BAD_REQUEST,
                "Channel is not running",
            ));
        }
        let window = config.api_key_rate_window;
        if let Some(last) = channel.last_key_at {
            let elapsed = (Utc::now() - last).to_std().unwrap_or_default();
            if elapsed < window {
                let wait = (window - elapsed).as_secs_f64().ceil().max(1.0);
                let mut reply = meta_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests: one API key per channel every 30 seconds",
                );
                reply.retry_after = Some(wait as u64);
                return Err(reply);
            }
        }
        let key = KeyRec {
            id: random_token(16),
            api_key: random_token(40),
        };
        let body = json!({
            "id": key.id,
            "api_key": key.api_key,
            "address": address,
            "app_id": format!("{}AP", random_token(10)),
        });
        let api_key = key.api_key.clone();
        channel.current_key = Some(key);
        channel.keys_issued += 1;
        channel.last_key_at = Some(Utc::now());
        self.key_owner.insert(api_key, channel_id.to_owned());
        Ok(Reply::with_status(StatusCode::CREATED, body))
    }
}
