//! Integration tests: the real service over HTTP, a real PostgreSQL (one fresh database per
//! test via `#[sqlx::test]`), and the sandbox upstreams over HTTP.

mod api_key_reads;
mod batch_pacing;
mod batch_portfolio;
mod batch_webhooks;
mod batches;
mod client_page;
mod core_commands;
mod crash;
mod dashboard;
mod docs;
mod docs_page;
mod edge;
mod errors;
mod fuzz_findings;
mod helpers;
mod isolation;
mod key_rotation;
mod live_key;
mod metrics;
mod migrations;
mod openapi;
mod paging;
mod partners;
mod scenarios;
mod schema_agreement;
mod secrets;
mod shutdown;
mod signup;
mod upstream_failures;
mod waiting;
mod webhooks;
