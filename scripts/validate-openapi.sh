#!/usr/bin/env bash
# Validates the committed OpenAPI document against the OpenAPI 3.1 specification.
#
#   ./scripts/validate-openapi.sh [file ...]     # default: openapi.yaml
#
# The validator is openapi-spec-validator (https://github.com/python-openapi/openapi-spec-validator),
# installed with its dependencies pinned in scripts/validate-openapi.requirements.txt into a
# Python venv cached under ${CARGO_TARGET_DIR:-target}/openapi-validator (reinstalled when the
# pins change). It checks the document against the 3.1 meta-schema and more: every $ref
# resolves, path parameters are declared, operationIds are unique, schemas are valid JSON Schema.
# Any error fails the script (exit 1). Needs python3 with venv (as root with apt-get, the
# python3-venv package is installed if missing) and access to PyPI on first run.
#
# openapi.yaml is generated from the code: fix errors in the utoipa annotations under src/http/,
# then `UPDATE_OPENAPI=1 cargo test --test api openapi`.
set -euo pipefail
exec </dev/null

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> [validate-openapi %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'validate-openapi: error: %s\n' "$*" >&2
  exit 1
}

requirements=scripts/validate-openapi.requirements.txt
cache=${CARGO_TARGET_DIR:-target}/openapi-validator
venv=$cache/venv
python=${PYTHON:-python3}
(($# > 0)) || set -- openapi.yaml

have_venv() { command -v "$python" >/dev/null 2>&1 && "$python" -c 'import ensurepip, venv' 2>/dev/null; }

if ! have_venv; then
  if ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
    say "installing python3-venv (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends python3 python3-venv >&2
  fi
  have_venv || die "$python with the venv module is required (apt-get install python3-venv)"
fi

wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/openapi-spec-validator || $(cat "$venv/.requirements" 2>/dev/null) != "$wanted" ]]; then
  say "installing openapi-spec-validator into $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  PIP_CACHE_DIR=$cache/pip "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    -r "$requirements" >&2
  echo "$wanted" >"$venv/.requirements"
fi

say "$("$venv/bin/openapi-spec-validator" --version 2>&1 | head -n 1)"
# Prints `<file>: OK`, or the errors and exits non-zero.
"$venv/bin/openapi-spec-validator" --schema 3.1 --validation-errors all "$@"
