#!/usr/bin/env bash
# Property-based API fuzzing: runs Schemathesis (pinned in scripts/fuzz-requirements.txt) against
# a real `waba-migrator serve` and the OpenAPI document it serves (/openapi.yaml, the committed
# openapi.yaml: a test fails when they drift), and fails on any server error, any response the
# document does not declare (status code, content type, headers, body schema), any request the
# document allows that the service refuses or the other way round, and any stateful phase that
# followed no link.
#
#   ./scripts/fuzz.sh
#
# * Python: a virtualenv in FUZZ_VENV (default $CARGO_TARGET_DIR/fuzz-venv, else target/fuzz-venv)
#   with the pinned packages, made or updated as needed.
# * Service: `cargo build --all-targets` (the debug profile and the dependency features the tests
#   build with, so after ./scripts/test.sh it compiles nothing; a plain `cargo build --bin` resolves
#   features without the dev-dependencies and compiles some 70 crates again), then `serve` on a
#   free 127.0.0.1 port in sandbox mode (no META_ACCESS_TOKEN: upstreams are the in-process
#   simulator), with a random ADMIN_API_KEY and ENCRYPTION_KEY, against a fresh database
#   `fuzz_<random>` on the server at DATABASE_URL (dropped afterwards). DATABASE_URL unset: a
#   throwaway PostgreSQL is started as in scripts/test.sh (scripts/test-pg.sh).
# * Fuzzing: every operation, every check (`--checks all`), all phases (examples, coverage,
#   fuzzing, and the stateful phase, which follows the document's links: create a migration,
#   then act on it; create a partner, then its keys), twice: with a partner key (made through
#   POST /v1/partners), then with the admin key, since the two see different resources (only
#   a partner creates migrations; only the admin manages partners). scripts/schemathesis.toml
#   holds the settings: the one allowance (a 422 for schema-valid input, limited by
#   scripts/fuzz_hooks.py to the rules JSON Schema cannot state, such as a phone number outside
#   its country's ranges), real phone numbers mixed into the generated ones
#   (scripts/fuzz-phone-numbers.dict), and the links only. FUZZ_MAX_EXAMPLES (default 200)
#   bounds the cases per operation and phase (and the stateful phase's scenarios), FUZZ_SEED
#   (default 20261127) makes the run reproducible. Reports (JUnit XML and the console output of
#   each run) and the service log go to FUZZ_REPORT_DIR (default $CARGO_TARGET_DIR/fuzz-report).
#
# Exit status: 0 when Schemathesis found nothing, non-zero otherwise.
set -euo pipefail
exec </dev/null

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd -P)

say() { printf '==> [fuzz.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'fuzz.sh: error: %s\n' "$*" >&2
  exit 1
}

# shellcheck source=scripts/test-pg.sh
. "$repo/scripts/test-pg.sh"

target_dir=${CARGO_TARGET_DIR:-$repo/target}
venv=${FUZZ_VENV:-$target_dir/fuzz-venv}
requirements=$repo/scripts/fuzz-requirements.txt
report_dir=${FUZZ_REPORT_DIR:-$target_dir/fuzz-report}
max_examples=${FUZZ_MAX_EXAMPLES:-200}
seed=${FUZZ_SEED:-20261127}
started_at=$(date +%s)

cargo_flags=()
if [[ ${CI:-} == true || ${CI:-} == 1 ]]; then
  cargo_flags+=(--locked)
fi
if [[ -d .sqlx && -z ${SQLX_OFFLINE:-} ]]; then
  export SQLX_OFFLINE=true
fi

