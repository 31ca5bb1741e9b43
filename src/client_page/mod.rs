//! The end client's page (`/c/{token}`, DESIGN.md §5): what the owner of the number must do
//! now, in English, Portuguese (Brazil) or Spanish.
//!
//! [`view::model_from_row`] turns a migration row into a [`view::PageModel`], [`view::page`]
//! and [`view::link_invalid`] render HTML, [`i18n`] holds the languages and picks one per
//! request.
//!
//! The page works without JavaScript; [`PAGE_JS`] only adds live updates and countdowns.
//! Neither asset needs an inline script or style: the page is served under
//! `Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; …`.

pub mod i18n;
mod routes;
pub mod view;

pub use routes::routes;

/// The page's stylesheet, served at [`view::CSS_PATH`].
pub const PAGE_CSS: &str = include_str!("../../assets/client_page/page.css");

/// The page's script, served at [`view::JS_PATH`].
pub const PAGE_JS: &str = include_str!("../../assets/client_page/page.js");
