-- Batch pacing (README "Moving a portfolio"): at most `max_in_flight` of a batch's migrations
-- are in `queued` (admitted), `prechecking`, `initiating` or `requesting_otp` at once.
--
-- A batch's migration that has no slot yet is *held*: `run_at` is the far-future sentinel
-- 9999-12-31 (`db::migrations::HELD`), so the ordinary claim, which takes rows whose `run_at`
-- has come, never sees it and pays nothing for pacing. The admission step
-- (`db::batches::admit`) locks a batch row (`FOR UPDATE SKIP LOCKED`: one replica admits a
-- batch at a time), counts the batch's migrations holding a slot and sets `run_at = now()` on
-- as many held ones as there are free slots, oldest first. (`'infinity'` would be the natural
-- value, but it does not fit the service's timestamp type.)
--
-- `paused_until`: Meta throttled one of the batch's migrations (Graph 80008 and the other
-- rate-limit codes, HTTP 429); nothing more is admitted until then. `throttles` counts those
-- answers.
ALTER TABLE batches ADD COLUMN IF NOT EXISTS paused_until timestamptz;
ALTER TABLE batches ADD COLUMN IF NOT EXISTS throttles integer NOT NULL DEFAULT 0;

-- The batch's migrations in the paced states, by `run_at`: the held ones (`run_at` = the
-- sentinel) in creation order, and before them the ones holding a slot (at most
-- `max_in_flight` per batch), so both the count of slots taken and the next held ones are a
-- short range scan, and "which batches have held migrations" is one probe per batch.
-- Partial: single migrations (batch_id NULL) and a batch's migrations past `requesting_otp`
-- add no entry, so their transitions maintain nothing more than before.
CREATE INDEX IF NOT EXISTS migrations_batch_paced ON migrations (batch_id, run_at, id)
    WHERE batch_id IS NOT NULL
      AND state IN ('queued', 'prechecking', 'initiating', 'requesting_otp');

-- Batches created before pacing: their migrations not started yet wait for a slot too.
UPDATE migrations SET run_at = '9999-12-31 00:00:00+00'
 WHERE batch_id IS NOT NULL AND state = 'queued' AND lease_token IS NULL
   AND run_at < '9999-12-31 00:00:00+00';
