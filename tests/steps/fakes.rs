//! In-memory doubles of the Meta Graph API ([`FakeMeta`]) and 360dialog ([`FakeD360`]) that
//! implement the public `MetaApi` / `D360Api` traits.
//!
//! They model upstream *state*, not canned answers: a phone number's `code_verification_status`
//! (a code must have been requested and the right one sent), its `status` (`CONNECTED` once
//! registered), whether a code was sent, and a channel's current API key (generating one revokes
//! every earlier key, so only the newest passes `GET /health_status`). Each endpoint counts the
//! calls it received and, separately, the calls it *applied* (carried out upstream, whatever the
//! caller then saw), like the sandbox's counters.
//!
//! Every call of an endpoint can be scripted with a [`Kind`]: the next calls take the scripted
//! kinds in order, later calls answer normally. The errors are built as `clients::meta` and
//! `clients::d360` build them from the wire (an HTML page or `{"success": false}` with a 2xx is
//! `Decode`; a connect timeout is `Transport` with `maybe_applied: false`; a timeout or reset
//! after the request left is `Transport` with `maybe_applied: true`; Graph refusals carry their
//! documented code).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use waba_migrator::clients::{
    Channel, CodeMethod, D360Api, Error, GeneratedApiKey, HealthStatus, KeyPermission, MetaApi,
    PartnerCredentials, PhoneNumber, Service, SubscribedApp, Template, TemplateMigration,
    UpstreamError, Waba,
};

/// How one scripted call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Applied; the documented success answer.
    Success,
    /// A 4xx refusal with the endpoint's realistic error code; not applied.
    Refused4xx,
    /// A 5xx; not applied (the client still calls a 5xx "maybe applied").
    Error5xx,
    /// The connection or its timeout failed before the request reached upstream: not applied,
    /// `Transport { maybe_applied: false }`.
    TimeoutBeforeSend,
    /// The request left, upstream did not apply it, the client timed out:
    /// `Transport { maybe_applied: true }`.
    TimeoutUnapplied,
    /// Upstream applied it, the client timed out before the answer:
    /// `Transport { maybe_applied: true }`.
    TimeoutApplied,
    /// Upstream applied it, the connection was reset before the whole answer arrived:
    /// `Transport { maybe_applied: true }`.
    LostResponse,
    /// Applied, but a gateway answered 200 with an HTML page: `Decode`.
    Html2xx,
    /// Applied, but the 2xx body is not the success shape (`{"success": false}` from Graph, a
    /// key-less object from 360dialog): `Decode`.
    Garbled2xx,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Success,
        Kind::Refused4xx,
        Kind::Error5xx,
        Kind::TimeoutBeforeSend,
        Kind::TimeoutUnapplied,
        Kind::TimeoutApplied,
        Kind::LostResponse,
        Kind::Html2xx,
        Kind::Garbled2xx,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Success => "ok",
            Kind::Refused4xx => "4xx",
            Kind::Error5xx => "5xx",
            Kind::TimeoutBeforeSend => "timeout before send",
            Kind::TimeoutUnapplied => "timeout, not applied",
            Kind::TimeoutApplied => "timeout after applied",
            Kind::LostResponse => "lost response",
            Kind::Html2xx => "2xx HTML",
            Kind::Garbled2xx => "2xx garbled",
        }
    }

    /// Whether upstream carries the request out (if its own rules allow it).
    fn reaches_upstream(self) -> bool {
        matches!(
            self,
            Kind::Success
                | Kind::TimeoutApplied
                | Kind::LostResponse
                | Kind::Html2xx
                | Kind::Garbled2xx
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.label())
    }
}

/// Calls received and calls applied by one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub applied: u64,
}

/// One call as the fake saw it, in order: which endpoint, and whether the caller was left not
/// knowing if it was applied (`maybe_applied()` of the error it got).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub endpoint: &'static str,
    pub ambiguous: bool,
}

/// Scripts, counters and the call log, shared by both fakes.
#[derive(Default)]
struct Ledger {
    scripts: HashMap<&'static str, VecDeque<Kind>>,
    counts: BTreeMap<&'static str, Counts>,
    log: Vec<Call>,
}

