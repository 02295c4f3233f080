#!/usr/bin/env bash
# OpenAPI conformance: schemathesis fuzzes every operation the running gateway's own
# /openapi.json lists (whatever endpoints it has) and checks each answer against the document:
# response schemas, status codes, content types, headers, `Allow` on 405, rejection of
# schema-violating input, no 5xx. Zero failures are allowed.
#
#   scripts/schemathesis.sh                       # bounded run (50 examples per operation)
#   ST_MAX_EXAMPLES=200 ST_SEED=7 scripts/schemathesis.sh
#
# The gateway runs from target/debug/metis on 127.0.0.1 with a fresh data dir, the in-process
# mock provider, a gateway key and the admin API enabled (so admin endpoints are exercised).
# Credentials and per-operation settings: tests/schemathesis/schemathesis.toml. schemathesis is
# pinned and installed into .venv-schemathesis (gitignored), again only when the pin changes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${ST_MAX_EXAMPLES:-50}"
SEED="${ST_SEED:-20261207}"
# Hard bound on the fuzzing run itself (it takes ~30-60 s on a 2-core machine).
RUN_TIMEOUT="${ST_TIMEOUT:-300}"

VENV="$ROOT/.venv-schemathesis"
if [ ! -f "$VENV/.installed-$SCHEMATHESIS_VERSION" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  touch "$VENV/.installed-$SCHEMATHESIS_VERSION"
fi

cargo build -p metis --bins
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
METIS="${METIS_BIN:-$TARGET_DIR/debug/metis}"

WORK="$(mktemp -d)"
GW_PID=""
cleanup() {
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# No provider credentials from the caller's shell: only the mock provider is live.
unset OPENAI_API_KEY ANTHROPIC_API_KEY OPENROUTER_API_KEY OTEL_EXPORTER_OTLP_ENDPOINT
for v in $(env | grep -o '^METIS_GATEWAY_[A-Z_]*' || true); do unset "$v"; done

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/admin.token"
METIS_KEY="$("$METIS" gateway issue-key --name schemathesis --workspace /srv/schemathesis \
  --data-dir "$WORK/data" 2>/dev/null | awk '/^token:/ {print $2}')"
[ -n "$METIS_KEY" ] || { echo "could not issue a gateway key"; exit 1; }
METIS_ADMIN_TOKEN="$(cat "$WORK/admin.token")"
export METIS_KEY METIS_ADMIN_TOKEN

RUST_LOG=warn "$METIS" gateway --port 0 --data-dir "$WORK/data" \
  --admin-token-file "$WORK/admin.token" 2>"$WORK/gateway.log" &
GW_PID=$!
URL=""
for _ in $(seq 1 300); do
  URL="$(grep -o 'listening on http://[^ ]*' "$WORK/gateway.log" | head -1 | sed 's/listening on //' || true)"
  [ -n "$URL" ] && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gateway.log"; echo "the gateway did not start"; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { cat "$WORK/gateway.log"; echo "no boot line within 30 s"; exit 1; }
echo "gateway at $URL; schemathesis $SCHEMATHESIS_VERSION, $MAX_EXAMPLES examples per operation, seed $SEED"

# Two passes over the document, split by path so both stay generic over whatever it lists:
# the admin API would otherwise find the fuzzing key's id in its own responses and revoke or
# rotate it mid-run (schemathesis reuses ids it has seen), leaving the provider endpoints
# only 401s to check. Every check is on (the defaults), except where the config says why.
# One worker: with several, hypothesis parses lambda sources from threads and CPython 3.11
# can fail with "AST constructor recursion depth mismatch" (an error of the tool, not of the
# gateway).
run_pass() {
  local name="$1"; shift
  echo "==> schemathesis: $name"
  local status=0
  # Run from the scratch dir: schemathesis keeps a cache (.schemathesis/) in its working dir.
  (cd "$WORK" && timeout "$RUN_TIMEOUT" "$VENV/bin/schemathesis" \
    --config-file "$ROOT/tests/schemathesis/schemathesis.toml" --no-color \
    run "$URL/openapi.json" \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --request-timeout 30 \
    --wait-for-schema 30 \
    --warnings off \
    "$@") || status=$?
  if [ "$status" -ne 0 ]; then
    echo "--- gateway log (warnings and errors) ---"
    tail -n 50 "$WORK/gateway.log"
    [ "$status" -eq 124 ] && echo "schemathesis did not finish within ${RUN_TIMEOUT}s"
    exit "$status"
  fi
}
run_pass "every operation outside /admin/" --exclude-path-regex '^/admin/'
run_pass "the admin API" --include-path-regex '^/admin/'
echo "schemathesis: 0 failures"
