//! Sign-in, sign-out and the `Session` extractor.

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, extract::FromRef};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use rand::RngCore;
use serde::Deserialize;
use uuid::Uuid;

use super::{DashError, views};
use crate::core::AppState;
use crate::core::Caller;
use crate::crypto;
use crate::db;

/// The session cookie: a random id, HttpOnly, SameSite=Strict, Path=/dashboard.
pub const SESSION_COOKIE: &str = "wm_dash";
/// Double-submit token of the sign-in form (there is no session yet to hold one).
const LOGIN_COOKIE: &str = "wm_dash_login";
/// Name of the CSRF field in every dashboard form.
pub const CSRF_FIELD: &str = "csrf";
/// How long a session lasts (it also ends when its key is revoked, or at sign-out).
const SESSION_HOURS: i64 = 12;

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

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The value of cookie `name`, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(state: &AppState, name: &str, value: &str, max_age: i64) -> HeaderValue {
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
                Some(admin) if crypto::constant_time_eq(admin, &row.key_hash) => {
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

/// `GET /dashboard/login`.
pub async fn login_page(State(state): State<AppState>) -> Response {
    login_form(&state, StatusCode::OK, None)
}

fn login_form(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let token = random_token();
    let mut res = (status, views::login(&token, error)).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &token, 3600),
    );
    res
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /dashboard/login`: verifies the key like the API does and starts a session.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, DashError> {
    let Form(form) = form.map_err(|e| DashError::BadRequest(e.body_text()))?;
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !crypto::constant_time_eq(expected.as_bytes(), form.csrf.as_bytes()) {
        return Err(DashError::Forbidden(
            "The sign-in form expired or came from another site. Reload the sign-in page and try again.",
        ));
    }
    let key = form.key.trim();
    let hash = crypto::hash_api_key(key);
    let partner = if key.is_empty() {
        None
    } else if let Some(admin) = &state.admin_key_hash
        && crypto::constant_time_eq(admin, &hash)
    {
        Some(None)
    } else {
        db::partners::partner_for_key_hash(&state.pool, &hash)
            .await?
            .map(Some)
    };
    let Some(partner_id) = partner else {
        tracing::info!("dashboard sign-in refused: unknown or revoked key");
        return Ok(login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            Some(
                "That key is not valid (unknown or revoked). Use the admin key or a partner API key.",
            ),
        ));
    };
    let id = random_token();
    let csrf = random_token();
    let expires = Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    db::dashboard::create_session(
        &state.pool,
        &crypto::hash_api_key(&id),
        partner_id,
        &hash,
        &csrf,
        expires,
    )
    .await?;
    tracing::info!(partner.id = ?partner_id.map(|p: Uuid| p.to_string()), "dashboard sign-in");
    let mut res = Redirect::to("/dashboard").into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, &id, SESSION_HOURS * 3600),
    );
    h.append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, "", 0));
    Ok(res)
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /dashboard/logout`.
pub async fn logout(
    State(state): State<AppState>,
    session: Session,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, DashError> {
    let Form(form) = form.map_err(|e| DashError::BadRequest(e.body_text()))?;
    session.check_csrf(&form.csrf)?;
    db::dashboard::delete_session(&state.pool, &session.id_hash).await?;
    let mut res = Redirect::to("/dashboard/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    Ok(res)
}
