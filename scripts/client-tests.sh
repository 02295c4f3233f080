#!/usr/bin/env bash
# Real clients against the real `metis` binary backed by the fake upstream and the mock:
# Claude Code (`claude -p`), the Codex CLI (`codex exec`), the `openai`, `@anthropic-ai/sdk` and
# Vercel AI SDK npm packages, and the openai-agents and pydantic-ai Python packages.
#
#   scripts/client-tests.sh                  # everything
#   scripts/client-tests.sh -k codex -x      # extra args go to pytest
#   scripts/client-tests.sh --install-only   # install the pinned clients, run nothing
#
# Clients are installed at the versions pinned in tests/clients/package-lock.json and
# tests/clients/requirements.txt into .clients/ (gitignored), and reinstalled only when one of
# those files changes (a stamp holds their hash). Nothing is installed globally. The tests keep
# every client on 127.0.0.1: telemetry and update checks off, HOME/CODEX_HOME in temp dirs and
# HTTP(S)_PROXY pointing at a closed loopback port (see tests/clients/clients.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="$ROOT/.clients"
SRC="$ROOT/tests/clients"
mkdir -p "$CACHE"

for tool in node npm python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "client-tests: $tool is required" >&2; exit 1; }
done

# --- npm clients -----------------------------------------------------------------------------
NODE_DIR="$CACHE/node"
NODE_STAMP="$NODE_DIR/.lock.sha256"
NODE_WANT="$(cat "$SRC/package.json" "$SRC/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$NODE_STAMP" ] || [ "$(cat "$NODE_STAMP")" != "$NODE_WANT" ]; then
  echo "==> installing npm clients into $NODE_DIR"
  start=$(date +%s)
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp "$SRC/package.json" "$SRC/package-lock.json" "$NODE_DIR/"
  # A private npm cache, deleted afterwards: the tarballs are not needed once unpacked.
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error --cache "$CACHE/npm-cache")
  rm -rf "$CACHE/npm-cache"
  echo "$NODE_WANT" >"$NODE_STAMP"
  echo "    npm clients installed in $(($(date +%s) - start)) s, $(du -sh "$NODE_DIR" | cut -f1)"
fi

# --- Python clients (one venv; the pins resolve together, checked by `pip check`) ----------------
VENV="$CACHE/venv"
PY_STAMP="$VENV/.requirements.sha256"
PY_WANT="$(sha256sum "$SRC/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$PY_STAMP" ] || [ "$(cat "$PY_STAMP")" != "$PY_WANT" ]; then
  echo "==> installing Python clients into $VENV"
  start=$(date +%s)
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check -r "$SRC/requirements.txt"
  "$VENV/bin/python" -m pip check
  echo "$PY_WANT" >"$PY_STAMP"
  echo "    Python clients installed in $(($(date +%s) - start)) s, $(du -sh "$VENV" | cut -f1)"
fi

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi

cargo build -p metis -p metis-tests --bins
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export METIS_BIN="$TARGET_DIR/debug/metis"
export FAKE_UPSTREAM_BIN="$TARGET_DIR/debug/fake-upstream"
export CLIENTS_NODE_DIR="$NODE_DIR"

cd "$SRC"
exec "$VENV/bin/python" -m pytest "$@"
