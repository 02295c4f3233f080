#!/usr/bin/env bash
# Browser tests of the operator console (/ui): Playwright (Python) driving Debian's Chromium
# against the real `metis` binary, the fake upstream and the test OpenID Connect issuer
# (`fake-oidc`), on 127.0.0.1 only. Screenshots go to a temporary directory unless
# CONSOLE_SCREENSHOTS names one (relative to the repository root), so a run never changes
# tracked files.
#
#   scripts/console-tests.sh              # everything
#   scripts/console-tests.sh -k keys -x   # extra args go to pytest
#   CONSOLE_SCREENSHOTS=docs/console scripts/console-tests.sh   # refresh the README's screenshots
#
# Creates (or reuses) the virtualenv `.venv-console` with the pinned packages of
# tests/console/requirements.txt (reinstalled only when that file changes). No browser is
# downloaded: CHROMIUM (default /usr/bin/chromium, `apt-get install chromium`) is used.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv-console"
REQ="$ROOT/tests/console/requirements.txt"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  echo "console tests need Chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
STAMP="$VENV/.metis-console-requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
  echo "$WANT" >"$STAMP"
fi

cargo build -p metis -p metis-tests --bins
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export METIS_BIN="$TARGET_DIR/debug/metis"
export FAKE_UPSTREAM_BIN="$TARGET_DIR/debug/fake-upstream"
export FAKE_OIDC_BIN="$TARGET_DIR/debug/fake-oidc"

cd "$ROOT/tests/console"
exec "$VENV/bin/python" -m pytest "$@"
