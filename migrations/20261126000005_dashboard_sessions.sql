-- Support dashboard sessions (`/dashboard`). The cookie holds a random session id; only its
-- SHA-256 is stored, so a copy of this table cannot be replayed as a cookie. The hash of the
-- key that signed in is kept so that revoking that key (or changing ADMIN_API_KEY) ends the
-- session at its next request. Forward-only; never edit after merge.
CREATE TABLE dashboard_sessions (
    id_hash     bytea PRIMARY KEY,
    -- NULL: signed in with the admin key (sees every partner).
    partner_id  uuid REFERENCES partners (id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL,
    -- Synchronizer token every dashboard form must echo.
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);
