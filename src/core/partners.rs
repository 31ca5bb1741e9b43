//! Partner commands shared by the API and the CLI.

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::AppState;
use crate::api::problem::ApiError;
use crate::crypto::{self, aad};
use crate::db::partners::{self as store, PartnerRow};

/// A checked partner to create.
pub struct NewPartner<'a> {
    pub name: &'a str,
    /// 360dialog partner id (ends in `PA`).
    pub d360_partner_id: &'a str,
    /// The partner's 360dialog Partner API key (stored sealed).
    pub d360_api_key: &'a str,
    pub callback_url: Option<String>,
}

/// A new partner with the secrets shown only now.
pub struct CreatedPartner {
    pub row: PartnerRow,
    /// Its first API key (only its hash is stored).
    pub api_key: SecretString,
    pub webhook_secret: SecretString,
}

/// Creates a partner and its first key in one transaction (also the sandbox's development
/// partner).
pub async fn create(state: &AppState, p: NewPartner<'_>) -> Result<CreatedPartner, ApiError> {
    let id = Uuid::now_v7();
    let secret = crypto::generate_webhook_secret();
    let row = PartnerRow {
        id,
        name: p.name.trim().to_owned(),
        d360_partner_id: p.d360_partner_id.to_owned(),
        d360_api_key_enc: state
            .cipher
            .seal(p.d360_api_key.trim(), &aad::partner_key(id)),
        callback_url: p.callback_url,
        webhook_secret_enc: state
            .cipher
            .seal(secret.expose_secret(), &aad::webhook_secret(id)),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    let (key, prefix) = crypto::generate_api_key();
    let mut tx = state.pool.begin().await?;
    let partner = store::insert(&mut *tx, &row).await?;
    let key_row = store::insert_api_key(
        &mut *tx,
        Uuid::now_v7(),
        id,
        &prefix,
        &crypto::hash_api_key(key.expose_secret()),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(partner.id = %id, key.prefix = %key_row.prefix, "partner created");
    Ok(CreatedPartner {
        row: partner,
        api_key: key,
        webhook_secret: secret,
    })
}
