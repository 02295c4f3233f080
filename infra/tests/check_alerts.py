#!/usr/bin/env python3
"""Check that every alert is tested and documented.

Usage: check_alerts.py RULES_YAML RULES_TEST_YAML ALERTS_MD

  * every alert of RULES_YAML has, in RULES_TEST_YAML (`promtool test rules`), at least one
    evaluation where it fires (non-empty exp_alerts) and one where it stays quiet;
  * every alert has `summary` and `runbook_url` annotations and a severity label, and its
    runbook_url anchor is a heading of ALERTS_MD (docs/alerts.md), as GitHub renders it;
  * ALERTS_MD documents no alert that no longer exists.
"""

from __future__ import annotations

import re
import sys

import yaml

RULES, TESTS, DOCS = sys.argv[1], sys.argv[2], sys.argv[3]
FAILS: list[str] = []
PASSED = 0


def check(name: str, cond: bool, detail: str = "") -> None:
    global PASSED
    if cond:
        PASSED += 1
        print(f"  ok   {name}")
    else:
        FAILS.append(name)
        print(f"  FAIL {name}{': ' + detail if detail else ''}")


with open(RULES, encoding="utf-8") as f:
    rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r]
with open(TESTS, encoding="utf-8") as f:
    tests = yaml.safe_load(f)["tests"]
with open(DOCS, encoding="utf-8") as f:
    md = f.read()
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#{2,4} (.+)$", md, flags=re.M)}

fires: dict[str, int] = {}
quiet: dict[str, int] = {}
for t in tests:
    for case in t.get("alert_rule_test", []):
        name = case["alertname"]
        bucket = fires if case.get("exp_alerts") else quiet
        bucket[name] = bucket.get(name, 0) + 1

names = [r["alert"] for r in rules]
for r in rules:
    a = r["alert"]
    check(f"{a}: tested firing ({fires.get(a, 0)}) and quiet ({quiet.get(a, 0)})",
          fires.get(a, 0) > 0 and quiet.get(a, 0) > 0)
    ann = r.get("annotations", {})
    url = ann.get("runbook_url", "")
    anchor = url.split("#", 1)[1] if "#" in url else ""
    check(f"{a}: severity, summary, runbook_url -> docs/alerts.md#{anchor} exists",
          bool(r.get("labels", {}).get("severity")) and bool(ann.get("summary"))
          and url.startswith("docs/alerts.md#") and anchor in anchors,
          f"runbook_url={url!r}")
stale = sorted(a for a in anchors if a.startswith("metis") and a not in {n.lower() for n in names})
check("docs/alerts.md documents only alerts that exist", not stale, str(stale))
unknown = sorted((set(fires) | set(quiet)) - set(names))
check("the unit tests name only alerts that exist", not unknown, str(unknown))

print(f"alerts: {PASSED} passed, {len(FAILS)} failed")
sys.exit(1 if FAILS else 0)
