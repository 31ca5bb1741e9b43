-- Webhooks: a transactional outbox of deliveries (one row per event, written in the same
-- transaction as the state change it reports) and the log of every delivery attempt.
-- Forward-only; never edit after merge.

-- Secret rotation: after a rotation the previous secret keeps signing (a second `v1,`
-- signature) until it expires, so consumers can switch without dropping deliveries.
ALTER TABLE partners
    ADD COLUMN webhook_secret_previous_enc        bytea,
    ADD COLUMN webhook_secret_previous_expires_at timestamptz;

CREATE TABLE webhook_deliveries (
    -- Also the `webhook-id` header: stable across retries so consumers can deduplicate.
    id               uuid PRIMARY KEY,
    partner_id       uuid NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    migration_id     uuid NOT NULL REFERENCES migrations (id) ON DELETE CASCADE,
    -- The migration's version after the transition: increases with every event of a migration.
    sequence         integer NOT NULL,
    event_type       text NOT NULL,
    -- The exact request body, rendered once when the event happened.
    payload          text NOT NULL,
    url              text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- Attempts made in total, and the position in the retry schedule (reset by a redelivery).
    attempts         integer NOT NULL DEFAULT 0,
    schedule_step    integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    lease_token      uuid,
    lease_expires_at timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (migration_id, sequence)
);
CREATE TRIGGER webhook_deliveries_updated_at BEFORE UPDATE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
-- The dispatcher's claim: pending rows by due time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
-- In-order delivery: is an earlier event of the same migration still pending?
CREATE INDEX webhook_deliveries_pending_per_migration ON webhook_deliveries (migration_id, sequence)
    WHERE status = 'pending';

CREATE TABLE webhook_delivery_attempts (
    id              bigserial PRIMARY KEY,
    delivery_id     uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    url             text NOT NULL,
    started_at      timestamptz NOT NULL,
    -- HTTP status of the consumer's answer; NULL when no answer came (timeout, refused...).
    status_code     integer,
    latency_ms      integer NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    error           text,
    -- When the next attempt is due after this one; NULL when none will follow.
    next_attempt_at timestamptz,
    UNIQUE (delivery_id, attempt)
);
