-- Initial schema: tenants, their API keys, migrations (the job rows), the append-only event
-- trail and idempotency keys. Forward-only; never edit after merge.

CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE partners (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    d360_partner_id    text NOT NULL,
    -- 360dialog Partner API key, AES-256-GCM under ENCRYPTION_KEY.
    d360_api_key_enc   bytea NOT NULL,
    callback_url       text,
    -- Standard Webhooks signing secret (whsec_...), AES-256-GCM under ENCRYPTION_KEY.
    webhook_secret_enc bytea NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER partners_updated_at BEFORE UPDATE ON partners
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Our own API keys for partners: only a SHA-256 of the random token is stored.
CREATE TABLE partner_api_keys (
    id          uuid PRIMARY KEY,
    partner_id  uuid NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX partner_api_keys_partner ON partner_api_keys (partner_id);

CREATE TABLE migrations (
    id                      uuid PRIMARY KEY,
    partner_id              uuid NOT NULL REFERENCES partners (id),
    state                   text NOT NULL CHECK (state IN (
                                'queued', 'prechecking', 'initiating', 'requesting_otp',
                                'awaiting_otp', 'verifying_otp', 'registering',
                                'copying_templates', 'awaiting_channel', 'generating_api_key',
                                'completed', 'failed', 'cancelled')),
    flow                    text NOT NULL CHECK (flow IN ('otp', 'embedded_signup')),
    phone_number            text NOT NULL,
    source_waba_id          text NOT NULL,
    destination_waba_id     text NOT NULL,
    meta_business_id        text NOT NULL,
    phone_number_id         text,
    channel_id              text,
    d360_client_id          text,

    otp_method              text NOT NULL CHECK (otp_method IN ('sms', 'voice')),
    otp_language            text NOT NULL,
    otp_requested_at        timestamptz,
    otp_resend_available_at timestamptz,
    otp_attempts_left       integer NOT NULL,
    otp_expires_at          timestamptz,
    -- The submitted code while it waits for verifying_otp; cleared once used.
    otp_code_enc            bytea,
    -- Two-step verification PIN set at registration.
    pin_enc                 bytea NOT NULL,

    precheck                jsonb,
    templates               jsonb,

    api_key_enc             bytea,
    api_key_id              text,
    api_key_address         text,
    api_key_generated_at    timestamptz,
    api_key_verified_at     timestamptz,

    -- Intents recorded before non-idempotent upstream calls and observations that
    -- steps keep between attempts (see worker::steps).
    step_memo               jsonb NOT NULL DEFAULT '{}',
    error                   jsonb,
    failed_step             text,
    metadata                jsonb NOT NULL DEFAULT '{}',
    callback_url            text,

    -- Job columns: when the current step may run next, how many times it was tried,
    -- and the lease of the worker running it.
    run_at                  timestamptz NOT NULL DEFAULT now(),
    attempt                 integer NOT NULL DEFAULT 0,
    lease_token             uuid,
    lease_owner             text,
    lease_expires_at        timestamptz,
    state_entered_at        timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every transition; the event sequence number.
    version                 integer NOT NULL DEFAULT 0,

    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    completed_at            timestamptz
);
CREATE TRIGGER migrations_updated_at BEFORE UPDATE ON migrations
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- One active migration per phone number.
CREATE UNIQUE INDEX migrations_one_active_per_number ON migrations (phone_number)
    WHERE state NOT IN ('completed', 'failed', 'cancelled');
-- The claim path: non-terminal rows by due time (parked rows are due only at their deadline).
CREATE INDEX migrations_due ON migrations (run_at, id)
    WHERE state NOT IN ('completed', 'failed', 'cancelled');
-- Listing newest first per tenant (ids are UUIDv7, so id order is creation order).
CREATE INDEX migrations_partner_id ON migrations (partner_id, id DESC);
CREATE INDEX migrations_phone_number ON migrations (phone_number, id DESC);

CREATE TABLE migration_events (
    id            bigserial PRIMARY KEY,
    migration_id  uuid NOT NULL REFERENCES migrations (id) ON DELETE CASCADE,
    seq           integer NOT NULL,
    type          text NOT NULL,
    from_state    text,
    to_state      text,
    data          jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (migration_id, seq)
);

CREATE TABLE idempotency_keys (
    partner_id     uuid NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    key            text NOT NULL,
    request_hash   bytea NOT NULL,
    status_code    integer,
    response       jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, key)
);
