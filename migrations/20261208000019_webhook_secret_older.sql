-- A rotation inside the previous rotation's overlap keeps that overlap's secret signing too,
-- until its own end: a consumer that never saw the first rotation's answer (lost, and the call
-- retried) still verifies. Sealed like webhook_secret_enc (same associated data: rotation
-- moves the ciphertexts between the columns in SQL).
ALTER TABLE partners
    ADD COLUMN webhook_secret_older_enc        bytea,
    ADD COLUMN webhook_secret_older_expires_at timestamptz;
