-- One name per transition (issue 13): an audit event's `type` is now the `type` of the
-- webhook sent for the same change (`domain::EventType::for_transition`). Transitions into
-- `awaiting_otp`, `completed`, `failed` and `cancelled` were recorded as
-- `migration.state_changed` while their webhooks said `migration.awaiting_otp`,
-- `migration.completed`, `migration.failed` and `migration.cancelled`; rename those events so
-- old and new rows agree. Transitions into any other state keep `migration.state_changed`;
-- webhook_deliveries already carry the specific types.
--
-- Idempotent: during a rolling deploy, replicas still running the old code may write a few
-- more old-style rows; running this statement again renames them. `type` is in no index, so
-- the rows are updated in place (HOT) where their pages have room. Forward-only; never edit
-- after merge.
UPDATE migration_events
   SET type = CASE to_state
                  WHEN 'awaiting_otp' THEN 'migration.awaiting_otp'
                  WHEN 'completed' THEN 'migration.completed'
                  WHEN 'failed' THEN 'migration.failed'
                  WHEN 'cancelled' THEN 'migration.cancelled'
              END
 WHERE type = 'migration.state_changed'
   AND to_state IN ('awaiting_otp', 'completed', 'failed', 'cancelled');
