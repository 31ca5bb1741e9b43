# shellcheck shell=bash
# A throwaway PostgreSQL cluster for the tests and the API fuzzer; sourced by scripts/test.sh and
# scripts/fuzz.sh, which define `say` and `die` and set `repo` (the repository root) first.
#
#   start_test_pg   starts (or reuses) the cluster and exports DATABASE_URL (superuser `waba`)
#   stop_test_pg    stops it again if start_test_pg started it (call it from an EXIT trap)
#
# The server binaries are PG_BIN, else the newest /usr/lib/postgresql/*/bin, else
# `pg_config --bindir`. Data lives in target/test-pg (as root, PostgreSQL runs as the `postgres`
# OS user; if that user cannot reach target/, the data lives in
# /var/tmp/waba-migrator-test-pg-<uid>-<hash> instead). It listens on 127.0.0.1 only, on the first
# free port from 55432 (TEST_PG_PORT overrides the start), with trust authentication and
# durability off for speed. A cluster left running by a killed run is reused, not stopped.

: "${repo:?set repo to the repository root before sourcing scripts/test-pg.sh}"

find_pg_bin() {
  local dir best=""
  if [[ -n ${PG_BIN:-} ]]; then
    [[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl && -x $PG_BIN/postgres ]] ||
      die "PG_BIN=$PG_BIN does not contain initdb, pg_ctl and postgres"
    printf '%s\n' "$PG_BIN"
    return
  fi
  while IFS= read -r dir; do
    dir=$dir/bin
    [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] && best=$dir
  done < <(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d 2>/dev/null | sort -V)
  if [[ -z $best ]] && command -v pg_config >/dev/null 2>&1; then
    dir=$(pg_config --bindir)
    [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] && best=$dir
  fi
  if [[ -z $best ]] && command -v pg_ctl >/dev/null 2>&1; then
    dir=$(dirname "$(command -v pg_ctl)")
    [[ -x $dir/initdb && -x $dir/postgres ]] && best=$dir
  fi
  [[ -n $best ]] || die "PostgreSQL server binaries not found (PG_BIN, /usr/lib/postgresql/*/bin, \
pg_config --bindir, PATH): install the \`postgresql\` package (apt-get install postgresql), \
set PG_BIN, or set DATABASE_URL to an existing server"
  printf '%s\n' "$best"
}

# The 8th line of postmaster.pid is the server status; line 4 the port.
pid_file_line() { sed -n "${2}p" "$1" 2>/dev/null | tr -d '[:space:]'; }

