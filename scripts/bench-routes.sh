#!/usr/bin/env bash
# The cost of routing, on its own (the same runs are part of scripts/bench.sh): one metis
# process in front of the bench mock, the same OpenAI sync call (32 connections, closed loop)
# as a plain model, as a route of 1 deployment and as a route of 5 deployments in one
# priority group (five provider instances of the same mock), run in turn and repeated
# BENCH_ROUNDS times. Prints throughput and the gateway's CPU per request for each run.
#
# CPU pinning as in bench.sh: metis and the mock on PROXY_CPU (default 1), the load generator
# on LOADGEN_CPU (default 0). Needs target/release/{metis,bench-mock,bench-load}
# (`cargo build --release -p metis -p metis-bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/target/release
DUR=${BENCH_DURATION:-8}
WARM=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-2}
PROXY_CPU=${PROXY_CPU:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
MOCK_PORT=18181
METIS_PORT=18525
OUT=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"' EXIT

wait_http() { # url
  for _ in $(seq 100); do curl -s -o /dev/null -m 2 "$1" && return 0; sleep 0.1; done
  echo "$1 did not answer" >&2
  exit 1
}

taskset -c "$PROXY_CPU" "$BIN/bench-mock" --port $MOCK_PORT >"$OUT/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_http "http://127.0.0.1:$MOCK_PORT/health"
MOCK=http://127.0.0.1:$MOCK_PORT

{
  printf '[[routes.r1]]\nprovider = "openai"\nmodel = "gpt-5"\n\n'
  for i in 1 2 3 4 5; do
    printf '[providers.m%s]\nkind = "openai"\nbase_url = "%s/v1"\napi_key = "sk-bench"\n\n' "$i" "$MOCK"
    printf '[[routes.r5]]\nprovider = "m%s"\nmodel = "gpt-5"\n\n' "$i"
  done
} >"$OUT/routes.toml"
TOKEN=$("$BIN/metis" gateway issue-key --data-dir "$OUT/gw" --name bench --workspace "$OUT" 2>/dev/null |
  sed -n 's/^ *token: *\(gw_[0-9a-f]*\).*/\1/p')
taskset -c "$PROXY_CPU" "$BIN/metis" gateway --port $METIS_PORT --data-dir "$OUT/gw" \
  --openai-base-url "$MOCK/v1" --openai-api-key sk-bench --config "$OUT/routes.toml" \
  --log-format text >"$OUT/metis.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_http "http://127.0.0.1:$METIS_PORT/readyz"

printf '%-10s %5s %10s %16s\n' model round req/s "metis µs CPU/req"
for round in $(seq "$ROUNDS"); do
  for model in gpt-5 r1 r5; do
    printf '{"model":"%s","max_tokens":64,"messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello in five words."}]}' "$model" >"$OUT/body.json"
    taskset -c "$LOADGEN_CPU" "$BIN/bench-load" run --url "http://127.0.0.1:$METIS_PORT/v1/chat/completions" \
      -H "Authorization: Bearer $TOKEN" --body-file "$OUT/body.json" --expect chat.completion \
      --concurrency 32 --duration "$DUR" --warmup "$WARM" --target-pid "$GW_PID" --mock-pid "$MOCK_PID" \
      --clk-tck "$(getconf CLK_TCK)" --target metis --scenario "$model" >"$OUT/run.json" 2>/dev/null
    python3 - "$OUT/run.json" "$model" "$round" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"{sys.argv[2]:<10} {sys.argv[3]:>5} {r['throughput_rps']:>10.0f} {r['cpu_target_us_per_req']:>16.1f}")
EOF
  done
done
