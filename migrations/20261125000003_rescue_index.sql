-- Rescue path of the claim: leased rows by lease expiry (rows of crashed workers first).
CREATE INDEX migrations_leased ON migrations (lease_expires_at) WHERE lease_token IS NOT NULL;
