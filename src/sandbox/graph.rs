//! Meta Graph API endpoints: WABA and phone-number reads, migration, OTP, registration and
//! template migration.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::exchange::{Api, Ctx, Reply, Target, graph_error_body};
use super::scenarios::{self, Scenario};
use super::state::{FOREIGN_BUSINESS_ID, PHONE_ID_PREFIX, Role, TemplateRec, WabaRec, World};
use super::{SANDBOX_OTP_CODE, Sandbox, SandboxConfig};

/// Page size of Graph list edges when `limit` is absent.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;
/// Page size of `migrate_message_templates` (and the maximum `count`).
const TEMPLATE_BATCH: u64 = 500;
const CURSOR_PREFIX: &str = "QVFI";
/// The id `GET /{v}/me` answers: the system user every sandbox token belongs to.
const SANDBOX_SYSTEM_USER_ID: &str = "100000000000099";

/// A Graph error, rendered as the Graph error object.
#[derive(Debug, Clone)]
pub(crate) struct GraphError {
    status: StatusCode,
    code: i64,
    subcode: Option<i64>,
    title: String,
    user_msg: String,
    transient: Option<bool>,
}

impl GraphError {
    fn new(status: StatusCode, code: i64, title: impl Into<String>) -> Self {
        let title = title.into();
        Self {
            status,
            code,
            subcode: None,
            user_msg: title.clone(),
            title,
            transient: Some(false),
        }
    }

    fn bad_request(code: i64, title: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, title)
    }

    fn subcode(mut self, subcode: i64) -> Self {
        self.subcode = Some(subcode);
        self
    }

    fn user_msg(mut self, msg: impl Into<String>) -> Self {
        self.user_msg = msg.into();
        self
    }

    fn transient(mut self, transient: Option<bool>) -> Self {
        self.transient = transient;
        self
    }

    pub(crate) fn reply(self) -> Reply {
        Reply::with_status(
            self.status,
            graph_error_body(
                self.code,
                self.subcode,
                &self.title,
                &self.user_msg,
                self.transient,
            ),
        )
    }
}

fn invalid_param(msg: impl Into<String>) -> GraphError {
    GraphError::bad_request(100, "Invalid parameter").user_msg(msg)
}

fn no_such_object(id: &str) -> GraphError {
    GraphError::bad_request(
        100,
        format!(
            "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
        ),
    )
    .subcode(33)
}

fn unknown_path(what: &str) -> Response {
    GraphError::bad_request(2500, format!("Unknown path components: {what}"))
        .reply()
        .into_response()
}

fn migration_error(msg: &str) -> GraphError {
    GraphError::bad_request(100, msg).subcode(2388103)
}

fn missing_token() -> Reply {
    GraphError::new(
        StatusCode::UNAUTHORIZED,
        190,
        "Invalid OAuth access token - Cannot parse access token",
    )
    .reply()
}

fn expired_token() -> Reply {
    GraphError::new(
        StatusCode::UNAUTHORIZED,
        190,
        "Error validating access token: Session has expired",
    )
    .subcode(463)
    .reply()
}

/// Request parameters: query string, then the JSON or form-encoded body on top.
pub(crate) struct Params(Map<String, Value>);

impl Params {
    fn from_query(uri: &Uri) -> Self {
        let mut map = Map::new();
        if let Some(query) = uri.query() {
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                map.insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
        Params(map)
    }

    fn from_request(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Result<Self, GraphError> {
        let mut params = Self::from_query(uri);
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let text = body.trim_ascii();
        if text.is_empty() {
            return Ok(params);
        }
        if content_type.contains("json") || text.starts_with(b"{") {
            match serde_json::from_slice::<Value>(text) {
                Ok(Value::Object(map)) => params.0.extend(map),
                _ => return Err(invalid_param("The request body must be a JSON object")),
            }
        } else {
            for (k, v) in url::form_urlencoded::parse(text) {
                params
                    .0
                    .insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
        Ok(params)
    }

    /// A string parameter (numbers and booleans are accepted and rendered as text).
    fn str(&self, key: &str) -> Option<String> {
        let text = match self.0.get(key)? {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        (!text.is_empty()).then_some(text)
    }

    /// A parameter Meta's OpenAPI spec types as a string: a JSON number or boolean fails its
    /// validation (`code` and `pin` as `123456` are refused, `"123456"` is not).
    fn string(&self, key: &str) -> Result<Option<String>, GraphError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
            Some(_) => Err(invalid_param(format!("Param {key} must be a string"))),
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.0.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.trim() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            Value::Number(n) => n.as_u64().map(|n| n != 0),
            _ => None,
        }
    }

    fn u64(&self, key: &str) -> Result<Option<u64>, GraphError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                invalid_param(format!("Param {key} must be a non-negative integer"))
            }),
            Some(Value::String(s)) => {
                s.trim().parse().map(Some).map_err(|_| {
                    invalid_param(format!("Param {key} must be a non-negative integer"))
                })
            }
            Some(_) => Err(invalid_param(format!(
                "Param {key} must be a non-negative integer"
            ))),
        }
    }

    /// A list of ids: a JSON array, a JSON array in a string, or comma-separated text.
    fn list(&self, key: &str) -> Result<Option<Vec<String>>, GraphError> {
        let bad = || invalid_param(format!("Param {key} must be a list of ids"));
        let items = match self.0.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) => items.clone(),
            Some(Value::String(s)) if s.trim_start().starts_with('[') => {
                match serde_json::from_str::<Value>(s) {
                    Ok(Value::Array(items)) => items,
                    _ => return Err(bad()),
                }
            }
            Some(Value::String(s)) => s
                .split(',')
                .map(|part| Value::String(part.trim().to_owned()))
                .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                .collect(),
            Some(_) => return Err(bad()),
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// `Authorization: Bearer <non-empty>` or an `access_token` parameter.
fn auth_refusal(ctx: &Ctx, params: Option<&Params>) -> Option<Reply> {
    let bearer = ctx
        .header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|token| !token.trim().is_empty());
    let param = params.and_then(|p| p.str("access_token")).is_some();
    (!bearer && !param).then(missing_token)
}

