//! Webhooks to partners: a transactional outbox, signed (Standard Webhooks) deliveries with
//! retries for more than a day, and callback URLs that cannot reach private networks.
//!
//! * **Outbox** ([`crate::api::webhook_body`]): every state change of a migration (and every
//!   change of what a parked one waits for) writes a delivery row in the same statement as the
//!   change (`db::migrations::update`, so no transition can forget it). The body is rendered
//!   then, so it shows the migration as it was at that event, and it never changes: retries
//!   send the same bytes with the same `webhook-id`.
//! * **Order**: deliveries carry the migration's version as `sequence`, and the dispatcher
//!   only sends the oldest pending delivery of a migration, so a consumer sees one migration's
//!   events in order even across retries.
//! * **Delivery** ([`Dispatcher`]): leased claims like the migration workers; per-attempt
//!   timeout; the Standard Webhooks schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: 8
//!   attempts over 27.5 h); every attempt logged with status, latency and the next attempt.
//! * **Signing** ([`signing`]): `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>`
//!   with the partner's `whsec_` secret, plus the previous secret during a rotation's overlap.
//! * **Batches** ([`BatchTicker`]): a batch's own events, `batch.progress` (at most once per
//!   interval, only when its counts changed) and `batch.completed` (once per generation, a
//!   unique index), are written to the same outbox by a ticker, in the transaction that records
//!   them; their `sequence` counts the batch's events.
//! * **Safety** ([`crate::core::ssrf`]): only `https` URLs whose resolved addresses are all public, checked at
//!   connect time by the resolver itself, redirects not followed.

pub mod dispatcher;
pub mod signing;
pub mod ticker;

pub use dispatcher::Dispatcher;
pub use ticker::BatchTicker;
