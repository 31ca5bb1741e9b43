//! Plumbing shared by the reqwest clients: URL building that keeps the base path, sending a
//! request and reading its whole body with the transport-error classification of [`Error`],
//! `Retry-After` parsing, and scrubbing of upstream text.
//!
//! Nothing here formats a request body or a header value: secrets travel only in the body
//! (OTP code, PIN) or in sensitive-marked headers (token, API keys).

use std::time::{Duration, Instant};

use metrics::{counter, histogram};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use url::Url;

use super::{Error, Service};

/// Longest upstream text (error message, non-JSON body) we keep, in characters.
pub(super) const MAX_MESSAGE_CHARS: usize = 500;

/// A fully received upstream response.
pub(super) struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// `base` with `segments` appended as path segments (each percent-encoded, so an id can never
/// introduce `/`, `..` or a query). The base path is kept: `https://h/api/v2` + `["a"]` is
/// `https://h/api/v2/a`, with or without a trailing slash on the base. Any query or fragment of
/// the base is dropped.
pub(super) fn build_url(service: Service, base: &Url, segments: &[&str]) -> Result<Url, Error> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut path = url.path_segments_mut().map_err(|()| Error::Transport {
            service,
            message: format!("base URL {base} cannot carry a path"),
            maybe_applied: false,
        })?;
        path.pop_if_empty();
        path.extend(segments);
    }
    Ok(url)
}

/// Reads (GETs) are safe to repeat: a transport error, a 5xx or a 429 asking for at most
/// [`QUICK_RETRY_MAX_WAIT`] is retried this many extra times within the call, so one flaky
/// page does not fail a whole multi-page listing. Writes are never retried here: the worker
/// decides, after reading upstream state.
const GET_RETRIES: u32 = 2;
const QUICK_RETRY_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends a request and reads the whole response body (GETs with quick retries, see
/// [`GET_RETRIES`]).
///
/// * The request could not be built or the connection could not be established:
///   [`Error::Transport`] with `maybe_applied: false`.
/// * Anything after that (timeout, reset, incomplete message, body read error):
///   [`Error::Transport`] with `maybe_applied: true`.
///
/// Any status is returned as is; callers map non-2xx statuses to [`Error::Api`].
pub(super) async fn send(
    http: &reqwest::Client,
    service: Service,
    method: Method,
    url: Url,
    headers: HeaderMap,
    json_body: Option<&serde_json::Value>,
) -> Result<RawResponse, Error> {
    let retries = if method == Method::GET {
        GET_RETRIES
    } else {
        0
    };
    let mut attempt = 0;
    loop {
        let result = send_once(
            http,
            service,
            method.clone(),
            url.clone(),
            headers.clone(),
            json_body,
        )
        .await;
        let wait = match &result {
            Err(Error::Transport { .. }) => Some(std::time::Duration::ZERO),
            Ok(r) if r.status.is_server_error() => Some(std::time::Duration::ZERO),
            Ok(r) if r.status == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                Some(retry_after_header(&r.headers).unwrap_or_default())
            }
            _ => None,
        };
        match wait {
            Some(w) if attempt < retries && w <= QUICK_RETRY_MAX_WAIT => {
                attempt += 1;
                let backoff = std::time::Duration::from_millis(100 * 3u64.pow(attempt - 1));
                tokio::time::sleep(w.max(backoff)).await;
            }
            _ => return result,
        }
    }
}

async fn send_once(
    http: &reqwest::Client,
    service: Service,
    method: Method,
    url: Url,
    headers: HeaderMap,
    json_body: Option<&serde_json::Value>,
) -> Result<RawResponse, Error> {
    let path = url.path().to_owned();
    let mut request = http.request(method.clone(), url).headers(headers);
    if let Some(body) = json_body {
        // Serialising a `Value` cannot fail; never format the body (it may carry a PIN or code).
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        request = request
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(bytes);
    }

    let started = Instant::now();
    let endpoint = endpoint_label(method.as_str(), &path);
    let service_label = service.label();
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            record_exchange(service_label, endpoint, 0, None, started.elapsed());
            let err = transport_error(service, e, false);
            tracing::debug!(
                method = %method,
                path = %path,
                latency_ms = started.elapsed().as_millis() as u64,
                error = %err,
                "upstream call failed"
            );
            return Err(err);
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = match response.bytes().await {
        Ok(b) => b.to_vec(),
        Err(e) => {
            record_exchange(
                service_label,
                endpoint,
                status.as_u16(),
                None,
                started.elapsed(),
            );
            let err = transport_error(service, e, true);
            tracing::debug!(
                method = %method,
                path = %path,
                status = status.as_u16(),
                latency_ms = started.elapsed().as_millis() as u64,
                error = %err,
                "upstream response body could not be read"
            );
            return Err(err);
        }
    };
    tracing::debug!(
        method = %method,
        path = %path,
        status = status.as_u16(),
        latency_ms = started.elapsed().as_millis() as u64,
        "upstream call"
    );
    record_exchange(
        service_label,
        endpoint,
        status.as_u16(),
        (!status.is_success())
            .then(|| upstream_error_code(&body))
            .flatten(),
        started.elapsed(),
    );
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// The numeric error code of an error body, for metrics: Graph `error.code`, or 360dialog
/// `meta.error_data.code`.
fn upstream_error_code(body: &[u8]) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/code")
        .or_else(|| v.pointer("/meta/error_data/code"))
        .and_then(|c| c.as_i64().or_else(|| c.as_str()?.parse().ok()))
}

