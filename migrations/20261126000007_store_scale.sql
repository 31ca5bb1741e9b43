-- Store scale (issue 7, target 4): `GET /v1/migrations?created_after=…&created_before=…` of a
-- partner. Without an index on created_at the planner walks `migrations_pkey` backwards from
-- the newest id and filters: it assumes matching rows are spread evenly over the ids, but ids
-- are UUIDv7 (creation order), so for a window a month back it reads every newer row first.
-- With 1,000,000 rows that was up to ~750,000 rows (and their heap pages) per page of 50;
-- with this index it reads the window's rows of that partner (~550 a day at 1M rows a year)
-- and sorts them by id. Forward-only; never edit after merge.
CREATE INDEX migrations_partner_created ON migrations (partner_id, created_at);