impl Ledger {
    fn next_kind(&mut self, endpoint: &'static str) -> Kind {
        self.counts.entry(endpoint).or_default().calls += 1;
        self.scripts
            .get_mut(endpoint)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Kind::Success)
    }

    /// Runs `op` (the upstream's own rules and state change) as `kind` says and returns what
    /// the client would have returned.
    fn exchange<T>(
        &mut self,
        endpoint: &'static str,
        service: Service,
        refusal: impl FnOnce() -> Error,
        server_error: impl FnOnce() -> Error,
        op: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let kind = self.next_kind(endpoint);
        let result = match kind {
            Kind::Refused4xx => Err(refusal()),
            Kind::Error5xx => Err(server_error()),
            Kind::TimeoutBeforeSend => Err(transport(service, "connect error: timed out", false)),
            Kind::TimeoutUnapplied => Err(transport(service, "timeout: operation timed out", true)),
            _ => {
                let done = op();
                if done.is_ok() {
                    self.counts.entry(endpoint).or_default().applied += 1;
                }
                match (kind, done) {
                    (Kind::Success, done) | (_, done @ Err(_)) => done,
                    (Kind::TimeoutApplied, Ok(_)) => {
                        Err(transport(service, "timeout: operation timed out", true))
                    }
                    (Kind::LostResponse, Ok(_)) => Err(transport(
                        service,
                        "body error: connection reset by peer (incomplete message)",
                        true,
                    )),
                    (Kind::Html2xx, Ok(_)) => Err(decode(service, endpoint, true)),
                    (Kind::Garbled2xx, Ok(_)) => Err(decode(service, endpoint, false)),
                    (_, Ok(_)) => unreachable!("{kind:?} does not reach upstream"),
                }
            }
        };
        debug_assert!(kind.reaches_upstream() || result.is_err());
        self.log.push(Call {
            endpoint,
            ambiguous: result.as_ref().err().is_some_and(Error::maybe_applied),
        });
        result
    }

    /// A read: counted and logged, never scripted to fail here.
    fn read(&mut self, endpoint: &'static str) {
        let kind = self.next_kind(endpoint);
        assert_eq!(kind, Kind::Success, "reads are not scripted");
        self.counts.entry(endpoint).or_default().applied += 1;
        self.log.push(Call {
            endpoint,
            ambiguous: false,
        });
    }
}

fn transport(service: Service, message: &str, maybe_applied: bool) -> Error {
    Error::Transport {
        service,
        message: message.into(),
        maybe_applied,
    }
}

/// What `clients::meta` / `clients::d360` return for a 2xx body they cannot use.
fn decode(service: Service, endpoint: &str, html: bool) -> Error {
    let message = match (service, html) {
        (Service::Meta, true) => format!("{endpoint}: expected value at line 1 column 1"),
        (Service::Meta, false) => format!("{endpoint}: success was false"),
        (_, true) => format!("{endpoint}: response is not valid JSON"),
        (_, false) => format!("{endpoint}: response has no api_key"),
    };
    Error::Decode { service, message }
}

/// A Graph error object as `clients::meta` parses it.
pub fn graph_error(
    http_status: u16,
    code: i64,
    message: &str,
    is_transient: Option<bool>,
) -> Error {
    Error::Api {
        upstream: UpstreamError {
            service: Service::Meta,
            http_status: Some(http_status),
            code: Some(code),
            subcode: None,
            fbtrace_id: Some("AFakeTrace".into()),
            message: message.into(),
            is_transient,
        },
        retry_after: None,
    }
}

/// A 360dialog error as `clients::d360` parses it.
pub fn d360_error(service: Service, http_status: u16, message: &str) -> Error {
    Error::Api {
        upstream: UpstreamError {
            service,
            http_status: Some(http_status),
            code: None,
            subcode: None,
            fbtrace_id: None,
            message: message.into(),
            is_transient: None,
        },
        retry_after: None,
    }
}

/// A destination phone number at Meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePhone {
    pub id: String,
    pub e164: String,
    pub waba_id: String,
    /// A code was sent (`request_code` applied); `verify_code` refuses without one.
    pub code_sent: bool,
    /// `code_verification_status` is `VERIFIED`.
    pub verified: bool,
    /// `status` is `CONNECTED` (registered on Cloud API).
    pub connected: bool,
    /// The PIN the number was registered with.
    pub pin: Option<String>,
}

impl FakePhone {
    pub fn new(id: &str, e164: &str, waba_id: &str) -> Self {
        Self {
            id: id.into(),
            e164: e164.into(),
            waba_id: waba_id.into(),
            code_sent: false,
            verified: false,
            connected: false,
            pin: None,
        }
    }