/// Maps a reqwest error to [`Error::Transport`]. `response_started` is true once a response
/// head arrived (the request was certainly delivered).
pub(super) fn transport_error(
    service: Service,
    mut e: reqwest::Error,
    response_started: bool,
) -> Error {
    // Our URLs carry no secret, but the channel filter carries a phone number: keep only the path.
    if let Some(url) = e.url_mut() {
        url.set_query(None);
    }
    let maybe_applied = if response_started {
        true
    } else {
        // Connect errors (including connect timeouts) and builder errors: nothing was sent.
        // Everything else (total timeout, reset, incomplete message, ...) may have been applied.
        !(e.is_builder() || e.is_connect())
    };
    let kind = if e.is_connect() {
        "connect error"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_builder() {
        "invalid request"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request error"
    };
    Error::Transport {
        service,
        message: format!("{kind}: {}", error_chain(&e)),
        maybe_applied,
    }
}

/// `e` and its sources, `: `-separated, without repeating a source already contained in the
/// text so far (hyper and reqwest often repeat each other).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    truncate(&text, MAX_MESSAGE_CHARS)
}

/// `Retry-After` as delta-seconds or HTTP-date (a date in the past gives zero).
pub(super) fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is valid RFC 2822; the obsolete RFC 850
    // and asctime forms are not accepted (nobody sends them).
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// At most `max` characters of `text`, whitespace runs collapsed, with `…` when cut.
pub(super) fn truncate(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max {
        return collapsed;
    }
    let mut cut: String = collapsed.chars().take(max).collect();
    cut.push('…');
    cut
}

/// Replaces every occurrence of each (non-empty) secret in `text` by `[redacted]`. Upstreams are
/// not known to echo our credentials, but an error message is shown to users and logged.
pub(super) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(secret) {
            out = out.replace(secret, "[redacted]");
        }
    }
    out
}

/// An upstream's error text as shown to users: `secrets` removed, then cut to
/// [`MAX_MESSAGE_CHARS`] (in this order, so that no part of a secret is left at the cut).
pub(super) fn message(text: &str, secrets: &[&str]) -> String {
    truncate(&scrub(text, secrets), MAX_MESSAGE_CHARS)
}

/// Short description of a non-JSON (or empty) error body, `secrets` removed.
pub(super) fn text_message(status: StatusCode, body: &[u8], secrets: &[&str]) -> String {
    let text = scrub(&String::from_utf8_lossy(body), secrets);
    let text = truncate(&text, 200);
    let reason = status.canonical_reason().unwrap_or("");
    match (text.is_empty(), reason.is_empty()) {
        (true, true) => format!("HTTP {}", status.as_u16()),
        (true, false) => format!("HTTP {} {reason}", status.as_u16()),
        (false, _) => format!("HTTP {}: {text}", status.as_u16()),
    }
}

