-- Batch webhooks (README "Moving a portfolio"): `batch.progress` at most once per interval while
-- a batch moves, and `batch.completed` once every migration of it is terminal. They go through
-- the same outbox as migration webhooks (`webhook_deliveries`): same signing, retries, attempt
-- log and redelivery. A delivery is about exactly one migration or one batch.
--
-- Cost on the migration path: none in indexes. The new indexes are partial on
-- `batch_id IS NOT NULL`, so a migration's delivery (batch_id NULL) adds no entry to them, and
-- `batch_id` has no foreign key (no trigger per inserted migration delivery; batches are never
-- deleted, and a partner's deletion removes its deliveries through `partner_id`).
ALTER TABLE webhook_deliveries ALTER COLUMN migration_id DROP NOT NULL;
ALTER TABLE webhook_deliveries ADD COLUMN IF NOT EXISTS batch_id uuid;
-- The batch's generation the event belongs to: 1, and one more each time a retry re-opened the
-- batch after its `batch.completed` (see `batches.generation`).
ALTER TABLE webhook_deliveries ADD COLUMN IF NOT EXISTS batch_generation integer;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conname = 'webhook_deliveries_one_subject') THEN
        ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_one_subject
            CHECK ((migration_id IS NULL) <> (batch_id IS NULL)
                   AND (batch_id IS NULL) = (batch_generation IS NULL)) NOT VALID;
    END IF;
END $$;
-- Existing rows are all migration deliveries; validating takes no lock that blocks writes.
ALTER TABLE webhook_deliveries VALIDATE CONSTRAINT webhook_deliveries_one_subject;

-- A batch's events in order (`sequence` counts them per batch), as `(migration_id, sequence)`
-- does for a migration; also the read of `GET /v1/batches/{id}/webhook_deliveries`.
CREATE UNIQUE INDEX IF NOT EXISTS webhook_deliveries_batch_sequence
    ON webhook_deliveries (batch_id, sequence) WHERE batch_id IS NOT NULL;
-- Exactly one `batch.completed` per batch and generation, whatever the replicas do.
CREATE UNIQUE INDEX IF NOT EXISTS webhook_deliveries_batch_completed
    ON webhook_deliveries (batch_id, batch_generation)
    WHERE batch_id IS NOT NULL AND event_type = 'batch.completed';
-- In-order delivery: is an earlier event of the same batch still pending?
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending_per_batch
    ON webhook_deliveries (batch_id, sequence)
    WHERE batch_id IS NOT NULL AND status = 'pending';

-- The batch ticker's bookkeeping (one row lock per batch and tick; never written by the worker):
--   generation            1, +1 when a retry re-opens a batch whose batch.completed was recorded
--   completed_generation  the generation whose completion was recorded (and batch.completed
--                         enqueued when there was a URL); the batch is open while it is lower
--   webhook_sequence      the last `sequence` of the batch's deliveries
--   progress_sent_at      when the last batch.progress was recorded (the interval counts from it)
--   progress_counts       the counts it showed: the next one only when they changed
ALTER TABLE batches ADD COLUMN IF NOT EXISTS generation integer NOT NULL DEFAULT 1;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS completed_generation integer NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS webhook_sequence integer NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS progress_sent_at timestamptz;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS progress_counts jsonb;

-- Batches that finished before batch webhooks existed are not announced now.
UPDATE batches SET completed_generation = generation
 WHERE finished_at IS NOT NULL AND completed_generation = 0;

-- The ticker's scan: open batches only.
CREATE INDEX IF NOT EXISTS batches_open ON batches (id) WHERE completed_generation < generation;
