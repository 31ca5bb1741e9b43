//! A unit-test seam for the worker's steps (issue 14, item 4): in-memory fakes of the
//! `MetaApi` and `D360Api` traits ([`fakes`]) and one table test per irreversible call
//! (`request_code`, `verify_code`, `register`, `api_keys`), driving the real
//! `waba_migrator::worker::Worker` over a real PostgreSQL (one database per table, via
//! `#[sqlx::test]`).
//!
//! Each table is intent absent / present × upstream state (not yet applied / already applied)
//! × each response kind of [`fakes::Kind`], one line per case with the exact calls and applied
//! calls of the endpoint and the state the migration settles in. Besides its line, every case
//! is checked against the invariants (see `harness::Table::invariants`): an irreversible call is
//! never applied twice to a number; a maybe-applied outcome is resolved by reading upstream
//! state, or for `request_code` treated as sent, never by calling again blind; the key a
//! migration stores is the channel's only valid key and none is generated once one is stored.
//!
//! `cargo test --test steps -- --nocapture --test-threads 1` prints every case and a summary per
//! table (PostgreSQL as for the other tests: `DATABASE_URL`, or `./scripts/test.sh -E
//! 'binary(steps)'`).

mod api_keys;
mod fakes;
mod harness;
mod register;
mod request_code;
mod verify_code;
