//! The end client's page over HTTP: `GET /c/{token}` (the page), `GET /c/{token}/status` (what
//! the page's script polls), `POST /c/{token}/otp` and `POST /c/{token}/resend` (its forms),
//! and the page's stylesheet and script. Every answer carries the headers of [`secure`]; every
//! refusal of a link (unknown, rotated, expired, ended) is the same neutral 404 page.

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::i18n::{self, Lang};
use super::view::{self, Notice};
use crate::api::problem::ApiError;
use crate::core::AppState;
use crate::core::auth::ClientIp;
use crate::core::client_page::{self as core, NotTaken, Opened, Refused};
use crate::core::migrations as commands;
use crate::domain::{OtpMethod, values};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(view::CSS_PATH, get(css))
        .route(view::JS_PATH, get(js))
        .route("/c/{token}", get(page))
        .route("/c/{token}/status", get(status))
        .route("/c/{token}/otp", post(submit_code))
        .route("/c/{token}/resend", post(resend))
        .layer(middleware::from_fn(secure))
}

/// The page's headers: no script but its own file, no inline style, no framing, no referrer
/// (the URL is a capability), nothing cached.
async fn secure(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    res
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", super::PAGE_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", super::PAGE_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PageQuery {
    lang: Option<String>,
    notice: Option<String>,
}

/// The page's language: `?lang=`, else `Accept-Language`, else the migration's `otp_language`.
fn language(query_lang: Option<&str>, headers: &HeaderMap, otp_language: &str) -> Lang {
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok());
    i18n::negotiate(query_lang, accept, otp_language)
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// Where the neutral page's language links go.
enum Home<'a> {
    /// The URL opened (a GET of the page).
    Here,
    /// The link's page: this answers a form sent to `…/otp` or `…/resend`, which a GET
    /// would not show.
    Page { token: &'a str },
}

/// The one answer to a link that gives nothing: 404 (or 429 for an address that keeps
/// trying), in the browser's language, naming nothing.
fn refused(
    state: &AppState,
    r: Refused,
    query_lang: Option<&str>,
    headers: &HeaderMap,
    home: Home<'_>,
) -> Response {
    let lang = language(query_lang, headers, "en_US");
    let root = state.client_page.root();
    let home = match home {
        // Percent-encoded: a malformed token must not make another path.
        Home::Page { token } => format!(
            "{root}/c/{}",
            url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
        ),
        Home::Here => String::new(),
    };
    let page = || view::link_invalid(lang, &root, &home);
    match r {
        Refused::Invalid => html(StatusCode::NOT_FOUND, page()),
        Refused::Throttled(wait) => {
            let mut res = html(StatusCode::TOO_MANY_REQUESTS, page());
            res.headers_mut()
                .insert(header::RETRY_AFTER, retry_after(wait.as_secs_f64()));
            res
        }
        Refused::Internal(e) => e.into_response(),
    }
}

fn retry_after(secs: f64) -> HeaderValue {
    HeaderValue::from(secs.ceil().max(1.0) as u64)
}

/// Renders the page of `o` with `notice`.
fn render(
    state: &AppState,
    o: &Opened,
    token: &str,
    lang: Lang,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let now = Utc::now();
    let csrf = core::csrf_token(state, o, now);
    // Back waiting for a code after one was refused (Meta may answer before the redirect
    // after the form is followed): say so, rather than "received" or nothing.
    let refused = o.row.state() == crate::domain::MigrationState::AwaitingOtp
        && o.row.error.as_ref().and_then(|e| e.get("code")) == Some(&json!("otp_invalid"));
    let notice = match notice {
        None | Some(Notice::CodeReceived) if refused => Some(Notice::CodeRejected {
            attempts_left: o.row.otp_attempts_left,
        }),
        n => n,
    };
    let mut model = view::model_from_row(
        &o.row,
        &o.partner_name,
        o.signup_url.as_deref(),
        lang,
        token,
        &csrf,
        notice,
        now,
    );
    model.root = state.client_page.root();
    html(status, view::page(&model))
}

async fn page(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    Path(token): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let o = match core::open(&state, &token, client).await {
        Ok(o) => o,
        Err(r) => return refused(&state, r, q.lang.as_deref(), &headers, Home::Here),
    };
    // A link preview (the messenger the link was sent with, an e-mail scanner) fetches the
    // page too: only a browser's navigation, or the page's script (`status`), is the client.
    if is_navigation(&headers)
        && let Err(e) = core::record_opened(&state, &o).await
    {
        return e.into_response();
    }
    let lang = language(q.lang.as_deref(), &headers, &o.row.otp_language);
    let notice = match q.notice.as_deref() {
        Some("received") => Some(Notice::CodeReceived),
        Some("sent_sms") => Some(Notice::ResendSent {
            method: OtpMethod::Sms,
        }),
        Some("sent_voice") => Some(Notice::ResendSent {
            method: OtpMethod::Voice,
        }),
        _ => None,
    };
    render(&state, &o, &token, lang, notice, StatusCode::OK)
}

/// Whether a `GET` of the page is a browser's top-level navigation (`Sec-Fetch-Mode:
/// navigate`, sent by every current browser), not a link preview's fetch nor a prefetch or
/// prerender (`Sec-Purpose: prefetch…`).
fn is_navigation(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    header("sec-fetch-mode").is_some_and(|v| v.eq_ignore_ascii_case(b"navigate"))
        && !header("sec-purpose").is_some_and(|v| v.starts_with(b"prefetch"))
}

/// What the page's script polls: an opaque version that changes whenever what the page shows
/// changes (its first poll records the opening, see [`page`]). 404 once the link gives
/// nothing.
async fn status(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    Path(token): Path<String>,
) -> Response {
    match core::open(&state, &token, client).await {
        Ok(o) => {
            // The page's script runs: a browser has the page open (one without
            // `Sec-Fetch-Mode`, whose navigation did not count).
            if let Err(e) = core::record_opened(&state, &o).await {
                return e.into_response();
            }
            axum::Json(json!({ "version": view::page_version(&o.row, o.signup_url.as_deref()) }))
                .into_response()
        }
        Err(Refused::Internal(e)) => e.into_response(),
        Err(Refused::Throttled(wait)) => {
            let mut res = StatusCode::TOO_MANY_REQUESTS.into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, retry_after(wait.as_secs_f64()));
            res
        }
        Err(Refused::Invalid) => {
            (StatusCode::NOT_FOUND, axum::Json(json!({ "valid": false }))).into_response()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CodeForm {
    csrf: String,
    code: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResendForm {
    csrf: String,
    method: String,
}

/// A form of the page: what every one carries.
trait PageForm: Default {
    fn csrf(&self) -> &str;
}

impl PageForm for CodeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl PageForm for ResendForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A form post the page may act on: the link is valid and the migration active, the post
/// comes from the page itself (`Sec-Fetch-Site`/`Origin`) with a form token it rendered.
/// Otherwise the answer to give: 404 for a link that is no longer valid, the page as it is
/// now (409) once the migration ended. An unreadable form is an empty one, refused for its
/// missing form token.
async fn acting<F: PageForm>(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    token: &str,
    q: &PageQuery,
    headers: &HeaderMap,
    form: Result<axum::Form<F>, FormRejection>,
) -> Result<(Opened, Lang, F), Response> {
    let form = form.map(|f| f.0).unwrap_or_default();
    let query_lang = q.lang.as_deref();
    let o = match core::open(state, token, client).await {
        Ok(o) => o,
        Err(r) => {
            return Err(refused(state, r, query_lang, headers, Home::Page { token }));
        }
    };
    let lang = language(query_lang, headers, &o.row.otp_language);
    if !o.can_act {
        // The migration ended while the form was open; the link still shows how (for
        // `CLIENT_PAGE_LINGER_SECONDS`): show that, with what to do now. Nothing is done.
        return Err(render(
            state,
            &o,
            token,
            lang,
            Some(Notice::NotNow),
            StatusCode::CONFLICT,
        ));
    }
    if !same_origin(headers, &state.client_page.public_base_url)
        || !core::csrf_valid(state, &o, form.csrf(), Utc::now())
    {
        // Nothing is done; the page is shown again with a fresh form.
        return Err(render(
            state,
            &o,
            token,
            lang,
            Some(Notice::FormExpired),
            StatusCode::FORBIDDEN,
        ));
    }
    // A form of the page was sent: the client has it open (a browser that neither says it
    // navigates nor runs the page's script).
    if let Err(e) = core::record_opened(state, &o).await {
        return Err(e.into_response());
    }
    Ok((o, lang, form))
}

/// Whether a form post comes from this site: a browser says so in `Sec-Fetch-Site`, or in
/// `Origin`, which must name the `Host` it was sent to or the origin of `PUBLIC_BASE_URL`
/// (the links' address: behind a proxy that rewrites `Host`, browsers without
/// `Sec-Fetch-Site` send that one); a client that sends neither is not a browser another
/// site could drive.
fn same_origin(headers: &HeaderMap, public: &url::Url) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = header("origin") else {
        return true;
    };
    let Ok(origin) = url::Url::parse(origin) else {
        // Includes `null` (a sandboxed frame, a redirect across sites).
        return false;
    };
    if origin.origin() == public.origin() {
        return true;
    }
    let port = origin.port().map(|p| format!(":{p}")).unwrap_or_default();
    header("host").is_some_and(|host| {
        origin
            .host_str()
            .is_some_and(|h| format!("{h}{port}").eq_ignore_ascii_case(host))
    })
}

/// Where the page goes after a form was taken (post/redirect/get), in the page's language.
fn back(state: &AppState, token: &str, notice: &str, lang: Lang) -> Response {
    let root = state.client_page.root();
    Redirect::to(&format!(
        "{root}/c/{token}?notice={notice}&lang={}",
        lang.code()
    ))
    .into_response()
}

/// The page's answer to a submission that was not taken.
fn not_taken(state: &AppState, o: &Opened, token: &str, lang: Lang, e: NotTaken) -> Response {
    match e {
        NotTaken::Throttled(wait) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut res = render(
                state,
                o,
                token,
                lang,
                Some(Notice::Throttled {
                    retry_after_secs: secs,
                }),
                StatusCode::TOO_MANY_REQUESTS,
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            res
        }
        NotTaken::Refused(e) => refusal(state, o, token, lang, e),
    }
}

/// A command's refusal as the page shows it.
fn refusal(state: &AppState, o: &Opened, token: &str, lang: Lang, e: ApiError) -> Response {
    match e.code {
        "otp_resend_too_soon" => {
            let at = e
                .extra
                .as_ref()
                .and_then(|x| x.get("resend_available_at"))
                .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok())
                .unwrap_or_else(Utc::now);
            let mut res = render(
                state,
                o,
                token,
                lang,
                Some(Notice::ResendTooSoon { available_at: at }),
                StatusCode::TOO_MANY_REQUESTS,
            );
            if let Some(secs) = e.retry_after {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            res
        }
        "not_found" => refused(
            state,
            Refused::Invalid,
            Some(lang.code()),
            &HeaderMap::new(),
            Home::Page { token },
        ),
        _ if e.status.is_client_error() => {
            // The migration moved on (a wrong state, the code window closed): show what to
            // do now, from a fresh read.
            render(
                state,
                o,
                token,
                lang,
                Some(Notice::NotNow),
                StatusCode::CONFLICT,
            )
        }
        _ => e.into_response(),
    }
}

async fn submit_code(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    Path(token): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    form: Result<axum::Form<CodeForm>, FormRejection>,
) -> Response {
    let (o, lang, form) = match acting(&state, client, &token, &q, &headers, form).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    // As pasted: `123-456` as WhatsApp's message shows it, spaces around it.
    let Ok(code) = values::parse_verification_code(form.code.trim()) else {
        return render(
            &state,
            &o,
            &token,
            lang,
            Some(Notice::InvalidCode),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    };
    match commands::submit_code_from_page(&state, &o, &code, client).await {
        Ok(_) => back(&state, &token, "received", lang),
        Err(e) => {
            let o = reread(&state, o).await;
            not_taken(&state, &o, &token, lang, e)
        }
    }
}

async fn resend(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
    Path(token): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
    form: Result<axum::Form<ResendForm>, FormRejection>,
) -> Response {
    let (o, lang, form) = match acting(&state, client, &token, &q, &headers, form).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let Some(method) = OtpMethod::parse(&form.method) else {
        return render(
            &state,
            &o,
            &token,
            lang,
            Some(Notice::NotNow),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    };
    match commands::resend_from_page(&state, &o, method, client).await {
        Ok(_) => back(&state, &token, &format!("sent_{}", method.as_str()), lang),
        Err(e) => {
            let o = reread(&state, o).await;
            not_taken(&state, &o, &token, lang, e)
        }
    }
}

/// The migration as it is now (a refused command may have raced a change).
async fn reread(state: &AppState, mut o: Opened) -> Opened {
    if let Ok(row) = crate::db::migrations::get(&state.pool, o.row.id, None).await {
        o.row = row;
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_post_is_from_this_site_by_its_host_or_the_public_address() {
        let public = url::Url::parse("https://migrate.example.com").unwrap();
        let from = |pairs: &[(&'static str, &str)]| same_origin(&headers(pairs), &public);
        // Behind a proxy that rewrites Host, an older browser names the public address.
        assert!(from(&[
            ("origin", "https://migrate.example.com"),
            ("host", "10.0.0.5:8080")
        ]));
        assert!(from(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ]));
        assert!(from(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://evil.example")
        ]));
        assert!(from(&[]), "not a browser: the form token decides");
        assert!(!from(&[
            ("origin", "https://evil.example"),
            ("host", "10.0.0.5:8080")
        ]));
        assert!(!from(&[
            ("origin", "http://migrate.example.com"),
            ("host", "10.0.0.5")
        ]));
        assert!(!from(&[
            ("origin", "null"),
            ("host", "migrate.example.com")
        ]));
        assert!(!from(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://migrate.example.com")
        ]));
    }
}
