//! `/docs`: a human-readable API reference rendered by Redoc from `/openapi.json`.
//!
//! Every asset is compiled into the binary (see `assets/docs/README.md`), so the page works
//! with no internet access. Assets are served under content-hashed names
//! (`/docs/assets/<stem>.<hash>.<ext>`) and cached as immutable; the page itself is
//! revalidated on every load and carries a Content-Security-Policy that lets the browser
//! contact nobody but this service.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::problem::ApiError;

/// The Content-Security-Policy of `/docs`. Redoc needs, beyond `'self'`:
/// - `style-src 'unsafe-inline'`: styled-components injects `<style>` elements at run time;
/// - `img-src data:`: a few icons are inline SVG data URLs in its CSS;
/// - `worker-src blob:`: the search index runs in a Web Worker created from a Blob.
///
/// No `'unsafe-inline'`/`'unsafe-eval'` scripts: the page has no inline script (Redoc reads
/// its options from the `<redoc>` element's attributes).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src blob:; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The vendored Redoc release (`assets/docs/redoc.standalone.js`).
pub const REDOC_VERSION: &str = "2.5.4";

const PAGE_TEMPLATE: &str = include_str!("../../assets/docs/index.html");

/// Assets the page references, by their name in the template (`{{name}}`).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "redoc.standalone.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/docs/redoc.standalone.js"),
    ),
    (
        "docs.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/docs/docs.css"),
    ),
];

struct Asset {
    /// The content-hashed file name under `/docs/assets/`.
    file: String,
    content_type: &'static str,
    body: &'static [u8],
}

static HASHED: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|&(name, content_type, body)| {
            let hash = hex::encode(&Sha256::digest(body)[..6]);
            let file = match name.rsplit_once('.') {
                Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
                None => format!("{name}.{hash}"),
            };
            Asset {
                file,
                content_type,
                body,
            }
        })
        .collect()
});

static PAGE: LazyLock<String> = LazyLock::new(|| {
    let mut page = PAGE_TEMPLATE.to_owned();
    for ((name, _, _), asset) in ASSETS.iter().zip(HASHED.iter()) {
        page = page.replace(
            &format!("{{{{{name}}}}}"),
            &format!("/docs/assets/{}", asset.file),
        );
    }
    assert!(
        !page.contains("{{"),
        "assets/docs/index.html names an unknown asset"
    );
    page
});

/// `/docs`, `/docs/` and `/docs/assets/{file}`, and `/` (to `/docs`); public, like
/// `/openapi.*`. `/docs` is in the OpenAPI document; its assets and the redirects are not.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        // Someone opening the service's address in a browser lands on the reference.
        .route("/", get(|| async { Redirect::temporary("/docs") }))
        .route("/docs/", get(|| async { Redirect::permanent("/docs") }))
        .route("/docs/assets/{file}", get(asset))
}

/// The API reference (Redoc, served from this service: works offline).
#[utoipa::path(get, path = "/docs", tag = "ops",
    responses((status = 200, description = "HTML reference page", body = String, content_type = "text/html")))]
pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE.as_str(),
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match HASHED.iter().find(|a| a.file == file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            a.body,
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "No such documentation asset. See /docs.",
        )
        .into_response(),
    }
}