    fn node(&self) -> PhoneNumber {
        PhoneNumber {
            id: self.id.clone(),
            display_phone_number: Some(self.e164.clone()),
            verified_name: Some("Fake Business".into()),
            quality_rating: Some("GREEN".into()),
            code_verification_status: Some(
                if self.verified {
                    "VERIFIED"
                } else {
                    "NOT_VERIFIED"
                }
                .into(),
            ),
            name_status: Some("APPROVED".into()),
            new_name_status: None,
            status: Some(
                if self.connected {
                    "CONNECTED"
                } else {
                    "PENDING"
                }
                .into(),
            ),
            platform_type: Some(
                if self.connected {
                    "CLOUD_API"
                } else {
                    "NOT_APPLICABLE"
                }
                .into(),
            ),
            messaging_limit_tier: Some("TIER_1K".into()),
            is_official_business_account: Some(false),
            is_on_biz_app: Some(false),
            account_mode: Some("LIVE".into()),
        }
    }
}

#[derive(Default)]
struct MetaInner {
    ledger: Ledger,
    phones: BTreeMap<String, FakePhone>,
    templates: BTreeMap<String, Vec<Template>>,
}

/// The Meta Graph API in memory. The valid verification code is [`FakeMeta::CODE`].
#[derive(Default)]
pub struct FakeMeta {
    inner: Mutex<MetaInner>,
}

impl FakeMeta {
    pub const CODE: &'static str = "123456";

    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MetaInner> {
        self.inner.lock().expect("fake meta lock")
    }

    /// Adds (or replaces) a phone number.
    pub fn put_phone(&self, phone: FakePhone) {
        self.lock().phones.insert(phone.id.clone(), phone);
    }

    pub fn phone(&self, id: &str) -> Option<FakePhone> {
        self.lock().phones.get(id).cloned()
    }

    /// The next calls of `endpoint` end as `kinds` say, in order.
    pub fn script(&self, endpoint: &'static str, kinds: &[Kind]) {
        self.lock()
            .ledger
            .scripts
            .entry(endpoint)
            .or_default()
            .extend(kinds);
    }

    pub fn counts(&self, endpoint: &str) -> Counts {
        self.lock()
            .ledger
            .counts
            .get(endpoint)
            .copied()
            .unwrap_or_default()
    }

    /// Every call so far, in order.
    pub fn log(&self) -> Vec<Call> {
        self.lock().ledger.log.clone()
    }
}

fn no_such_object(id: &str) -> Error {
    graph_error(
        400,
        100,
        &format!("Unsupported get request. Object with ID '{id}' does not exist"),
        None,
    )
}

#[async_trait]
impl MetaApi for FakeMeta {
    async fn token_owner(&self) -> Result<String, Error> {
        Ok("fake-system-user".into())
    }

    async fn get_waba(&self, waba_id: &str) -> Result<Waba, Error> {
        self.lock().ledger.read("get_waba");
        Ok(Waba {
            id: waba_id.into(),
            name: Some("Fake WABA".into()),
            account_review_status: Some("APPROVED".into()),
            business_verification_status: Some("verified".into()),
            primary_funding_id: Some("1".into()),
            ..Waba::default()
        })
    }

    async fn list_phone_numbers(&self, waba_id: &str) -> Result<Vec<PhoneNumber>, Error> {
        let mut inner = self.lock();
        inner.ledger.read("list_phone_numbers");
        Ok(inner
            .phones
            .values()
            .filter(|p| p.waba_id == waba_id)
            .map(FakePhone::node)
            .collect())
    }

    async fn find_phone_numbers(
        &self,
        waba_id: &str,
        e164: &str,
    ) -> Result<Option<Vec<PhoneNumber>>, Error> {
        let mut inner = self.lock();
        inner.ledger.read("find_phone_numbers");
        Ok(Some(
            inner
                .phones
                .values()
                .filter(|p| p.waba_id == waba_id && p.e164 == e164)
                .map(FakePhone::node)
                .collect(),
        ))
    }

    async fn get_phone_number(&self, phone_number_id: &str) -> Result<PhoneNumber, Error> {
        let mut inner = self.lock();
        inner.ledger.read("get_phone_number");
        inner
            .phones
            .get(phone_number_id)
            .map(FakePhone::node)
            .ok_or_else(|| no_such_object(phone_number_id))
    }

    async fn list_subscribed_apps(&self, _waba_id: &str) -> Result<Vec<SubscribedApp>, Error> {
        self.lock().ledger.read("list_subscribed_apps");
        Ok(vec![SubscribedApp {
            id: Some("1".into()),
            name: Some("Fake app".into()),
        }])
    }

    async fn list_templates(&self, waba_id: &str) -> Result<Vec<Template>, Error> {
        let mut inner = self.lock();
        inner.ledger.read("list_templates");
        Ok(inner.templates.get(waba_id).cloned().unwrap_or_default())
    }