server_pid=""
fuzz_db=""
admin_url=""
cleanup() {
  local rc=$?
  if [[ -n $server_pid ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ -n $fuzz_db ]]; then
    "$psql" -q -v ON_ERROR_STOP=1 -d "$admin_url" \
      -c "DROP DATABASE IF EXISTS \"$fuzz_db\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  stop_test_pg
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Python and Schemathesis ----------------------------------------------------------------------
python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || die "$python not found: install Python 3 (apt-get install python3 python3-venv)"
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/schemathesis || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  say "Python environment $venv ($("$python" --version 2>&1))"
  if [[ ! -x $venv/bin/python ]]; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      # Debian's python3 keeps venv (ensurepip) in a separate package.
      if ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
        say "installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null ||
          { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends python3-venv >/dev/null; }
      fi
      "$python" -m venv "$venv" || die "could not create a virtualenv with $python"
    fi
  fi
  say "pip install -r scripts/fuzz-requirements.txt"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$requirements"
  printf '%s\n' "$want" >"$stamp"
fi
say "$("$venv/bin/schemathesis" --version)"

# --- The service binary ---------------------------------------------------------------------------
# --all-targets, not --bin waba-migrator: the same feature resolution as the test build (see above).
say "cargo build ${cargo_flags[*]} --all-targets"
cargo build "${cargo_flags[@]}" --all-targets
bin=$target_dir/debug/waba-migrator
[[ -x $bin ]] || die "$bin was not built"

# --- A fresh database -----------------------------------------------------------------------------
if [[ -n ${DATABASE_URL:-} ]]; then
  say "DATABASE_URL is set: the fuzz database goes on that server (its role needs CREATEDB)"
else
  start_test_pg
fi
psql=$(command -v psql || true)
if [[ -z $psql && -n ${pg_bin:-} && -x $pg_bin/psql ]]; then
  psql=$pg_bin/psql
fi
[[ -n $psql ]] || die "psql not found: install postgresql-client"
admin_url=$DATABASE_URL
fuzz_db=fuzz_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
fuzz_url=$("$venv/bin/python" - "$DATABASE_URL" "$fuzz_db" <<'EOF'
import sys
from urllib.parse import urlsplit, urlunsplit
u = urlsplit(sys.argv[1])
print(urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, u.fragment)))
EOF
)
"$psql" -q -v ON_ERROR_STOP=1 -d "$admin_url" -c "CREATE DATABASE \"$fuzz_db\"" >/dev/null ||
  die "could not create database $fuzz_db"
say "database $fuzz_db created"

