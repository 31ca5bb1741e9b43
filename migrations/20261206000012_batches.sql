-- Portfolio moves (README "Moving a portfolio"): a batch is a named set of migrations created
-- together, paced by `max_in_flight` (read by the worker's claim in the next increment).
--
-- The batch's state is computed, not stored: `cancelled` once `cancelled_at` is set, `finished`
-- when every migration of it is terminal, `active` otherwise. A stored state would have to be
-- written by the worker on every terminal transition of a batch migration (a second row update
-- on the hot path, and a hot row shared by up to 5,000 migrations); counting the batch's
-- migrations by state on read is one index scan over at most 5,000 rows. `started_at` is when
-- the batch was created (its migrations are queued at once); `finished_at` is set by the read
-- that first sees every migration terminal (and is the newest `updated_at` of them).
CREATE TABLE IF NOT EXISTS batches (
    id             uuid PRIMARY KEY,
    partner_id     uuid NOT NULL REFERENCES partners (id),
    name           text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    max_in_flight  integer NOT NULL DEFAULT 20 CHECK (max_in_flight BETWEEN 1 AND 1000),
    callback_url   text,
    total          integer NOT NULL CHECK (total BETWEEN 0 AND 5000),
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at   timestamptz,
    finished_at    timestamptz
);

-- Listing newest first per tenant (ids are UUIDv7).
CREATE INDEX IF NOT EXISTS batches_partner ON batches (partner_id, id DESC);

-- Set once, at insert; never updated.
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS batch_id uuid REFERENCES batches (id);
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS batch_reference text;

-- A batch's migrations. Only `batch_id`, not `(batch_id, state)`: the worker updates `state`
-- on every transition, and an index on a column an UPDATE changes makes that update non-HOT
-- (a new entry in every index of the table). `batch_id` never changes after the insert, so the
-- worker's updates stay HOT; counting a batch's migrations by state reads at most 5,000 heap
-- rows through this index. Partial: single creates (batch_id NULL) add no entry.
CREATE INDEX IF NOT EXISTS migrations_batch ON migrations (batch_id, id)
    WHERE batch_id IS NOT NULL;
