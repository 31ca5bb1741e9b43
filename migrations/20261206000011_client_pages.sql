-- The end client's page (README "Send this link to your client"): one capability link per
-- migration, unless it was created with `"client_page": "disabled"` (then no row).
--
-- The token itself is never stored: it is derived from ENCRYPTION_KEY, the migration id and
-- `generation` (bumped by each rotation), so the API can show the link again, and only its
-- SHA-256 is kept here, to find the migration a presented token belongs to.
CREATE TABLE IF NOT EXISTS client_pages (
    migration_id  uuid PRIMARY KEY REFERENCES migrations (id) ON DELETE CASCADE,
    generation    integer NOT NULL DEFAULT 1 CHECK (generation >= 1),
    token_hash    bytea NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    -- The first time this link (this generation) was opened; NULL: never.
    opened_at     timestamptz,
    -- Codes and resend requests sent through this link.
    submissions   integer NOT NULL DEFAULT 0,
    last_submission_at timestamptz
);

CREATE UNIQUE INDEX IF NOT EXISTS client_pages_token_hash ON client_pages (token_hash);