fn valid_version(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let mut parts = rest.splitn(2, '.');
    let all_digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    all_digits(parts.next()) && all_digits(parts.next())
}

/// What a Graph id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Phone,
    /// Known WABA, or an unknown id taken to be a WABA (created on first use).
    Waba,
    /// Looks like a sandbox phone-number id but does not exist (or is not a valid id at all).
    Missing,
}

fn classify(world: &World, id: &str) -> Node {
    if world.phones.contains_key(id) {
        Node::Phone
    } else if world.wabas.contains_key(id) {
        Node::Waba
    } else if super::state::check_id("id", id).is_err()
        || (id.len() == 16 && id.starts_with(PHONE_ID_PREFIX))
    {
        Node::Missing
    } else {
        Node::Waba
    }
}

fn phone_target(world: &World, id: &str, refusal: Option<Reply>) -> Target {
    let numbers: Vec<String> = world
        .phones
        .get(id)
        .map(|p| vec![p.e164.clone()])
        .unwrap_or_default();
    let denied = numbers.iter().any(|n| world.denies_number(n));
    // A number of a WABA not shared with the partner's app is not shown either.
    let unshared = world
        .phones
        .get(id)
        .is_some_and(|p| world.unshared(&p.waba_id));
    let refusal = refusal
        .or_else(|| denied.then(expired_token))
        .or_else(|| unshared.then(|| no_such_object(id).reply()));
    Target { numbers, refusal }
}

fn waba_target(world: &World, id: &str, refusal: Option<Reply>) -> Target {
    let numbers = world.waba_numbers(id);
    let refusal = refusal
        .or_else(|| world.denies_waba(id).then(expired_token))
        .or_else(|| world.unshared(id).then(|| no_such_object(id).reply()));
    Target { numbers, refusal }
}

fn wrong_node(edge: &str, node: Node, id: &str) -> Response {
    match node {
        Node::Missing => no_such_object(id).reply().into_response(),
        Node::Phone => GraphError::bad_request(
            100,
            format!("Tried accessing nonexisting field ({edge}) on node type (WhatsAppBusinessPhoneNumber)"),
        )
        .reply()
        .into_response(),
        Node::Waba => GraphError::bad_request(
            100,
            format!("Tried accessing nonexisting field ({edge}) on node type (WhatsAppBusinessAccount)"),
        )
        .reply()
        .into_response(),
    }
}

/// The fields of a Graph node type the sandbox serves: what Meta documents for it (see
/// `meta-graph-api.md` §3), and what Graph returns when a request names no `fields`.
struct NodeFields {
    /// Prefix of its names in [`SandboxConfig::graph_missing_fields`], e.g. `waba`.
    prefix: &'static str,
    node_type: &'static str,
    known: &'static [&'static str],
    defaults: &'static [&'static str],
}

const PHONE_NODE: NodeFields = NodeFields {
    prefix: "phone_number",
    node_type: "WhatsAppBusinessPhoneNumber",
    known: &[
        "id",
        "display_phone_number",
        "verified_name",
        "quality_rating",
        "name_status",
        "new_name_status",
        "code_verification_status",
        "status",
        "platform_type",
        "throughput",
        "messaging_limit_tier",
        "account_mode",
        "is_official_business_account",
        "is_on_biz_app",
        "health_status",
        "last_onboarded_time",
        "webhook_configuration",
        "is_preverified_number",
        "certificate",
    ],
    defaults: &[
        "id",
        "display_phone_number",
        "verified_name",
        "quality_rating",
    ],
};

