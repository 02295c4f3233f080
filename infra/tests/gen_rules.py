#!/usr/bin/env python3
"""Generate the plain Prometheus rules file from the chart's PrometheusRule.

Usage: gen_rules.py HELM [--check]

Writes infra/prometheus/metis-gateway.rules.yaml: the chart's alerts (default thresholds)
rendered with `monitoring.prometheusRule.selector=job="metis-gateway"`, for Prometheus
installs without the operator (`rule_files:` in prometheus.yml). One template, two
outputs, so the two cannot drift. `--check` exits 1 when the committed file differs
(scripts/infra-tests.sh runs it that way).
"""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "infra", "gateway", "helm")
OUT = os.path.join(ROOT, "infra", "prometheus", "metis-gateway.rules.yaml")
HEADER = """\
# Alert rules of the Metis gateway for Prometheus without the operator: list this file under
# `rule_files:` and name the gateway's scrape job `metis-gateway` (or edit the selectors).
# Each alert's runbook_url points into docs/alerts.md; replace the `docs/alerts.md` prefix
# with where you serve the docs.
#
# Generated from the Helm chart's PrometheusRule (infra/gateway/helm/templates/
# prometheusrule.yaml) by `python3 infra/tests/gen_rules.py <helm>`; do not edit by hand.
# Unit tests: infra/prometheus/metis-gateway.rules.test.yaml (`promtool test rules`).
"""


def render(helm: str) -> str:
    out = subprocess.run(
        [helm, "template", "metis-gateway", CHART, "--namespace", "metis-gateway",
         "--show-only", "templates/prometheusrule.yaml",
         "--set", "monitoring.prometheusRule.enabled=true",
         "--set-string", 'monitoring.prometheusRule.selector=job="metis-gateway"'],
        capture_output=True, text=True, check=True, timeout=60).stdout
    rule = yaml.safe_load(out)
    body = yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False, width=1000,
                          allow_unicode=True)
    return HEADER + body


def main() -> int:
    helm = sys.argv[1]
    text = render(helm)
    rel = os.path.relpath(OUT, ROOT)
    if "--check" in sys.argv[2:]:
        try:
            with open(OUT, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{rel} is stale: run python3 infra/tests/gen_rules.py <helm>")
            return 1
        print(f"{rel} matches the chart's PrometheusRule")
        return 0
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