    async fn start_migration(
        &self,
        destination_waba_id: &str,
        country_code: &str,
        national_number: &str,
    ) -> Result<String, Error> {
        let e164 = format!("+{country_code}{national_number}");
        let mut guard = self.lock();
        let inner = &mut *guard;
        let phones = &mut inner.phones;
        inner.ledger.exchange(
            "start_migration",
            Service::Meta,
            || graph_error(400, 2388103, "Display name not approved", None),
            || graph_error(500, 2, "Service temporarily unavailable", Some(true)),
            || {
                if phones
                    .values()
                    .any(|p| p.e164 == e164 && p.waba_id == destination_waba_id)
                {
                    return Err(graph_error(
                        400,
                        2388012,
                        "Phone number is already in your list of phone numbers",
                        None,
                    ));
                }
                let id = format!("9{:014}", phones.len() + 1);
                phones.insert(id.clone(), FakePhone::new(&id, &e164, destination_waba_id));
                Ok(id)
            },
        )
    }

    async fn request_code(
        &self,
        phone_number_id: &str,
        _method: CodeMethod,
        _language: &str,
    ) -> Result<(), Error> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let phones = &mut inner.phones;
        inner.ledger.exchange(
            "request_code",
            Service::Meta,
            || {
                graph_error(
                    400,
                    2494158,
                    "You have requested your code too many times",
                    None,
                )
            },
            || graph_error(500, 2, "Service temporarily unavailable", Some(true)),
            || {
                let phone = phones
                    .get_mut(phone_number_id)
                    .ok_or_else(|| no_such_object(phone_number_id))?;
                if phone.verified {
                    return Err(graph_error(400, 136024, "Request code error", None));
                }
                phone.code_sent = true;
                Ok(())
            },
        )
    }

    async fn verify_code(&self, phone_number_id: &str, code: &SecretString) -> Result<(), Error> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let phones = &mut inner.phones;
        let wrong_code = || graph_error(400, 136025, "Code couldn't be verified", None);
        inner.ledger.exchange(
            "verify_code",
            Service::Meta,
            wrong_code,
            || graph_error(500, 2, "Service temporarily unavailable", Some(true)),
            || {
                let phone = phones
                    .get_mut(phone_number_id)
                    .ok_or_else(|| no_such_object(phone_number_id))?;
                // As the sandbox: verifying a verified number succeeds (and counts as applied).
                if phone.verified {
                    return Ok(());
                }
                if !phone.code_sent || code.expose_secret() != Self::CODE {
                    return Err(wrong_code());
                }
                phone.verified = true;
                Ok(())
            },
        )
    }

    async fn register(&self, phone_number_id: &str, pin: &SecretString) -> Result<(), Error> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let phones = &mut inner.phones;
        inner.ledger.exchange(
            "register",
            Service::Meta,
            || graph_error(400, 133005, "Two step verification PIN Mismatch", None),
            || graph_error(503, 133004, "Registration server unavailable", None),
            || {
                let phone = phones
                    .get_mut(phone_number_id)
                    .ok_or_else(|| no_such_object(phone_number_id))?;
                if !phone.verified {
                    return Err(graph_error(
                        400,
                        133006,
                        "Phone number re-verification needed",
                        None,
                    ));
                }
                // Registering a CONNECTED number is accepted again (and counts towards the
                // 10 register calls per 72 h).
                phone.connected = true;
                phone.pin = Some(pin.expose_secret().to_owned());
                Ok(())
            },
        )
    }

    async fn migrate_templates(
        &self,
        _destination_waba_id: &str,
        _source_waba_id: &str,
        _page_number: u32,
        _template_ids: Option<&[String]>,
    ) -> Result<TemplateMigration, Error> {
        self.lock().ledger.read("migrate_templates");
        Ok(TemplateMigration::default())
    }
}

/// A 360dialog channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeChannel {
    pub id: String,
    pub client_id: String,
    pub e164: String,
    /// `running` once the number is live on 360dialog.
    pub status: String,
    /// The partner may generate API keys for it.
    pub permission: bool,
    /// The only valid key: generating a new one revokes it.
    pub current_key: Option<String>,
    /// Keys generated so far (the last one is `current_key`).
    pub generated: u32,
}

impl FakeChannel {
    pub fn running(id: &str, client_id: &str, e164: &str) -> Self {
        Self {
            id: id.into(),
            client_id: client_id.into(),
            e164: e164.into(),
            status: "running".into(),
            permission: true,
            current_key: None,
            generated: 0,
        }
    }

