//! Tests over real HTTP: each starts a sandbox on 127.0.0.1:0 and talks to it with reqwest.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

/// Local mirrors of the client wire types (`crate::clients`), to prove our JSON deserializes
/// into the shapes the service reads.
mod wire {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    pub struct Waba {
        pub id: String,
        pub account_review_status: Option<String>,
        pub business_verification_status: Option<String>,
        pub owner_business_info: Option<BusinessInfo>,
        #[serde(default)]
        pub primary_funding_id: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct BusinessInfo {
        pub id: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct PhoneNumber {
        pub id: String,
        pub display_phone_number: Option<String>,
        pub code_verification_status: Option<String>,
        pub name_status: Option<String>,
        pub new_name_status: Option<String>,
        pub status: Option<String>,
        pub is_on_biz_app: Option<bool>,
        pub account_mode: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct TemplateMigration {
        pub migrated_templates: Vec<String>,
        pub failed_templates: std::collections::BTreeMap<String, String>,
    }
}

const SOURCE: &str = "111000000000001";
const DEST: &str = "222000000000001";
const NUMBER: &str = "+15551234567";
const PARTNER: &str = "samplePA";

struct Server {
    base: String,
    sandbox: Sandbox,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(config: SandboxConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let sandbox = Sandbox::new(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, sandbox.clone(), async move {
        let _ = stopped.await;
    }));
    Server {
        base: format!("http://{addr}"),
        sandbox,
        http: client(),
        _stop: stop,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn test_config() -> SandboxConfig {
    SandboxConfig {
        api_key_rate_window: Duration::ZERO,
        ..SandboxConfig::default()
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Server {
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A Graph GET asking for the fields the service asks for (unless `path` names some).
    fn graph_get(&self, path: &str) -> reqwest::RequestBuilder {
        use crate::clients::meta::{PHONE_NUMBER_FIELDS, TEMPLATE_FIELDS, WABA_FIELDS};
        let route = path.split('?').next().unwrap_or(path);
        let fields = match route.rsplit('/').next().unwrap_or(route) {
            _ if path.contains("fields=") => None,
            "phone_numbers" => Some(PHONE_NUMBER_FIELDS),
            "message_templates" => Some(TEMPLATE_FIELDS),
            "subscribed_apps" => None,
            id if id.len() == 16 && id.starts_with(super::state::PHONE_ID_PREFIX) => {
                Some(PHONE_NUMBER_FIELDS)
            }
            _ => Some(WABA_FIELDS),
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let query = fields
            .map(|f| format!("{sep}fields={f}"))
            .unwrap_or_default();
        self.http
            .get(format!("{}/v23.0/{path}{query}", self.base))
            .bearer_auth("sandbox-token")
    }

    fn graph_post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v23.0/{path}", self.base))
            .bearer_auth("sandbox-token")
            .json(&body)
    }

    fn hub_get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}/api/v2/partners/{PARTNER}/{path}", self.base))
            .header("X-API-Key", "partner-key")
    }

    fn hub_post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/api/v2/partners/{PARTNER}/{path}", self.base))
            .header("X-API-Key", "partner-key")
    }

    fn health(&self, key: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}/health_status", self.base))
            .header("D360-API-KEY", key)
    }

    async fn seed(&self, number: &str, source: &str, dest: Option<&str>) -> Value {
        let answer = self
            .send(self.http.post(format!("{}/_sandbox/numbers", self.base)).json(
                &json!({"phone_number": number, "source_waba_id": source, "destination_waba_id": dest}),
            ))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }

    async fn faults(&self, body: Value) {
        let answer = self
            .send(
                self.http
                    .post(format!("{}/_sandbox/faults", self.base))
                    .json(&body),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }

    /// `POST /{dest}/phone_numbers` for an E.164 number; returns the answer.
    async fn start_migration(&self, dest: &str, number: &str) -> Answer {
        let (cc, national) = scenarios::split_cc(number).expect("number");
        self.send(self.graph_post(
            &format!("{dest}/phone_numbers"),
            json!({"cc": cc, "phone_number": national, "migrate_phone_number": true}),
        ))
        .await
    }

    /// Seed, start, request + verify the code; returns the new phone-number id.
    async fn verified(&self, number: &str) -> String {
        self.seed(number, SOURCE, Some(DEST)).await;
        let started = self.start_migration(DEST, number).await;
        assert_eq!(started.status, StatusCode::OK, "{}", started.body);
        let id = started.body["id"].as_str().expect("id").to_owned();
        let requested = self
            .send(self.graph_post(
                &format!("{id}/request_code"),
                json!({"code_method": "SMS", "language": "en_US"}),
            ))
            .await;
        assert_eq!(requested.status, StatusCode::OK, "{}", requested.body);
        let verified = self
            .send(self.graph_post(
                &format!("{id}/verify_code"),
                json!({"code": SANDBOX_OTP_CODE}),
            ))
            .await;
        assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
        id
    }

    async fn register(&self, phone_id: &str) -> Answer {
        self.send(self.graph_post(
            &format!("{phone_id}/register"),
            json!({"messaging_product": "whatsapp", "pin": "246810"}),
        ))
        .await
    }

    /// The number's channel from the partner channel list, if listed.
    async fn channel_of(&self, number: &str) -> Option<Value> {
        let filters = json!({"setup_info.phone_number": scenarios::digits(number)}).to_string();
        let answer = self
            .send(self.hub_get("channels").query(&[("filters", filters)]))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["partner_channels"].get(0).cloned()
    }
}

fn graph_code(body: &Value) -> (i64, Option<i64>) {
    (
        body["error"]["code"].as_i64().unwrap_or(-1),
        body["error"]["error_subcode"].as_i64(),
    )
}

#[tokio::test]
async fn full_happy_path_over_http() {
    let s = start(test_config()).await;
    s.seed(NUMBER, SOURCE, Some(DEST)).await;

    // Prechecks.
    let source: wire::Waba =
        serde_json::from_value(s.send(s.graph_get(SOURCE)).await.body).expect("waba shape");
    assert_eq!(source.id, SOURCE);
    assert_eq!(source.account_review_status.as_deref(), Some("APPROVED"));
    assert_eq!(
        source.business_verification_status.as_deref(),
        Some("verified")
    );
    assert_eq!(
        source.owner_business_info.map(|b| b.id).as_deref(),
        Some(SANDBOX_BUSINESS_ID)
    );
    let dest: wire::Waba =
        serde_json::from_value(s.send(s.graph_get(DEST)).await.body).expect("waba shape");
    assert!(dest.primary_funding_id.is_some());
    let listed = s
        .send(s.graph_get(&format!(
            "{SOURCE}/phone_numbers?fields=id,display_phone_number,status"
        )))
        .await;
    let phones: Vec<wire::PhoneNumber> =
        serde_json::from_value(listed.body["data"].clone()).expect("phone shape");
    assert_eq!(phones.len(), 1);
    assert_eq!(
        phones[0].display_phone_number.as_deref(),
        Some("+1 555-123-4567")
    );
    assert_eq!(phones[0].status.as_deref(), Some("CONNECTED"));
    let apps = s
        .send(s.graph_get(&format!("{DEST}/subscribed_apps")))
        .await;
    assert_eq!(apps.body["data"].as_array().map(Vec::len), Some(1));
    assert!(apps.body["data"][0]["whatsapp_business_api_data"]["id"].is_string());
    let templates = s
        .send(s.graph_get(&format!("{SOURCE}/message_templates")))
        .await;
    let templates = templates.body["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(templates.len(), 5);
    assert!(templates[0]["quality_score"]["score"].is_string());
    let dest_before = s.send(s.graph_get(&format!("{DEST}/phone_numbers"))).await;
    assert_eq!(dest_before.body["data"], json!([]));

    // Initiate, OTP, register.
    let started = s.start_migration(DEST, NUMBER).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    let phone_id = started.body["id"].as_str().expect("id").to_owned();
    let node: wire::PhoneNumber =
        serde_json::from_value(s.send(s.graph_get(&phone_id)).await.body).expect("phone");
    assert_eq!(node.id, phone_id);
    assert_eq!(
        node.code_verification_status.as_deref(),
        Some("NOT_VERIFIED")
    );
    assert_eq!(node.status.as_deref(), Some("PENDING"));
    let again = s.start_migration(DEST, NUMBER).await;
    assert_eq!(graph_code(&again.body), (100, Some(2388012)));

    let early = s.register(&phone_id).await;
    assert_eq!(graph_code(&early.body).0, 133006);
    let requested = s
        .send(s.graph_post(
            &format!("{phone_id}/request_code"),
            json!({"code_method": "SMS", "language": "en_US"}),
        ))
        .await;
    assert_eq!(requested.body, json!({"success": true}));
    let wrong = s
        .send(s.graph_post(
            &format!("{phone_id}/verify_code"),
            json!({"code": "000000"}),
        ))
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(graph_code(&wrong.body).0, 136025);
    let verified = s
        .send(s.graph_post(
            &format!("{phone_id}/verify_code"),
            json!({"code": "123456"}),
        ))
        .await;
    assert_eq!(verified.status, StatusCode::OK);
    let rerequest = s
        .send(s.graph_post(
            &format!("{phone_id}/request_code"),
            json!({"code_method": "VOICE", "language": "en_US"}),
        ))
        .await;
    assert_eq!(graph_code(&rerequest.body).0, 136024);
    let registered = s.register(&phone_id).await;
    assert_eq!(registered.body, json!({"success": true}));
    let node: wire::PhoneNumber =
        serde_json::from_value(s.send(s.graph_get(&phone_id)).await.body).expect("phone");
    assert_eq!(node.status.as_deref(), Some("CONNECTED"));
    assert_eq!(node.code_verification_status.as_deref(), Some("VERIFIED"));
    let source_copy = s
        .send(s.graph_get(&format!("{SOURCE}/phone_numbers")))
        .await;
    assert_eq!(source_copy.body["data"][0]["status"], "MIGRATED");

    // Templates: 3 GREEN + 1 UNKNOWN copied, the RED one skipped; a rerun duplicates nothing.
    for _ in 0..2 {
        let migrated = s
            .send(s.graph_post(
                &format!("{DEST}/migrate_message_templates"),
                json!({"source_waba_id": SOURCE, "page_number": 0}),
            ))
            .await;
        assert_eq!(migrated.status, StatusCode::OK, "{}", migrated.body);
        let result: wire::TemplateMigration =
            serde_json::from_value(migrated.body).expect("migration shape");
        assert_eq!(result.migrated_templates.len(), 4);
        assert!(result.failed_templates.is_empty());
    }
    let copied = s
        .send(s.graph_get(&format!("{DEST}/message_templates")))
        .await;
    let copied = copied.body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(copied.len(), 4);
    assert!(
        copied
            .iter()
            .all(|t| t["quality_score"]["score"] == "UNKNOWN" && t["status"] == "APPROVED")
    );
    let red = templates
        .iter()
        .find(|t| t["quality_score"]["score"] == "RED")
        .and_then(|t| t["id"].as_str())
        .expect("red template")
        .to_owned();
    let explicit = s
        .send(s.graph_post(
            &format!("{DEST}/migrate_message_templates"),
            json!({"source_waba_id": SOURCE, "template_ids": [red]}),
        ))
        .await;
    assert!(
        explicit.body["failed_templates"][&red].is_string(),
        "{}",
        explicit.body
    );

    // 360dialog: channel running, permission, key, health.
    let channel = s.channel_of(NUMBER).await.expect("channel listed");
    assert_eq!(channel["status"], "running");
    assert_eq!(channel["setup_info"]["phone_number"], "15551234567");
    assert_eq!(channel["waba_account"]["external_id"], DEST);
    let channel_id = channel["id"].as_str().expect("id").to_owned();
    let client_id = channel["client_id"].as_str().expect("client").to_owned();
    let shared = s
        .send(s.hub_get(&format!("clients/{client_id}/shared_client_numbers")))
        .await;
    assert_eq!(
        shared.body["shared_client_numbers"][0]["id"],
        channel_id.as_str()
    );
    let by_id = s
        .send(
            s.hub_get("channels")
                .query(&[("filters", json!({"id": channel_id}).to_string())]),
        )
        .await;
    assert_eq!(by_id.body["count"], 1);

    let first = s
        .send(s.hub_post(&format!("channels/{channel_id}/api_keys")))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let key1 = first.body["api_key"].as_str().expect("key").to_owned();
    assert!(key1.len() >= 32);
    // The sandbox serves the Messaging API itself: the key's address is the sandbox.
    assert_eq!(first.body["address"].as_str(), Some(s.base.as_str()));
    let health = s.send(s.health(&key1)).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.body["health_status"]["can_send_message"],
        "AVAILABLE"
    );
    assert_eq!(
        health.body["health_status"]["entities"][0]["id"],
        phone_id.as_str()
    );

    let second = s
        .send(s.hub_post(&format!("channels/{channel_id}/api_keys")))
        .await;
    assert_eq!(second.status, StatusCode::CREATED);
    let key2 = second.body["api_key"].as_str().expect("key").to_owned();
    let old = s.send(s.health(&key1)).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    assert_eq!(old.body, json!({"error": "Invalid API key"}));
    assert_eq!(s.send(s.health(&key2)).await.status, StatusCode::OK);

    let inspected = s
        .send(
            s.http
                .get(format!("{}/_sandbox/channels/{channel_id}", s.base)),
        )
        .await;
    assert_eq!(inspected.body["keys_issued"], 2);
    assert_eq!(inspected.body["current_key_id"], second.body["id"]);
    assert_eq!(inspected.body["phone_number"], NUMBER);

    // Counters, through the API and over HTTP.
    assert_eq!(s.sandbox.count(NUMBER, "register"), (2, 1));
    assert_eq!(s.sandbox.count(NUMBER, "start_migration"), (2, 1));
    assert_eq!(s.sandbox.count(NUMBER, "request_code"), (2, 1));
    assert_eq!(s.sandbox.count(NUMBER, "verify_code"), (2, 1));
    assert_eq!(s.sandbox.count(NUMBER, "api_keys"), (2, 2));
    assert_eq!(s.sandbox.count(NUMBER, "health_status"), (3, 2));
    assert_eq!(
        s.sandbox.count("15551234567", "migrate_message_templates"),
        (3, 3)
    );
    let counters = s
        .send(s.http.get(format!("{}/_sandbox/counters", s.base)))
        .await;
    assert_eq!(counters.body, s.sandbox.counters());
    assert_eq!(
        counters.body["numbers"][NUMBER]["register"],
        json!({"received": 2, "applied": 1})
    );
    let one = s
        .send(
            s.http
                .get(format!("{}/_sandbox/counters/%2B15551234567", s.base)),
        )
        .await;
    assert_eq!(one.body["register"], json!({"received": 2, "applied": 1}));
    let digits_only = s
        .send(
            s.http
                .get(format!("{}/_sandbox/counters/15551234567", s.base)),
        )
        .await;
    assert_eq!(digits_only.body, one.body);

    // Reset clears everything.
    let reset = s
        .send(s.http.post(format!("{}/_sandbox/reset", s.base)))
        .await;
    assert_eq!(reset.status, StatusCode::OK);
    assert_eq!(s.sandbox.counters(), json!({"numbers": {}}));
    assert_eq!(
        s.send(s.health(&key2)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn api_key_rate_window_and_channel_readiness() {
    let s = start(SandboxConfig {
        channel_running_after: Duration::from_millis(300),
        ..SandboxConfig::default()
    })
    .await;
    let id = s.verified(NUMBER).await;
    assert_eq!(s.register(&id).await.status, StatusCode::OK);
    let channel = s.channel_of(NUMBER).await.expect("channel");
    assert_eq!(channel["status"], "ready");
    let channel_id = channel["id"].as_str().expect("id").to_owned();
    let early = s
        .send(s.hub_post(&format!("channels/{channel_id}/api_keys")))
        .await;
    assert_eq!(early.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        early.body["meta"]["developer_message"],
        "Channel is not running"
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        s.channel_of(NUMBER).await.expect("channel")["status"],
        "running"
    );
    let first = s
        .send(s.hub_post(&format!("channels/{channel_id}/api_keys")))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let limited = s
        .send(s.hub_post(&format!("channels/{channel_id}/api_keys")))
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=30).contains(&retry_after));
    assert_eq!(limited.body["meta"]["http_code"], 429);
    // The limited request did not revoke the first key.
    let key = first.body["api_key"].as_str().expect("key");
    assert_eq!(s.send(s.health(key)).await.status, StatusCode::OK);
    assert_eq!(s.sandbox.count(NUMBER, "api_keys"), (3, 1));

    let missing = s.send(s.hub_post("channels/nopeCH/api_keys")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lost_response_is_applied_but_unanswered() {
    let s = start(test_config()).await;
    let id = s.verified(NUMBER).await;
    s.faults(json!({"rules": [{"endpoint": "register", "phone_number": NUMBER, "fault": "lost_response"}]}))
        .await;
    let sent = s
        .graph_post(
            &format!("{id}/register"),
            json!({"messaging_product": "whatsapp", "pin": "246810"}),
        )
        .send()
        .await;
    assert!(sent.is_err(), "lost_response must not answer: {sent:?}");
    assert_eq!(s.sandbox.count(NUMBER, "register"), (1, 1));
    let node = s.send(s.graph_get(&id)).await;
    assert_eq!(node.body["status"], "CONNECTED");
    assert!(s.channel_of(NUMBER).await.is_some());

    // The rule was consumed: the next call answers.
    assert_eq!(s.register(&id).await.status, StatusCode::OK);
    assert_eq!(s.sandbox.count(NUMBER, "register"), (2, 2));

    // The crucial case: a key generated while the response is lost.
    let channel_id = s.channel_of(NUMBER).await.expect("channel")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    s.faults(json!({"rules": [{"endpoint": "api_keys", "fault": "lost_response"}]}))
        .await;
    let lost = s
        .hub_post(&format!("channels/{channel_id}/api_keys"))
        .send()
        .await;
    assert!(lost.is_err());
    let inspected = s
        .send(
            s.http
                .get(format!("{}/_sandbox/channels/{channel_id}", s.base)),
        )
        .await;
    assert_eq!(inspected.body["keys_issued"], 1);
    assert_eq!(s.sandbox.count(NUMBER, "api_keys"), (1, 1));
}

#[tokio::test]
async fn connection_reset_is_unanswered_and_not_applied() {
    let s = start(test_config()).await;
    s.seed(NUMBER, SOURCE, Some(DEST)).await;
    let id = s.start_migration(DEST, NUMBER).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    s.faults(
        json!({"rules": [{"endpoint": "request_code", "fault": "connection_reset", "times": 2}]}),
    )
    .await;
    for _ in 0..2 {
        let sent = s
            .graph_post(
                &format!("{id}/request_code"),
                json!({"code_method": "SMS", "language": "en_US"}),
            )
            .send()
            .await;
        assert!(sent.is_err(), "connection_reset must not answer: {sent:?}");
    }
    assert_eq!(s.sandbox.count(NUMBER, "request_code"), (2, 0));
    // Not applied: no code was requested, so verification fails.
    let verify = s
        .send(s.graph_post(&format!("{id}/verify_code"), json!({"code": "123456"})))
        .await;
    assert_eq!(graph_code(&verify.body).0, 136025);
}

#[tokio::test]
async fn lost_response_without_serve_also_drops_the_connection() {
    // The plain router under axum::serve: no connection handle, only the failing body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sandbox = Sandbox::new(test_config());
    let app = sandbox.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = client();
    let seed = json!({"phone_number": NUMBER, "source_waba_id": SOURCE});
    let seeded = http
        .post(format!("http://{addr}/_sandbox/numbers"))
        .json(&seed)
        .send()
        .await
        .expect("seed");
    assert_eq!(seeded.status(), StatusCode::CREATED);
    let rules = json!({"rules": [{"endpoint": "start_migration", "fault": "lost_response"}]});
    http.post(format!("http://{addr}/_sandbox/faults"))
        .json(&rules)
        .send()
        .await
        .expect("faults");
    let sent = http
        .post(format!("http://{addr}/v23.0/{DEST}/phone_numbers"))
        .bearer_auth("t")
        .json(&json!({"cc": "1", "phone_number": "5551234567", "migrate_phone_number": true}))
        .send()
        .await;
    assert!(sent.is_err(), "expected no response, got {sent:?}");
    assert_eq!(sandbox.count(NUMBER, "start_migration"), (1, 1));
}

#[tokio::test]
async fn answered_faults_have_upstream_shapes() {
    let s = start(SandboxConfig {
        hang_for: Duration::from_millis(200),
        ..test_config()
    })
    .await;
    s.seed(NUMBER, SOURCE, Some(DEST)).await;
    s.faults(json!({"rules": [
        {"endpoint": "get_waba", "fault": "server_error"},
        {"endpoint": "get_waba", "fault": "rate_limited"},
        {"endpoint": "get_waba", "fault": "timeout"},
        {"endpoint": "list_channels", "fault": "server_error"},
        {"endpoint": "list_channels", "fault": "rate_limited"},
    ]}))
    .await;

    let server_error = s.send(s.graph_get(SOURCE)).await;
    assert_eq!(server_error.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(graph_code(&server_error.body).0, 2);
    assert_eq!(server_error.body["error"]["is_transient"], true);
    assert!(server_error.body["error"]["fbtrace_id"].is_string());

    let limited = s.send(s.graph_get(SOURCE)).await;
    assert_eq!(limited.status, StatusCode::BAD_REQUEST);
    assert!(limited.headers.get("retry-after").is_none());
    let usage: Value = serde_json::from_str(
        limited.headers["x-business-use-case-usage"]
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let usage = usage.as_object().unwrap().values().next().unwrap();
    assert_eq!(usage[0]["type"], "whatsapp_business_management");
    assert_eq!(usage[0]["estimated_time_to_regain_access"], 0);
    assert_eq!(graph_code(&limited.body).0, 80008);
    assert_eq!(limited.body["error"]["is_transient"], true);

    let began = Instant::now();
    let timeout = s.send(s.graph_get(SOURCE)).await;
    assert_eq!(timeout.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert_eq!(s.sandbox.count(NUMBER, "get_waba"), (3, 0));

    let ok = s.send(s.graph_get(SOURCE)).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(s.sandbox.count(NUMBER, "get_waba"), (4, 1));

    let hub_error = s.send(s.hub_get("channels")).await;
    assert_eq!(hub_error.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(hub_error.body["meta"]["success"], false);
    let hub_limited = s.send(s.hub_get("channels")).await;
    assert_eq!(hub_limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(hub_limited.headers["retry-after"], "1");

    let settings = s
        .send(s.http.get(format!("{}/_sandbox/faults", s.base)))
        .await;
    assert_eq!(settings.body["rules"], json!([]));
    let bad = s
        .send(
            s.http
                .post(format!("{}/_sandbox/faults", s.base))
                .json(&json!({"rules": [{"endpoint": "nope", "fault": "timeout"}]})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn random_faults_are_seeded_and_clearable() {
    let s = start(test_config()).await;
    s.faults(json!({"random": {"rate": 1.0, "kinds": ["server_error"], "seed": 42}}))
        .await;
    for _ in 0..3 {
        assert_eq!(
            s.send(s.graph_get(SOURCE)).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    // Control endpoints are never faulted.
    let settings = s
        .send(s.http.get(format!("{}/_sandbox/faults", s.base)))
        .await;
    assert_eq!(settings.body["random"]["rate"], 1.0);
    let cleared = s
        .send(s.http.delete(format!("{}/_sandbox/faults", s.base)))
        .await;
    assert_eq!(cleared.body["random"]["rate"], 0.0);
    assert_eq!(s.send(s.graph_get(SOURCE)).await.status, StatusCode::OK);

    // Same seed, same sequence.
    let draw = |seed| {
        let sandbox = Sandbox::new(SandboxConfig {
            fault_rate: 0.5,
            seed: Some(seed),
            ..SandboxConfig::default()
        });
        let mut inner = sandbox.lock();
        (0..32)
            .map(|_| inner.faults.pick("register", &[]))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert!(draw(7).iter().any(Option::is_some) && draw(7).iter().any(Option::is_none));
}

#[tokio::test]
async fn authentication_is_required() {
    let s = start(test_config()).await;
    let graph = s
        .send(s.http.get(format!("{}/v23.0/{SOURCE}", s.base)))
        .await;
    assert_eq!(graph.status, StatusCode::UNAUTHORIZED);
    assert_eq!(graph_code(&graph.body).0, 190);
    let with_param = s
        .send(
            s.http
                .get(format!("{}/v21.0/{SOURCE}?access_token=abc", s.base)),
        )
        .await;
    assert_eq!(with_param.status, StatusCode::OK);
    let hub = s
        .send(
            s.http
                .get(format!("{}/api/v2/partners/{PARTNER}/channels", s.base)),
        )
        .await;
    assert_eq!(hub.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        hub.body,
        json!({"meta": {"success": false, "http_code": 401, "developer_message": "Invalid API key", "details": []}})
    );
    let bad_version = s
        .send(s.http.get(format!("{}/latest/{SOURCE}", s.base)))
        .await;
    assert_eq!(bad_version.status, StatusCode::BAD_REQUEST);
    let missing = s.send(s.graph_get("1090999999999999")).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(graph_code(&missing.body), (100, Some(33)));
    let missing_post = s
        .send(s.graph_post(
            "1090999999999999/register",
            json!({"messaging_product": "whatsapp", "pin": "123456"}),
        ))
        .await;
    assert_eq!(graph_code(&missing_post.body), (100, Some(33)));
}

#[tokio::test]
async fn form_encoded_and_query_parameters_are_accepted() {
    let s = start(test_config()).await;
    s.seed(NUMBER, SOURCE, Some(DEST)).await;
    let started = s
        .send(
            s.http
                .post(format!("{}/v23.0/{DEST}/phone_numbers", s.base))
                .bearer_auth("t")
                .form(&[
                    ("cc", "1"),
                    ("phone_number", "5551234567"),
                    ("migrate_phone_number", "true"),
                ]),
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    let id = started.body["id"].as_str().expect("id").to_owned();
    let requested = s
        .send(
            s.http
                .post(format!(
                    "{}/v23.0/{id}/request_code?code_method=SMS&language=en_US",
                    s.base
                ))
                .bearer_auth("t"),
        )
        .await;
    assert_eq!(requested.status, StatusCode::OK, "{}", requested.body);
    let invalid = s
        .send(s.graph_post(
            &format!("{id}/request_code"),
            json!({"code_method": "FAX", "language": "en_US"}),
        ))
        .await;
    assert_eq!(graph_code(&invalid.body).0, 100);
}

#[tokio::test]
async fn graph_filters_phone_numbers_like_meta() {
    let s = start(test_config()).await;
    for i in 0..30 {
        s.seed(&format!("+4915112345{i:03}"), SOURCE, None).await;
    }
    let filtered = |filtering: &str| {
        let mut url = url::Url::parse(&format!("{}/v23.0/{SOURCE}/phone_numbers", s.base)).unwrap();
        url.query_pairs_mut().append_pair("filtering", filtering);
        s.http.get(url).bearer_auth("sandbox-token")
    };
    // One number among 30, by its display form (what the precheck sends).
    let one = s
        .send(filtered(
            r#"[{"field":"display_phone_number","operator":"EQUAL","value":"+49 1511 2345017"}]"#,
        ))
        .await;
    assert_eq!(one.status, 200, "{:#}", one.body);
    let data = one.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{:#}", one.body);
    assert_eq!(data[0]["display_phone_number"], "+49 1511 2345017");
    // Another spelling of it is another value: EQUAL matches the display form exactly.
    let none = s
        .send(filtered(
            r#"[{"field":"display_phone_number","operator":"EQUAL","value":"+4915112345017"}]"#,
        ))
        .await;
    assert_eq!(none.body["data"], json!([]));
    // Meta's documented example, quoted with ' as in Meta's docs.
    let live = s
        .send(filtered(
            "[{'field':'account_mode','operator':'EQUAL','value':'LIVE'}]",
        ))
        .await;
    assert_eq!(live.body["data"].as_array().map(Vec::len), Some(25));
    // Anything else is Graph error 100.
    for bad in [
        r#"[{"field":"verified_name","operator":"EQUAL","value":"x"}]"#,
        r#"[{"field":"display_phone_number","operator":"CONTAIN","value":"+49"}]"#,
        "not json",
        r#"{"field":"account_mode"}"#,
    ] {
        let refused = s.send(filtered(bad)).await;
        assert_eq!(refused.status, 400, "{bad}");
        assert_eq!(refused.body["error"]["code"], 100, "{bad}");
    }
}

#[tokio::test]
async fn graph_lists_page_with_cursors() {
    let s = start(test_config()).await;
    for i in 0..30 {
        s.seed(&format!("+4915112345{i:03}"), SOURCE, None).await;
    }
    let first = s
        .send(s.graph_get(&format!("{SOURCE}/phone_numbers?fields=id")))
        .await;
    assert_eq!(first.body["data"].as_array().map(Vec::len), Some(25));
    let next = first.body["paging"]["next"]
        .as_str()
        .expect("next")
        .to_owned();
    assert!(next.contains("fields=id"), "{next}");
    let second = s.send(s.http.get(&next).bearer_auth("t")).await;
    assert_eq!(second.body["data"].as_array().map(Vec::len), Some(5));
    assert!(second.body["paging"].get("next").is_none());
    let after = first.body["paging"]["cursors"]["after"]
        .as_str()
        .expect("after");
    let same = s
        .send(s.graph_get(&format!("{SOURCE}/phone_numbers?fields=id&after={after}")))
        .await;
    assert_eq!(same.body["data"], second.body["data"]);

    let mut seen = Vec::new();
    let mut url = format!("{}/v23.0/{SOURCE}/message_templates?limit=2", s.base);
    loop {
        let page = s.send(s.http.get(&url).bearer_auth("t")).await;
        seen.extend(page.body["data"].as_array().cloned().unwrap_or_default());
        match page.body["paging"]["next"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
}

#[tokio::test]
async fn register_limit_is_ten_per_number() {
    let s = start(test_config()).await;
    let id = s.verified(NUMBER).await;
    for _ in 0..10 {
        assert_eq!(s.register(&id).await.status, StatusCode::OK);
    }
    let blocked = s.register(&id).await;
    assert_eq!(graph_code(&blocked.body).0, 133016);
}

#[tokio::test]
async fn embedded_signup_channel_is_created_on_lookup() {
    let s = start(test_config()).await;
    let filters =
        json!({"id": "esChannel01CH", "setup_info.phone_number": "15557654321"}).to_string();
    // The number as the channel holds it (digits): another form matches nothing.
    let plus =
        json!({"id": "esChannel01CH", "setup_info.phone_number": "+15557654321"}).to_string();
    let other_form = s
        .send(s.hub_get("channels").query(&[("filters", plus)]))
        .await;
    assert_eq!(other_form.body["count"], 0, "{}", other_form.body);
    let listed = s
        .send(s.hub_get("channels").query(&[("filters", filters)]))
        .await;
    assert_eq!(listed.body["count"], 1, "{}", listed.body);
    assert_eq!(listed.body["partner_channels"][0]["status"], "running");
    assert_eq!(listed.body["partner_channels"][0]["id"], "esChannel01CH");
    let key = s.send(s.hub_post("channels/esChannel01CH/api_keys")).await;
    assert_eq!(key.status, StatusCode::CREATED);
    let api_key = key.body["api_key"].as_str().expect("key");
    assert_eq!(s.send(s.health(api_key)).await.status, StatusCode::OK);
    assert_eq!(s.sandbox.count("+15557654321", "list_channels"), (1, 1));
}

#[tokio::test]
async fn migration_scenarios() {
    let s = start(test_config()).await;
    let expect_2388103 = |answer: &Answer, text: &str| {
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            graph_code(&answer.body),
            (100, Some(2388103)),
            "{}",
            answer.body
        );
        let message = answer.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(text), "{message}");
    };
    for (number, text) in [
        ("+15550000001", "Two-step authentication must be disabled"),
        ("+15550000002", "eligible to be added directly"),
        ("+15550000003", "Display name not approved"),
        ("+15550000005", "different Business Manager account"),
        ("+15550000010", "no app subscribed"),
    ] {
        s.seed(number, SOURCE, None).await;
        expect_2388103(&s.start_migration(DEST, number).await, text);
    }
    // Number 0010, the latest to migrate into DEST, marks it as lacking a subscribed app.
    let apps = s
        .send(s.graph_get(&format!("{DEST}/subscribed_apps")))
        .await;
    assert_eq!(apps.body["data"], json!([]));
    let unavailable = s.start_migration(DEST, "+15550000022").await;
    expect_2388103(&unavailable, "error migrating");
    assert!(unavailable.body["error"].get("is_transient").is_none());

    // 0004: already in the destination, with a running channel.
    let dest4 = "222000000000044";
    s.seed("+15550000004", SOURCE, Some(dest4)).await;
    let listed = s.send(s.graph_get(&format!("{dest4}/phone_numbers"))).await;
    assert_eq!(listed.body["data"][0]["status"], "CONNECTED");
    assert_eq!(
        listed.body["data"][0]["code_verification_status"],
        "VERIFIED"
    );
    let again = s.start_migration(dest4, "+15550000004").await;
    assert_eq!(graph_code(&again.body), (100, Some(2388012)));
    assert_eq!(
        s.channel_of("+15550000004").await.expect("channel")["status"],
        "running"
    );
}

#[tokio::test]
async fn waba_scenarios_by_id_suffix() {
    let s = start(test_config()).await;
    let get = |id: &'static str| {
        let s = &s;
        async move { s.send(s.graph_get(id)).await.body }
    };
    assert_eq!(
        get("300000000000005").await["owner_business_info"]["id"],
        "999000111"
    );
    assert_eq!(
        get("300000000000006").await["business_verification_status"],
        "not_verified"
    );
    assert_eq!(
        get("300000000000007").await["account_review_status"],
        "PENDING"
    );
    assert_eq!(
        get("300000000000008").await["account_review_status"],
        "REJECTED"
    );
    assert!(
        get("300000000000009")
            .await
            .get("primary_funding_id")
            .is_none()
    );
    let apps = s.send(s.graph_get("300000000000010/subscribed_apps")).await;
    assert_eq!(apps.body["data"], json!([]));
    let denied = s.send(s.graph_get("300000000000021")).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(graph_code(&denied.body).0, 190);
    let limited = s
        .send(s.graph_post(
            "300000000000018/migrate_message_templates",
            json!({"source_waba_id": SOURCE}),
        ))
        .await;
    assert_eq!(graph_code(&limited.body), (100, Some(2388019)));

    // A number's source-level scenario marks the WABA it was added to...
    s.seed("+15550000006", "400000000000001", None).await;
    assert_eq!(
        get("400000000000001").await["business_verification_status"],
        "not_verified"
    );
    // ...only until another number is added there: it never breaks the WABA for good.
    s.seed("+15551230000", "400000000000001", None).await;
    assert_eq!(
        get("400000000000001").await["business_verification_status"],
        "verified"
    );
}

/// A scenario number changes only what belongs to it: the WABA ids it was used with keep
/// working for the next number, and a WABA follows the business of the latest number added.
#[tokio::test]
async fn scenario_numbers_do_not_break_shared_ids() {
    let s = start(test_config()).await;
    let seed = |number: &'static str, business: &'static str| {
        let s = &s;
        async move {
            let answer = s
                .send(
                    s.http
                        .post(format!("{}/_sandbox/numbers", s.base))
                        .json(&json!({
                            "phone_number": number, "source_waba_id": SOURCE,
                            "destination_waba_id": DEST, "business_id": business,
                        })),
                )
                .await;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        }
    };
    for (number, field, bad) in [
        (
            "+15550000006",
            "business_verification_status",
            "not_verified",
        ),
        ("+15550000007", "account_review_status", "PENDING"),
        ("+15550000021", "account_review_status", ""),
    ] {
        seed(number, "180505742745347").await;
        let tainted = s.send(s.graph_get(SOURCE)).await;
        if number.ends_with("0021") {
            assert_eq!(tainted.status, StatusCode::UNAUTHORIZED, "{number}");
        } else {
            assert_eq!(tainted.body[field], bad, "{number}: {}", tainted.body);
        }
        seed("+5511987654321", "180505742745347").await;
        let clean = s.send(s.graph_get(SOURCE)).await;
        assert_eq!(
            clean.status,
            StatusCode::OK,
            "after {number}: {}",
            clean.body
        );
        assert_eq!(clean.body["business_verification_status"], "verified");
        assert_eq!(clean.body["account_review_status"], "APPROVED");
    }
    // The destination side: 0008 marks the destination only while it is the current number.
    seed("+15550000008", "180505742745347").await;
    assert_eq!(
        s.send(s.graph_get(DEST)).await.body["account_review_status"],
        "REJECTED"
    );
    seed("+5511987654321", "180505742745347").await;
    assert_eq!(
        s.send(s.graph_get(DEST)).await.body["account_review_status"],
        "APPROVED"
    );

    // The same WABA ids with another business: both WABAs now belong to it (no mismatch).
    seed("+5511987654321", "777000000000001").await;
    for waba in [SOURCE, DEST] {
        let body = s.send(s.graph_get(waba)).await.body;
        assert_eq!(
            body["owner_business_info"]["id"], "777000000000001",
            "{waba}"
        );
    }
    let started = s.start_migration(DEST, "+5511987654321").await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
}

/// `POST /_sandbox/numbers/{e164}/resolve` turns a scenario number into a happy-path one.
#[tokio::test]
async fn resolving_a_scenario_number_lets_it_succeed() {
    let s = start(test_config()).await;
    let resolve = |number: &'static str| {
        let s = &s;
        async move {
            let digits = number.trim_start_matches('+');
            s.send(
                s.http
                    .post(format!("{}/_sandbox/numbers/%2B{digits}/resolve", s.base)),
            )
            .await
        }
    };
    // 0001: two-step verification on → turned off.
    s.seed("+15550000001", SOURCE, Some(DEST)).await;
    let refused = s.start_migration(DEST, "+15550000001").await;
    assert_eq!(graph_code(&refused.body), (100, Some(2388103)));
    let resolved = resolve("+15550000001").await;
    assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.body);
    assert_eq!(resolved.body["scenario"], "two_factor_enabled");
    let started = s.start_migration(DEST, "+15550000001").await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);

    // 0023: PIN mismatch at register → the PIN is accepted after resolving.
    let id = s.verified("+15550000023").await;
    assert_eq!(graph_code(&s.register(&id).await.body).0, 133005);
    resolve("+15550000023").await;
    assert_eq!(s.register(&id).await.status, StatusCode::OK);

    // 0019: the channel never appears → it appears once resolved (the number is registered).
    let id = s.verified("+15550000019").await;
    assert_eq!(s.register(&id).await.status, StatusCode::OK);
    assert!(s.channel_of("+15550000019").await.is_none());
    resolve("+15550000019").await;
    assert!(s.channel_of("+15550000019").await.is_some());

    // Not a number: 400.
    let bad = s
        .send(
            s.http
                .post(format!("{}/_sandbox/numbers/nope/resolve", s.base)),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

/// The world survives a snapshot and restore into a new sandbox, ids and all: a number in the
/// middle of its migration carries on.
#[tokio::test]
async fn snapshot_restores_the_world() {
    let s = start(test_config()).await;
    let id = s.verified(NUMBER).await;
    let snapshot = s.sandbox.snapshot();

    let t = start(test_config()).await;
    t.sandbox.restore(&snapshot).expect("restore");
    let phone = t.send(t.graph_get(&id)).await;
    assert_eq!(phone.status, StatusCode::OK, "{}", phone.body);
    assert_eq!(phone.body["code_verification_status"], "VERIFIED");
    assert_eq!(t.register(&id).await.status, StatusCode::OK);
    assert!(t.channel_of(NUMBER).await.is_some());
    assert!(
        t.sandbox
            .restore(b"{\"format\": 99, \"world\": {}}")
            .is_err()
    );
    assert!(t.sandbox.restore(b"not json").is_err());

    // With a store, every change is written before the answer leaves.
    let stored: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
    let sink = stored.clone();
    t.sandbox
        .persist_to(std::sync::Arc::new(move |bytes: Vec<u8>| {
            sink.lock().expect("lock").push(bytes);
            Box::pin(async { Ok(()) })
        }));
    let other = t.verified("+15551234599").await;
    let last = stored
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a write");
    let u = start(test_config()).await;
    u.sandbox.restore(&last).expect("restore");
    let phone = u.send(u.graph_get(&other)).await;
    assert_eq!(
        phone.body["code_verification_status"], "VERIFIED",
        "{}",
        phone.body
    );
    // A read changes nothing and writes nothing.
    let writes = stored.lock().expect("lock").len();
    t.send(t.graph_get(&other)).await;
    assert_eq!(stored.lock().expect("lock").len(), writes);
}

#[tokio::test]
async fn phone_scenarios() {
    let s = start(test_config()).await;
    let listed = |body: Value| -> Vec<wire::PhoneNumber> {
        serde_json::from_value(body["listed_on_source"].clone()).expect("phones")
    };
    assert!(listed(s.seed("+15550000011", SOURCE, None).await).is_empty());
    let brazil = listed(s.seed("+5511987650012", SOURCE, None).await);
    assert_eq!(
        brazil[0].display_phone_number.as_deref(),
        Some("+55 11 8765-0012")
    );
    let brazil8 = listed(s.seed("+551187650012", "111000000000002", None).await);
    assert_eq!(
        brazil8[0].display_phone_number.as_deref(),
        Some("+55 11 98765-0012")
    );
    let issued = listed(s.seed("+15550000013", SOURCE, None).await);
    assert_eq!(issued[0].account_mode.as_deref(), Some("SANDBOX"));
    let app = listed(s.seed("+15550000014", SOURCE, None).await);
    assert_eq!(app[0].is_on_biz_app, Some(true));
    let pending = listed(s.seed("+15550000024", SOURCE, None).await);
    assert_eq!(
        pending[0].new_name_status.as_deref(),
        Some("PENDING_REVIEW")
    );
    assert_eq!(pending[0].name_status.as_deref(), Some("APPROVED"));
    let name = listed(s.seed("+15550000003", SOURCE, None).await);
    assert_eq!(name[0].name_status.as_deref(), Some("PENDING_REVIEW"));

    // 0021: every Graph call about the number is refused.
    let auth = s.start_migration(DEST, "+15550000021").await;
    assert_eq!(auth.status, StatusCode::UNAUTHORIZED);
    assert_eq!(graph_code(&auth.body).0, 190);
}

#[tokio::test]
async fn otp_register_and_channel_scenarios() {
    let s = start(test_config()).await;

    // 0015: 123456 is wrong, 654321 is right.
    s.seed("+15550000015", SOURCE, Some(DEST)).await;
    let id = s.start_migration(DEST, "+15550000015").await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    s.send(s.graph_post(
        &format!("{id}/request_code"),
        json!({"code_method": "SMS", "language": "en_US"}),
    ))
    .await;
    let wrong = s
        .send(s.graph_post(&format!("{id}/verify_code"), json!({"code": "123456"})))
        .await;
    assert_eq!(graph_code(&wrong.body).0, 136025);
    let right = s
        .send(s.graph_post(&format!("{id}/verify_code"), json!({"code": "654321"})))
        .await;
    assert_eq!(right.status, StatusCode::OK);

    // 0016: request_code throttled.
    s.seed("+15550000016", SOURCE, Some(DEST)).await;
    let id = s.start_migration(DEST, "+15550000016").await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let throttled = s
        .send(s.graph_post(
            &format!("{id}/request_code"),
            json!({"code_method": "SMS", "language": "en_US"}),
        ))
        .await;
    assert_eq!(graph_code(&throttled.body).0, 2494158);

    // 0017 and 0023: register refused.
    let id = s.verified("+15550000017").await;
    assert_eq!(graph_code(&s.register(&id).await.body).0, 133016);
    let id = s.verified("+15550000023").await;
    assert_eq!(graph_code(&s.register(&id).await.body).0, 133005);

    // 0019: the channel never appears.
    let id = s.verified("+15550000019").await;
    assert_eq!(s.register(&id).await.status, StatusCode::OK);
    assert!(s.channel_of("+15550000019").await.is_none());

    // 0020: running, but no key permission.
    let id = s.verified("+15550000020").await;
    assert_eq!(s.register(&id).await.status, StatusCode::OK);
    let channel = s.channel_of("+15550000020").await.expect("channel");
    assert_eq!(channel["status"], "running");
    let client_id = channel["client_id"].as_str().expect("client");
    let shared = s
        .send(s.hub_get(&format!("clients/{client_id}/shared_client_numbers")))
        .await;
    assert_eq!(shared.body["count"], 0);
    let channel_id = channel["id"].as_str().expect("id");
    let denied = s
        .send(s.hub_post(&format!("channels/{channel_id}/api_keys")))
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        denied.body["meta"]["developer_message"],
        format!("Permission denied for partner {PARTNER}")
    );
}

/// Every item of a Graph list edge, following `paging.next`; also returns the page count.
async fn list_all(s: &Server, waba: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut url = format!(
        "{}/v23.0/{waba}/message_templates?limit={limit}&fields={}",
        s.base,
        crate::clients::meta::TEMPLATE_FIELDS
    );
    loop {
        let page = s.send(s.http.get(&url).bearer_auth("t")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let data = page.body["data"].as_array().cloned().unwrap_or_default();
        assert!(data.len() <= limit);
        items.extend(data);
        pages += 1;
        match page.body["paging"]["next"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    (items, pages)
}

#[tokio::test]
async fn many_templates_migrate_page_by_page() {
    const MANY: &str = "333000000000001";
    const INTO: &str = "444000000000001";
    let s = start(test_config()).await;
    let templates_url = |waba: &str| format!("{}/_sandbox/wabas/{waba}/templates", s.base);

    for bad in [
        json!({"count": 0}),
        json!({"count": 10_001}),
        json!({"n": 5}),
    ] {
        let refused = s.send(s.http.post(templates_url(MANY)).json(&bad)).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(refused.body["error"].is_string());
    }
    assert!(s.sandbox.set_templates(MANY, 0).is_err());
    assert!(s.sandbox.set_templates("bad id", 5).is_err());
    // Replacing: a first set of 3 is dropped by the next call.
    s.sandbox.set_templates(MANY, 3).expect("set templates");
    let generated = s
        .send(
            s.http
                .post(templates_url(MANY))
                .json(&json!({"count": 1200})),
        )
        .await;
    assert_eq!(generated.status, StatusCode::OK, "{}", generated.body);
    assert_eq!(
        generated.body,
        json!({"waba_id": MANY, "count": 1200, "eligible": 840})
    );

    // Listing: 1,200 through paging, in creation order, with the documented pattern.
    let (source, pages) = list_all(&s, MANY, 100).await;
    assert_eq!((source.len(), pages), (1200, 12));
    let (whole, pages) = list_all(&s, MANY, 1000).await;
    assert_eq!((whole.len(), pages), (1200, 2));
    assert_eq!(whole, source);
    let (default_paged, pages) = list_all(&s, MANY, 25).await;
    assert_eq!((default_paged.len(), pages), (1200, 48));
    for (i, t) in source.iter().enumerate() {
        assert_eq!(t["name"], format!("tpl_{i:05}"));
        assert_eq!(t["language"], if i % 2 == 0 { "en_US" } else { "pt_BR" });
        assert!(t["category"] == "UTILITY" || t["category"] == "MARKETING");
        let expected = match i % 10 {
            0..=5 => ("APPROVED", "GREEN"),
            6 => ("APPROVED", "UNKNOWN"),
            7 => ("APPROVED", "YELLOW"),
            8 => ("PENDING", "UNKNOWN"),
            _ => ("REJECTED", "UNKNOWN"),
        };
        assert_eq!(
            (t["status"].as_str(), t["quality_score"]["score"].as_str()),
            (Some(expected.0), Some(expected.1)),
            "template {i}"
        );
    }
    let id_of = |i: usize| source[i]["id"].as_str().expect("id").to_owned();
    let is_eligible = |i: usize| i % 10 <= 6;
    let migrate =
        |body: Value| s.send(s.graph_post(&format!("{INTO}/migrate_message_templates"), body));
    let outcome = |answer: Answer| -> wire::TemplateMigration {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        serde_json::from_value(answer.body).expect("migration shape")
    };

    // Pages 0, 1, 2 copy exactly their eligible templates minus the multiples of 97.
    let mut copied = Vec::new();
    let mut failed = Vec::new();
    let mut first_page = None;
    for page in 0..3usize {
        let result = outcome(migrate(json!({"source_waba_id": MANY, "page_number": page})).await);
        let range = page * 500..((page + 1) * 500).min(1200);
        let want_copied: Vec<String> = range
            .clone()
            .filter(|&i| is_eligible(i) && i % 97 != 0)
            .map(id_of)
            .collect();
        let want_failed: Vec<String> = range
            .filter(|&i| is_eligible(i) && i % 97 == 0)
            .map(id_of)
            .collect();
        assert_eq!(result.migrated_templates, want_copied, "page {page}");
        let mut got_failed: Vec<String> = result.failed_templates.keys().cloned().collect();
        got_failed.sort();
        let mut sorted_want = want_failed.clone();
        sorted_want.sort();
        assert_eq!(got_failed, sorted_want, "page {page}");
        assert!(
            result
                .failed_templates
                .values()
                .all(|reason| reason == "Incorrect category")
        );
        copied.extend(want_copied);
        failed.extend(want_failed);
        if page == 0 {
            first_page = Some(result);
        }
    }
    let past_end = outcome(migrate(json!({"source_waba_id": MANY, "page_number": 3})).await);
    assert!(past_end.migrated_templates.is_empty());
    assert!(past_end.failed_templates.is_empty());
    assert_eq!((copied.len(), failed.len()), (831, 9));
    assert_eq!(copied.len() + failed.len(), 840);

    let (dest, _) = list_all(&s, INTO, 100).await;
    assert_eq!(dest.len(), 831);
    let copied_names: std::collections::BTreeSet<(String, String)> = dest
        .iter()
        .map(|t| (t["name"].to_string(), t["language"].to_string()))
        .collect();
    assert_eq!(copied_names.len(), 831, "no duplicates");
    assert!(
        dest.iter()
            .all(|t| !copied.contains(&t["id"].as_str().expect("id").to_owned()))
    );
    assert!(
        dest.iter()
            .all(|t| t["status"] == "APPROVED" && t["quality_score"]["score"] == "UNKNOWN")
    );

    // Retrying the failures by id fails them again; an ineligible id is failed with its reason;
    // already-copied ids are reported as migrated without copying twice.
    let rejected = id_of(9);
    let mut retry_ids = failed.clone();
    retry_ids.push(rejected.clone());
    let retried =
        outcome(migrate(json!({"source_waba_id": MANY, "template_ids": retry_ids})).await);
    assert!(retried.migrated_templates.is_empty());
    assert_eq!(retried.failed_templates.len(), 10);
    for id in &failed {
        assert_eq!(retried.failed_templates[id], "Incorrect category");
    }
    assert!(
        retried.failed_templates[&rejected]
            .starts_with("Template is not eligible for migration: status REJECTED"),
        "{}",
        retried.failed_templates[&rejected]
    );
    let again = outcome(
        migrate(json!({"source_waba_id": MANY, "template_ids": [id_of(1), id_of(2)]})).await,
    );
    assert_eq!(again.migrated_templates, vec![id_of(1), id_of(2)]);
    assert!(again.failed_templates.is_empty());

    // A second call of page 0 duplicates nothing.
    let rerun = outcome(migrate(json!({"source_waba_id": MANY, "page_number": 0})).await);
    let first_page = first_page.expect("page 0");
    assert_eq!(rerun.migrated_templates, first_page.migrated_templates);
    assert_eq!(rerun.failed_templates, first_page.failed_templates);
    assert_eq!(list_all(&s, INTO, 1000).await.0.len(), 831);

    // `count` narrows the page: page 1 of 100 is templates 100..200.
    const OTHER: &str = "444000000000002";
    let narrow = outcome(
        s.send(s.graph_post(
            &format!("{OTHER}/migrate_message_templates"),
            json!({"source_waba_id": MANY, "page_number": 1, "count": 100}),
        ))
        .await,
    );
    let want: Vec<String> = (100..200)
        .filter(|&i| is_eligible(i) && i % 97 != 0)
        .map(id_of)
        .collect();
    assert_eq!(narrow.migrated_templates, want);
    assert_eq!(
        narrow.failed_templates.keys().cloned().collect::<Vec<_>>(),
        vec![id_of(194)]
    );
}

#[tokio::test]
async fn api_key_permission_can_be_granted_and_revoked() {
    let s = start(test_config()).await;
    let id = s.verified("+15550000020").await;
    assert_eq!(s.register(&id).await.status, StatusCode::OK);
    let channel = s.channel_of("+15550000020").await.expect("channel");
    let channel_id = channel["id"].as_str().expect("id").to_owned();
    let client_id = channel["client_id"].as_str().expect("client").to_owned();
    let control = format!("{}/_sandbox/channels/{channel_id}", s.base);
    let shared = || s.send(s.hub_get(&format!("clients/{client_id}/shared_client_numbers")));
    let generate = || s.send(s.hub_post(&format!("channels/{channel_id}/api_keys")));
    let set = |granted: bool| {
        s.send(
            s.http
                .post(format!("{control}/permission"))
                .json(&json!({ "granted": granted })),
        )
    };

    let inspected = s.send(s.http.get(&control)).await;
    assert_eq!(inspected.body["permission"], false);
    assert_eq!(shared().await.body["count"], 0);
    let denied = generate().await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        denied.body["meta"]["developer_message"],
        format!("Permission denied for partner {PARTNER}")
    );

    let granted = set(true).await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
    assert_eq!(granted.body["id"], channel_id.as_str());
    assert_eq!(granted.body["permission"], true);
    assert_eq!(granted.body["phone_number"], "+15550000020");
    assert_eq!(granted.body, s.send(s.http.get(&control)).await.body);
    let listed = shared().await;
    assert_eq!(listed.body["count"], 1);
    assert_eq!(
        listed.body["shared_client_numbers"][0],
        json!({"id": channel_id, "phone_number": "15550000020", "permission": true})
    );
    let key = generate().await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.body);
    let api_key = key.body["api_key"].as_str().expect("key").to_owned();
    assert_eq!(s.send(s.health(&api_key)).await.status, StatusCode::OK);

    let revoked = set(false).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(revoked.body["permission"], false);
    assert_eq!(revoked.body["keys_issued"], 1);
    assert_eq!(shared().await.body["count"], 0);
    assert_eq!(generate().await.status, StatusCode::FORBIDDEN);

    // Through the Rust API too.
    s.sandbox
        .set_permission(&channel_id, true)
        .expect("known channel");
    assert_eq!(generate().await.status, StatusCode::CREATED);
    assert!(s.sandbox.set_permission("nope", true).is_err());

    // Unknown channel → 404, bad body → 400; an ordinary channel starts with permission.
    let unknown = s
        .send(
            s.http
                .post(format!("{}/_sandbox/channels/nope/permission", s.base))
                .json(&json!({"granted": true})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let bad = s
        .send(
            s.http
                .post(format!("{control}/permission"))
                .json(&json!({"granted": "yes"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let id = s.verified(NUMBER).await;
    assert_eq!(s.register(&id).await.status, StatusCode::OK);
    let ordinary = s.channel_of(NUMBER).await.expect("channel");
    let ordinary_id = ordinary["id"].as_str().expect("id");
    let inspected = s
        .send(
            s.http
                .get(format!("{}/_sandbox/channels/{ordinary_id}", s.base)),
        )
        .await;
    assert_eq!(inspected.body["permission"], true);
}

#[derive(Deserialize)]
struct ScenarioRow {
    last_four: String,
}

#[tokio::test]
async fn scenario_table_is_served() {
    let s = start(test_config()).await;
    let body = s
        .send(s.http.get(format!("{}/_sandbox/scenarios", s.base)))
        .await
        .body;
    let rows: Vec<ScenarioRow> = serde_json::from_value(body["scenarios"].clone()).expect("rows");
    assert_eq!(rows.len(), 24);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.last_four, format!("{:04}", i + 1));
        assert_eq!(
            scenarios::Scenario::of(&row.last_four).map(|s| s as usize),
            Some(i + 1)
        );
    }
}

#[test]
fn fault_kinds_parse() {
    for kind in FaultKind::ALL {
        assert_eq!(kind.as_str().parse::<FaultKind>(), Ok(kind));
        assert_eq!(
            serde_json::to_value(kind).expect("json"),
            json!(kind.as_str())
        );
    }
    assert!("nope".parse::<FaultKind>().is_err());
}

#[test]
fn number_helpers() {
    assert_eq!(
        scenarios::normalize_e164("+1 (555) 123-4567").as_deref(),
        Some(NUMBER)
    );
    assert_eq!(
        scenarios::normalize_e164("15551234567").as_deref(),
        Some(NUMBER)
    );
    assert_eq!(scenarios::normalize_e164("+1555"), None);
    assert_eq!(scenarios::normalize_e164("+15551234567x"), None);
    assert_eq!(scenarios::display("+447911123456"), "+44 7911 123456");
    assert_eq!(
        scenarios::brazil_other_form("+5511987654321").as_deref(),
        Some("+551187654321")
    );
    assert_eq!(
        scenarios::brazil_other_form("+551187654321").as_deref(),
        Some("+5511987654321")
    );
    assert_eq!(scenarios::brazil_other_form("+551133334444"), None);
    assert_eq!(scenarios::Scenario::of("+15550000000"), None);
    assert_eq!(scenarios::Scenario::of("+15550000025"), None);
    assert_eq!(
        scenarios::Scenario::of("+15551230001"),
        Some(scenarios::Scenario::TwoFactorEnabled)
    );
    assert_eq!(scenarios::Scenario::of("100000000000000"), None);
    assert_eq!(
        scenarios::Scenario::of("...0017"),
        Some(scenarios::Scenario::RegisterLimit)
    );
}

#[tokio::test]
async fn graph_fields_select_what_is_returned_and_unknown_names_fail_the_read() {
    let s = start(SandboxConfig {
        graph_missing_fields: vec!["phone_number.is_on_biz_app".into()],
        ..test_config()
    })
    .await;
    s.seed("+4915112345678", SOURCE, None).await;
    let list = |fields: Option<&str>| {
        let mut url = url::Url::parse(&format!("{}/v23.0/{SOURCE}/phone_numbers", s.base)).unwrap();
        if let Some(fields) = fields {
            url.query_pairs_mut().append_pair("fields", fields);
        }
        s.http.get(url).bearer_auth("sandbox-token")
    };
    let keys = |answer: &Answer| -> Vec<String> {
        let mut keys: Vec<String> = answer.body["data"][0]
            .as_object()
            .expect("an item")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    // Named fields, and `id` always.
    let named = s.send(list(Some("status,name_status"))).await;
    assert_eq!(named.status, StatusCode::OK, "{}", named.body);
    assert_eq!(keys(&named), ["id", "name_status", "status"]);
    // None named: the node type's defaults.
    let defaults = s.send(list(None)).await;
    assert_eq!(
        keys(&defaults),
        [
            "display_phone_number",
            "id",
            "quality_rating",
            "verified_name"
        ]
    );
    // A name the node type does not have fails the whole read, as does one this Graph lacks.
    for field in ["is_pin_enabled", "is_on_biz_app"] {
        let refused = s.send(list(Some(&format!("id,{field}")))).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
        assert_eq!(graph_code(&refused.body).0, 100);
        assert_eq!(
            refused.body["error"]["message"],
            format!(
                "(#100) Tried accessing nonexisting field ({field}) on node type (WhatsAppBusinessPhoneNumber)"
            )
        );
    }
    // The node read and the WABA read honour `fields` too; a selection counts as its field.
    let phone_id = named.body["data"][0]["id"].as_str().expect("id").to_owned();
    let node = s
        .send(s.graph_get(&format!("{phone_id}?fields=status")))
        .await;
    let status = named.body["data"][0]["status"].clone();
    assert!(status.is_string(), "{}", named.body);
    assert_eq!(node.body, json!({"id": phone_id, "status": status}));
    let waba = s
        .send(s.graph_get(&format!(
            "{SOURCE}?fields=owner_business_info{{id}},primary_funding_id"
        )))
        .await;
    assert_eq!(waba.status, StatusCode::OK, "{}", waba.body);
    let mut waba_keys: Vec<&String> = waba.body.as_object().unwrap().keys().collect();
    waba_keys.sort();
    assert_eq!(
        waba_keys,
        ["id", "owner_business_info", "primary_funding_id"]
    );
}

#[tokio::test]
async fn graph_refuses_the_parameter_types_oas_refuses() {
    let s = start(test_config()).await;
    let number = "+4915112345680";
    s.seed(number, SOURCE, Some(DEST)).await;
    let refused = |answer: &Answer, what: &str| {
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            answer.body
        );
        assert_eq!(graph_code(&answer.body).0, 100, "{what}");
    };
    let numeric_number = s
        .send(s.graph_post(
            &format!("{DEST}/phone_numbers"),
            json!({"cc": 49, "phone_number": 15_112_345_680_u64, "migrate_phone_number": true}),
        ))
        .await;
    refused(&numeric_number, "a numeric cc and phone_number");
    let started = s.start_migration(DEST, number).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.body);
    let id = started.body["id"].as_str().expect("id").to_owned();
    for (what, body) in [
        (
            "a 2-letter language",
            json!({"code_method": "SMS", "language": "en"}),
        ),
        (
            "`locale` for `language`",
            json!({"code_method": "SMS", "locale": "en_US"}),
        ),
        (
            "a lower-case method",
            json!({"code_method": "sms", "language": "en_US"}),
        ),
    ] {
        refused(
            &s.send(s.graph_post(&format!("{id}/request_code"), body))
                .await,
            what,
        );
    }
    let requested = s
        .send(s.graph_post(
            &format!("{id}/request_code"),
            json!({"code_method": "SMS", "language": "en_US"}),
        ))
        .await;
    assert_eq!(requested.status, StatusCode::OK, "{}", requested.body);
    // `code` and `pin` are strings: the same digits as a JSON number are refused.
    let as_number = s
        .send(s.graph_post(&format!("{id}/verify_code"), json!({"code": 123456})))
        .await;
    refused(&as_number, "a numeric code");
    assert!(
        as_number.body["error"]["error_user_msg"]
            .as_str()
            .is_some_and(|m| m.contains("must be a string")),
        "{}",
        as_number.body
    );
    let verified = s
        .send(s.graph_post(
            &format!("{id}/verify_code"),
            json!({"code": SANDBOX_OTP_CODE}),
        ))
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
    let numeric_pin = s
        .send(s.graph_post(
            &format!("{id}/register"),
            json!({"messaging_product": "whatsapp", "pin": 123456}),
        ))
        .await;
    refused(&numeric_pin, "a numeric pin");
    assert_eq!(s.register(&id).await.status, StatusCode::OK);
}

#[tokio::test]
async fn graph_me_names_the_tokens_system_user() {
    let s = start(test_config()).await;
    let me = s.send(s.graph_get("me?fields=id")).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert!(me.body["id"].is_string(), "{}", me.body);
    let anonymous = s.send(s.http.get(format!("{}/v23.0/me", s.base))).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(graph_code(&anonymous.body).0, 190);
}
