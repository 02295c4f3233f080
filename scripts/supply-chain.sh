#!/usr/bin/env bash
# Supply-chain policy (deny.toml), checked offline, plus the SBOM of the `metis` binary.
#
#   scripts/supply-chain.sh                  policy check, self-tests, SBOM check (what CI runs)
#   scripts/supply-chain.sh --check          the policy check only
#   scripts/supply-chain.sh --sbom FILE      write the CycloneDX SBOM of `metis` to FILE
#   scripts/supply-chain.sh --refresh-db [DIR]
#                                            re-vendor the RustSec snapshot from DIR
#                                            (default ../shared/advisory-db); commit deny/
#
# The policy: advisories against the RustSec snapshot vendored in deny/advisory-db/ (nothing
# is fetched: CI starts from a clean clone and must not depend on the network or on a
# ../shared checkout), licences against the allow-list in deny.toml, crates only from
# crates.io, duplicate versions reported (warnings). The tool is cargo-deny, pinned below and
# built once into .tools/cargo-deny/ (gitignored; reused while its version matches).
#
# Self-tests prove that the policy really fails, each with a throwaway fixture (nothing in
# the repository is edited): a fake vulnerability and a fake "unmaintained" notice against
# crates of our own Cargo.lock (in a temp copy of the database), a dependency under a
# disallowed licence, and a git dependency. The licence and source fixtures have compliant
# twins that must pass, so a failure cannot come from a broken fixture.
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD

CARGO_DENY_VERSION=0.20.2
DENY_ROOT=$ROOT/.tools/cargo-deny
DB_ARCHIVE=$ROOT/deny/advisory-db/crates.tar.gz
# cargo-deny keeps each database in <db-path>/<last url segment>-<xxhash64 of the url>; the
# url is deny.toml's `db-urls` entry. A different name here means cargo-deny reports the
# database as missing (a loud failure, never a silent pass).
DB_DIR_NAME=advisory-db-3157b0e258782691
export METIS_ADVISORY_DBS=${METIS_ADVISORY_DBS:-$ROOT/target/supply-chain/advisory-dbs}

PASSED=0
FAILED=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ok() { PASSED=$((PASSED + 1)); echo "  ok   $1"; }
bad() { FAILED=$((FAILED + 1)); echo "  FAIL $1"; }

# ------------------------------------------------------------------ tool
deny_bin() {
  local bin=$DENY_ROOT/bin/cargo-deny
  if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "$bin"
    return
  fi
  if command -v cargo-deny >/dev/null 2>&1 \
    && [ "$(cargo-deny --version 2>/dev/null)" = "cargo-deny $CARGO_DENY_VERSION" ]; then
    command -v cargo-deny
    return
  fi
  echo "==> installing cargo-deny $CARGO_DENY_VERSION into .tools/cargo-deny (once per clone)" >&2
  local start=$SECONDS
  cargo install --quiet --locked "cargo-deny@$CARGO_DENY_VERSION" --root "$DENY_ROOT" --force >&2
  echo "    built in $((SECONDS - start)) s" >&2
  echo "$bin"
}

# ------------------------------------------------------------------ advisory database
# Lay the vendored snapshot out the way cargo-deny reads a database: a git checkout with
# `crates/` (cargo-deny takes the checkout's age from git and refuses anything else).
# Rebuilt only when the archive changes.
prepare_db() {
  local root=$1 archive=$2
  local dir=$root/$DB_DIR_NAME
  local sum
  sum=$(sha256sum "$archive" | cut -c1-64)
  if [ -f "$dir/.snapshot-sha256" ] && [ "$(cat "$dir/.snapshot-sha256")" = "$sum" ]; then
    return
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  tar -xzf "$archive" -C "$dir"
  git -C "$dir" init -q
  git -C "$dir" add crates
  git -C "$dir" -c user.name=metis -c user.email=metis@localhost -c commit.gpgsign=false \
    commit -q -m "vendored RustSec snapshot ($sum)"
  echo "$sum" >"$dir/.snapshot-sha256"
}

snapshot_note() {
  local line date age
  line=$(head -1 "$ROOT/deny/advisory-db/SNAPSHOT")
  date=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' <<<"$line" | head -1)
  age=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))
  echo "advisory snapshot: $line; $age days old"
  if [ "$age" -gt 90 ]; then
    echo "WARNING: the advisory snapshot is over 90 days old; refresh it with" \
      "scripts/supply-chain.sh --refresh-db <advisory-db checkout>"
  fi
}

