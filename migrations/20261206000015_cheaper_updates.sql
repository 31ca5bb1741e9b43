-- Cheaper row updates on the worker's hot path (issue 18). Forward-only; never edit after merge.

-- Transitions and intent writes set `updated_at` themselves (see 20261126000006_hot_path.sql):
-- call the PL/pgSQL function only for the updates that leave it unchanged (claims, heartbeats,
-- tools). A WHEN condition is checked without entering PL/pgSQL at all.
DROP TRIGGER migrations_updated_at ON migrations;
CREATE TRIGGER migrations_updated_at BEFORE UPDATE ON migrations
    FOR EACH ROW WHEN (NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at)
    EXECUTE FUNCTION set_updated_at_unless_given();
