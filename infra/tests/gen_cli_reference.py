#!/usr/bin/env python3
"""Generate docs/cli-reference.md from the binary's own --help output.

Usage: gen_cli_reference.py METIS_BINARY [OUT] [--check]

With --check, exit 1 when OUT differs from what the binary prints now (docs drift).
The help is captured with an empty environment so `[env: …=value]` shows no local values.
"""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a != "--check"]
check = "--check" in sys.argv
metis = args[0]
out = args[1] if len(args) > 1 else "docs/cli-reference.md"

COMMANDS = [
    ["gateway"], ["gateway", "issue-key"], ["gateway", "list-keys"], ["gateway", "revoke-key"],
    ["gateway", "rotate-key"], ["gateway", "update-key"], ["gateway", "budget", "set"], ["gateway", "budget", "list"],
    ["gateway", "budget", "delete"], ["gateway", "model-group", "set"],
    ["gateway", "model-group", "list"], ["gateway", "model-group", "delete"], ["backup"], ["restore"], ["trace", "status"], ["trace", "prune"],
    ["trace", "vacuum"], ["trace", "migrate"], ["audit", "export"], ["audit", "verify"],
    ["openapi"], ["healthcheck"],
]


def help_of(cmd):
    p = subprocess.run([metis, *cmd, "--help"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "COLUMNS": "100"})
    return p.returncode, p.stdout.rstrip()


parts = [
    "# CLI reference",
    "",
    "Generated from `metis … --help` by `infra/tests/gen_cli_reference.py` (do not edit by hand;",
    "`scripts/infra-tests.sh` fails when this file and the binary disagree). Every serve flag also",
    "reads the environment variable shown as `[env: …]`; see [configuration.md](configuration.md)",
    "for how the image, compose and the Helm chart set them.",
    "",
]
for cmd in COMMANDS:
    rc, text = help_of(cmd)
    if rc != 0:
        continue  # subcommand not in this build
    parts += [f"## `metis {' '.join(cmd)}`", "", "```text", text, "```", ""]
doc = "\n".join(parts)
if check:
    try:
        current = open(out).read()
    except FileNotFoundError:
        current = ""
    if current != doc:
        print(f"{out} is out of date: run `python3 infra/tests/gen_cli_reference.py {metis} {out}`")
        sys.exit(1)
    print(f"{out} matches the binary's --help")
else:
    open(out, "w").write(doc)
    print(f"wrote {out}")