    fn listed(&self) -> Channel {
        Channel {
            id: self.id.clone(),
            client_id: Some(self.client_id.clone()),
            status: Some(self.status.clone()),
            account_mode: Some("live".into()),
            phone_number: Some(self.e164.trim_start_matches('+').to_owned()),
            waba_external_id: None,
        }
    }
}

#[derive(Default)]
struct D360Inner {
    ledger: Ledger,
    channels: BTreeMap<String, FakeChannel>,
}

/// 360dialog's Partner API and Messaging API in memory.
#[derive(Default)]
pub struct FakeD360 {
    inner: Mutex<D360Inner>,
}

impl FakeD360 {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, D360Inner> {
        self.inner.lock().expect("fake d360 lock")
    }

    pub fn put_channel(&self, channel: FakeChannel) {
        self.lock().channels.insert(channel.id.clone(), channel);
    }

    pub fn channel(&self, id: &str) -> Option<FakeChannel> {
        self.lock().channels.get(id).cloned()
    }

    pub fn script(&self, endpoint: &'static str, kinds: &[Kind]) {
        self.lock()
            .ledger
            .scripts
            .entry(endpoint)
            .or_default()
            .extend(kinds);
    }

    pub fn counts(&self, endpoint: &str) -> Counts {
        self.lock()
            .ledger
            .counts
            .get(endpoint)
            .copied()
            .unwrap_or_default()
    }

    pub fn log(&self) -> Vec<Call> {
        self.lock().ledger.log.clone()
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

#[async_trait]
impl D360Api for FakeD360 {
    async fn find_channel_by_number(
        &self,
        _partner: &PartnerCredentials,
        phone_number_e164: &str,
        _waba_id: &str,
        _leaving_waba_id: &str,
    ) -> Result<Option<Channel>, Error> {
        let mut inner = self.lock();
        inner.ledger.read("find_channel_by_number");
        let want = digits(phone_number_e164);
        Ok(inner
            .channels
            .values()
            .find(|c| digits(&c.e164) == want)
            .map(FakeChannel::listed))
    }

    async fn get_channel(
        &self,
        _partner: &PartnerCredentials,
        channel_id: &str,
        _phone_number_e164: Option<&str>,
    ) -> Result<Option<Channel>, Error> {
        let mut inner = self.lock();
        inner.ledger.read("get_channel");
        Ok(inner.channels.get(channel_id).map(FakeChannel::listed))
    }

    async fn api_key_permission(
        &self,
        _partner: &PartnerCredentials,
        _client_id: &str,
        channel_id: &str,
        _phone_number_e164: Option<&str>,
    ) -> Result<KeyPermission, Error> {
        let mut inner = self.lock();
        inner.ledger.read("api_key_permission");
        Ok(match inner.channels.get(channel_id).map(|c| c.permission) {
            Some(true) => KeyPermission::Granted,
            _ => KeyPermission::Denied,
        })
    }

    async fn generate_api_key(
        &self,
        _partner: &PartnerCredentials,
        channel_id: &str,
    ) -> Result<GeneratedApiKey, Error> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let channels = &mut inner.channels;
        let service = Service::D360Partner;
        inner.ledger.exchange(
            "api_keys",
            service,
            || {
                d360_error(
                    service,
                    403,
                    "Partner has no permission to generate API keys for this channel",
                )
            },
            || d360_error(service, 500, "HTTP 500 Internal Server Error"),
            || {
                let channel = channels
                    .get_mut(channel_id)
                    .ok_or_else(|| d360_error(service, 404, "Channel not found"))?;
                if !channel.status.eq_ignore_ascii_case("running") || !channel.permission {
                    return Err(d360_error(service, 400, "Channel is not running"));
                }
                channel.generated += 1;
                let key = format!("key-{}-{}", channel.id, channel.generated);
                // Every earlier key of the channel stops working.
                channel.current_key = Some(key.clone());
                Ok(GeneratedApiKey {
                    id: Some(format!("keyid-{}", channel.generated)),
                    api_key: SecretString::from(key),
                    address: Some("https://waba-v2.360dialog.io".into()),
                    app_id: Some("12345".into()),
                })
            },
        )
    }

    async fn health_status(&self, api_key: &SecretString) -> Result<HealthStatus, Error> {
        let mut inner = self.lock();
        inner.ledger.read("health_status");
        let valid = inner
            .channels
            .values()
            .any(|c| c.current_key.as_deref() == Some(api_key.expose_secret()));
        if valid {
            Ok(HealthStatus {
                can_send_message: Some("AVAILABLE".into()),
            })
        } else {
            Err(d360_error(Service::D360Messaging, 401, "Invalid api key"))
        }
    }
}
