-- One live 360dialog key per number (issue 14, item 5). Forward-only; never edit after merge.
--
-- `api_key_superseded_at`: when the key a migration holds stopped being the channel's key
-- (`api_key.status` `superseded`): set by `POST /v1/migrations/{id}/api_key/rotate` (cleared
-- again once the new key is stored), or when 360dialog rejected the key as another migration of
-- the same number checked it before migrating the number again. A superseded key is never
-- reported `verified` again.
ALTER TABLE migrations ADD COLUMN api_key_superseded_at timestamptz;

-- "Does another completed migration hold a live key for this channel?", asked by the
-- `generating_api_key` step before it generates a key (the number's own question is answered by
-- `migrations_phone_number`).
CREATE INDEX migrations_live_key_channel ON migrations (channel_id)
    WHERE state = 'completed' AND api_key_enc IS NOT NULL AND api_key_superseded_at IS NULL;