const WABA_NODE: NodeFields = NodeFields {
    prefix: "waba",
    node_type: "WhatsAppBusinessAccount",
    known: &[
        "id",
        "name",
        "account_review_status",
        "business_verification_status",
        "owner_business_info",
        "on_behalf_of_business_info",
        "primary_funding_id",
        "status",
        "ownership_type",
        "currency",
        "country",
        "timezone_id",
        "message_template_namespace",
        "health_status",
        "is_shared_with_partners",
        "whatsapp_business_manager_messaging_limit",
        "creation_time",
    ],
    defaults: &["id", "name", "timezone_id", "message_template_namespace"],
};

const TEMPLATE_NODE: NodeFields = NodeFields {
    prefix: "template",
    node_type: "WhatsAppMessageTemplate",
    known: &[
        "id",
        "name",
        "language",
        "status",
        "category",
        "sub_category",
        "components",
        "quality_score",
        "rejected_reason",
        "previous_category",
        "parameter_format",
    ],
    defaults: &["id", "name", "language", "status", "category", "components"],
};

/// The field names of Graph's `fields` parameter (a selection such as `owner_business_info{id}`
/// counts as its field), `id` always among them; the node type's defaults when none are named.
/// A name the node type does not have fails the whole request, as on Graph.
fn requested_fields(
    params: &Params,
    node: &NodeFields,
    missing: &[String],
) -> Result<Vec<String>, GraphError> {
    let Some(raw) = params.str("fields") else {
        return Ok(node.defaults.iter().map(|f| (*f).to_owned()).collect());
    };
    let mut names = vec!["id".to_owned()];
    let (mut depth, mut start) = (0usize, 0usize);
    let mut tops = Vec::new();
    for (i, c) in raw.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                tops.push(&raw[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    tops.push(&raw[start..]);
    for top in tops {
        let name = top.split(['{', '.']).next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        let removed = missing.iter().any(|m| {
            m.strip_prefix(node.prefix)
                .and_then(|m| m.strip_prefix('.'))
                == Some(name)
        });
        if !node.known.contains(&name) || removed {
            return Err(GraphError::bad_request(
                100,
                format!(
                    "Tried accessing nonexisting field ({name}) on node type ({})",
                    node.node_type
                ),
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// `object` with only the `wanted` fields it has.
fn project(object: Value, wanted: &[String]) -> Value {
    match object {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| wanted.iter().any(|w| w == k))
                .collect(),
        ),
        other => other,
    }
}

/// `GET /{v}/{id}`: a WABA or a phone number.
pub(crate) async fn get_node(
    State(sandbox): State<Sandbox>,
    Path((version, id)): Path<(String, String)>,
    ctx: Ctx,
) -> Response {
    if !valid_version(&version) {
        return unknown_path(&format!("/{version}/{id}"));
    }
    let params = Params::from_query(&ctx.uri);
    let auth = auth_refusal(&ctx, Some(&params));
    if id == "me" {
        // The token's owner: the service checks its token with this at start.
        return auth
            .unwrap_or_else(|| {
                Reply::ok(json!({"id": SANDBOX_SYSTEM_USER_ID, "name": "Sandbox System User"}))
            })
            .into_response();
    }
    let node = classify(&sandbox.lock().world, &id);
    let conn = ctx.conn.as_ref();
    match node {
        Node::Phone | Node::Missing => {
            sandbox
                .exchange(
                    Api::Graph,
                    "get_phone_number",
                    conn,
                    |w| phone_target(w, &id, auth),
                    |w, config| {
                        let phone = w
                            .phones
                            .get(&id)
                            .ok_or_else(|| no_such_object(&id).reply())?;
                        let wanted =
                            requested_fields(&params, &PHONE_NODE, &config.graph_missing_fields)
                                .map_err(GraphError::reply)?;
                        Ok(Reply::ok(project(World::phone_json(phone), &wanted)))
                    },
                )
                .await
        }
        Node::Waba => {
            sandbox
                .exchange(
                    Api::Graph,
                    "get_waba",
                    conn,
                    |w| waba_target(w, &id, auth),
                    |w, config| {
                        w.ensure_waba(&id, None);
                        let waba = w
                            .wabas
                            .get(&id)
                            .ok_or_else(|| no_such_object(&id).reply())?;
                        let wanted =
                            requested_fields(&params, &WABA_NODE, &config.graph_missing_fields)
                                .map_err(GraphError::reply)?;
                        Ok(Reply::ok(project(w.waba_json(waba), &wanted)))
                    },
                )
                .await
        }
    }
}

/// `GET /{v}/{waba-id}/{phone_numbers|subscribed_apps|message_templates}`.
pub(crate) async fn get_edge(
    State(sandbox): State<Sandbox>,
    Path((version, id, edge)): Path<(String, String, String)>,
    ctx: Ctx,
) -> Response {
    if !valid_version(&version) {
        return unknown_path(&format!("/{version}/{id}/{edge}"));
    }
    let endpoint = match edge.as_str() {
        "phone_numbers" => "list_phone_numbers",
        "subscribed_apps" => "list_subscribed_apps",
        "message_templates" => "list_templates",
        _ => return unknown_path(&format!("/{edge}")),
    };
    let node = classify(&sandbox.lock().world, &id);
    if node != Node::Waba {
        return wrong_node(&edge, node, &id);
    }
    let params = Params::from_query(&ctx.uri);
    let auth = auth_refusal(&ctx, Some(&params));
    let next_base = next_base_url(&ctx);
    sandbox
        .exchange(
            Api::Graph,
            endpoint,
            ctx.conn.as_ref(),
            |w| waba_target(w, &id, auth),
            |w, config| {
                w.ensure_waba(&id, None);
                let Some(waba) = w.wabas.get(&id) else {
                    return Err(no_such_object(&id).reply());
                };
                let fields = |node: &NodeFields| {
                    requested_fields(&params, node, &config.graph_missing_fields)
                        .map_err(GraphError::reply)
                };
                let items: Vec<Value> = match endpoint {
                    "list_phone_numbers" => {
                        let wanted = fields(&PHONE_NODE)?;
                        let all = waba
                            .phone_ids
                            .iter()
                            .filter_map(|pid| w.phones.get(pid))
                            .map(World::phone_json);
                        filter_phones(all, &params)
                            .map_err(GraphError::reply)?
                            .into_iter()
                            .map(|p| project(p, &wanted))
                            .collect()
                    }
                    "list_templates" => {
                        let wanted = fields(&TEMPLATE_NODE)?;
                        let mut items: Vec<Value> =
                            waba.templates.iter().map(template_json).collect();
                        if w.waba_has(waba, Scenario::TemplateLimit) {
                            // Full: as many templates as its limit allows.
                            let filler = w.template_limit(waba).saturating_sub(items.len());
                            items.extend((0..filler).map(|i| filler_template_json(&id, i)));
                        }
                        items.into_iter().map(|t| project(t, &wanted)).collect()
                    }
                    _ => {
                        let data = if w.waba_has_app(waba) {
                            vec![json!({"whatsapp_business_api_data": {
                                "id": "700000000000001",
                                "link": "https://sandbox.invalid/apps/700000000000001",
                                "name": "Sandbox App",
                            }})]
                        } else {
                            Vec::new()
                        };
                        return Ok(Reply::ok(json!({ "data": data })));
                    }
                };
                page(items, &params, &next_base)
                    .map(Reply::ok)
                    .map_err(GraphError::reply)
            },
        )
        .await
}

/// `POST /{v}/{id}/{edge}`.
pub(crate) async fn post_edge(
    State(sandbox): State<Sandbox>,
    Path((version, id, edge)): Path<(String, String, String)>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    if !valid_version(&version) {
        return unknown_path(&format!("/{version}/{id}/{edge}"));
    }
    let node = classify(&sandbox.lock().world, &id);
    let (endpoint, wants) = match edge.as_str() {
        "phone_numbers" => ("start_migration", Node::Waba),
        "migrate_message_templates" => ("migrate_message_templates", Node::Waba),
        "request_code" => ("request_code", Node::Phone),
        "verify_code" => ("verify_code", Node::Phone),
        "register" => ("register", Node::Phone),
        _ => return unknown_path(&format!("/{edge}")),
    };
    // Unknown phone ids are answered by the pipeline (counted, faultable) with error 33.
    if node != wants && !(wants == Node::Phone && node == Node::Missing) {
        return wrong_node(&edge, node, &id);
    }
    let parsed = Params::from_request(&ctx.uri, &ctx.headers, &body);
    let refusal = match &parsed {
        Ok(params) => auth_refusal(&ctx, Some(params)),
        Err(e) => auth_refusal(&ctx, None).or_else(|| Some(e.clone().reply())),
    };
    let params = parsed.unwrap_or(Params(Map::new()));
    let conn = ctx.conn.as_ref();
    let to_reply =
        |result: Result<Value, GraphError>| result.map(Reply::ok).map_err(GraphError::reply);

    match endpoint {
        "start_migration" => {
            let number = migration_number(&params).ok();
            sandbox
                .exchange(
                    Api::Graph,
                    endpoint,
                    conn,
                    |w| {
                        let numbers: Vec<String> = number.into_iter().collect();
                        let denied =
                            numbers.iter().any(|n| w.denies_number(n)) || w.denies_waba(&id);
                        let refusal = refusal
                            .or_else(|| denied.then(expired_token))
                            .or_else(|| w.unshared(&id).then(|| no_such_object(&id).reply()));
                        Target { numbers, refusal }
                    },
                    |w, config| to_reply(w.start_migration(&id, &params, config)),
                )
                .await
        }
        "migrate_message_templates" => {
            sandbox
                .exchange(
                    Api::Graph,
                    endpoint,
                    conn,
                    |w| {
                        let numbers: Vec<String> = w
                            .wabas
                            .get(&id)
                            .map(|waba| waba.dest_numbers.iter().cloned().collect())
                            .unwrap_or_default();
                        let refusal = refusal
                            .or_else(|| w.denies_waba(&id).then(expired_token))
                            .or_else(|| w.unshared(&id).then(|| no_such_object(&id).reply()));
                        Target { numbers, refusal }
                    },
                    |w, _| to_reply(w.migrate_templates(&id, &params)),
                )
                .await
        }
        _ => {
            sandbox
                .exchange(
                    Api::Graph,
                    endpoint,
                    conn,
                    |w| phone_target(w, &id, refusal),
                    |w, config| {
                        to_reply(match endpoint {
                            "request_code" => w.request_code(&id, &params),
                            "verify_code" => w.verify_code(&id, &params),
                            _ => w.register(&id, &params, config),
                        })
                    },
                )
                .await
        }
    }
}

/// `http://host/path` of the current request, for `paging.next`.
fn next_base_url(ctx: &Ctx) -> (String, Vec<(String, String)>) {
    let host = ctx.header("host").unwrap_or("localhost");
    let base = format!("http://{host}{}", ctx.uri.path());
    let query = ctx
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k != "after" && k != "before")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    (base, query)
}

/// One page of a Graph list edge (`limit`, `after` cursors; `next` omitted on the last page).
fn page(
    items: Vec<Value>,
    params: &Params,
    (base, query): &(String, Vec<(String, String)>),
) -> Result<Value, GraphError> {
    let limit = match params.u64("limit")? {
        None | Some(0) => DEFAULT_LIMIT,
        Some(n) => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
    };
    let start = match params.str("after") {
        None => 0,
        Some(cursor) => decode_cursor(&cursor)
            .ok_or_else(|| invalid_param("Invalid cursor in param after"))?
            .saturating_add(1),
    };
    let total = items.len();
    let data: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    if data.is_empty() {
        return Ok(json!({ "data": data }));
    }
    let last = start + data.len() - 1;
    let mut paging = json!({
        "cursors": {"before": encode_cursor(start), "after": encode_cursor(last)},
    });
    if last + 1 < total {
        let mut serializer = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in query {
            serializer.append_pair(k, v);
        }
        serializer.append_pair("after", &encode_cursor(last));
        paging["next"] = json!(format!("{base}?{}", serializer.finish()));
    }
    Ok(json!({ "data": data, "paging": paging }))
}

/// Fields `filtering` takes on `GET /{waba}/phone_numbers`, each with `EQUAL`. Meta documents
/// `account_mode` (beta) and names `messaging_limit_tier` and `is_official_business_account`;
/// `display_phone_number`, matched exactly as Meta displays it (`+1 631-555-5555`), is how the
/// precheck looks one number up (undocumented by Meta: the service checks the answer and falls
/// back to paging when a Graph refuses or ignores it).
const FILTER_FIELDS: &[&str] = &[
    "account_mode",
    "messaging_limit_tier",
    "is_official_business_account",
    "display_phone_number",
];

/// Graph's `filtering` parameter: a JSON array of `{field, operator, value}` that must all hold
/// (Meta's own examples quote it with `'`, which Graph takes too). A malformed filter, or a
/// field or operator outside [`FILTER_FIELDS`], is error 100.
fn filter_phones(
    items: impl Iterator<Item = Value>,
    params: &Params,
) -> Result<Vec<Value>, GraphError> {
    let Some(raw) = params.str("filtering") else {
        return Ok(items.collect());
    };
    let parsed = serde_json::from_str::<Value>(&raw)
        .or_else(|_| serde_json::from_str::<Value>(&raw.replace('\'', "\"")))
        .map_err(|_| invalid_param("filtering must be a JSON array"))?;
    let Value::Array(conditions) = parsed else {
        return Err(invalid_param("filtering must be a JSON array"));
    };
    let mut wanted = Vec::with_capacity(conditions.len());
    for c in &conditions {
        let text = |key: &str| match c.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        };
        let (Some(field), Some(operator), Some(value)) =
            (text("field"), text("operator"), text("value"))
        else {
            return Err(invalid_param(
                "each filtering entry needs field, operator and value",
            ));
        };
        if !FILTER_FIELDS.contains(&field.as_str()) || operator != "EQUAL" {
            return Err(invalid_param(format!(
                "Filtering field {field} with operation {operator} is not supported"
            )));
        }
        wanted.push((field, value));
    }
    Ok(items
        .filter(|item| {
            wanted.iter().all(|(field, value)| match item.get(field) {
                Some(Value::String(s)) => s == value,
                Some(Value::Bool(b)) => b.to_string() == *value,
                _ => false,
            })
        })
        .collect())
}

fn encode_cursor(index: usize) -> String {
    format!("{CURSOR_PREFIX}{index:x}")
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    usize::from_str_radix(cursor.strip_prefix(CURSOR_PREFIX)?, 16).ok()
}

fn template_json(t: &TemplateRec) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "language": t.language,
        "status": t.status,
        "category": t.category,
        "quality_score": {"score": t.quality, "date": t.quality_date},
    })
}

