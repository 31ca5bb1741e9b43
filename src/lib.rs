//! waba-migrator: migrates WhatsApp Business phone numbers from another provider into
//! 360dialog, one durable job per number in PostgreSQL.
//!
//! Layout (README, "Architecture"; enforced by `tests/architecture.rs`): [`domain`] is pure;
//! [`db`] (SQL) and [`clients`] (Meta Graph API, 360dialog) import only `domain`; [`api`] is the
//! public JSON; [`core`](crate::core) holds the commands and the one transition step; [`http`], [`dashboard`],
//! [`worker`], [`webhooks`] and [`cli`] are edges that call the core; [`app`] wires them.
//! [`sandbox`] simulates the upstreams; [`embedded_pg`] runs a private PostgreSQL for `serve`
//! without `DATABASE_URL`.
//!
//! Error policy: each layer has its own `thiserror` type (`db::Error`, `clients::Error`,
//! domain `MigrationError`), converted at the boundary into `api::problem::ApiError`
//! (problem+json, opaque 5xx bodies, cause logged once). `anyhow` only in `main`, the CLI and
//! the worker's top-level loop.

pub mod api;
pub mod app;
pub mod cli;
pub mod client_page;
pub mod clients;
pub mod config;
pub mod core;
pub mod crypto;
pub mod crypto_rotation;
pub mod dashboard;
pub mod db;
pub mod domain;
pub mod embedded_pg;
pub mod http;
pub mod metrics;
pub mod precheck;
pub mod sandbox;
pub mod shutdown;
pub mod telemetry;
pub mod webhooks;
pub mod worker;

pub use app::{App, Settings};
pub use core::{AppState, Upstreams};
