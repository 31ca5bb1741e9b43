//! The `Session` extractor, its cookies and its CSRF token.

use axum::extract::FromRef;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;

use super::DashError;
use crate::core::AppState;
use crate::core::Caller;
use crate::crypto;
use crate::db;

/// The session cookie: a random id, HttpOnly, SameSite=Strict, Path=/dashboard.
pub const SESSION_COOKIE: &str = "wm_dash";
/// Double-submit token of the sign-in form (there is no session yet to hold one).
pub(super) const LOGIN_COOKIE: &str = "wm_dash_login";
/// Name of the CSRF field in every dashboard form.
pub const CSRF_FIELD: &str = "csrf";
/// How long a session lasts (it also ends when its key is revoked, or at sign-out).
pub(super) const SESSION_HOURS: i64 = 12;

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// "Admin" or the partner's name.
    pub who: String,
    pub csrf: String,
    id_hash: Vec<u8>,
}

impl Session {
    /// Ends this session (sign-out).
    pub async fn end(&self, pool: &sqlx::PgPool) -> Result<(), DashError> {
        db::dashboard::delete_session(pool, &self.id_hash).await?;
        Ok(())
    }

    /// Constant-time check of a form's CSRF token.
    pub fn check_csrf(&self, token: &str) -> Result<(), DashError> {
        if !token.is_empty() && crypto::constant_time_eq(token.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(DashError::Forbidden(
                "The form's security token is missing or wrong (cross-site request forgery protection). Reload the page and try again.",
            ))
        }
    }
}

pub(super) fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The value of cookie `name`, if sent.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(super) fn set_cookie(state: &AppState, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.dashboard.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are base64url")
}

impl<S> FromRequestParts<S> for Session
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = DashError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let id = cookie(&parts.headers, SESSION_COOKIE).ok_or(DashError::SignIn)?;
        let id_hash = crypto::hash_api_key(id);
        let row = db::dashboard::session(&state.pool, &id_hash)
            .await?
            .ok_or(DashError::SignIn)?;
        let (caller, who) = match row.partner_id {
            Some(p) => {
                let partner = db::partners::get(&state.pool, p).await?;
                (Caller::Partner(p), partner.name)
            }
            // An admin session lasts only while ADMIN_API_KEY is the key it signed in with.
            None => match &state.admin_key_hash {
                Some(admin)
                    if admin_key_marks(&state.cipher, admin)
                        .iter()
                        .any(|mark| crypto::constant_time_eq(mark, &row.key_hash)) =>
                {
                    (Caller::Admin, "Admin".to_owned())
                }
                _ => return Err(DashError::SignIn),
            },
        };
        Ok(Session {
            caller,
            who,
            csrf: row.csrf_token,
            id_hash,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// What an admin session stores of the admin key it signed in with (the first; any matches):
/// a keyed MAC of the key's hash, not the hash, so a copy of the database gives nothing to test
/// guesses of `ADMIN_API_KEY` against (an operator chose it; partner keys are 256 random bits,
/// and their hashes are stored with the keys anyway).
pub(super) fn admin_key_marks(cipher: &crypto::Cipher, admin_key_hash: &[u8]) -> Vec<[u8; 32]> {
    cipher.derived_secrets("dashboard admin session", admin_key_hash)
}