refresh_db() {
  local src=${1:-$ROOT/../shared/advisory-db}
  [[ $src = /* ]] || src=$CALLER_DIR/$src
  [ -d "$src/crates" ] || { echo "no crates/ directory in $src"; exit 1; }
  local snapshot
  if [ -f "$src/SNAPSHOT" ]; then
    snapshot=$(cat "$src/SNAPSHOT")
  elif git -C "$src" rev-parse HEAD >/dev/null 2>&1; then
    snapshot="snapshot of rustsec/advisory-db at $(git -C "$src" rev-parse HEAD) ($(git -C "$src" show -s --format=%cs HEAD)); data only"
  else
    echo "$src has neither a SNAPSHOT file nor git history to date it"; exit 1
  fi
  local date
  date=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' <<<"$snapshot" | head -1)
  # Reproducible archive: same data, same bytes (no spurious diffs on re-vendoring).
  tar --sort=name --mtime="$date 00:00Z" --owner=0 --group=0 --numeric-owner \
    -C "$src" -cf - crates | gzip -9n >"$DB_ARCHIVE"
  echo "$snapshot" >"$ROOT/deny/advisory-db/SNAPSHOT"
  [ -f "$src/LICENSE.txt" ] && cp "$src/LICENSE.txt" "$ROOT/deny/advisory-db/LICENSE.txt"
  chmod 644 "$ROOT"/deny/advisory-db/*
  echo "vendored $(tar -tzf "$DB_ARCHIVE" | grep -c '\.md$') advisories ($(stat -c %s "$DB_ARCHIVE") bytes): $snapshot"
}

# ------------------------------------------------------------------ the check
DENY=()
setup() {
  DENY=("$(deny_bin)" --color never)
  prepare_db "$METIS_ADVISORY_DBS" "$DB_ARCHIVE"
}

check() {
  echo "==> cargo-deny $CARGO_DENY_VERSION check (advisories, licences, sources, bans), offline"
  snapshot_note
  local start=$SECONDS
  # The policy covers every platform's dependencies, so their sources must be in the cargo
  # cache (a host build downloads only the host's): fetch them from the registry first.
  cargo fetch --locked --quiet
  # Inclusion graphs (who pulls a crate in) only when something fails: for the duplicate
  # version warnings alone they run to thousands of lines.
  if ! "${DENY[@]}" --offline --locked check --show-stats --hide-inclusion-graph; then
    "${DENY[@]}" --offline --locked check || true
    echo "supply chain: the policy check FAILED (see deny.toml)"
    exit 1
  fi
  echo "    policy check took $((SECONDS - start)) s"
}

# ------------------------------------------------------------------ self-tests
# Run cargo-deny and require the outcome: `expect_deny pass|fail CODE NAME -- ARGS...`; on
# `fail` the output must name CODE (the diagnostic that the fixture is there to trigger).
expect_deny() {
  local want=$1 code=$2 name=$3
  shift 4
  local out rc=0
  out=$("${DENY[@]}" "$@" 2>&1) || rc=$?
  if [ "$want" = pass ] && [ $rc -eq 0 ]; then
    ok "$name"
  elif [ "$want" = fail ] && [ $rc -ne 0 ] && grep -q -- "$code" <<<"$out"; then
    ok "$name"
    # The diagnostics that failed it, as evidence in the log.
    grep -E '^error\[' <<<"$out" | sed 's/^/         /' || true
  else
    bad "$name (exit $rc, wanted $want${code:+ naming $code})"
    echo "$out" | tail -30 | sed 's/^/       /'
  fi
}

# A tiny workspace: `app` (ours, unpublished) depends on `dep` at DEP_SOURCE.
fixture() {
  local dir=$1 dep_manifest_line=$2
  mkdir -p "$dir/app/src"
  cat >"$dir/app/Cargo.toml" <<EOF
[package]
name = "fixture-app"
version = "0.1.0"
edition = "2021"
license = "Apache-2.0"
publish = false

[dependencies]
$dep_manifest_line
EOF
  echo 'pub fn f() {}' >"$dir/app/src/lib.rs"
}

dep_crate() {
  local dir=$1 license=$2
  mkdir -p "$dir/src"
  cat >"$dir/Cargo.toml" <<EOF
[package]
name = "fixture-dep"
version = "1.0.0"
edition = "2021"
license = "$license"
EOF
  echo 'pub fn g() {}' >"$dir/src/lib.rs"
}

self_tests() {
  echo "==> policy self-tests (throwaway fixtures)"
  local tmp=$TMP/fixtures
  mkdir -p "$tmp"

  # 1. A new advisory: the real workspace and Cargo.lock, read against a temp copy of the
  #    database holding one extra, made-up advisory for a crate we depend on.
  local victim victim_version
  victim=itoa
  victim_version=$(awk -v n="$victim" '$1=="name" && $3=="\""n"\"" {getline; gsub(/"/,"",$3); print $3; exit}' Cargo.lock)
  [ -n "$victim_version" ] || { bad "fixture: $victim is not in Cargo.lock"; return; }
  local fake_root=$tmp/dbs
  prepare_db "$fake_root" "$DB_ARCHIVE"
  local fake_dir=$fake_root/$DB_DIR_NAME
  mkdir -p "$fake_dir/crates/$victim"
  cat >"$fake_dir/crates/$victim/RUSTSEC-2099-0001.md" <<EOF
\`\`\`toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "$victim"
date = "2099-01-01"
url = "https://example.invalid/RUSTSEC-2099-0001"
categories = ["denial-of-service"]

[versions]
patched = [">= 9999.0.0"]
\`\`\`

# Made-up advisory of scripts/supply-chain.sh's self-test
EOF
  # ... and an "unmaintained" notice (what rustls-pemfile got) for another one.
  mkdir -p "$fake_dir/crates/ryu"
  cat >"$fake_dir/crates/ryu/RUSTSEC-2099-0002.md" <<EOF
\`\`\`toml
[advisory]
id = "RUSTSEC-2099-0002"
package = "ryu"
date = "2099-01-01"
url = "https://example.invalid/RUSTSEC-2099-0002"
informational = "unmaintained"

[versions]
patched = []
\`\`\`

# Made-up notice of scripts/supply-chain.sh's self-test
EOF
  git -C "$fake_dir" add crates
  git -C "$fake_dir" -c user.name=metis -c user.email=metis@localhost -c commit.gpgsign=false \
    commit -q -m "fake advisory"
  # (The control, the real workspace against the real snapshot, is the check above.)
  METIS_ADVISORY_DBS=$fake_root expect_deny fail "RUSTSEC-2099-0001" \
    "a new vulnerability in $victim $victim_version (RUSTSEC-2099-0001) fails the check" -- \
    --offline --locked check advisories
  METIS_ADVISORY_DBS=$fake_root expect_deny fail "error\[unmaintained\]" \
    "ryu newly marked unmaintained (RUSTSEC-2099-0002) fails the check" -- \
    --offline --locked check advisories

  # 2. A disallowed licence (GPL-3.0 in an Apache-2.0 product), and a compliant twin.
  dep_crate "$tmp/lic-bad/dep" "GPL-3.0-only"
  fixture "$tmp/lic-bad" 'fixture-dep = { path = "../dep" }'
  dep_crate "$tmp/lic-ok/dep" "MIT OR Apache-2.0"
  fixture "$tmp/lic-ok" 'fixture-dep = { path = "../dep" }'
  expect_deny pass "" "a dependency under MIT OR Apache-2.0 passes (control)" -- \
    --offline --manifest-path "$tmp/lic-ok/app/Cargo.toml" --config "$ROOT/deny.toml" \
    check licenses
  expect_deny fail "error\[rejected\]" "a dependency under GPL-3.0-only fails the check" -- \
    --offline --manifest-path "$tmp/lic-bad/app/Cargo.toml" --config "$ROOT/deny.toml" \
    check licenses

  # 3. A source other than crates.io: a git dependency (a local repository, so nothing is
  #    fetched from the network; its own CARGO_HOME keeps the git checkout out of ours).
  dep_crate "$tmp/git-dep" "MIT"
  git -C "$tmp/git-dep" init -q
  git -C "$tmp/git-dep" add .
  git -C "$tmp/git-dep" -c user.name=metis -c user.email=metis@localhost \
    -c commit.gpgsign=false commit -q -m dep
  fixture "$tmp/src-git" "fixture-dep = { git = \"file://$tmp/git-dep\" }"
  dep_crate "$tmp/src-path/dep" "MIT"
  fixture "$tmp/src-path" 'fixture-dep = { path = "../dep" }'
  CARGO_HOME=$tmp/cargo-home cargo generate-lockfile --quiet \
    --manifest-path "$tmp/src-git/app/Cargo.toml"
  expect_deny pass "" "a path dependency passes the sources check (control)" -- \
    --offline --manifest-path "$tmp/src-path/app/Cargo.toml" --config "$ROOT/deny.toml" \
    check sources
  CARGO_HOME=$tmp/cargo-home expect_deny fail "error\[source-not-allowed\]" \
    "a git dependency fails the sources check" -- \
    --offline --manifest-path "$tmp/src-git/app/Cargo.toml" --config "$ROOT/deny.toml" \
    check sources
}

# ------------------------------------------------------------------ SBOM
# The official CycloneDX 1.5 JSON schema (strict), as shipped in the reference Python library.
SBOM_VALIDATOR=("cyclonedx-python-lib[json-validation]==11.12.0")
schema_valid() {
  local venv=$ROOT/.tools/sbom-venv
  local stamp
  stamp="$venv/.installed-$(printf '%s ' "${SBOM_VALIDATOR[@]}" | sha256sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${SBOM_VALIDATOR[@]}" >&2
    touch "$stamp"
  fi
  "$venv/bin/python" - "$1" <<'PY'
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())
if error is not None:
    print(f"sbom: not valid CycloneDX 1.5: {error}", file=sys.stderr)
    sys.exit(1)
PY
}

sbom_test() {
  echo "==> SBOM of metis (CycloneDX 1.5) against cargo tree and Cargo.lock"
  python3 scripts/sbom.py --locked --offline --out "$TMP/sbom.cdx.json"
  if schema_valid "$TMP/sbom.cdx.json"; then
    ok "the SBOM is valid against the CycloneDX 1.5 JSON schema (strict)"
  else
    bad "the SBOM is not valid CycloneDX 1.5"
  fi
  cargo tree --locked --offline -p metis -e normal --prefix none -f '{p}' >"$TMP/tree.txt"
  if python3 scripts/sbom.py --verify "$TMP/sbom.cdx.json" --against "$TMP/tree.txt"; then
    ok "the SBOM lists exactly the crates of cargo tree -p metis -e normal, as in Cargo.lock"
  else
    bad "the SBOM differs from cargo tree -p metis -e normal / Cargo.lock"
  fi
  # The release image's way (infra/gateway/Dockerfile): cargo's outputs saved to files in
  # the build stage, sbom.py run alone elsewhere (a plain Python image, no cargo).
  mkdir -p "$TMP/image"
  cargo tree --locked --offline -p metis -e normal --prefix depth -f '{p}' >"$TMP/image/tree.txt"
  cargo metadata --locked --offline --format-version 1 >"$TMP/image/metadata.json"
  cp Cargo.lock scripts/sbom.py "$TMP/image/"
  (cd "$TMP/image" && python3 sbom.py --tree tree.txt --metadata metadata.json \
    --lock Cargo.lock --out sbom.cdx.json)
  if python3 scripts/sbom.py --verify "$TMP/image/sbom.cdx.json" --against "$TMP/tree.txt"; then
    ok "the release build's SBOM (from saved cargo outputs, as in the Dockerfile) matches too"
  else
    bad "the release build's SBOM (Dockerfile way) differs from cargo tree / Cargo.lock"
  fi
}

case "${1:-}" in
  --refresh-db)
    refresh_db "${2:-}"
    exit 0
    ;;
  --sbom)
    [ -n "${2:-}" ] || { echo "usage: $0 --sbom FILE"; exit 2; }
    out=$2
    [[ $out = /* ]] || out=$CALLER_DIR/$out
    python3 scripts/sbom.py --locked --offline --out "$out"
    exit 0
    ;;
  --check)
    setup
    check
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: $0 [--check | --sbom FILE | --refresh-db [DIR]]"
    exit 2
    ;;
esac

setup
check
self_tests
sbom_test
echo "supply chain: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
