//! `/docs` renders the API reference offline: the page and everything it references come from
//! the service itself, and its Content-Security-Policy lets the browser contact nothing else.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};
use serde_json::Value;
use sqlx::PgPool;
use url::Url;

use crate::helpers::{Options, TestApp};

/// Every URL an HTML page or a stylesheet makes the browser load or offer.
fn references(body: &str) -> Vec<String> {
    let attrs = Regex::new(r#"(?i)\b(?:src|href|spec-url|srcset|poster|data|action)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))"#)
        .unwrap();
    let css = Regex::new(r#"(?i)(?:url\(\s*["']?([^"')\s]+)|@import\s+["']([^"']+))"#).unwrap();
    attrs
        .captures_iter(body)
        .chain(css.captures_iter(body))
        .map(|c| {
            c.iter()
                .skip(1)
                .flatten()
                .next()
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect()
}

fn header<'a>(res: &'a reqwest::Response, name: &reqwest::header::HeaderName) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name} header", res.url()))
        .to_str()
        .unwrap()
}

/// The CSP allows `'self'` and only what Redoc needs: inline styles (styled-components),
/// `data:` images (icons in its CSS) and a `blob:` worker (search).
fn assert_csp_is_self_only(csp: &str) {
    let directives: BTreeMap<&str, BTreeSet<&str>> = csp
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let mut words = d.split_whitespace();
            (words.next().unwrap(), words.collect())
        })
        .collect();
    let set = |v: &[&'static str]| v.iter().copied().collect::<BTreeSet<&str>>();
    assert_eq!(directives["default-src"], set(&["'none'"]), "{csp}");
    assert_eq!(directives["script-src"], set(&["'self'"]), "{csp}");
    assert_eq!(directives["connect-src"], set(&["'self'"]), "{csp}");
    assert_eq!(directives["frame-ancestors"], set(&["'none'"]), "{csp}");
    for (name, sources) in &directives {
        for source in sources {
            let allowed = matches!(*source, "'self'" | "'none'")
                || (*name == "style-src" && *source == "'unsafe-inline'")
                || (*name == "img-src" && *source == "data:")
                || (*name == "worker-src" && *source == "blob:");
            assert!(allowed, "CSP {name} allows {source}: {csp}");
        }
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn docs_page_renders_offline_from_the_service_alone(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::manual()).await;
    let page_url = Url::parse(&format!("{}/docs", app.base)).unwrap();

    let res = app.http.get(page_url.clone()).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, &CONTENT_TYPE).starts_with("text/html"));
    assert_csp_is_self_only(header(&res, &CONTENT_SECURITY_POLICY));
    let html = res.text().await.unwrap();

    // Nothing absolute at all in the page: no CDN script, no web font stylesheet.
    for needle in ["http://", "https://", "fonts.googleapis", "fonts.gstatic"] {
        assert!(!html.contains(needle), "/docs contains {needle}:\n{html}");
    }
    assert!(
        !html.contains("<script>") && !html.contains("<script type"),
        "/docs has an inline script, which the CSP would block:\n{html}"
    );

    let refs = references(&html);
    assert!(
        refs.iter().any(|r| r == "/openapi.json"),
        "/docs does not point Redoc at /openapi.json: {refs:?}"
    );
    assert!(
        refs.iter().any(|r| r.ends_with(".js")) && refs.iter().any(|r| r.ends_with(".css")),
        "/docs references no script or no stylesheet: {refs:?}"
    );

    // Fetch every reference (and what stylesheets reference) from the service.
    let mut queue: Vec<(Url, String)> = refs.into_iter().map(|r| (page_url.clone(), r)).collect();
    let mut seen = BTreeSet::new();
    while let Some((from, reference)) = queue.pop() {
        let url = from.join(&reference).unwrap();
        assert_eq!(
            url.origin(),
            page_url.origin(),
            "{from} references {reference}, which is not on the service"
        );
        if !seen.insert(url.clone()) {
            continue;
        }
        let res = app.http.get(url.clone()).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        let content_type = header(&res, &CONTENT_TYPE).to_owned();
        let path = url.path().to_owned();
        if path.starts_with("/docs/assets/") {
            let cache = header(&res, &CACHE_CONTROL);
            assert!(
                cache.contains("immutable") && cache.contains("max-age=31536000"),
                "{url}: Cache-Control {cache}"
            );
        }
        let body = res.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&body);
        if path.ends_with(".js") {
            assert!(
                content_type.starts_with("text/javascript"),
                "{url}: {content_type}"
            );
            assert!(body.len() > 100_000, "{url}: only {} bytes", body.len());
            let version = format!("\"{}\"", waba_migrator::http::docs::REDOC_VERSION);
            assert!(
                text.contains("Redoc") && text.contains(&version),
                "{url} is not Redoc {version}"
            );
            // A web font the bundle would load at run time (Redoc's documented page template
            // pulls Google Fonts; the bundle itself must not).
            for needle in ["fonts.googleapis", "fonts.gstatic"] {
                assert!(!text.contains(needle), "{url} loads {needle}");
            }
        } else if path.ends_with(".css") {
            assert!(
                content_type.starts_with("text/css"),
                "{url}: {content_type}"
            );
            assert!(body.len() > 20, "{url}: only {} bytes", body.len());
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{url}"
            );
            queue.extend(references(&text).into_iter().map(|r| (url.clone(), r)));
        } else if path == "/openapi.json" {
            assert!(
                content_type.starts_with("application/json"),
                "{url}: {content_type}"
            );
            let spec: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(spec["openapi"], "3.1.0");
            assert!(spec["paths"].as_object().unwrap().len() > 10);
        } else if path == "/openapi.yaml" {
            assert!(
                content_type.starts_with("application/yaml"),
                "{url}: {content_type}"
            );
            assert!(text.starts_with("openapi: 3.1.0"), "{url}");
        } else {
            panic!("{url}: unexpected kind of reference from /docs");
        }
    }
}

#[sqlx::test(migrator = "waba_migrator::db::MIGRATOR")]
async fn docs_slash_redirects_and_unknown_assets_are_404(pool: PgPool) {
    let app = TestApp::spawn_with(pool, Options::manual()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = http
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header(&res, &LOCATION), "/docs");

    // A stale or guessed asset name is a problem+json 404, not the page.
    let res = http
        .get(format!(
            "{}/docs/assets/redoc.standalone.000000000000.js",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(header(&res, &CONTENT_TYPE).starts_with("application/problem+json"));
}
