#!/usr/bin/env bash
# Gateway benchmarks (issue #3): one command, one machine, one run.
#
# Runs the same workloads against the bench mock directly, the metis gateway (sync and
# stream, OpenAI and Anthropic shapes, SQLite and redb storage, rate limiting on and off),
# nginx as a plain reverse proxy, LiteLLM proxy (config-file mode) and the Portkey gateway,
# all in front of the same mock on 127.0.0.1, then the trace-writer benchmark, and writes
# bench-results/results.md and bench-results/results.json. Every metis run also records the
# trace events the gateway dropped (its /metrics overflow counter, read before and after).
#
# CPU pinning: the proxy under test and the mock share core PROXY_CPU (default 1); the load
# generator runs alone on core LOADGEN_CPU (default 0). Every run is bounded: WARMUP + DURATION
# seconds of load (defaults 2 + 8), a 10 s per-request timeout, and fixed start-up limits.
#
# What it installs when missing (all of it gitignored): nginx (Debian package), litellm[proxy]
# pinned into .bench-venv/, @portkey-ai/gateway pinned into .bench-node/. A peer that cannot be
# installed or started is recorded in the report with the reason, and the rest still runs.
#
# Environment: BENCH_DURATION, BENCH_WARMUP (seconds per run), BENCH_SKIP_PEERS=1 (no LiteLLM
# or Portkey), BENCH_SKIP_POSTGRES=1 (no gateway-on-PostgreSQL rows; they need Debian's
# postgresql for scripts/pg-server.sh), BENCH_SKIP_INSTALL=1 (use what is there), PROXY_CPU,
# LOADGEN_CPU, BENCH_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DUR=${BENCH_DURATION:-8}
WARM=${BENCH_WARMUP:-2}
PROXY_CPU=${PROXY_CPU:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
OUT=${BENCH_OUT:-$ROOT/bench-results}
LITELLM_VERSION=1.108.7
PORTKEY_VERSION=1.15.2

# Fixed loopback ports (checked free before use).
MOCK_PORT=18081
SLOW_MOCK_PORT=18082
METIS_PORT=18420
METIS_RL_PORT=18421
METIS_SLOW_PORT=18422
METIS_REDB_PORT=18423
METIS_PG_PORT=18424
METIS_ROUTES_PORT=18425
PG_SERVER_PORT=18432
NGINX_PORT=18090
LITELLM_PORT=18400
PORTKEY_PORT=18787

BIN=$ROOT/target/release
RUNS=$OUT/runs.jsonl
LOGS=$OUT/logs
CLK=$(getconf CLK_TCK 2>/dev/null || echo 100)
STARTED_PIDS=()

log() { printf '==> %s\n' "$*" >&2; }

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

note() { # target text
  printf '{"kind":"note","target":%s,"text":%s}\n' "$(json_str "$1")" "$(json_str "$2")" >>"$RUNS"
  log "note ($1): $2"
}

cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${STARTED_PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
PG_ENV=(METIS_PG_PORT=$PG_SERVER_PORT METIS_PG_DIR=$OUT/tmp/pg-server)
pg_server() { env "${PG_ENV[@]}" "$ROOT/scripts/pg-server.sh" "$@"; }
trap 'cleanup; pg_server stop >/dev/null 2>&1 || true' EXIT

stop() { # pid
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() { # url seconds [curl args...]
  local url=$1 secs=$2
  shift 2
  for _ in $(seq $((secs * 10))); do
    if curl -s -o /dev/null -m 2 "$@" "$url"; then return 0; fi
    sleep 0.1
  done
  return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Sum VmRSS over a process and its children (nginx master + worker).
tree_rss_kb() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do total=$((total + $(rss_kb "$p"))); done
  echo "$total"
}

record_rss() { # target pid
  printf '{"kind":"rss","target":%s,"idle_kb":%s}\n' "$(json_str "$1")" "$(tree_rss_kb "$2")" >>"$RUNS"
}

# One load-generator run; the record is appended to $RUNS. A failing run becomes a note.
load() { # target scenario [bench-load args...]
  local target=$1 scenario=$2
  shift 2
  # For metis, count trace events dropped during the run (bench-load reads the gateway's
  # metis_trace_events_overflowed_total before and after): a writer that falls behind and
  # overflows its queue makes the run look cheaper than it is, so it is reported per run.
  local metrics=() a prev=""
  if [[ $target == metis* ]]; then
    for a in "$@"; do
      [ "$prev" = --url ] && metrics=(--metrics-url "$(sed -E 's#^(https?://[^/]+).*#\1#' <<<"$a")/metrics")
      prev=$a
    done
  fi
  if ! taskset -c "$LOADGEN_CPU" "$BIN/bench-load" run --json-out "$RUNS" --clk-tck "$CLK" \
    --duration "$DUR" --warmup "$WARM" --timeout 10 \
    --target "$target" --scenario "$scenario" "${metrics[@]}" "$@" >/dev/null 2>>"$LOGS/bench-load.err"; then
    note "$target" "bench-load failed for $scenario $* (see logs/bench-load.err)"
  fi
  tail -n 1 "$LOGS/bench-load.err" >&2 || true
}

# ---------------------------------------------------------------------------------------------
# 0. Prerequisites
# ---------------------------------------------------------------------------------------------
[ "$(nproc)" -ge 2 ] || { echo "bench.sh needs 2 CPUs (one for the load generator)" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT" "$LOGS" "$OUT/bodies" "$OUT/tmp"
: >"$RUNS"

for p in $MOCK_PORT $SLOW_MOCK_PORT $METIS_PORT $METIS_RL_PORT $METIS_SLOW_PORT $METIS_REDB_PORT $NGINX_PORT $LITELLM_PORT $PORTKEY_PORT; do
  port_free "$p" || { echo "port $p on 127.0.0.1 is in use; stop what holds it" >&2; exit 1; }
done

if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    log "installing nginx (apt)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    (export DEBIAN_FRONTEND=noninteractive; $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nginx) \
      >"$LOGS/install-nginx.log" 2>&1 || log "nginx install failed (see logs/install-nginx.log)"
  fi
  if [ "${BENCH_SKIP_PEERS:-0}" != 1 ]; then
    if [ "$(.bench-venv/bin/python -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null)" != "$LITELLM_VERSION" ] ||
      [ ! -x .bench-venv/bin/litellm ]; then
      log "installing litellm[proxy]==$LITELLM_VERSION into .bench-venv"
      { python3 -m venv .bench-venv && .bench-venv/bin/pip install -q "litellm[proxy]==$LITELLM_VERSION"; } \
        >"$LOGS/install-litellm.log" 2>&1 || log "litellm install failed (see logs/install-litellm.log)"
    fi
    if [ ! -f ".bench-node/node_modules/@portkey-ai/gateway/package.json" ]; then
      log "installing @portkey-ai/gateway@$PORTKEY_VERSION into .bench-node"
      { mkdir -p .bench-node && cd .bench-node && { [ -f package.json ] || echo '{"name":"metis-bench-peers","private":true}' >package.json; } &&
        npm install --no-audit --no-fund "@portkey-ai/gateway@$PORTKEY_VERSION"; } \
        >"$LOGS/install-portkey.log" 2>&1 || log "portkey install failed (see logs/install-portkey.log)"
      cd "$ROOT"
    fi
  fi
fi
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)

log "building release binaries (metis, metis-bench)"
cargo build --release --locked -p metis -p metis-bench >"$LOGS/build.log" 2>&1 || {
  tail -n 30 "$LOGS/build.log" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# 1. Machine and versions
# ---------------------------------------------------------------------------------------------
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
# shellcheck disable=SC1091
OS=$( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null || uname -s)
NGINX_V=$("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///' || echo "not installed")
LITELLM_V=$(.bench-venv/bin/pip show litellm 2>/dev/null | awk '/^Version/ {print $2}' || true)
PORTKEY_V=$(python3 -c 'import json;print(json.load(open(".bench-node/node_modules/@portkey-ai/gateway/package.json"))["version"])' 2>/dev/null || true)
python3 - "$RUNS" <<EOF
import json, sys
meta = {
  "kind": "meta",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "machine": "$(nproc) vCPU ($CPU_MODEL), $MEM RAM, $OS, kernel $(uname -r); shared VM, load average at start $(cut -d' ' -f1-3 /proc/loadavg)",
  "pinning": "proxy under test + mock on CPU $PROXY_CPU (taskset), load generator on CPU $LOADGEN_CPU; ${WARM} s warm-up + ${DUR} s measured per run",
  "command": "scripts/bench.sh (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- . 2>/dev/null || echo ', with uncommitted changes'))",
  "mock": "bench-mock (hyper, 1 thread, TCP_NODELAY, head+body in one write): 64-token completion, streams of 16 deltas sent at once; the paced mock sends 16 deltas 20 ms apart",
  "versions": {
    "metis": "$("$BIN/metis" --version 2>/dev/null | awk '{print $2}')",
    "rustc": "$(rustc --version | awk '{print $2}')",
    "nginx": "${NGINX_V:-not installed}",
    "litellm": "${LITELLM_V:-not installed}",
    "portkey gateway": "${PORTKEY_V:-not installed}",
    "node": "$(node --version 2>/dev/null || echo none)",
    "python": "$(python3 --version | awk '{print $2}')",
  },
}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(meta) + "\n")
EOF

# ---------------------------------------------------------------------------------------------
# 2. Request bodies
# ---------------------------------------------------------------------------------------------
B=$OUT/bodies
SYS='You are a terse assistant.'
ASK='Say hello in five words.'
printf '{"model":"gpt-5","max_tokens":64,"messages":[{"role":"system","content":"%s"},{"role":"user","content":"%s"}]}' "$SYS" "$ASK" >"$B/openai-sync.json"
printf '{"model":"gpt-5","max_tokens":64,"stream":true,"messages":[{"role":"system","content":"%s"},{"role":"user","content":"%s"}]}' "$SYS" "$ASK" >"$B/openai-stream.json"
printf '{"model":"haiku","max_tokens":64,"system":"%s","messages":[{"role":"user","content":"%s"}]}' "$SYS" "$ASK" >"$B/anthropic-sync.json"
printf '{"model":"haiku","max_tokens":64,"stream":true,"system":"%s","messages":[{"role":"user","content":"%s"}]}' "$SYS" "$ASK" >"$B/anthropic-stream.json"
printf '{"model":"haiku","max_tokens":64,"messages":[{"role":"system","content":"%s"},{"role":"user","content":"%s"}]}' "$SYS" "$ASK" >"$B/openai-to-anthropic-sync.json"
printf '{"model":"mock","max_tokens":64,"messages":[{"role":"system","content":"%s"},{"role":"user","content":"%s"}]}' "$SYS" "$ASK" >"$B/openai-mock-provider.json"

OA_SYNC=(--body-file "$B/openai-sync.json" --expect chat.completion)
OA_STREAM=(--body-file "$B/openai-stream.json" --expect '[DONE]')
AN_SYNC=(--body-file "$B/anthropic-sync.json" --expect end_turn)
AN_STREAM=(--body-file "$B/anthropic-stream.json" --expect message_stop)
AN_HDR=(-H 'anthropic-version: 2023-06-01')

# ---------------------------------------------------------------------------------------------
# 3. Mocks
# ---------------------------------------------------------------------------------------------
start_mock() { # port log [args...]; sets START_PID
  local port=$1 logf=$2
  shift 2
  taskset -c "$PROXY_CPU" "$BIN/bench-mock" --port "$port" "$@" >"$logf" 2>&1 &
  START_PID=$!
  STARTED_PIDS+=("$START_PID")
  wait_http "http://127.0.0.1:$port/health" 10 || { echo "bench-mock on $port did not start" >&2; exit 1; }
}
start_mock $MOCK_PORT "$LOGS/mock.log"
MOCK_PID=$START_PID
start_mock $SLOW_MOCK_PORT "$LOGS/mock-slow.log" --chunk-delay-ms 20
SLOW_MOCK_PID=$START_PID
MOCK=http://127.0.0.1:$MOCK_PORT
SLOW=http://127.0.0.1:$SLOW_MOCK_PORT

log "direct to the mock"
D=(--target-pid "$MOCK_PID")
load direct openai-sync --url "$MOCK/v1/chat/completions" "${OA_SYNC[@]}" "${D[@]}" --concurrency 1
load direct openai-sync --url "$MOCK/v1/chat/completions" "${OA_SYNC[@]}" "${D[@]}" --concurrency 32
load direct openai-sync --url "$MOCK/v1/chat/completions" "${OA_SYNC[@]}" "${D[@]}" --rate 1000
load direct openai-stream --url "$MOCK/v1/chat/completions" "${OA_STREAM[@]}" "${D[@]}" --concurrency 32
load direct anthropic-sync --url "$MOCK/v1/messages" "${AN_SYNC[@]}" "${D[@]}" --concurrency 32
load direct anthropic-sync --url "$MOCK/v1/messages" "${AN_SYNC[@]}" "${D[@]}" --rate 1000
load direct anthropic-stream --url "$MOCK/v1/messages" "${AN_STREAM[@]}" "${D[@]}" --concurrency 32
load direct openai-stream-slow --url "$SLOW/v1/chat/completions" "${OA_STREAM[@]}" --target-pid "$SLOW_MOCK_PID" --concurrency 256 --connections 256

# ---------------------------------------------------------------------------------------------
# 4. metis
# ---------------------------------------------------------------------------------------------
# Extra `issue-key` flags and a trace to pre-load (requests of the issued key) for the next
# start_metis call; both reset after it.
ISSUE_ARGS=()
FILL_REQUESTS=0
start_metis() { # name port upstream [extra flags...]; sets START_PID, START_TOKEN, START_KEY_ID, START_SECS
  local name=$1 port=$2 upstream=$3
  shift 3
  local dir=$OUT/tmp/$name
  rm -rf "$dir" && mkdir -p "$dir"
  local issued
  issued=$("$BIN/metis" gateway issue-key --data-dir "$dir" --name bench --workspace "$dir" \
    "${ISSUE_ARGS[@]}" 2>>"$LOGS/$name.log")
  START_TOKEN=$(sed -n 's/^ *token: *\(gw_[0-9a-f]*\).*/\1/p' <<<"$issued")
  START_KEY_ID=$(sed -n 's/^ *key_id: *\(gk_[0-9A-Za-z]*\).*/\1/p' <<<"$issued")
  [ -n "$START_TOKEN" ] || { echo "could not issue a metis key (see logs/$name.log)" >&2; exit 1; }
  if [ "$FILL_REQUESTS" -gt 0 ]; then
    taskset -c "$PROXY_CPU" "$BIN/bench-trace" fill --db "$dir/metis.db" --requests "$FILL_REQUESTS" \
      --key-id "$START_KEY_ID" >"$LOGS/$name-fill.json" 2>>"$LOGS/$name.log" ||
      { echo "could not pre-load the trace (see logs/$name.log)" >&2; exit 1; }
  fi
  ISSUE_ARGS=()
  FILL_REQUESTS=0
  local t0
  t0=$(date +%s.%N)
  taskset -c "$PROXY_CPU" "$BIN/metis" gateway --port "$port" --data-dir "$dir" \
    --openai-base-url "$upstream/v1" --openai-api-key sk-bench \
    --anthropic-base-url "$upstream" --anthropic-api-key sk-ant-bench \
    --log-format text "$@" >>"$LOGS/$name.log" 2>&1 &
  START_PID=$!
  STARTED_PIDS+=("$START_PID")
  wait_http "http://127.0.0.1:$port/readyz" 60 --fail ||
    { echo "metis ($name) did not start (see logs/$name.log)" >&2; exit 1; }
  START_SECS=$(python3 -c "import sys,time; print(round(time.time() - float(sys.argv[1]), 3))" "$t0")
}

log "metis (auth + trace writing on, rate limiting off)"
start_metis metis $METIS_PORT "$MOCK" --enable-mock-provider
GW_PID=$START_PID GW_TOKEN=$START_TOKEN
GW=http://127.0.0.1:$METIS_PORT
sleep 2
record_rss metis "$GW_PID"
M=(--target-pid "$GW_PID" --mock-pid "$MOCK_PID")
OA_AUTH=(-H "Authorization: Bearer $GW_TOKEN")
AN_AUTH=(-H "x-api-key: $GW_TOKEN" "${AN_HDR[@]}")
load metis openai-sync --url "$GW/v1/chat/completions" "${OA_AUTH[@]}" "${OA_SYNC[@]}" "${M[@]}" --concurrency 1
load metis openai-sync --url "$GW/v1/chat/completions" "${OA_AUTH[@]}" "${OA_SYNC[@]}" "${M[@]}" --concurrency 32
load metis openai-sync --url "$GW/v1/chat/completions" "${OA_AUTH[@]}" "${OA_SYNC[@]}" "${M[@]}" --rate 1000
load metis openai-stream --url "$GW/v1/chat/completions" "${OA_AUTH[@]}" "${OA_STREAM[@]}" "${M[@]}" --concurrency 32
load metis anthropic-sync --url "$GW/v1/messages" "${AN_AUTH[@]}" "${AN_SYNC[@]}" "${M[@]}" --concurrency 32
load metis anthropic-sync --url "$GW/v1/messages" "${AN_AUTH[@]}" "${AN_SYNC[@]}" "${M[@]}" --rate 1000
load metis anthropic-stream --url "$GW/v1/messages" "${AN_AUTH[@]}" "${AN_STREAM[@]}" "${M[@]}" --concurrency 32
load metis-translated openai-to-anthropic-sync --baseline-scenario anthropic-sync \
  --note "OpenAI-shaped request for haiku: translated to Anthropic Messages and back" \
  --url "$GW/v1/chat/completions" "${OA_AUTH[@]}" --body-file "$B/openai-to-anthropic-sync.json" --expect chat.completion "${M[@]}" --concurrency 32
load metis-mock-provider openai-sync --note "model mock: the in-process mock provider, no upstream hop" \
  --url "$GW/v1/chat/completions" "${OA_AUTH[@]}" --body-file "$B/openai-mock-provider.json" --expect chat.completion --target-pid "$GW_PID" --concurrency 32
log "metis routes: the same OpenAI call as a plain model, a 1-deployment route and a 5-deployment group"
# Five deployments on five provider instances of the same mock, all in priority group 0:
# every request runs the balancer (two weighted draws, health locks) and the cost of the
# chain bookkeeping; the plain-model run on the same process is the baseline.
ROUTES_TOML=$OUT/tmp/routes.toml
{
  printf '[[routes.r1]]\nprovider = "openai"\nmodel = "gpt-5"\n\n'
  for i in 1 2 3 4 5; do
    printf '[providers.m%s]\nkind = "openai"\nbase_url = "%s/v1"\napi_key = "sk-bench"\n\n' "$i" "$MOCK"
    printf '[[routes.r5]]\nprovider = "m%s"\nmodel = "gpt-5"\n\n' "$i"
  done
} >"$ROUTES_TOML"
start_metis metis-routes $METIS_ROUTES_PORT "$MOCK" --config "$ROUTES_TOML"
RT_PID=$START_PID RT_TOKEN=$START_TOKEN
RT=http://127.0.0.1:$METIS_ROUTES_PORT
sleep 2
for r in r1 r5; do
  sed "s/\"model\":\"gpt-5\"/\"model\":\"$r\"/" "$B/openai-sync.json" >"$B/openai-sync-$r.json"
done
RM=(--target-pid "$RT_PID" --mock-pid "$MOCK_PID")
RT_AUTH=(-H "Authorization: Bearer $RT_TOKEN")
load metis-routes openai-sync --note "plain model gpt-5 (no route), the baseline of the two route runs" \
  --url "$RT/v1/chat/completions" "${RT_AUTH[@]}" "${OA_SYNC[@]}" "${RM[@]}" --concurrency 32
load metis-routes openai-sync-route-1 --baseline-scenario openai-sync --note "route r1: one deployment" \
  --url "$RT/v1/chat/completions" "${RT_AUTH[@]}" --body-file "$B/openai-sync-r1.json" --expect chat.completion "${RM[@]}" --concurrency 32
load metis-routes openai-sync-route-5 --baseline-scenario openai-sync --note "route r5: five deployments in one priority group (weighted power-of-two-choices)" \
  --url "$RT/v1/chat/completions" "${RT_AUTH[@]}" --body-file "$B/openai-sync-r5.json" --expect chat.completion "${RM[@]}" --concurrency 32
stop "$RT_PID"

log "metis with its trace writer stalled (another connection holds the SQLite write lock)"
STALL_SECS=$(awk -v w="$WARM" -v d="$DUR" 'BEGIN { print w + d + 1 }')
stalled_run() { # bench-load load args...
  taskset -c "$LOADGEN_CPU" "$BIN/bench-trace" stall --db "$OUT/tmp/metis/metis.db" --seconds "$STALL_SECS" \
    >>"$LOGS/stall.json" 2>>"$LOGS/stall.err" &
  local stall_pid=$!
  STARTED_PIDS+=("$stall_pid")
  sleep 0.5
  load metis-writer-stalled openai-sync --baseline-scenario openai-sync \
    --note "trace writer blocked by a second connection holding the SQLite write lock" \
    --url "$GW/v1/chat/completions" "${OA_AUTH[@]}" "${OA_SYNC[@]}" "${M[@]}" "$@"
  wait "$stall_pid" || note metis-writer-stalled "the lock holder failed: $(tail -n 2 "$LOGS/stall.err")"
  # Let the writer catch up before the next run.
  sleep 2
}
stalled_run --rate 1000
stalled_run --concurrency 32
note metis-writer-stalled "lock holder: $(tr '\n' ' ' <"$LOGS/stall.json"); gateway WARN lines 'trace queue full': $(grep -c 'trace queue full' "$LOGS/metis.log" || true), trace batch failures logged: $(grep -c -i 'trace batch' "$LOGS/metis.log" || true)"
stop "$GW_PID"

log "metis on redb (--store redb; auth + trace writing on, rate limiting off)"
ISSUE_ARGS=(--store redb)
start_metis metis-redb $METIS_REDB_PORT "$MOCK" --store redb
RB_PID=$START_PID RB_TOKEN=$START_TOKEN
RB=http://127.0.0.1:$METIS_REDB_PORT
sleep 2
record_rss metis-redb "$RB_PID"
RBM=(--target-pid "$RB_PID" --mock-pid "$MOCK_PID")
RB_OA=(-H "Authorization: Bearer $RB_TOKEN")
RB_AN=(-H "x-api-key: $RB_TOKEN" "${AN_HDR[@]}")
load metis-redb openai-sync --url "$RB/v1/chat/completions" "${RB_OA[@]}" "${OA_SYNC[@]}" "${RBM[@]}" --concurrency 32
load metis-redb openai-sync --url "$RB/v1/chat/completions" "${RB_OA[@]}" "${OA_SYNC[@]}" "${RBM[@]}" --rate 1000
load metis-redb openai-stream --url "$RB/v1/chat/completions" "${RB_OA[@]}" "${OA_STREAM[@]}" "${RBM[@]}" --concurrency 32
load metis-redb anthropic-sync --url "$RB/v1/messages" "${RB_AN[@]}" "${AN_SYNC[@]}" "${RBM[@]}" --concurrency 32
load metis-redb anthropic-sync --url "$RB/v1/messages" "${RB_AN[@]}" "${AN_SYNC[@]}" "${RBM[@]}" --rate 1000
load metis-redb anthropic-stream --url "$RB/v1/messages" "${RB_AN[@]}" "${AN_STREAM[@]}" "${RBM[@]}" --concurrency 32
stop "$RB_PID"

if [ "${BENCH_SKIP_POSTGRES:-0}" != 1 ]; then
log "metis on PostgreSQL (--store postgres; a throwaway server on the proxy's core, fsync off)"
# The database server shares the gateway's core, like a single-box deployment; its own CPU is
# not in the gateway's CPU per request (reported in a note instead).
PG_ADMIN=$(taskset -c "$PROXY_CPU" env "${PG_ENV[@]}" "$ROOT/scripts/pg-server.sh" start |
  sed -n "s/^export METIS_TEST_DATABASE_URL='\(.*\)'$/\1/p")
PG_URL=${PG_ADMIN/\/postgres\?/\/metis_bench?}
psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS metis_bench" -c "CREATE DATABASE metis_bench" >>"$LOGS/metis-postgres.log" 2>&1
ISSUE_ARGS=(--store postgres --database-url "$PG_URL" --keystore store)
start_metis metis-postgres $METIS_PG_PORT "$MOCK" --store postgres --database-url "$PG_URL" --keystore store
PG_GW_PID=$START_PID PG_TOKEN=$START_TOKEN
PGW=http://127.0.0.1:$METIS_PG_PORT
sleep 2
record_rss metis-postgres "$PG_GW_PID"
PGM=(--target-pid "$PG_GW_PID" --mock-pid "$MOCK_PID")
PG_OA=(-H "Authorization: Bearer $PG_TOKEN")
PG_AN=(-H "x-api-key: $PG_TOKEN" "${AN_HDR[@]}")
pg_cpu() { # total CPU ticks of the database server's processes (the postmaster and children)
  local total=0 pid master
  master=$(head -n 1 "$OUT/tmp/pg-server/data/postmaster.pid" 2>/dev/null || echo 0)
  for pid in "$master" $(pgrep -P "$master" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
PG_CPU0=$(pg_cpu)
load metis-postgres openai-sync --url "$PGW/v1/chat/completions" "${PG_OA[@]}" "${OA_SYNC[@]}" "${PGM[@]}" --concurrency 32
PG_CPU1=$(pg_cpu)
load metis-postgres openai-sync --url "$PGW/v1/chat/completions" "${PG_OA[@]}" "${OA_SYNC[@]}" "${PGM[@]}" --rate 1000
load metis-postgres anthropic-sync --url "$PGW/v1/messages" "${PG_AN[@]}" "${AN_SYNC[@]}" "${PGM[@]}" --concurrency 32
note metis-postgres "database server CPU during the concurrency-32 OpenAI run (warm-up included): $(( (PG_CPU1 - PG_CPU0) * 1000 / CLK )) ms"
stop "$PG_GW_PID"
pg_server stop >/dev/null 2>&1 || true
fi

log "metis with rate limiting on (limits high enough never to deny)"
start_metis metis-ratelimit $METIS_RL_PORT "$MOCK" \
  --rate-limit --rate-limit-per-key-rpm 1000000000 --rate-limit-per-ip-rpm 1000000000
RL_PID=$START_PID RL_TOKEN=$START_TOKEN
RL=http://127.0.0.1:$METIS_RL_PORT
sleep 1
R=(--target-pid "$RL_PID" --mock-pid "$MOCK_PID")
load metis-ratelimit openai-sync --url "$RL/v1/chat/completions" -H "Authorization: Bearer $RL_TOKEN" "${OA_SYNC[@]}" "${R[@]}" --concurrency 1
load metis-ratelimit openai-sync --url "$RL/v1/chat/completions" -H "Authorization: Bearer $RL_TOKEN" "${OA_SYNC[@]}" "${R[@]}" --concurrency 32
load metis-ratelimit openai-sync --url "$RL/v1/chat/completions" -H "Authorization: Bearer $RL_TOKEN" "${OA_SYNC[@]}" "${R[@]}" --rate 1000
stop "$RL_PID"

log "metis with spend caps on the key and 1M events of that key already in the trace"
ISSUE_ARGS=(--daily-cap-usd 1000000 --monthly-cap-usd 1000000)
FILL_REQUESTS=250000
start_metis metis-quota $METIS_RL_PORT "$MOCK"
Q_PID=$START_PID Q_TOKEN=$START_TOKEN
printf '{"kind":"quota","events":%s,"startup_s":%s,"fill":%s}\n' $((250000 * 4)) "$START_SECS" \
  "$(cat "$LOGS/metis-quota-fill.json")" >>"$RUNS"
sleep 1
Q=(--target-pid "$Q_PID" --mock-pid "$MOCK_PID")
load metis-quota openai-sync --url "$RL/v1/chat/completions" -H "Authorization: Bearer $Q_TOKEN" "${OA_SYNC[@]}" "${Q[@]}" --concurrency 1
load metis-quota openai-sync --url "$RL/v1/chat/completions" -H "Authorization: Bearer $Q_TOKEN" "${OA_SYNC[@]}" "${Q[@]}" --concurrency 32
stop "$Q_PID"

log "metis with 256 concurrent streams (paced mock)"
start_metis metis-streams $METIS_SLOW_PORT "$SLOW"
SL_PID=$START_PID SL_TOKEN=$START_TOKEN
sleep 1
load metis openai-stream-slow --url "http://127.0.0.1:$METIS_SLOW_PORT/v1/chat/completions" \
  -H "Authorization: Bearer $SL_TOKEN" "${OA_STREAM[@]}" --target-pid "$SL_PID" --mock-pid "$SLOW_MOCK_PID" \
  --concurrency 256
stop "$SL_PID"

# ---------------------------------------------------------------------------------------------
# 5. nginx
# ---------------------------------------------------------------------------------------------
if [ -x "$NGINX_BIN" ]; then
  log "nginx as a plain reverse proxy"
  NG=$OUT/tmp/nginx
  mkdir -p "$NG"
  cat >"$NG/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $NG/body;
  proxy_temp_path $NG/proxy;
  fastcgi_temp_path $NG/fastcgi;
  uwsgi_temp_path $NG/uwsgi;
  scgi_temp_path $NG/scgi;
  upstream mock {
    server 127.0.0.1:$MOCK_PORT;
    keepalive 256;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
  taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$NG" -c "$NG/nginx.conf" >"$LOGS/nginx.log" 2>&1 &
  NGINX_PID=$!
  STARTED_PIDS+=("$NGINX_PID")
  if wait_http "http://127.0.0.1:$NGINX_PORT/health" 10; then
    sleep 1
    record_rss nginx "$NGINX_PID"
    NGX=http://127.0.0.1:$NGINX_PORT
    N=(--target-pid "$NGINX_PID" --mock-pid "$MOCK_PID")
    load nginx openai-sync --url "$NGX/v1/chat/completions" "${OA_SYNC[@]}" "${N[@]}" --concurrency 1
    load nginx openai-sync --url "$NGX/v1/chat/completions" "${OA_SYNC[@]}" "${N[@]}" --concurrency 32
    load nginx openai-sync --url "$NGX/v1/chat/completions" "${OA_SYNC[@]}" "${N[@]}" --rate 1000
    load nginx openai-stream --url "$NGX/v1/chat/completions" "${OA_STREAM[@]}" "${N[@]}" --concurrency 32
    load nginx anthropic-sync --url "$NGX/v1/messages" "${AN_SYNC[@]}" "${N[@]}" --concurrency 32
    load nginx anthropic-stream --url "$NGX/v1/messages" "${AN_STREAM[@]}" "${N[@]}" --concurrency 32
  else
    note nginx "did not start: $(tail -n 3 "$LOGS/nginx.log" | tr '\n' ' ')"
  fi
  stop "$NGINX_PID"
else
  note nginx "not installed (apt-get install nginx failed; see logs/install-nginx.log)"
fi

# ---------------------------------------------------------------------------------------------
# 6. LiteLLM proxy (config-file mode, master key only: its database mode cannot run offline)
# ---------------------------------------------------------------------------------------------
if [ "${BENCH_SKIP_PEERS:-0}" = 1 ]; then
  note litellm "skipped (BENCH_SKIP_PEERS=1)"
elif [ -x .bench-venv/bin/litellm ]; then
  log "LiteLLM proxy $LITELLM_V (config-file mode, 1 worker)"
  LL=$OUT/tmp/litellm
  mkdir -p "$LL"
  cat >"$LL/config.yaml" <<EOF
model_list:
  - model_name: gpt-5
    litellm_params:
      model: openai/gpt-5
      api_base: http://127.0.0.1:$MOCK_PORT/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
EOF
  LITELLM_KEY="sk-$(python3 -c 'import secrets;print(secrets.token_hex(24))')"
  LITELLM_MASTER_KEY=$LITELLM_KEY LITELLM_LOCAL_MODEL_COST_MAP=True \
    taskset -c "$PROXY_CPU" .bench-venv/bin/litellm --config "$LL/config.yaml" \
    --host 127.0.0.1 --port $LITELLM_PORT >"$LOGS/litellm.log" 2>&1 &
  LITELLM_PID=$!
  STARTED_PIDS+=("$LITELLM_PID")
  if wait_http "http://127.0.0.1:$LITELLM_PORT/health/liveliness" 120; then
    sleep 3
    record_rss litellm "$LITELLM_PID"
    LLU=http://127.0.0.1:$LITELLM_PORT
    L=(--target-pid "$LITELLM_PID" --mock-pid "$MOCK_PID" -H "Authorization: Bearer $LITELLM_KEY")
    load litellm openai-sync --url "$LLU/v1/chat/completions" "${OA_SYNC[@]}" "${L[@]}" --concurrency 1
    load litellm openai-sync --url "$LLU/v1/chat/completions" "${OA_SYNC[@]}" "${L[@]}" --concurrency 32
    load litellm openai-stream --url "$LLU/v1/chat/completions" "${OA_STREAM[@]}" "${L[@]}" --concurrency 32
    note litellm "Anthropic /v1/messages not run: in front of an openai/ deployment LiteLLM calls /v1/responses upstream, which the bench mock does not serve; open-loop 1,000 req/s not run (LiteLLM saturates far below it)"
  else
    note litellm "did not become live within 120 s: $(tail -n 3 "$LOGS/litellm.log" | tr '\n' ' ')"
  fi
  stop "$LITELLM_PID"
else
  note litellm "not installed (pip install litellm[proxy]==$LITELLM_VERSION failed; see logs/install-litellm.log)"
fi

# ---------------------------------------------------------------------------------------------
# 7. Portkey gateway (Node)
# ---------------------------------------------------------------------------------------------
PK_ENTRY=.bench-node/node_modules/@portkey-ai/gateway/build/start-server.js
if [ "${BENCH_SKIP_PEERS:-0}" = 1 ]; then
  note portkey "skipped (BENCH_SKIP_PEERS=1)"
elif [ -f "$PK_ENTRY" ] && command -v node >/dev/null 2>&1; then
  log "Portkey gateway $PORTKEY_V ($(node --version))"
  PK=$OUT/tmp/portkey
  mkdir -p "$PK"
  # Portkey listens on every interface; this preload pins every listen() to loopback.
  cat >"$PK/loopback-only.cjs" <<'EOF'
'use strict';
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1');
  } else if (first && typeof first === 'object' && first.path === undefined) {
    args[0] = { ...first, host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};
EOF
  NODE_ENV=production taskset -c "$PROXY_CPU" node -r "$PK/loopback-only.cjs" "$PK_ENTRY" \
    --port=$PORTKEY_PORT --headless >"$LOGS/portkey.log" 2>&1 &
  PORTKEY_PID=$!
  STARTED_PIDS+=("$PORTKEY_PID")
  if wait_http "http://127.0.0.1:$PORTKEY_PORT/" 30; then
    sleep 1
    record_rss portkey "$PORTKEY_PID"
    PKU=http://127.0.0.1:$PORTKEY_PORT
    P=(--target-pid "$PORTKEY_PID" --mock-pid "$MOCK_PID" -H 'x-portkey-provider: openai'
      -H "x-portkey-custom-host: $MOCK/v1" -H 'Authorization: Bearer sk-bench')
    load portkey openai-sync --url "$PKU/v1/chat/completions" "${OA_SYNC[@]}" "${P[@]}" --concurrency 1
    load portkey openai-sync --url "$PKU/v1/chat/completions" "${OA_SYNC[@]}" "${P[@]}" --concurrency 32
    load portkey openai-stream --url "$PKU/v1/chat/completions" "${OA_STREAM[@]}" "${P[@]}" --concurrency 32
    if grep -q 'TypeError: immutable' "$LOGS/portkey.log"; then
      note portkey "streaming fails: every stream request logs 'TypeError: immutable' (Portkey-AI/gateway#1389, @hono/node-server on Node $(node --version)) and answers without a complete stream"
    fi
    note portkey "Anthropic /v1/messages not run: with the openai provider Portkey answers \"messages is not supported by openai\""
  else
    note portkey "did not start within 30 s: $(tail -n 3 "$LOGS/portkey.log" | tr '\n' ' ')"
  fi
  stop "$PORTKEY_PID"
else
  note portkey "not installed (npm install @portkey-ai/gateway@$PORTKEY_VERSION failed; see logs/install-portkey.log)"
fi

# ---------------------------------------------------------------------------------------------
# 8. Trace writer
# ---------------------------------------------------------------------------------------------
stop "$MOCK_PID"
stop "$SLOW_MOCK_PID"
log "trace writer: gateway writer vs raw rusqlite (CPU $PROXY_CPU)"
if taskset -c "$PROXY_CPU" "$BIN/bench-trace" writer --events 200000 --dir "$OUT/tmp/trace" \
  >"$LOGS/trace.json" 2>"$LOGS/trace.err"; then
  cat "$LOGS/trace.json" >>"$RUNS"
else
  note trace "bench-trace failed: $(tail -n 3 "$LOGS/trace.err" | tr '\n' ' ')"
fi
log "trace writer: raw inserts by transaction size and index set (CPU $PROXY_CPU)"
if taskset -c "$PROXY_CPU" "$BIN/bench-trace" ablation --dir "$OUT/tmp/trace" \
  >"$LOGS/trace-ablation.json" 2>"$LOGS/trace-ablation.err"; then
  cat "$LOGS/trace-ablation.json" >>"$RUNS"
else
  note trace "bench-trace ablation failed: $(tail -n 3 "$LOGS/trace-ablation.err" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------
# 9. Storage operations on a 1M-event trace: metis backup, metis trace prune
# ---------------------------------------------------------------------------------------------
ST=$OUT/tmp/storage
mkdir -p "$ST"
count_events() {
  python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM events").fetchone()[0])' "$1"
}
now_s() { date +%s.%N; }
if "$BIN/metis" backup --help >/dev/null 2>&1 && "$BIN/metis" trace prune --help >/dev/null 2>&1; then
  log "storage: metis backup and metis trace prune on a 1M-event trace (60 days, prune keeps 30)"
  if taskset -c "$PROXY_CPU" "$BIN/bench-trace" fill --db "$ST/metis.db" --requests 250000 \
    --key-id gk_storage_bench --span-days 60 >"$LOGS/storage-fill.json" 2>"$LOGS/storage.log"; then
    DB_BYTES=$(stat -c %s "$ST/metis.db")
    T0=$(now_s)
    if taskset -c "$PROXY_CPU" "$BIN/metis" backup "$ST/backup/metis-backup.db" --data-dir "$ST" \
      >"$LOGS/storage-backup.log" 2>&1; then
      T1=$(now_s)
      BEFORE=$(count_events "$ST/metis.db")
      T2=$(now_s)
      if taskset -c "$PROXY_CPU" "$BIN/metis" trace prune --days 30 --data-dir "$ST" \
        >"$LOGS/storage-prune.log" 2>&1; then
        T3=$(now_s)
        AFTER=$(count_events "$ST/metis.db")
        python3 - "$RUNS" "$DB_BYTES" "$T0" "$T1" "$T2" "$T3" "$BEFORE" "$AFTER" <<'EOF2'
import json, sys
runs, size, t0, t1, t2, t3, before, after = sys.argv[1:]
size, t0, t1, t2, t3 = int(size), float(t0), float(t1), float(t2), float(t3)
before, after = int(before), int(after)
fact = {
    "kind": "storage",
    "events": before,
    "db_mb": size / 1e6,
    "backup_s": t1 - t0,
    "backup_mb_s": size / 1e6 / (t1 - t0),
    "pruned_rows": before - after,
    "prune_s": t3 - t2,
    "prune_rows_s": (before - after) / (t3 - t2),
}
with open(runs, "a") as f:
    f.write(json.dumps(fact) + "\n")
EOF2
      else
        note storage "metis trace prune failed: $(tail -n 3 "$LOGS/storage-prune.log" | tr '\n' ' ')"
      fi
    else
      note storage "metis backup failed: $(tail -n 3 "$LOGS/storage-backup.log" | tr '\n' ' ')"
    fi
  else
    note storage "could not build the 1M-event trace: $(tail -n 3 "$LOGS/storage.log" | tr '\n' ' ')"
  fi
else
  note storage "backup MB/s and prune rows/s are not measured: this metis has no backup or trace-prune command"
fi

# ---------------------------------------------------------------------------------------------
# 10. Report
# ---------------------------------------------------------------------------------------------
"$BIN/bench-load" report --runs "$RUNS" --out-dir "$OUT"
rm -rf "$OUT/tmp"
log "done: $OUT/results.md, $OUT/results.json (raw records: $RUNS, logs: $LOGS)"
