//! The one way a migration row is created or changed. Every edge (API commands, dashboard,
//! workers) goes through here, so every change renders its webhook from the same public JSON
//! ([`crate::api::webhook_body`]) in the statement that makes the change, and counts in the
//! same metrics.

use sqlx::PgConnection;

use crate::db::events::NewEvent;
use crate::db::migrations::{self as store, Guard, Lease, MigrationRow, NewMigration, Patch};
use crate::db::{self};

/// Inserts a `queued` migration with its `created` event (see [`store::insert`]).
pub async fn create(conn: &mut PgConnection, m: &NewMigration) -> Result<MigrationRow, db::Error> {
    let row = store::insert(conn, m).await?;
    crate::metrics::migration_created();
    Ok(row)
}

/// Inserts the `queued` migrations of a batch with their `created` events (see
/// [`db::batches::insert_migrations`]): the rows inserted (a number that became active
/// meanwhile is skipped).
pub async fn create_many(
    conn: &mut PgConnection,
    batch_id: uuid::Uuid,
    rows: &[(NewMigration, Option<String>)],
) -> Result<Vec<MigrationRow>, db::Error> {
    let inserted = db::batches::insert_migrations(conn, batch_id, rows).await?;
    for _ in &inserted {
        crate::metrics::migration_created();
    }
    Ok(inserted)
}

/// Applies `patch` under `guard` with `event`, its webhook and its wake-up in one statement
/// (see [`store::update`]). `None`: the guard failed and nothing was written.
pub async fn apply(
    conn: &mut PgConnection,
    row: &MigrationRow,
    guard: &Guard,
    patch: &Patch,
    lease: Lease,
    event: Option<NewEvent>,
) -> Result<Option<MigrationRow>, db::Error> {
    let moved = event
        .as_ref()
        .and_then(|ev| Some((ev.from_state.clone()?, ev.to_state.clone()?)))
        .filter(|(from, to)| from != to);
    let updated = store::update(
        conn,
        row,
        guard,
        patch,
        lease,
        event,
        &crate::api::webhook_body,
    )
    .await?;
    if let (Some(u), Some((from, _))) = (&updated, &moved) {
        crate::metrics::transition(from, u);
    }
    Ok(updated)
}
