#!/bin/bash
# PostgreSQL CPU per recorded transition: one statement per transaction, four statements in one
# transaction, or one statement recording four rows. See BENCHMARKS.md, "Seventh session".
#
# Setup (a database the service migrated, with rows in it):
#   target/release/waba-bench run --migrations 300 --concurrency 32 --anchor-jobs 0 \
#     --anchor-step-runs 0 --pgbench-seconds 0 --keep --dir /var/tmp/wb-exp
#   runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /var/tmp/wb-exp/postgres \
#     -o "-p 55999 -k /tmp/pgsock -c listen_addresses=''" start      # (mkdir + chown /tmp/pgsock first)
#   bash run.sh setup; bash run.sh          # then pg_ctl … stop
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DATA:-/var/tmp/wb-exp/postgres}
PSQL=(psql -h "${PGSOCK:-/tmp/pgsock}" -p "${PGPORT:-55999}" -U waba -d waba_migrator -qX)
SECS=${SECS:-15}

cpu_ticks() { # the postmaster, its reaped children and its live children
  local pm t c
  pm=$(head -1 "$DATA/postmaster.pid")
  t=$(awk '{print $14+$15+$16+$17}' "/proc/$pm/stat")
  for c in $(pgrep -P "$pm"); do t=$((t + $(awk '{print $14+$15}' "/proc/$c/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}

if [ "${1:-}" = setup ]; then
  # Every row becomes an active, leased migration (`prechecking`) the scripts move back and forth.
  "${PSQL[@]}" <<'SQL'
DELETE FROM migration_events WHERE migration_id IN (SELECT id FROM migrations WHERE state <> 'completed');
DELETE FROM client_pages WHERE migration_id IN (SELECT id FROM migrations WHERE state <> 'completed');
DELETE FROM webhook_deliveries WHERE migration_id IN (SELECT id FROM migrations WHERE state <> 'completed');
DELETE FROM migrations WHERE state <> 'completed';
UPDATE migrations SET state = 'prechecking', lease_token = gen_random_uuid(), lease_owner = 'x',
  lease_expires_at = now() + interval '1 hour', completed_at = NULL;
CREATE TABLE ids AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM migrations;
CREATE UNIQUE INDEX ON ids (n);
SQL
  exit 0
fi

for round in 1 2; do
  for spec in one.sql:1 four-in-one-transaction.sql:4 four-in-one-statement.sql:4; do
    script=${spec%%:*}; rows=${spec##*:}
    a=$(cpu_ticks)
    out=$(pgbench -h "${PGSOCK:-/tmp/pgsock}" -p "${PGPORT:-55999}" -U waba -n -M prepared -c 4 -j 2 -T "$SECS" -f "$script" waba_migrator 2>&1)
    sleep 1 # let the postmaster reap the backends, so their CPU is in its children's count
    b=$(cpu_ticks)
    tx=$(echo "$out" | awk -F': ' '/number of transactions actually processed/ {split($2, x, "/"); print x[1]}')
    python3 -c "
hz = $(getconf CLK_TCK); tx = $tx; rows = tx * $rows; ms = ($b - $a) * 1000 / hz
print(f'round $round  $script: {rows} rows recorded, PostgreSQL CPU {ms:.0f} ms, {ms * 1000 / rows:.1f} µs per row')"
  done
done
