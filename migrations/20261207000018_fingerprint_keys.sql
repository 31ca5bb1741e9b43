-- The key idempotency fingerprints and client-page tokens are made with, kept sealed under
-- ENCRYPTION_KEY (one row). Made from ENCRYPTION_KEY until now, they broke once a rotation
-- removed the old key: a replayed Idempotency-Key answered 422, a client-page link 404. Kept
-- here, `reencrypt` re-seals it like any secret and they stay valid. Forward-only; never edit
-- after merge.
CREATE TABLE fingerprint_keys (
    id uuid PRIMARY KEY,
    key_enc bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
