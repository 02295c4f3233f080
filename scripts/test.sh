#!/usr/bin/env bash
# The whole test suite, as run by CI (.ci/run): formatting, lints, the supply-chain policy
# (cargo-deny against the vendored RustSec snapshot, licences, sources; the SBOM), every Rust test (unit,
# property, storage, HTTP through the real server, CLI, architecture) and the Python SDK tests
# (official `openai` and `anthropic` packages driving the real gateway binary) and the real-client
# tests (Claude Code, the Codex CLI, npm and Python SDKs and agent frameworks, pinned) and the
# operator console's browser tests (Playwright driving Debian's Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> Supply chain: dependency policy (deny.toml, offline advisories) and the SBOM"
scripts/supply-chain.sh

echo "==> Rust tests"
# A throwaway PostgreSQL on 127.0.0.1 for the PostgreSQL store's tests (stopped on exit);
# a server already named by METIS_TEST_DATABASE_URL is used as it is.
if [ -z "${METIS_TEST_DATABASE_URL:-}" ]; then
  eval "$(scripts/pg-server.sh start)"
  trap 'scripts/pg-server.sh stop' EXIT
fi
cargo build --workspace --bins --locked  # process-level tests spawn target/debug/metis
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "==> Python SDK tests"
scripts/python-tests.sh

echo "==> Real clients: Claude Code, Codex CLI, npm SDKs, agent frameworks"
scripts/client-tests.sh

echo "==> Operator console in Chromium (Playwright)"
scripts/console-tests.sh

echo "==> OpenAPI conformance (schemathesis against the served document)"
scripts/schemathesis.sh

echo "==> Deployment assets (Dockerfile, compose, Helm chart, docs)"
scripts/infra-tests.sh

echo "==> all tests passed"
