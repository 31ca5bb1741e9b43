//! Sign-in and sign-out: the forms and their handlers.

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;

use super::session::{
    CsrfForm, LOGIN_COOKIE, SESSION_COOKIE, SESSION_HOURS, Session, cookie, random_token,
    set_cookie,
};
use super::{DashError, views};
use crate::api::problem::ApiError;
use crate::core::AppState;
use crate::core::auth::{self, ClientIp};
use crate::crypto;
use crate::db;

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
    ClientIp(client): ClientIp,
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
    // The same checks as the API's: failed sign-ins count against the address's limit.
    let caller = if key.is_empty() {
        Err(ApiError::unauthorized())
    } else {
        auth::authenticate(&state, client, &hash).await
    };
    let partner_id = match caller {
        Ok(caller) => caller.scope(),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            tracing::info!("dashboard sign-in refused: unknown or revoked key");
            return Ok(login_form(
                &state,
                StatusCode::UNAUTHORIZED,
                Some(
                    "That key is not valid (unknown or revoked). Use the admin key or a partner API key.",
                ),
            ));
        }
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
            let wait = e.retry_after.unwrap_or(1);
            tracing::info!("dashboard sign-in refused: too many failed attempts from the address");
            let mut res = login_form(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many invalid keys were tried from your address. Try again in {wait} s."
                )),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return Ok(res);
        }
        Err(e) => return Err(e.into()),
    };
    let id = random_token();
    let csrf = random_token();
    let expires = Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    let key_mark = match partner_id {
        Some(_) => hash.to_vec(),
        None => super::session::admin_key_marks(&state.cipher, &hash)[0].to_vec(),
    };
    db::dashboard::create_session(
        &state.pool,
        &crypto::hash_api_key(&id),
        partner_id,
        &key_mark,
        &csrf,
        expires,
    )
    .await?;
    tracing::info!(
        partner.id = partner_id.map(tracing::field::display),
        "dashboard sign-in"
    );
    let mut res = Redirect::to("/dashboard").into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, &id, SESSION_HOURS * 3600),
    );
    h.append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, "", 0));
    Ok(res)
}

/// `POST /dashboard/logout`.
pub async fn logout(
    State(state): State<AppState>,
    session: Session,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, DashError> {
    let Form(form) = form.map_err(|e| DashError::BadRequest(e.body_text()))?;
    session.check_csrf(&form.csrf)?;
    session.end(&state.pool).await?;
    let mut res = Redirect::to("/dashboard/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    Ok(res)
}
