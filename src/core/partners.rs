//! Partner commands shared by the API and the CLI.

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::{AppState, Caller};
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
        signup_url: None,
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

/// A partner's own record is open to it and to the admin; another partner's id is a 404 to a
/// partner key (it learns nothing about other tenants).
pub fn own_or_admin(caller: Caller, id: Uuid) -> Result<(), ApiError> {
    match caller {
        Caller::Partner(own) if own != id => Err(ApiError::not_found("partner")),
        _ => Ok(()),
    }
}

/// What `PATCH /v1/partners/{id}` changes: only the fields given (`Some(None)` removes a URL).
#[derive(Debug, Default)]
pub struct PartnerChange<'a> {
    pub name: Option<&'a str>,
    pub callback_url: Option<Option<&'a str>>,
    pub signup_url: Option<Option<&'a str>>,
}

/// `PATCH /v1/partners/{id}`: the admin changes any partner; a partner its own default
/// `callback_url` and `signup_url` (its `name` is the admin's: 403; another partner: 404).
/// A new default `callback_url` also applies to the partner's undelivered webhooks that go to
/// the default: due at once, on a fresh schedule ([`crate::db::webhooks::follow_partner_default`];
/// the dispatcher sends each where webhooks go when it is sent).
pub async fn update(
    state: &AppState,
    caller: Caller,
    id: Uuid,
    change: PartnerChange<'_>,
) -> Result<PartnerRow, ApiError> {
    own_or_admin(caller, id)?;
    if matches!(caller, Caller::Partner(_)) && change.name.is_some() {
        return Err(ApiError::forbidden(
            "A partner's name is changed with the admin key (ADMIN_API_KEY); a partner key may change its own callback_url and signup_url.",
        ));
    }
    let mut tx = state.pool.begin().await?;
    let before = match store::lock(&mut *tx, id).await {
        Ok(p) => p,
        Err(crate::db::Error::NotFound) => return Err(ApiError::not_found("partner")),
        Err(e) => return Err(e.into()),
    };
    let row = match store::update(
        &mut *tx,
        id,
        change.name,
        change.callback_url,
        change.signup_url,
    )
    .await
    {
        Ok(p) => p,
        Err(crate::db::Error::NotFound) => return Err(ApiError::not_found("partner")),
        Err(e) => return Err(e.into()),
    };
    // Only a real change: a client that sends its settings again does not restart the
    // retry schedule of what waits for a consumer that is down.
    let url_changed = row.callback_url != before.callback_url;
    let followed = if url_changed {
        let now = state.clock.now();
        let new_url = row.callback_url.is_some();
        crate::db::webhooks::follow_partner_default(&mut *tx, id, now, new_url).await?
    } else {
        0
    };
    tx.commit().await?;
    tracing::info!(
        partner.id = %id,
        by = if caller == Caller::Admin { "admin" } else { "partner" },
        callback_url_changed = url_changed,
        pending_webhooks_followed = followed,
        "partner updated"
    );
    Ok(row)
}

/// The partner's 360dialog signup link (`signup_url`), which the client page offers as the
/// button to continue an Embedded Signup migration; `None` when the partner set none.
pub async fn signup_url(state: &AppState, partner_id: Uuid) -> Result<Option<String>, ApiError> {
    match store::get(&state.pool, partner_id).await {
        Ok(p) => Ok(p.signup_url),
        Err(crate::db::Error::NotFound) => Err(ApiError::not_found("partner")),
        Err(e) => Err(e.into()),
    }
}

/// A partner's `signup_url`: an absolute `https://` URL with a host and no credentials, at
/// most 2048 characters. It is a link for the client's browser, never fetched by the service.
pub fn check_signup_url(url: &str) -> Result<String, String> {
    if url.len() > 2048 {
        return Err("at most 2048 characters".into());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    let parsed =
        url::Url::parse(url).map_err(|e| format!("must be an absolute https:// URL ({e})"))?;
    if parsed.scheme() != "https" {
        return Err("must be an absolute https:// URL".into());
    }
    match parsed.host() {
        None => return Err("must name a host".into()),
        Some(url::Host::Domain(d)) if !super::ssrf::dns_name(d) => {
            return Err(super::ssrf::UrlError::BadHost.to_string());
        }
        Some(_) => {}
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain a user name or password".into());
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::check_signup_url;

    #[test]
    fn signup_urls_are_absolute_https_links() {
        let ok = "https://hub.360dialog.com/dashboard/app/abcPA/permissions?next=x";
        assert_eq!(check_signup_url(ok).as_deref(), Ok(ok));
        for bad in [
            "http://hub.360dialog.com/x",
            "not a url",
            "/relative/path",
            "https://",
            "https://user:pw@example.com/",
            "https://example.com/a b",
            "javascript:alert(1)",
            "https://A*/",
            "https://hub_360dialog.com/",
        ] {
            assert!(check_signup_url(bad).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(
            check_signup_url(&long),
            Err("at most 2048 characters".into())
        );
    }
}