# --- The service ----------------------------------------------------------------------------------
mkdir -p "$report_dir"
find "$report_dir" -mindepth 1 -delete
server_log=$report_dir/server.log
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base_url=http://127.0.0.1:$port
admin_key=$("$venv/bin/python" -c 'import secrets; print("admin_" + secrets.token_urlsafe(32))')
encryption_key=$("$venv/bin/python" -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')
say "starting waba-migrator serve on $base_url (sandbox mode; log: $server_log)"
(
  unset META_ACCESS_TOKEN
  export DATABASE_URL=$fuzz_url RUN_MIGRATIONS=true BIND_ADDR=127.0.0.1:$port \
    ADMIN_API_KEY=$admin_key ENCRYPTION_KEY=$encryption_key DATA_DIR=$report_dir/data \
    RUST_LOG=${FUZZ_RUST_LOG:-info,sqlx=warn} UPSTREAM_TIMEOUT_SECONDS=5 SHUTDOWN_GRACE_SECONDS=6 \
    RATE_LIMIT_PER_SECOND=0 PRECHECK_RATE_PER_MINUTE=0 AUTH_FAILURES_PER_MINUTE=0 \
    SANDBOX_API_KEY_WINDOW_MS=0
  # No rate limits: otherwise most generated requests would only meet the limiter (it has its
  # own test), not the operations under test; and Schemathesis' invalid-key probes (one per
  # operation) would meet the failed-authentication limit (429) instead of the 401 it checks.
  # No wait between two API keys of a channel in the sandbox's 360dialog (it has its own test):
  # POST …/api_key/rotate waits for the new key, up to 25 s, and the fuzzer rotates the keys of
  # the migrations it completed many times.
  exec "$bin" serve
) >"$server_log" 2>&1 &
server_pid=$!
for _ in $(seq 150); do
  kill -0 "$server_pid" 2>/dev/null || {
    tail -n 30 "$server_log" >&2
    die "the service exited during start-up"
  }
  "$bin" healthcheck "$base_url/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
"$bin" healthcheck "$base_url/readyz" >/dev/null 2>&1 || {
  tail -n 30 "$server_log" >&2
  die "the service did not become ready within 30 s"
}

# A partner, through the API; its key is never printed.
partner_key=$(ADMIN_KEY=$admin_key BASE_URL=$base_url "$venv/bin/python" - <<'EOF'
import json, os, urllib.request
req = urllib.request.Request(
    os.environ["BASE_URL"] + "/v1/partners",
    data=json.dumps({
        "name": "Fuzz partner",
        "d360_partner_id": "fuzzPA",
        "d360_api_key": "fuzz-partner-api-key",
    }).encode(),
    headers={
        "Authorization": "Bearer " + os.environ["ADMIN_KEY"],
        "Content-Type": "application/json",
    },
    method="POST",
)
with urllib.request.urlopen(req, timeout=10) as res:
    assert res.status == 201, res.status
    print(json.load(res)["api_key"])
EOF
) || die "could not create the fuzz partner"
say "partner created"

# --- Schemathesis ---------------------------------------------------------------------------------
failed=()
results=()
run_schemathesis() {
  local who=$1 key=$2 rc=0 out=$report_dir/$1.txt
  local args=(
    --config-file scripts/schemathesis.toml --no-color
    run "$base_url/openapi.yaml" --url "$base_url" --checks all --mode all
    --max-examples "$max_examples" --seed "$seed" --generation-database none
    --workers 1 --request-timeout 10
    --report junit --report-junit-path "$report_dir/$who.junit.xml"
  )
  # The key reaches Schemathesis through the environment (see scripts/schemathesis.toml), so it is
  # in neither the command line nor this output.
  say "as $who: FUZZ_API_KEY=<$who key> schemathesis ${args[*]}"
  FUZZ_API_KEY=$key HYPOTHESIS_STORAGE_DIRECTORY=$report_dir/hypothesis \
    "$venv/bin/schemathesis" "${args[@]}" 2>&1 | tee "$out" || rc=$?
  results+=("$who: $(grep -E '^=+ .* in [0-9.]+s =+$' "$out" | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')")
  # What the stateful phase ran: scenarios (sequences of calls) and the links it followed.
  local stateful covered
  stateful=$(grep -E '^ +(Scenarios|API Links): ' "$out" | sed 's/^ *//;s/  */ /g' | paste -sd ';' | sed 's/;/; /g')
  results+=("$who, stateful phase: ${stateful:-did not run}")
  covered=$(sed -nE 's/^ +API Links: +([0-9]+) covered.*/\1/p' "$out" | tail -n 1)
  if ((${covered:-0} == 0)); then
    say "as $who: the stateful phase followed no link (no sequence of calls was tested)"
    rc=1
  fi
  ((rc == 0)) || failed+=("$who")
}
# The partner first: its migrations are then there for the admin's run to read (the admin
# creates none), and nothing the admin's run does to the partner (a key revoked) can spoil it.
run_schemathesis partner "$partner_key"
run_schemathesis admin "$admin_key"

server_errors=$(grep -c '"request failed"' "$server_log" || true)
say "summary ($(($(date +%s) - started_at)) s, seed $seed, at most $max_examples examples per operation and phase):"
for r in "${results[@]}"; do
  say "  $r"
done
say "  server errors logged by the service: $server_errors (log: $server_log)"
if ((${#failed[@]})); then
  die "Schemathesis found failures (runs: ${failed[*]}); reports in $report_dir"
fi
say "no failures"