/// The `i`th of the templates that fill a WABA up to its limit (scenario 0018).
fn filler_template_json(waba_id: &str, i: usize) -> Value {
    json!({
        "id": format!("{waba_id}{i:05}"),
        "name": format!("existing_template_{i}"),
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "quality_score": {"score": "GREEN", "date": 1_700_000_000},
    })
}

fn eligible(t: &TemplateRec) -> bool {
    t.status == "APPROVED" && (t.quality == "GREEN" || t.quality == "UNKNOWN")
}

fn six_digits(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// E.164 of `POST /{waba}/phone_numbers` `{cc, phone_number}`.
fn migration_number(params: &Params) -> Result<String, GraphError> {
    let cc = params
        .string("cc")?
        .ok_or_else(|| invalid_param("The parameter cc is required"))?;
    if !(1..=3).contains(&cc.len()) || !cc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_param(
            "Param cc must be a numeric country calling code",
        ));
    }
    let national = params
        .string("phone_number")?
        .ok_or_else(|| invalid_param("The parameter phone_number is required"))?;
    let national: String = national
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    if national.is_empty() || !national.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_param(
            "Param phone_number must be the number without country code or +",
        ));
    }
    let e164 = scenarios::normalize_e164(&format!("+{cc}{national}"))
        .ok_or_else(|| invalid_param("Invalid phone number"))?;
    match scenarios::split_cc(&e164) {
        Some((parsed_cc, _)) if parsed_cc == cc => Ok(e164),
        _ => Err(invalid_param("Param cc does not match the phone number")),
    }
}

