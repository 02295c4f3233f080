#!/usr/bin/env python3
"""CycloneDX 1.5 SBOM of the `metis` binary, from cargo's own view of what it builds.

    python3 scripts/sbom.py --out sbom.cdx.json            # runs cargo tree / cargo metadata
    python3 scripts/sbom.py --tree T --metadata M --lock L --out F
                                                           # from files (the Docker build)
    python3 scripts/sbom.py --verify F --against TREE      # CI: F lists exactly TREE's crates

Which crates: `cargo tree -p metis -e normal` (what `cargo build -p metis` compiles into the
binary for this platform, with metis' own feature set). `cargo metadata` alone would list
more: it unifies features across the whole workspace, so test-only crates (quinn, ring, ...)
would appear. Per crate: version, licence (SPDX expression), purl, SHA-256 from Cargo.lock,
repository; plus the dependency edges. Our own workspace crates are path dependencies, not
on crates.io: their purl carries `download_url=file://<dir>` (the CycloneDX cargo plugin's
convention), so scanners do not mistake them for crates.io packages of the same name.

Standard library only (python3 >= 3.11 for tomllib), so it runs in CI and in a slim image.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from urllib.parse import quote

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
ROOT = "metis"
TREE_LINE = re.compile(r"^(\d+)(\S+) v(\S+)(?: \(([^)]*)\))?(?: \((?:\*|proc-macro)\))*$")


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def cargo_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    if args.locked:
        flags.append("--locked")
    if args.offline:
        flags.append("--offline")
    return flags


def tree_cmd(args: argparse.Namespace, prefix: str) -> list[str]:
    cmd = ["cargo", "tree", *cargo_flags(args), "-p", ROOT, "-e", "normal"]
    cmd += ["--prefix", prefix, "-f", "{p}"]
    if args.target:
        cmd += ["--target", args.target]
    return cmd


def parse_tree(text: str) -> list[tuple[int, str, str, str | None]]:
    """Lines of `cargo tree --prefix depth -f {p}`: (depth, name, version, path-or-source)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = TREE_LINE.match(line.strip())
        if not m:
            raise SystemExit(f"sbom.py: unexpected cargo tree line: {line!r}")
        depth, name, version, where = m.groups()
        if where in ("*", "proc-macro"):
            where = None
        rows.append((int(depth), name, version, where))
    return rows


def lock_packages(lock_path: Path) -> dict[tuple[str, str], dict]:
    with lock_path.open("rb") as f:
        lock = tomllib.load(f)
    return {(p["name"], p["version"]): p for p in lock.get("package", [])}


def spdx(expr: str) -> str:
    # Old manifests write "MIT/Apache-2.0"; SPDX says "MIT OR Apache-2.0".
    return re.sub(r"\s*/\s*", " OR ", expr.strip())


def purl(name: str, version: str, local_dir: str | None) -> str:
    p = f"pkg:cargo/{quote(name)}@{quote(version)}"
    if local_dir is not None:
        p += "?download_url=" + quote(f"file://{local_dir}", safe=":/")
    return p


def generate(args: argparse.Namespace) -> dict:
    if args.tree:
        tree_text = Path(args.tree).read_text()
    else:
        tree_text = run(tree_cmd(args, "depth"))
    if args.metadata:
        metadata = json.loads(Path(args.metadata).read_text())
    else:
        metadata = json.loads(run(["cargo", "metadata", "--format-version", "1", *cargo_flags(args)]))
    workspace = Path(metadata["workspace_root"])
    lock = lock_packages(Path(args.lock) if args.lock else workspace / "Cargo.lock")
    by_key: dict[tuple[str, str], list[dict]] = {}
    for p in metadata["packages"]:
        by_key.setdefault((p["name"], p["version"]), []).append(p)

    rows = parse_tree(tree_text)
    if not rows or rows[0][1] != ROOT:
        raise SystemExit(f"sbom.py: cargo tree does not start at {ROOT}")

    def package_for(name: str, version: str, where: str | None) -> dict:
        candidates = by_key.get((name, version), [])
        if where and where.startswith("/"):
            candidates = [p for p in candidates if p["source"] is None] or candidates
        if len(candidates) != 1:
            raise SystemExit(f"sbom.py: {name} {version}: {len(candidates)} packages in cargo metadata")
        return candidates[0]

    components: dict[str, dict] = {}
    edges: dict[str, set[str]] = {}
    stack: list[str] = []
    root_component = None
    for depth, name, version, where in rows:
        pkg = package_for(name, version, where)
        local_dir = None
        if pkg["source"] is None:
            local_dir = os.path.relpath(Path(pkg["manifest_path"]).parent, workspace)
        ref = purl(name, version, local_dir)
        if ref not in components:
            component = {
                "type": "application" if depth == 0 else "library",
                "bom-ref": ref,
                "name": name,
                "version": version,
                "purl": ref,
            }
            if pkg.get("description"):
                component["description"] = " ".join(pkg["description"].split())
            if pkg.get("license"):
                component["licenses"] = [{"expression": spdx(pkg["license"])}]
            elif pkg.get("license_file"):
                component["licenses"] = [{"license": {"name": f"see {pkg['license_file']} in the crate"}}]
            checksum = (lock.get((name, version)) or {}).get("checksum")
            if checksum:
                component["hashes"] = [{"alg": "SHA-256", "content": checksum}]
            if pkg.get("repository"):
                component["externalReferences"] = [{"type": "vcs", "url": pkg["repository"]}]
            components[ref] = component
            edges.setdefault(ref, set())
        del stack[depth:]
        if depth > 0:
            edges[stack[depth - 1]].add(ref)
        else:
            root_component = components[ref]
        stack.append(ref)

    assert root_component is not None
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch
        else datetime.datetime.now(datetime.UTC)
    )
    root_ref = root_component["bom-ref"]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {
                "components": [
                    {
                        "type": "application",
                        "name": "metis scripts/sbom.py",
                        "description": "cargo tree -p metis -e normal + cargo metadata + Cargo.lock",
                    }
                ]
            },
            "component": root_component,
        },
        "components": [c for ref, c in sorted(components.items()) if ref != root_ref],
        "dependencies": [
            {"ref": ref, "dependsOn": sorted(deps)} for ref, deps in sorted(edges.items())
        ],
    }


