#!/usr/bin/env bash
# Black-box tests of the real `metis` binary with the official `openai` and `anthropic` Python
# SDKs, against the fake upstream (`fake-upstream`, crate metis-tests).
#
#   scripts/python-tests.sh                 # everything
#   scripts/python-tests.sh -k stream -x    # extra args go to pytest
#
# Creates (or reuses) the virtualenv `.venv` and installs the pinned versions from
# tests/python/requirements.txt (again only when that file changes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
REQ="$ROOT/tests/python/requirements.txt"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.metis-tests-requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
  echo "$WANT" >"$STAMP"
fi

cargo build -p metis -p metis-tests --bins
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export METIS_BIN="$TARGET_DIR/debug/metis"
export FAKE_UPSTREAM_BIN="$TARGET_DIR/debug/fake-upstream"

cd "$ROOT/tests/python"
exec "$VENV/bin/python" -m pytest "$@"
