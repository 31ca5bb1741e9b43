-- What the migration preserved (display name, quality, limits, OBA: before vs after
-- registration) and whether the number can send, for the migration's final summary.
ALTER TABLE migrations ADD COLUMN summary jsonb;