def verify(sbom_path: Path, tree_path: Path, lock_path: Path) -> list[str]:
    """Problems with the SBOM, judged against `cargo tree --prefix none -f {p}` and Cargo.lock."""
    sbom = json.loads(sbom_path.read_text())
    lock = lock_packages(lock_path)
    problems = []
    if sbom.get("bomFormat") != "CycloneDX" or sbom.get("specVersion") != "1.5":
        problems.append("not a CycloneDX 1.5 document")
    if not re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", sbom.get("serialNumber", "")):
        problems.append("serialNumber is not a urn:uuid")
    root = sbom.get("metadata", {}).get("component", {})
    if root.get("name") != ROOT:
        problems.append(f"metadata.component is {root.get('name')!r}, not {ROOT}")
    listed = [root, *sbom.get("components", [])]
    refs = [c.get("bom-ref") for c in listed]
    if len(set(refs)) != len(refs):
        problems.append("duplicate bom-ref")
    got = {(c.get("name"), c.get("version")) for c in listed}
    if len(got) != len(listed):
        problems.append("a crate version is listed twice")

    want = set()
    for line in tree_path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            want.add((parts[0], parts[1].removeprefix("v")))
    for name, version in sorted(want - got):
        problems.append(f"missing from the SBOM: {name} {version}")
    for name, version in sorted(got - want):
        problems.append(f"in the SBOM but not in the binary's graph: {name} {version}")

    for c in listed:
        key = (c.get("name"), c.get("version"))
        entry = lock.get(key)
        label = f"{key[0]} {key[1]}"
        if entry is None:
            problems.append(f"{label}: not in Cargo.lock")
            continue
        if not c.get("licenses"):
            problems.append(f"{label}: no licence")
        p = c.get("purl", "")
        if not (p == f"pkg:cargo/{key[0]}@{quote(key[1])}" or p.startswith(f"pkg:cargo/{key[0]}@{quote(key[1])}?")):
            problems.append(f"{label}: purl {p!r}")
        if entry.get("source") == CRATES_IO:
            if "?" in p:
                problems.append(f"{label}: a crates.io crate with a qualified purl {p!r}")
            hashes = [h.get("content") for h in c.get("hashes", []) if h.get("alg") == "SHA-256"]
            if hashes != [entry.get("checksum")]:
                problems.append(f"{label}: SHA-256 differs from Cargo.lock")
        elif "source" not in entry and "download_url=file" not in p:
            problems.append(f"{label}: a workspace crate without a file download_url")

    known = set(refs)
    unknown = {
        ref
        for dep in sbom.get("dependencies", [])
        for ref in [dep.get("ref"), *dep.get("dependsOn", [])]
        if ref not in known
    }
    problems += [f"dependency graph names an unknown component {ref!r}" for ref in sorted(unknown)]
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the SBOM here (default: stdout)")
    ap.add_argument("--tree", help="output of `cargo tree -p metis -e normal --prefix depth -f {p}`")
    ap.add_argument("--metadata", help="output of `cargo metadata --format-version 1`")
    ap.add_argument("--lock", help="Cargo.lock (default: the workspace's)")
    ap.add_argument("--target", help="target triple (default: the host, as cargo build)")
    ap.add_argument("--locked", action="store_true", help="pass --locked to cargo")
    ap.add_argument("--offline", action="store_true", help="pass --offline to cargo")
    ap.add_argument("--verify", help="check this SBOM instead of writing one")
    ap.add_argument("--against", help="with --verify: output of `cargo tree ... --prefix none -f {p}`")
    args = ap.parse_args()

    if args.verify:
        if not args.against:
            ap.error("--verify needs --against")
        lock = Path(args.lock) if args.lock else Path(__file__).resolve().parent.parent / "Cargo.lock"
        problems = verify(Path(args.verify), Path(args.against), lock)
        for p in problems:
            print(f"sbom: {p}", file=sys.stderr)
        if not problems:
            n = len(json.loads(Path(args.verify).read_text())["components"]) + 1
            print(f"sbom: {n} crates, matching cargo tree and Cargo.lock")
        return 1 if problems else 0

    bom = generate(args)
    text = json.dumps(bom, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"sbom: wrote {args.out} ({len(bom['components']) + 1} crates)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