impl World {
    fn effective_owner<'a>(&self, waba: &'a WabaRec) -> &'a str {
        if self.waba_has(waba, Scenario::BusinessMismatch) {
            FOREIGN_BUSINESS_ID
        } else {
            &waba.owner_business_id
        }
    }

    /// `POST /{dest-waba}/phone_numbers` with `migrate_phone_number: true`.
    fn start_migration(
        &mut self,
        dest: &str,
        params: &Params,
        config: &SandboxConfig,
    ) -> Result<Value, GraphError> {
        let e164 = migration_number(params)?;
        if params.bool("migrate_phone_number") != Some(true) {
            return Err(invalid_param(
                "The sandbox simulates migrations only: migrate_phone_number must be true",
            ));
        }
        let scenario = self.scenario_of(&e164);
        let dest_waba = self.ensure_waba(dest, None);
        dest_waba.dest_numbers.insert(e164.clone());
        dest_waba.current_dest = Some(e164.clone());

        if self.phone_in_waba(dest, &e164).is_some()
            || scenario == Some(Scenario::AlreadyInDestination)
        {
            self.place_already_migrated(dest, &e164, config);
            return Err(GraphError::bad_request(
                100,
                "This phone number is already in your list of phone numbers",
            )
            .subcode(2388012));
        }
        let refusal = match scenario {
            Some(Scenario::TwoFactorEnabled) => {
                Some("Two-step authentication must be disabled for this phone number")
            }
            Some(Scenario::AddDirectly) => Some(
                "This phone number is eligible to be added directly and does not need to be migrated",
            ),
            Some(Scenario::DisplayNameNotApproved) => Some("Display name not approved"),
            Some(Scenario::BusinessMismatch) => {
                Some("This phone number belongs to a different Business Manager account")
            }
            Some(Scenario::UpstreamUnavailable) => {
                return Err(
                    migration_error("There was an error migrating this phone number")
                        .transient(None),
                );
            }
            _ => None,
        };
        if let Some(msg) = refusal {
            return Err(migration_error(msg));
        }
        if let Some(waba) = self.wabas.get(dest) {
            if self.waba_has(waba, Scenario::DestinationWabaNotApproved) {
                return Err(migration_error(
                    "The destination WhatsApp Business Account has not been approved",
                ));
            }
            if self.waba_has(waba, Scenario::DestinationNoPaymentMethod) || waba.setting_up {
                return Err(migration_error(
                    "The destination WhatsApp Business Account does not have a payment account",
                ));
            }
            if !self.waba_has_app(waba) {
                return Err(migration_error(
                    "Cannot migrate phone number: no app subscribed to webhooks on the destination",
                ));
            }
        }
        // Source-side checks, when the number was added to a source WABA.
        let other = scenarios::brazil_other_form(&e164);
        let source_wabas: Vec<&WabaRec> = self
            .wabas
            .values()
            .filter(|w| {
                w.source_numbers.contains(&e164)
                    || other.as_ref().is_some_and(|o| w.source_numbers.contains(o))
            })
            .collect();
        if let (Some(dest_waba), Some(source)) = (self.wabas.get(dest), source_wabas.first()) {
            if self.effective_owner(source) != self.effective_owner(dest_waba) {
                return Err(migration_error(
                    "This phone number belongs to a different Business Manager account",
                ));
            }
            if self.waba_has(source, Scenario::SourceWabaNotApproved) {
                return Err(migration_error(
                    "The source WhatsApp Business Account is not set up: its review is not approved",
                ));
            }
        }
        let id = self.insert_phone(dest, &e164, Role::Destination, scenario, false, "PENDING");
        Ok(json!({ "id": id }))
    }

    /// `POST /{phone-id}/request_code`.
    fn request_code(&mut self, id: &str, params: &Params) -> Result<Value, GraphError> {
        let method = params
            .string("code_method")?
            .ok_or_else(|| invalid_param("The parameter code_method is required"))?;
        if method != "SMS" && method != "VOICE" {
            return Err(invalid_param(
                "Param code_method must be one of {SMS, VOICE}",
            ));
        }
        let language = params
            .string("language")?
            .ok_or_else(|| invalid_param("The parameter language is required"))?;
        if !valid_language(&language) {
            return Err(invalid_param(
                "Param language must be a language code such as en_US",
            ));
        }
        let phone = self.phones.get_mut(id).ok_or_else(|| no_such_object(id))?;
        if phone.verified {
            return Err(GraphError::bad_request(136024, "Request code error")
                .user_msg("This phone number is already verified"));
        }
        if phone.scenario == Some(Scenario::OtpRateLimited) {
            return Err(GraphError::bad_request(
                2494158,
                "You have requested your code too many times",
            )
            .user_msg("You have requested your code too many times. Try again later."));
        }
        phone.code_requested = true;
        Ok(json!({"success": true}))
    }

    /// `POST /{phone-id}/verify_code`.
    fn verify_code(&mut self, id: &str, params: &Params) -> Result<Value, GraphError> {
        let code = params
            .string("code")?
            .ok_or_else(|| invalid_param("The parameter code is required"))?;
        if !six_digits(&code) {
            return Err(invalid_param("Param code must be a 6-digit string"));
        }
        let phone = self.phones.get_mut(id).ok_or_else(|| no_such_object(id))?;
        if phone.verified {
            return Ok(json!({"success": true, "id": phone.id}));
        }
        let failed = || {
            GraphError::bad_request(136025, "Code couldn't be verified")
                .user_msg("The code you entered is not valid. Request a new code and try again.")
        };
        if !phone.code_requested {
            return Err(failed().user_msg("No verification code was requested for this number"));
        }
        let expected = if let Some(code) = self.otp_codes.get(&phone.e164) {
            code.as_str()
        } else if phone.scenario == Some(Scenario::OtpInvalid) {
            "654321"
        } else {
            SANDBOX_OTP_CODE
        };
        if code != expected {
            return Err(failed());
        }
        phone.verified = true;
        Ok(json!({"success": true, "id": phone.id}))
    }

    /// `POST /{phone-id}/register`.
    fn register(
        &mut self,
        id: &str,
        params: &Params,
        config: &SandboxConfig,
    ) -> Result<Value, GraphError> {
        if params.string("messaging_product")?.as_deref() != Some("whatsapp") {
            return Err(invalid_param(
                "Param messaging_product must be \"whatsapp\"",
            ));
        }
        let pin = params
            .string("pin")?
            .ok_or_else(|| invalid_param("The parameter pin is required"))?;
        if !six_digits(&pin) {
            return Err(invalid_param("Param pin must be a 6-digit string"));
        }
        let (e164, waba_id, verified, scenario) = {
            let phone = self.phones.get(id).ok_or_else(|| no_such_object(id))?;
            (
                phone.e164.clone(),
                phone.waba_id.clone(),
                phone.verified,
                phone.scenario,
            )
        };
        if !verified {
            return Err(
                GraphError::bad_request(133006, "Phone number re-verification needed").user_msg(
                    "Verify the phone number (request_code, verify_code) before registering it",
                ),
            );
        }
        let calls = self.register_calls.entry(e164.clone()).or_insert(0);
        if *calls >= 10 || scenario == Some(Scenario::RegisterLimit) {
            return Err(GraphError::bad_request(
                133016,
                "Account register deregister rate limit exceeded",
            )
            .user_msg("Registration attempts for this number were blocked for 72 hours: too many register calls"));
        }
        *calls += 1;
        if scenario == Some(Scenario::PinMismatch) {
            return Err(
                GraphError::bad_request(133005, "Two step verification PIN Mismatch").user_msg(
                    "The PIN does not match the two-step verification PIN of this number",
                ),
            );
        }
        if let Some(phone) = self.phones.get_mut(id) {
            phone.status = "CONNECTED".to_owned();
        }
        if let Some(waba) = self.wabas.get_mut(&waba_id) {
            waba.current_dest = Some(e164.clone());
        }
        self.mark_source_copies_migrated(&e164, id);
        self.ensure_channel(&e164, id, Some(&waba_id), None, config);
        Ok(json!({"success": true}))
    }

    /// `POST /{dest-waba}/migrate_message_templates`.
    fn migrate_templates(&mut self, dest: &str, params: &Params) -> Result<Value, GraphError> {
        let source = params
            .string("source_waba_id")?
            .ok_or_else(|| invalid_param("The parameter source_waba_id is required"))?;
        super::state::check_id("source_waba_id", &source).map_err(invalid_param)?;
        let page_number = params.u64("page_number")?.unwrap_or(0);
        let count = params.u64("count")?.unwrap_or(TEMPLATE_BATCH);
        if count == 0 || count > TEMPLATE_BATCH {
            return Err(invalid_param("Param count must be between 1 and 500"));
        }
        let wanted = params.list("template_ids")?;
        if wanted.as_ref().is_some_and(|ids| ids.len() > 500) {
            return Err(invalid_param("Param template_ids accepts at most 500 ids"));
        }
        self.ensure_waba(dest, None);
        self.ensure_waba(&source, None);
        self.seed_templates(&source);
        let (Some(dest_waba), Some(source_waba)) = (self.wabas.get(dest), self.wabas.get(&source))
        else {
            return Err(no_such_object(dest));
        };
        if self.waba_has(dest_waba, Scenario::TemplateLimit) {
            return Err(GraphError::bad_request(100, "Message Template Limit Exceeded")
                .subcode(2388019)
                .user_msg("The destination WhatsApp Business Account reached its message template limit"));
        }
        if self.effective_owner(source_waba) != self.effective_owner(dest_waba) {
            return Err(invalid_param(
                "Templates can only be migrated between WhatsApp Business Accounts owned by the same business",
            ));
        }
        let limit = self.template_limit(dest_waba);

        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        let mut candidates: Vec<(String, String, String, String)> = Vec::new();
        let candidate = |t: &TemplateRec| {
            (
                t.id.clone(),
                t.name.clone(),
                t.language.clone(),
                t.category.clone(),
            )
        };
        match wanted {
            Some(ids) => {
                for template_id in ids {
                    match source_waba.templates.iter().find(|t| t.id == template_id) {
                        None => {
                            failed.insert(
                                template_id,
                                "Template not found in the source WhatsApp Business Account"
                                    .to_owned(),
                            );
                        }
                        Some(t) if !eligible(t) => {
                            failed.insert(
                                template_id,
                                format!(
                                    "Template is not eligible for migration: status {}, quality {}",
                                    t.status, t.quality
                                ),
                            );
                        }
                        Some(TemplateRec {
                            refusal: Some(reason),
                            ..
                        }) => {
                            failed.insert(template_id, (*reason).to_owned());
                        }
                        Some(t) => candidates.push(candidate(t)),
                    }
                }
            }
            None => {
                // The page is cut from ALL templates of the source in creation order; only the
                // eligible ones of it are attempted, the others are not mentioned.
                let skip = usize::try_from(page_number.saturating_mul(count)).unwrap_or(usize::MAX);
                let take = usize::try_from(count).unwrap_or(usize::MAX);
                for t in source_waba.templates.iter().skip(skip).take(take) {
                    if !eligible(t) {
                        continue;
                    }
                    match &t.refusal {
                        Some(reason) => {
                            failed.insert(t.id.clone(), reason.to_owned());
                        }
                        None => candidates.push(candidate(t)),
                    }
                }
            }
        }

        let mut migrated = Vec::new();
        let mut copies = Vec::new();
        let mut present = dest_waba.templates.len();
        for (source_id, name, language, category) in candidates {
            let exists = dest_waba
                .templates
                .iter()
                .chain(copies.iter())
                .any(|t: &TemplateRec| t.name == name && t.language == language);
            if exists {
                migrated.push(source_id);
            } else if present >= limit {
                failed.insert(source_id, "Message Template Limit Exceeded".to_owned());
            } else {
                present += 1;
                copies.push(TemplateRec {
                    id: String::new(),
                    name,
                    language,
                    status: "APPROVED".to_owned(),
                    category,
                    quality: "UNKNOWN".to_owned(),
                    quality_date: chrono::Utc::now().timestamp(),
                    refusal: None,
                });
                migrated.push(source_id);
            }
        }
        for mut copy in copies {
            copy.id = self.mint_template_id();
            if let Some(waba) = self.wabas.get_mut(dest) {
                waba.templates.push(copy);
            }
        }
        Ok(json!({"migrated_templates": migrated, "failed_templates": failed}))
    }
}

/// `^[a-z]{2}_[A-Z]{2}$`, as OAS's `RequestCodeRequest.language` (Meta's prose examples also
/// show `en`; the sandbox holds clients to the stricter spec).
fn valid_language(language: &str) -> bool {
    let bytes = language.as_bytes();
    bytes.len() == 5
        && bytes[..2].iter().all(u8::is_ascii_lowercase)
        && bytes[2] == b'_'
        && bytes[3..].iter().all(u8::is_ascii_uppercase)
}
