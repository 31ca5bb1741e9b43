#!/usr/bin/env bash
# The project's test command: runs the whole test suite against a PostgreSQL server.
#
#   ./scripts/test.sh [extra arguments for `cargo nextest run` / `cargo test`]
#
# * DATABASE_URL set: the tests use that server. Its role must be allowed to create databases
#   (`#[sqlx::test]` creates one database per test).
# * DATABASE_URL unset: a throwaway PostgreSQL cluster is started from the installed server
#   binaries (PG_BIN, else the newest /usr/lib/postgresql/*/bin, else `pg_config --bindir`), with
#   its data in target/test-pg (as root, PostgreSQL runs as the `postgres` OS user; if that user
#   cannot reach target/, the data lives in /var/tmp/waba-migrator-test-pg-<uid>-<hash> instead).
#   It listens on 127.0.0.1 only, on the first free port from 55432 (TEST_PG_PORT overrides the
#   start), has superuser `waba` with trust authentication, durability off for speed, and is
#   stopped when this script exits. A cluster left running by a killed run is reused, not stopped.
#
# Before anything is compiled, scripts/requirements.sh checks for the Debian packages the tests
# need (the PostgreSQL server unless DATABASE_URL is set; chromium and chromium-driver for the
# browser test) and installs what is missing when run as root or with passwordless sudo;
# otherwise it stops at once, naming each missing package and the command that installs it.
#
# Tests run with cargo-nextest when installed (profile from NEXTEST_PROFILE, see
# .config/nextest.toml), else with `cargo test`. With a committed .sqlx/ directory, SQLX_OFFLINE
# defaults to true so the sqlx query macros check against it, not against the test server.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd -P)

say() { printf '==> [test.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'test.sh: error: %s\n' "$*" >&2
  exit 1
}

# shellcheck source=scripts/requirements.sh
. "$repo/scripts/requirements.sh"
# shellcheck source=scripts/test-pg.sh
. "$repo/scripts/test-pg.sh"

ensure_test_requirements || die "install the packages above, then run ./scripts/test.sh again"

cargo_flags=()
if [[ ${CI:-} == true || ${CI:-} == 1 ]]; then
  cargo_flags+=(--locked)
fi

if [[ -d .sqlx && -z ${SQLX_OFFLINE:-} ]]; then
  export SQLX_OFFLINE=true
  say "SQLX_OFFLINE=true (query macros are checked against the committed .sqlx/ metadata)"
fi

if [[ -n ${DATABASE_URL:-} ]]; then
  say "DATABASE_URL is set: tests use that server (its role needs CREATEDB)"
else
  trap stop_test_pg EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_test_pg
fi

if cargo nextest --version >/dev/null 2>&1; then
  say "cargo nextest run --workspace --all-targets ${cargo_flags[*]} $* (profile: ${NEXTEST_PROFILE:-default})"
  cargo nextest run --workspace --all-targets "${cargo_flags[@]}" "$@"
else
  say "cargo-nextest is not installed; running cargo test --workspace ${cargo_flags[*]} $*"
  cargo test --workspace "${cargo_flags[@]}" "$@"
fi
say "tests passed"
