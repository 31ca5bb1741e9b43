-- The worker's hot path (issue 7). Forward-only; never edit after merge.

-- `db::migrations::update` writes `updated_at` itself: the webhook body of a transition is
-- rendered before its statement runs, with the timestamp that statement writes. Other updates
-- (claims, heartbeats, tools) still get now() from the trigger.
CREATE OR REPLACE FUNCTION set_updated_at_unless_given() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;
DROP TRIGGER migrations_updated_at ON migrations;
CREATE TRIGGER migrations_updated_at BEFORE UPDATE ON migrations
    FOR EACH ROW EXECUTE FUNCTION set_updated_at_unless_given();

-- Every step rewrites its migration's row several times within a second (claim, intents,
-- transition), and every claim reads the `migrations_due` / `migrations_leased` partial
-- indexes, which fill with dead entries between vacuums: with the defaults (20 % of the table,
-- a one-minute naptime) a claim after a burst of 2,000 migrations walked ~38,000 buffers
-- (36 ms) to find nothing, 0.15 ms after a VACUUM. Vacuum these tables after 1 % churn, and
-- leave room in each page for HOT updates.
ALTER TABLE migrations SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 200,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE webhook_deliveries SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 200,
    autovacuum_vacuum_cost_delay = 0
);

-- Events and webhook deliveries are only ever written by the statement that updates (or
-- inserts) their migration, with the id taken from that very row, and migrations are never
-- deleted: the foreign keys to `migrations` could not fail, yet each insert ran a referential
-- check (a `SELECT ... FOR KEY SHARE` of the migration row), one per transition.
ALTER TABLE migration_events DROP CONSTRAINT migration_events_migration_id_fkey;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_migration_id_fkey;

-- Claims look for due rows that no worker holds. Leased rows (every migration in flight) stayed
-- in the due index, so each claim stepped over all of them, and over their dead entries, to
-- reach a claimable one: 0.39 ms per claim with 64 in flight. Held rows now leave the index.
DROP INDEX migrations_due;
CREATE INDEX migrations_due ON migrations (run_at, id)
    WHERE lease_token IS NULL AND state NOT IN ('completed', 'failed', 'cancelled');
