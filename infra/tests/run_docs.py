#!/usr/bin/env python3
"""Execute the command blocks of docs/*.md that are marked as tested.

Usage: run_docs.py METIS_BINARY REPO_ROOT [DOC.md …]

A fenced ```sh block preceded by the line `<!-- test -->` runs; one preceded by
`<!-- test: background -->` is started in the background (a server), and the next block waits
until `metis healthcheck` answers. All blocks of one document run in order in one
`bash -euo pipefail` script, in a fresh sandbox directory with HOME inside it, `metis` and
`helm` on PATH and REPO pointing at the checkout. The documented port 8422 is replaced by a
free port (the machine is shared). Background processes get SIGTERM at the end and must
exit 0. Also checks that docs/cli-reference.md matches the binary's --help.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

METIS, ROOT = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
DOCS = sys.argv[3:] or sorted(
    os.path.join(ROOT, "docs", n) for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md"))

BLOCK = re.compile(r"^<!-- test(?::\s*(background))? -->\s*\n```(?:sh|bash)\n(.*?)^```", re.M | re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_for(blocks, port: int) -> str:
    out = [
        "set -euo pipefail",
        "BG_PIDS=()",
        "finish() { rc=0; for p in \"${BG_PIDS[@]}\"; do kill -TERM \"$p\" 2>/dev/null || true; "
        "wait \"$p\" || rc=$?; done; return $rc; }",
        "wait_up() { for _ in $(seq 1 100); do metis healthcheck --timeout 1s >/dev/null 2>&1 && return 0; "
        "sleep 0.2; done; echo 'background server did not become healthy'; cat bg-*.log; return 1; }",
    ]
    for i, (mode, body) in enumerate(blocks):
        body = body.replace("8422", str(port))
        out.append(f"echo '--- block {i + 1}{' (background)' if mode else ''}'")
        if mode == "background":
            out.append(f"( {body.strip()} ) > bg-{i}.log 2>&1 &")
            out.append("BG_PIDS+=($!)")
            out.append("wait_up")
        else:
            out.append(body)
    out.append("finish || { echo 'a background process did not exit 0 on SIGTERM'; cat bg-*.log; exit 1; }")
    return "\n".join(out) + "\n"


def main() -> int:
    failed, passed, skipped = [], 0, 0
    bindir = tempfile.mkdtemp(prefix="metis-docs-bin-")
    os.symlink(METIS, os.path.join(bindir, "metis"))
    helm = os.path.join(ROOT, ".tools", "bin")
    for doc in DOCS:
        with open(doc) as f:
            text = f.read()
        blocks = [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]
        name = os.path.relpath(doc, ROOT)
        if not blocks:
            skipped += 1
            continue
        sandbox = tempfile.mkdtemp(prefix="metis-docs-")
        port = free_port()
        os.makedirs(os.path.join(sandbox, "home"))
        env = {
            "PATH": f"{bindir}:{helm}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.path.join(sandbox, "home"),
            "REPO": ROOT,
            "METIS_GATEWAY_PORT": str(port),
            "METIS_GATEWAY_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/healthz",
            "METIS_GATEWAY_LOG_FORMAT": "text",
            "RUST_LOG": "warn",
            "LANG": "C.UTF-8",
        }
        p = subprocess.run(["bash", "-c", script_for(blocks, port)], cwd=sandbox, env=env,
                           capture_output=True, text=True, timeout=240)
        if p.returncode == 0:
            passed += 1
            print(f"  ok   {name}: {len(blocks)} tested blocks")
        else:
            failed.append(name)
            print(f"  FAIL {name} (rc {p.returncode})\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        shutil.rmtree(sandbox, ignore_errors=True)
    shutil.rmtree(bindir, ignore_errors=True)
    gen = subprocess.run([sys.executable, os.path.join(ROOT, "infra/tests/gen_cli_reference.py"), METIS,
                          os.path.join(ROOT, "docs/cli-reference.md"), "--check"], capture_output=True, text=True)
    if gen.returncode == 0:
        passed += 1
        print("  ok   docs/cli-reference.md matches `metis … --help`")
    else:
        failed.append("docs/cli-reference.md")
        print("  FAIL " + gen.stdout.strip())
    print(f"docs checks: {passed} passed, {len(failed)} failed ({skipped} docs without tested blocks)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
