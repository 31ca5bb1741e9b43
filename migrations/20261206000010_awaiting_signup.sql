-- Embedded Signup before the channel exists (README "The job"): a migration created with
-- `flow: "embedded_signup"` and no `channel_id` waits in `awaiting_signup` until 360dialog
-- shows a channel for its number. The one-active-per-number and claim indexes name only the
-- terminal states (`NOT IN ('completed', 'failed', 'cancelled')`), so they cover it as they are.
ALTER TABLE migrations DROP CONSTRAINT IF EXISTS migrations_state_check;
ALTER TABLE migrations ADD CONSTRAINT migrations_state_check CHECK (state IN (
    'queued', 'prechecking', 'awaiting_signup', 'initiating', 'requesting_otp',
    'awaiting_otp', 'verifying_otp', 'registering',
    'copying_templates', 'awaiting_channel', 'generating_api_key',
    'completed', 'failed', 'cancelled'));

-- A partner's 360dialog signup link, offered to its clients by the client page
-- (`PATCH /v1/partners/{id}` `{"signup_url"}`); NULL when it has none.
ALTER TABLE partners ADD COLUMN IF NOT EXISTS signup_url text;
