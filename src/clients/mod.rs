//! Clients for the upstream APIs: the Meta Graph API (WhatsApp Business Management + Cloud API
//! registration endpoints) and 360dialog (Partner API on the Hub, Messaging API on waba-v2).
//!
//! One trait per external API so the worker can be unit-tested with doubles; the reqwest
//! implementations live in [`meta`] and [`d360`]. Every method returns [`Error`], which carries
//! the retry classification the worker consults (it never looks at HTTP statuses itself).

use async_trait::async_trait;
use secrecy::SecretString;

pub mod d360;
mod http;
pub mod meta;

pub use d360::D360Client;
pub use meta::MetaClient;

pub use crate::domain::upstream::{
    BusinessInfo, CallError as Error, Channel, CodeMethod, HealthStatus, KeyPermission,
    PhoneNumber, Service, SubscribedApp, Template, TemplateMigration, UpstreamError, Waba,
};

/// The Meta Graph API as the migration uses it. Ids are Graph ids (numeric strings).
#[async_trait]
pub trait MetaApi: Send + Sync {
    /// `GET /me?fields=id`: the id of the user (a system user) the access token belongs to;
    /// Graph error 190 when the token is invalid or expired.
    async fn token_owner(&self) -> Result<String, Error>;
    /// `GET /{waba-id}?fields=...`
    async fn get_waba(&self, waba_id: &str) -> Result<Waba, Error>;
    /// The WABA and phone-number fields this Graph version answered "nonexisting field" for:
    /// reads leave them out from then on, so they come back absent, not unreported. A check
    /// that needs one cannot be made (see `precheck::evaluate`).
    fn unavailable_fields(&self) -> Vec<String> {
        Vec::new()
    }
    /// `GET /{waba-id}/phone_numbers?fields=...`, following `paging.cursors.after` to the end.
    async fn list_phone_numbers(&self, waba_id: &str) -> Result<Vec<PhoneNumber>, Error>;
    /// `GET /{waba-id}/phone_numbers?fields=...&filtering=[{"field":"display_phone_number",
    /// "operator":"EQUAL","value":"+1 631-555-5555"}]`, one page: the numbers Graph answers for
    /// the number `e164` (written as Meta displays it), or `None` when Graph refuses the filter
    /// (error code 100). Meta documents `filtering` on this edge only for `account_mode` (beta),
    /// so the answer must be checked before it is believed (see `precheck::gather`).
    async fn find_phone_numbers(
        &self,
        waba_id: &str,
        e164: &str,
    ) -> Result<Option<Vec<PhoneNumber>>, Error>;
    /// `GET /{phone-number-id}?fields=...`
    async fn get_phone_number(&self, phone_number_id: &str) -> Result<PhoneNumber, Error>;
    /// `GET /{waba-id}/subscribed_apps`
    async fn list_subscribed_apps(&self, waba_id: &str) -> Result<Vec<SubscribedApp>, Error>;
    /// `GET /{waba-id}/message_templates?fields=id,name,language,status,category,quality_score`, all pages.
    async fn list_templates(&self, waba_id: &str) -> Result<Vec<Template>, Error>;
    /// `POST /{dest-waba-id}/phone_numbers` `{cc, phone_number, migrate_phone_number: true}`;
    /// returns the new phone number id.
    async fn start_migration(
        &self,
        destination_waba_id: &str,
        country_code: &str,
        national_number: &str,
    ) -> Result<String, Error>;
    /// `POST /{phone-number-id}/request_code` `{code_method, language}`.
    async fn request_code(
        &self,
        phone_number_id: &str,
        method: CodeMethod,
        language: &str,
    ) -> Result<(), Error>;
    /// `POST /{phone-number-id}/verify_code` `{code}`.
    async fn verify_code(&self, phone_number_id: &str, code: &SecretString) -> Result<(), Error>;
    /// `POST /{phone-number-id}/register` `{messaging_product: "whatsapp", pin}`.
    async fn register(&self, phone_number_id: &str, pin: &SecretString) -> Result<(), Error>;
    /// `POST /{dest-waba-id}/migrate_message_templates` `{source_waba_id, page_number[, template_ids]}`.
    async fn migrate_templates(
        &self,
        destination_waba_id: &str,
        source_waba_id: &str,
        page_number: u32,
        template_ids: Option<&[String]>,
    ) -> Result<TemplateMigration, Error>;
}

/// A partner's 360dialog credentials.
#[derive(Clone)]
pub struct PartnerCredentials {
    /// 360dialog partner id (ends in `PA`).
    pub partner_id: String,
    /// Partner API key, sent as `X-API-Key`.
    pub api_key: SecretString,
}

impl std::fmt::Debug for PartnerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerCredentials")
            .field("partner_id", &self.partner_id)
            .field("api_key", &"[redacted]")
            .finish()
    }
}

/// A freshly generated channel API key. The key is shown once by 360dialog and revokes every
/// earlier key of the channel.
pub struct GeneratedApiKey {
    pub id: Option<String>,
    pub api_key: SecretString,
    /// Messaging API host the key is for, e.g. `https://waba-v2.360dialog.io`.
    pub address: Option<String>,
    pub app_id: Option<String>,
}

impl std::fmt::Debug for GeneratedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedApiKey")
            .field("id", &self.id)
            .field("api_key", &"[redacted]")
            .field("address", &self.address)
            .finish()
    }
}

/// 360dialog: Partner API (`X-API-Key`) and Messaging API (`D360-API-KEY`).
#[async_trait]
pub trait D360Api: Send + Sync {
    /// `GET /partners/{pid}/channels?filters={"setup_info.phone_number": "<digits>"}` (or
    /// `"+<digits>"`: see [`d360`]); the channel of that number, if 360dialog lists one. Of
    /// several, one on `waba_id` comes first, then one whose WABA is not shown, then other
    /// WABAs', and one on `leaving_waba_id` (the WABA the number leaves) last; within each, a
    /// `running` one, then the newest. A terminated channel (`terminated_at` set) is skipped.
    async fn find_channel_by_number(
        &self,
        partner: &PartnerCredentials,
        phone_number_e164: &str,
        waba_id: &str,
        leaving_waba_id: &str,
    ) -> Result<Option<Channel>, Error>;
    /// `GET /partners/{pid}/channels?filters={"id": "<channel id>"}` (with the phone number
    /// filter too, when given). A terminated channel counts as not listed.
    async fn get_channel(
        &self,
        partner: &PartnerCredentials,
        channel_id: &str,
        phone_number_e164: Option<&str>,
    ) -> Result<Option<Channel>, Error>;
    /// `GET /partners/{pid}/clients/{client_id}/shared_client_numbers`: whether the partner may
    /// generate API keys for the channel `channel_id` of the number `phone_number_e164` (an entry
    /// is matched by either).
    async fn api_key_permission(
        &self,
        partner: &PartnerCredentials,
        client_id: &str,
        channel_id: &str,
        phone_number_e164: Option<&str>,
    ) -> Result<KeyPermission, Error>;
    /// `POST /partners/{pid}/channels/{channel_id}/api_keys` (non-idempotent: revokes earlier keys).
    async fn generate_api_key(
        &self,
        partner: &PartnerCredentials,
        channel_id: &str,
    ) -> Result<GeneratedApiKey, Error>;
    /// `GET /health_status` with `D360-API-KEY`, to prove a key works.
    async fn health_status(&self, api_key: &SecretString) -> Result<HealthStatus, Error>;
}
