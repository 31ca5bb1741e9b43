-- `waiting_for` (README "The job"): while a migration waits on someone, on whom, for what,
-- since when and until when (`domain::WaitingFor` as JSON); NULL when it does not wait. The
-- transition (or poll) that parks a migration writes it, the one that leaves the state clears it.
ALTER TABLE migrations ADD COLUMN IF NOT EXISTS waiting_for jsonb;

-- Migrations already waiting for their code get what the worker writes when it parks one
-- (`domain::WaitingFor::otp`); those in `awaiting_channel` get theirs at their next poll.
UPDATE migrations
   SET waiting_for = jsonb_build_object(
           'code', 'otp_not_submitted',
           'message', 'Waiting for the verification code Meta sent to the number by SMS or voice call.',
           'actor', 'client',
           'remediation', 'The client reads the 6-digit code and the partner submits it with POST /v1/migrations/{id}/otp before otp.expires_at (then the migration fails with otp_expired); if no code arrived, request another with POST /v1/migrations/{id}/otp/resend.',
           'since', to_jsonb(state_entered_at),
           'deadline', to_jsonb(otp_expires_at))
 WHERE state = 'awaiting_otp' AND waiting_for IS NULL AND otp_expires_at IS NOT NULL;
