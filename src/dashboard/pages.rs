//! Page handlers: they gather data through `db` and the API's own code, then render `views`.

use std::collections::HashMap;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::DashError;
use super::session::{CsrfForm, Session};
use super::views::{self, ListParams};
use crate::api::Migration;
use crate::core::AppState;
use crate::core::Caller;
use crate::core::migrations as api;
use crate::db::{self, dashboard as store};
use crate::domain::{MigrationState, OtpMethod};

/// Rows per list page.
const PAGE_SIZE: i64 = 25;

/// Partner names by id: every partner for the admin, the own one for a partner.
pub(super) async fn partner_names(
    state: &AppState,
    session: &Session,
) -> Result<HashMap<Uuid, String>, DashError> {
    Ok(match session.caller {
        Caller::Admin => store::partner_names(&state.pool)
            .await?
            .into_iter()
            .collect(),
        Caller::Partner(p) => HashMap::from([(p, session.who.clone())]),
    })
}

/// `GET /dashboard`: counts, stuck migrations, recent failures, throughput.
pub async fn overview(
    State(state): State<AppState>,
    session: Session,
) -> Result<Response, DashError> {
    let scope = session.caller.scope();
    let stuck_minutes = state.dashboard.stuck_after.as_secs_f64() / 60.0;
    let counts = store::counts_by_state(&state.pool, scope).await?;
    let stuck = store::stuck(&state.pool, scope, stuck_minutes, 50).await?;
    let failures = store::recent_failures(&state.pool, scope).await?;
    let throughput = store::throughput_last_hour(&state.pool, scope).await?;
    let names = partner_names(&state, &session).await?;
    let data = views::Overview {
        counts: counts.into_iter().collect(),
        stuck: stuck
            .iter()
            .map(|r| (Migration::from(r), r.state_entered_at))
            .collect(),
        stuck_minutes: state.dashboard.stuck_after.as_secs() / 60,
        failures,
        throughput,
        names,
    };
    Ok(views::overview(&session, &data).into_response())
}

fn day(s: &str, field: &str) -> Result<Option<NaiveDate>, DashError> {
    if s.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| DashError::BadRequest(format!("{field} must be a date like 2026-11-26")))
}

