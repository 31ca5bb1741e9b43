-- The value checks of `migrations` as domains (issue 18). Forward-only; never edit after merge.
--
-- A table's CHECK constraints run on every UPDATE of a row, whichever columns it sets, and each
-- statement first re-reads them from their stored form and prepares them. The three here
-- (state, flow, otp_method) did that on every transition, claim and intent write. A domain's
-- check runs only where a value is assigned to the column (a transition's `state`, an insert),
-- from a definition each connection prepares once. The values allowed are the same, and a
-- violation is still SQLSTATE 23514. Queries see the base type, `text`.
CREATE DOMAIN migration_state AS text CHECK (VALUE IN (
    'queued', 'prechecking', 'awaiting_signup', 'initiating', 'requesting_otp',
    'awaiting_otp', 'verifying_otp', 'registering',
    'copying_templates', 'awaiting_channel', 'generating_api_key',
    'completed', 'failed', 'cancelled'));
CREATE DOMAIN migration_flow AS text CHECK (VALUE IN ('otp', 'embedded_signup'));
CREATE DOMAIN migration_otp_method AS text CHECK (VALUE IN ('sms', 'voice'));

ALTER TABLE migrations
    DROP CONSTRAINT migrations_state_check,
    DROP CONSTRAINT migrations_flow_check,
    DROP CONSTRAINT migrations_otp_method_check,
    ALTER COLUMN state TYPE migration_state,
    ALTER COLUMN flow TYPE migration_flow,
    ALTER COLUMN otp_method TYPE migration_otp_method;