/// A JSON value as a string id: strings as is, numbers in decimal; anything else is `None`.
pub(super) fn value_as_id(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A JSON value as an integer: numbers and numeric strings.
pub(super) fn value_as_i64(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A non-empty string field of a JSON object.
pub(super) fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Helpers for the clients' tests.
#[cfg(test)]
pub(super) mod test_support {
    use std::time::Duration;

    /// A base URL on which nothing listens (connect error: connection refused).
    pub(crate) fn closed_port_url() -> url::Url {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap()
    }

    /// A reqwest client as the service builds one, with a short total timeout.
    pub(crate) fn http_client(timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder().timeout(timeout).build().unwrap()
    }

    /// Serves one connection: reads the request head, answers `response` verbatim, closes.
    /// For responses wiremock cannot produce (a body cut short).
    pub(crate) async fn raw_server(response: &'static [u8]) -> url::Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Every connection gets the same answer (GETs are retried).
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0_u8; 16 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = socket.read(&mut buf).await else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                socket.write_all(response).await.ok();
                socket.shutdown().await.ok();
            }
        });
        url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_url_keeps_base_path() {
        let s = Service::D360Partner;
        for base in ["https://h.example/api/v2", "https://h.example/api/v2/"] {
            let url = build_url(s, &Url::parse(base).unwrap(), &["partners", "p1"]).unwrap();
            assert_eq!(url.as_str(), "https://h.example/api/v2/partners/p1");
        }
        let url = build_url(s, &Url::parse("https://h.example").unwrap(), &["a", "b"]).unwrap();
        assert_eq!(url.as_str(), "https://h.example/a/b");
        // Segments are encoded, never interpreted.
        let url = build_url(s, &Url::parse("https://h.example/x").unwrap(), &["../y?z"]).unwrap();
        assert_eq!(url.path(), "/x/..%2Fy%3Fz");
        assert!(url.query().is_none());
        assert!(build_url(s, &Url::parse("mailto:a@b").unwrap(), &["x"]).is_err());
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_header(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after_header(&h), Some(Duration::from_secs(120)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after_header(&h), Some(Duration::ZERO));
        let future = (chrono::Utc::now() + chrono::Duration::seconds(90))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&future).unwrap());
        let d = retry_after_header(&h).unwrap();
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after_header(&h), None);
    }

    #[test]
    fn truncate_and_scrub() {
        assert_eq!(truncate("a  b\n c", 10), "a b c");
        assert_eq!(truncate("éééé", 2), "éé…");
        assert_eq!(
            scrub("bad token abc123 x", &["abc123", ""]),
            "bad token [redacted] x"
        );
        assert_eq!(
            text_message(StatusCode::INTERNAL_SERVER_ERROR, b"", &[]),
            "HTTP 500 Internal Server Error"
        );
        assert_eq!(
            text_message(StatusCode::BAD_GATEWAY, b"<h1>Bad</h1>", &[]),
            "HTTP 502: <h1>Bad</h1>"
        );
        // A secret where the text is cut leaves no part of itself behind.
        let secret = "sk_live_0123456789abcdef";
        let cut_inside = |max: usize| format!("{} {secret} and more", "x".repeat(max - 8));
        let shown = message(&cut_inside(MAX_MESSAGE_CHARS), &[secret]);
        assert!(!shown.contains("sk_"), "{shown}");
        let shown = text_message(
            StatusCode::BAD_GATEWAY,
            cut_inside(200).as_bytes(),
            &[secret],
        );
        assert!(!shown.contains("sk_"), "{shown}");
    }
}

/// Records one upstream HTTP exchange (described in `crate::metrics`); `status` 0 when no response came.
fn record_exchange(
    service: &'static str,
    endpoint: String,
    status: u16,
    error_code: Option<i64>,
    took: Duration,
) {
    histogram!(
        "waba_upstream_request_duration_seconds",
        "service" => service,
        "endpoint" => endpoint.clone()
    )
    .record(took.as_secs_f64());
    counter!(
        "waba_upstream_requests_total",
        "service" => service,
        "endpoint" => endpoint,
        "status" => status.to_string(),
        "error_code" => error_code.map(|c| c.to_string()).unwrap_or_default()
    )
    .increment(1);
}

/// An upstream URL path as a low-cardinality label: ids become `:id`. Numeric segments are
/// Meta ids; the segment after `partners`, `channels` or `clients` is a 360dialog id.
fn endpoint_label(method: &str, path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    out.push_str(method);
    out.push(' ');
    let mut previous = "";
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        let is_id = (seg.chars().all(|c| c.is_ascii_digit()))
            || matches!(previous, "partners" | "channels" | "clients");
        out.push_str(if is_id { ":id" } else { seg });
        previous = seg;
    }
    if out.ends_with(' ') {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod label_tests {
    use super::endpoint_label;

    #[test]
    fn ids_do_not_become_labels() {
        assert_eq!(
            endpoint_label("POST", "/v23.0/1234567890/request_code"),
            "POST /v23.0/:id/request_code"
        );
        assert_eq!(
            endpoint_label("GET", "/api/v2/partners/srMmoqPA/channels/Xy1Z/api_keys"),
            "GET /api/v2/partners/:id/channels/:id/api_keys"
        );
        assert_eq!(
            endpoint_label("GET", "/health_status"),
            "GET /health_status"
        );
        assert_eq!(endpoint_label("GET", "/"), "GET /");
    }
}