/// `GET /dashboard/migrations`: filter by state, partner, number and creation date; keyset
/// pagination (newest first).
pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListParams>,
) -> Result<Response, DashError> {
    let state_filter = match q.state.as_str() {
        "" => None,
        s => Some(
            s.parse::<MigrationState>()
                .map_err(|_| DashError::BadRequest(format!("unknown state `{s}`")))?
                .as_str()
                .to_owned(),
        ),
    };
    let asked_partner = match q.partner_id.as_str() {
        "" => None,
        p => Some(
            Uuid::parse_str(p)
                .map_err(|_| DashError::BadRequest("partner_id must be a partner id".into()))?,
        ),
    };
    // A partner sees only its own migrations whatever it asks for.
    let partner_id = match session.caller {
        Caller::Admin => asked_partner,
        Caller::Partner(p) => Some(p),
    };
    let phone: String = q
        .phone
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '+')
        .collect();
    let from = day(&q.from, "From")?;
    let to = day(&q.to, "To")?;
    let before_id = match q.cursor.as_str() {
        "" => None,
        c => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| Uuid::from_slice(&b).ok())
                .ok_or_else(|| DashError::BadRequest("not a page cursor".into()))?,
        ),
    };
    let midnight =
        |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"));
    let filter = db::migrations::ListFilter {
        partner_id,
        state: state_filter,
        phone_contains: (!phone.is_empty()).then_some(phone),
        created_from: from.map(midnight),
        created_before: to.and_then(|d| d.succ_opt()).map(midnight),
        before_id,
        limit: PAGE_SIZE,
        ..Default::default()
    };
    let mut rows = db::migrations::list(&state.pool, &filter).await?;
    let next_cursor = if rows.len() as i64 > PAGE_SIZE {
        rows.truncate(PAGE_SIZE as usize);
        rows.last().map(|r| URL_SAFE_NO_PAD.encode(r.id.as_bytes()))
    } else {
        None
    };
    let names = partner_names(&state, &session).await?;
    let data = views::List {
        rows: rows
            .iter()
            .map(|r| (Migration::from(r), r.state_entered_at))
            .collect(),
        next_cursor,
        names,
    };
    Ok(views::list(&session, &q, &data).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct DetailParams {
    /// Set by the redirect after a successful action.
    #[serde(default)]
    pub done: String,
}

/// Renders the detail page, optionally with the outcome of an action.
async fn render_detail(
    state: &AppState,
    session: &Session,
    id: Uuid,
    notice: Option<String>,
    alert: Option<String>,
    status: StatusCode,
) -> Result<Response, DashError> {
    let row = api::fetch(state, session.caller, id).await?;
    let events = db::events::list(&state.pool, id).await?;
    let deliveries = db::webhooks::list_for_migration(&state.pool, id).await?;
    let attempts = db::webhooks::attempts_for_migration(&state.pool, id).await?;
    let partner = match session.caller {
        Caller::Admin => db::partners::get(&state.pool, row.partner_id).await?.name,
        Caller::Partner(_) => session.who.clone(),
    };
    let data = views::Detail {
        m: crate::core::client_page::with_page(state, &row).await?,
        can_rotate_link: crate::core::client_page::replaceable(
            &state.client_page,
            &row,
            Utc::now(),
        )
        .is_ok(),
        in_state_since: row.state_entered_at,
        partner,
        events,
        deliveries,
        attempts,
        notice,
        alert,
    };
    Ok((status, views::detail(session, &data)).into_response())
}

/// `GET /dashboard/migrations/{id}`.
pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<DetailParams>,
) -> Result<Response, DashError> {
    let id = Uuid::parse_str(&id).map_err(|_| DashError::NotFound)?;
    let notice = match q.done.as_str() {
        "retry" => Some("Retried: the migration resumes from the step that failed.".to_owned()),
        "cancel" => Some("Cancelled.".to_owned()),
        "resend" => Some("A new verification code will be requested.".to_owned()),
        "rotate_link" => {
            Some("The client page link was replaced; the previous one no longer works.".to_owned())
        }
        _ => None,
    };
    render_detail(&state, &session, id, notice, None, StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
pub struct ResendForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub method: String,
}

/// Which action a POST asked for.
enum Action {
    Retry,
    Cancel,
    Resend(Option<OtpMethod>),
    RotateLink,
}

/// Runs an action through the API's code; success redirects to the detail page (so a reload
/// does not repeat it), a refusal (e.g. wrong state, resend too soon) re-renders the page with
/// the reason.
async fn act(
    state: &AppState,
    session: &Session,
    id: &str,
    action: Action,
) -> Result<Response, DashError> {
    let id = Uuid::parse_str(id).map_err(|_| DashError::NotFound)?;
    let (name, result) = match action {
        Action::Retry => (
            "retry",
            api::retry(state, session.caller, id, api::Source::Dashboard).await,
        ),
        Action::Cancel => (
            "cancel",
            api::cancel(state, session.caller, id, api::Source::Dashboard).await,
        ),
        Action::Resend(m) => (
            "resend",
            api::resend(state, session.caller, id, m, api::Source::Dashboard).await,
        ),
        Action::RotateLink => (
            "rotate_link",
            api::rotate_client_page(state, session.caller, id)
                .await
                .map(|(row, _)| row),
        ),
    };
    match result {
        Ok(_) => {
            tracing::info!(migration.id = %id, action = name, by = %session.who, "dashboard action");
            Ok(Redirect::to(&format!("/dashboard/migrations/{id}?done={name}")).into_response())
        }
        Err(e) if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND => {
            render_detail(state, session, id, None, Some(e.detail.clone()), e.status).await
        }
        Err(e) => Err(e.into()),
    }
}

fn form<T>(f: Result<Form<T>, FormRejection>) -> Result<T, DashError> {
    f.map(|Form(t)| t)
        .map_err(|e| DashError::BadRequest(e.body_text()))
}

/// `POST /dashboard/migrations/{id}/retry`.
pub async fn retry(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, DashError> {
    session.check_csrf(&form(f)?.csrf)?;
    act(&state, &session, &id, Action::Retry).await
}

/// `POST /dashboard/migrations/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, DashError> {
    session.check_csrf(&form(f)?.csrf)?;
    act(&state, &session, &id, Action::Cancel).await
}

/// `POST /dashboard/migrations/{id}/client_page/rotate`.
pub async fn rotate_link(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, DashError> {
    session.check_csrf(&form(f)?.csrf)?;
    act(&state, &session, &id, Action::RotateLink).await
}

/// `POST /dashboard/migrations/{id}/resend`.
pub async fn resend(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    f: Result<Form<ResendForm>, FormRejection>,
) -> Result<Response, DashError> {
    let f = form(f)?;
    session.check_csrf(&f.csrf)?;
    let method = match f.method.as_str() {
        "" => None,
        m => Some(
            OtpMethod::parse(m)
                .ok_or_else(|| DashError::BadRequest("method must be sms or voice".into()))?,
        ),
    };
    act(&state, &session, &id, Action::Resend(method)).await
}