# A killed server that nobody reaped (a zombie) still looks alive to pg_ctl and to postgres.
remove_lock_of_defunct_server() {
  local pid_file=$1/postmaster.pid pid state
  [[ -f $pid_file ]] || return 0
  pid=$(pid_file_line "$pid_file" 1)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  state=$(sed -E 's/.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null || true)
  if [[ $state == Z ]]; then
    say "removing stale $pid_file (PID $pid is defunct)"
    rm -f "$pid_file"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_started=""

stop_test_pg() {
  [[ -z $pg_started ]] || {
    say "stopping test PostgreSQL"
    pg_ctl stop -D "$pgdata" -m fast -w >/dev/null || true
  }
}

start_test_pg() {
  pg_bin=$(find_pg_bin)
  pg_major=$("$pg_bin/pg_ctl" --version | sed -E 's/^[^)]*\) ([0-9]+).*/\1/')

  pgdata=$repo/target/test-pg
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root, but there is no \`postgres\` OS user to \
run PostgreSQL as (it refuses to run as root): install the postgresql package, run as a non-root \
user, or set DATABASE_URL"
    as_pg() { runuser -u postgres -- "$@"; }
    mkdir -p "$repo/target"
    if ! (cd / && as_pg test -x "$repo/target"); then
      pgdata=/var/tmp/waba-migrator-test-pg-$(id -u)-$(printf '%s' "$repo" | sha256sum | cut -c1-12)
      say "the postgres user cannot reach $repo/target; using $pgdata for the test cluster"
    fi
    mkdir -p "$pgdata"
    owner=$(stat -c %U "$pgdata")
    [[ ! -L $pgdata && ($owner == root || $owner == postgres) ]] ||
      die "$pgdata is not a directory owned by root or postgres; remove it"
    chown postgres:postgres "$pgdata"
  else
    as_pg() { "$@"; }
    mkdir -p "$pgdata"
  fi
  chmod 700 "$pgdata"

  say "test PostgreSQL $pg_major from $pg_bin, data in $pgdata"
  pg_ctl() { (cd / && as_pg "$pg_bin/pg_ctl" "$@"); }

  if [[ -f $pgdata/PG_VERSION && $(cat "$pgdata/PG_VERSION") != "$pg_major" ]]; then
    say "$pgdata was made by PostgreSQL $(cat "$pgdata/PG_VERSION"); recreating it for $pg_major"
    pg_ctl stop -D "$pgdata" -m immediate >/dev/null 2>&1 || true
    find "$pgdata" -mindepth 1 -delete
  fi
  if [[ ! -f $pgdata/PG_VERSION ]]; then
    find "$pgdata" -mindepth 1 -delete
    say "initdb (superuser waba, trust auth)"
    initdb_log=$(mktemp)
    if ! (cd / && as_pg "$pg_bin/initdb" -D "$pgdata" -U waba -E UTF8 --no-locale \
      --auth=trust --no-sync) >"$initdb_log" 2>&1; then
      cat "$initdb_log" >&2
      rm -f "$initdb_log"
      die "initdb failed for $pgdata"
    fi
    rm -f "$initdb_log"
    printf '%s\n' \
      '# Written by scripts/test-pg.sh: trust 127.0.0.1 only.' \
      'host all all 127.0.0.1/32 trust' >"$pgdata/pg_hba.conf"
    printf '\n%s\n' "include_if_exists = 'test-pg.conf'" >>"$pgdata/postgresql.conf"
    [[ $(id -u) -ne 0 ]] || chown postgres:postgres "$pgdata/pg_hba.conf"
  fi

  remove_lock_of_defunct_server "$pgdata"
  if pg_ctl status -D "$pgdata" >/dev/null 2>&1; then
    port=$(pid_file_line "$pgdata/postmaster.pid" 4)
    say "a test PostgreSQL left by an earlier run is already running on port $port; reusing it" \
      "and leaving it running (stop it with: $pg_bin/pg_ctl stop -D $pgdata)"
  else
    log=$pgdata/postgres.log
    port=${TEST_PG_PORT:-55432}
    last_port=$((port + 99))
    while :; do
      ((port <= last_port)) || die "no free TCP port in ${TEST_PG_PORT:-55432}..$last_port on 127.0.0.1"
      if port_in_use "$port"; then
        port=$((port + 1))
        continue
      fi
      printf '%s\n' \
        '# Written by scripts/test-pg.sh on every start; throwaway test cluster, durability off.' \
        "listen_addresses = '127.0.0.1'" \
        "port = $port" \
        "unix_socket_directories = ''" \
        'max_connections = 200' \
        'fsync = off' \
        'synchronous_commit = off' \
        'full_page_writes = off' >"$pgdata/test-pg.conf"
      [[ $(id -u) -ne 0 ]] || chown postgres:postgres "$pgdata/test-pg.conf"
      log_lines=0
      [[ ! -f $log ]] || log_lines=$(wc -l <"$log")
      say "starting test PostgreSQL on 127.0.0.1:$port (log: $log)"
      pg_started=1
      if start_output=$(pg_ctl start -D "$pgdata" -l "$log" -w -t 60 2>&1); then
        break
      fi
      new_log=$(tail -n "+$((log_lines + 1))" "$log" 2>/dev/null || true)
      if grep -q -e 'could not bind' -e 'could not create any TCP/IP sockets' <<<"$new_log"; then
        say "port $port is taken; trying the next one"
        port=$((port + 1))
        continue
      fi
      printf '%s\n' "$start_output" "$new_log" | tail -n 30 >&2
      die "could not start the test PostgreSQL (see $log)"
    done
  fi
  export DATABASE_URL="postgres://waba@127.0.0.1:$port/postgres"
  say "DATABASE_URL=$DATABASE_URL"
}
