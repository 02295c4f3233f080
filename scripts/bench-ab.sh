#!/usr/bin/env bash
# Quick A/B of the gateway's cost: CPU per request of one `metis` binary at concurrency 32 on
# the OpenAI sync route against the bench mock (proxy + mock on CPU 1, load on CPU 0), 2 s
# warm-up + 6 s measured. Usage: scripts/bench-ab.sh PATH/TO/metis LABEL [MOCK_PORT]
# Needs target/release/bench-mock and bench-load (cargo build --release -p metis-bench).
# PERF_OUT=FILE also records a perf profile of the gateway (5 s of the measured window;
# PERF_ARGS overrides the default "-F 2000 -g", e.g. "-F 500 --call-graph dwarf").
# LOAD overrides the load (default "--concurrency 32"; e.g. "--rate 1000 --connections 64").
# Run two binaries alternately, several times, and compare: the machine is shared and noisy.
set -u
BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release"
METIS=$1; LABEL=$2; PORTM=${3:-19501}; PORTG=$((PORTM+1))
D=$(mktemp -d)
taskset -c 1 $BIN/bench-mock --port $PORTM > $D/mock.log 2>&1 &
MOCK=$!
sleep 0.5
TOKEN=$($METIS gateway issue-key --data-dir $D --name bench --workspace $D 2>/dev/null | awk '/token:/{print $2}')
taskset -c 1 env OPENAI_API_KEY=k $METIS gateway --port $PORTG --data-dir $D --openai-base-url http://127.0.0.1:$PORTM/v1 --log-format json > $D/gw.out 2> $D/gw.err &
GW=$!
for i in $(seq 1 50); do curl -sf http://127.0.0.1:$PORTG/healthz >/dev/null && break; sleep 0.1; done
echo '{"model":"gpt-5","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}' > $D/body.json
if [ -n "${PERF_OUT:-}" ]; then (sleep 2; perf record ${PERF_ARGS:--F 2000 -g} -o "$PERF_OUT" -p $GW -- sleep 5 >/dev/null 2>&1) & fi
taskset -c 0 $BIN/bench-load run --url http://127.0.0.1:$PORTG/v1/chat/completions -H "Authorization: Bearer $TOKEN" --body-file $D/body.json --expect chat.completion ${LOAD:---concurrency 32} --duration 6 --warmup 2 --target-pid $GW --mock-pid $MOCK --json-out $D/run.jsonl --target $LABEL --scenario openai-sync > /dev/null 2> $D/load.err
tail -n 2 $D/load.err
python3 -c "
import json
r=[json.loads(l) for l in open('$D/run.jsonl')][-1]
threads=', '.join(f'{k} {v:.1f}' for k,v in sorted(r.get('target_threads_us_per_req',{}).items()) if v)
print(f\"$LABEL: {r['cpu_target_us_per_req']:.1f} us CPU/req ({threads}); {r['throughput_rps']:.0f} req/s; p99 {r['latency']['p99_us']/1000:.2f} ms; rss {r['target_rss_max_kb']/1024:.1f} MB; errors {sum(r['errors'].values())}\")
"
kill $GW $MOCK 2>/dev/null; wait 2>/dev/null
rm -rf $D
