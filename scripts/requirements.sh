# shellcheck shell=bash
# What the tests need from the machine besides Rust, and how it gets there; sourced by
# scripts/test.sh (the README's test command) and .ci/run, which define `say` first.
#
#   ensure_test_requirements
#
# checks, before anything is compiled, for
#   * the PostgreSQL server binaries (Debian package `postgresql`), unless DATABASE_URL is set
#     or PG_BIN points at them;
#   * Chromium and ChromeDriver for the browser test tests/dashboard.rs (Debian packages
#     `chromium` and `chromium-driver`), unless CHROMIUM and CHROMEDRIVER point at them.
# Whatever is missing is installed with apt-get when this runs as root or with passwordless
# sudo. Otherwise it prints one line per missing package with the command that installs it and
# returns 1, so the caller stops within seconds instead of failing tests after a long build.

# Runs a command as root: directly, or through passwordless sudo. Returns 1 if neither works.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

can_be_root() {
  [[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

have_pg_server() {
  if [[ -n ${PG_BIN:-} ]]; then
    [[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl && -x $PG_BIN/postgres ]]
    return
  fi
  compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null ||
    { command -v pg_config >/dev/null 2>&1 && [[ -x $(pg_config --bindir)/initdb ]]; }
}

# A binary named by an environment variable, else a fixed path, else PATH.
have_binary() {
  local var=$1 default=$2 name=$3
  if [[ -n ${!var:-} ]]; then
    [[ -x ${!var} ]]
    return
  fi
  [[ -x $default ]] || command -v "$name" >/dev/null 2>&1
}

# Prints the Debian packages the tests need and this machine lacks, one per line.
missing_test_packages() {
  if [[ -z ${DATABASE_URL:-} ]]; then
    have_pg_server || echo postgresql
    # As root, PostgreSQL must run as the `postgres` OS user, which the package creates.
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1 && have_pg_server; then
      echo postgresql
    fi
  fi
  have_binary CHROMIUM /usr/bin/chromium chromium || echo chromium
  have_binary CHROMEDRIVER /usr/bin/chromedriver chromedriver || echo chromium-driver
}

ensure_test_requirements() {
  local missing
  mapfile -t missing < <(missing_test_packages | awk '!seen[$0]++')
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if can_be_root; then
    say "installing the missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    mapfile -t missing < <(missing_test_packages | awk '!seen[$0]++')
    if ((${#missing[@]} == 0)); then
      return 0
    fi
    printf 'still missing after apt-get install: %s\n' "${missing[*]}" >&2
    return 1
  fi
  {
    echo "The tests need these Debian packages, which are not installed (and this user is neither"
    echo "root nor allowed passwordless sudo, so they cannot be installed for you):"
    local package why
    for package in "${missing[@]}"; do
      case $package in
        postgresql) why="PostgreSQL server for the test databases (or set DATABASE_URL to a server whose role has CREATEDB)" ;;
        chromium) why="headless browser for tests/dashboard.rs (or set CHROMIUM to a Chromium binary)" ;;
        chromium-driver) why="WebDriver for tests/dashboard.rs (or set CHROMEDRIVER to a chromedriver binary)" ;;
        *) why="" ;;
      esac
      printf '  missing %-16s install: sudo apt-get install -y %-16s # %s\n' "$package" "$package" "$why"
    done
  } >&2
  return 1
}
