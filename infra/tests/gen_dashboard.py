#!/usr/bin/env python3
"""Generate the Grafana dashboard of the Metis gateway.

Usage: gen_dashboard.py [--check]

Writes infra/gateway/helm/dashboards/metis-gateway.json (inside the chart, so the chart's
ConfigMap can embed it with .Files.Get; import the same file into any Grafana by hand).
`--check` exits 1 when the committed file differs from what this script generates
(scripts/infra-tests.sh runs it that way).

Every panel query selects `job=~"$job", instance=~"$instance"`; `$datasource` picks the
Prometheus data source. Ratios are written `(numerator or vector(0)) / denominator` where
a numerator may legitimately have no series (no errors yet), so the panel shows 0, not
"No data". The test tests/tests/suite/observability.rs evaluates every query through a real
Prometheus scraping a gateway and requires each to return data.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "infra", "gateway", "helm", "dashboards", "metis-gateway.json")

S = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"
DS = {"type": "prometheus", "uid": "${datasource}"}


def sel(extra: str = "") -> str:
    return "{" + S + (", " + extra if extra else "") + "}"


# Selectors with one more matcher (f-strings below cannot hold quotes of their own).
S5XX = sel('status=~"5.."')
S4XX = sel('status=~"4.."')
# Failure classes the provider or the network caused (not client errors or hang-ups).
SFAIL = sel('status=~"server_error|network|auth|rate_limit|other"')
SDENY = sel('decision="deny"')
SNOTOK = sel('status!="ok"')


def t(expr: str, legend: str = "") -> dict:
    return {"expr": expr, "legendFormat": legend or "__auto"}


def quantiles(metric: str, by: str, qs=(0.5, 0.95, 0.99)) -> list[dict]:
    return [
        t(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{sel()}[{RI}])))",
            f"p{int(q * 100)} " + " ".join("{{" + b.strip() + "}}" for b in by.split(",")),
        )
        for q in qs
    ]


# (row title, [(type, title, description, unit, width, targets)])
ROWS = [
    ("Overview", [
        ("stat", "Requests per second", "All HTTP requests the gateway answered.", "reqps", 4,
         [t(f"sum(rate(metis_http_requests_total{sel()}[{RI}]))", "requests/s")]),
        ("stat", "5xx ratio", "Share of responses with a 5xx status (alert MetisGatewayHttp5xxRatioHigh).",
         "percentunit", 4,
         [t(f'(sum(rate(metis_http_requests_total{S5XX}[{RI}])) or vector(0))'
            f" / sum(rate(metis_http_requests_total{sel()}[{RI}]))", "5xx")]),
        ("stat", "Upstream failure ratio",
         "Upstream calls that failed for a provider-side reason (server_error, network, auth, rate_limit, other).",
         "percentunit", 4,
         [t(f'(sum(rate(metis_upstream_calls_total{SFAIL}[{RI}])) or vector(0))'
            f" / sum(rate(metis_upstream_calls_total{sel()}[{RI}]))", "failed")]),
        ("stat", "Ready instances", "Instances whose /readyz answers 200 (store writable, not draining).",
         "none", 4, [t(f"sum(metis_ready{sel()})", "ready")]),
        ("stat", "Keys", "Keys that authenticate now, and revoked ones.", "none", 4,
         [t(f"max(metis_gateway_keys_active{sel()})", "active"),
          t(f"max(metis_gateway_keys_revoked{sel()})", "revoked")]),
        ("stat", "TLS certificate expires in",
         "Days until the in-process TLS certificate (--tls-cert) expires; empty without in-process TLS (alert MetisTlsCertificateExpiringSoon).",
         "d", 4,
         [t(f"(min(metis_tls_certificate_expiry_timestamp_seconds{sel()}) - time()) / 86400", "days")]),
    ]),
    ("Traffic and errors", [
        ("timeseries", "Requests by route", "HTTP requests per second by matched route template.", "reqps", 8,
         [t(f"sum by (route) (rate(metis_http_requests_total{sel()}[{RI}]))", "{{route}}")]),
        ("timeseries", "Responses by status", "HTTP responses per second by status code.", "reqps", 8,
         [t(f"sum by (status) (rate(metis_http_requests_total{sel()}[{RI}]))", "{{status}}")]),
        ("timeseries", "Requests by inbound shape", "Requests per second by client API shape (openai, anthropic, …).",
         "reqps", 8, [t(f"sum by (shape) (rate(metis_http_requests_total{sel()}[{RI}]))", "{{shape}}")]),
        ("timeseries", "Error ratio by route", "Share of 4xx and 5xx responses per route.", "percentunit", 12,
         [t(f'(sum by (route) (rate(metis_http_requests_total{S4XX}[{RI}])) or 0 * sum by (route) (rate(metis_http_requests_total{sel()}[{RI}])))'
            f" / sum by (route) (rate(metis_http_requests_total{sel()}[{RI}]))", "4xx {{route}}"),
          t(f'(sum by (route) (rate(metis_http_requests_total{S5XX}[{RI}])) or 0 * sum by (route) (rate(metis_http_requests_total{sel()}[{RI}])))'
            f" / sum by (route) (rate(metis_http_requests_total{sel()}[{RI}]))", "5xx {{route}}")]),
        ("timeseries", "Upstream calls by provider and model", "Upstream calls per second, by provider and model.",
         "reqps", 12,
         [t(f"sum by (provider, model) (rate(metis_upstream_calls_total{sel()}[{RI}]))", "{{provider}} {{model}}")]),
    ]),
    ("Latency", [
        ("timeseries", "HTTP latency by route",
         "Request latency percentiles (streams: to the response head).", "s", 8,
         quantiles("metis_http_request_duration_seconds", "route")),
        ("timeseries", "Upstream call duration by provider",
         "Whole upstream call, streams included (alert MetisUpstreamLatencyP99High).", "s", 8,
         quantiles("metis_upstream_call_duration_seconds", "provider")),
        ("timeseries", "Time to first token by model",
         "Streams: from routing the request to relaying the first content token.", "s", 8,
         quantiles("metis_time_to_first_token_seconds", "model")),
    ]),
    ("Tokens and cost", [
        ("timeseries", "Tokens by team", "Tokens per second by team (every call; teams beyond the series budget show as _other).",
         "short", 8, [t(f"sum by (team) (rate(metis_tokens_total{sel()}[{RI}]))", "{{team}}")]),
        ("timeseries", "Cost by team (USD per hour)", "Spend rate by team.", "currencyUSD", 8,
         [t(f"sum by (team) (rate(metis_cost_usd_total{sel()}[{RI}])) * 3600", "{{team}}")]),
        ("timeseries", "Tokens by model and bucket", "Tokens per second by model and bucket (input, output, cache_read, cache_write).",
         "short", 8, [t(f"sum by (model, kind) (rate(metis_tokens_total{sel()}[{RI}]))", "{{model}} {{kind}}")]),
        ("timeseries", "Top users by cost (USD per hour)", "The 10 users spending fastest (users beyond the series budget show as _other).",
         "currencyUSD", 8, [t(f"topk(10, sum by (user) (rate(metis_user_cost_usd_total{sel()}[{RI}]))) * 3600", "{{user}}")]),
        ("timeseries", "Top users by tokens", "The 10 users using the most tokens per second.", "short", 8,
         [t(f"topk(10, sum by (user) (rate(metis_user_tokens_total{sel()}[{RI}])))", "{{user}}")]),
        ("timeseries", "Top keys by cost (USD per hour)",
         "Per-key series exist for the --metrics-top-keys biggest spenders and --metrics-key keys.",
         "currencyUSD", 8, [t(f"topk(10, sum by (gateway_key_id) (rate(metis_key_cost_usd_total{sel()}[{RI}]))) * 3600", "{{gateway_key_id}}")]),
        ("timeseries", "Top keys by tokens", "Tokens per second of the keys with per-key series.", "short", 8,
         [t(f"topk(10, sum by (gateway_key_id) (rate(metis_key_tokens_total{sel()}[{RI}])))", "{{gateway_key_id}}")]),
        ("bargauge", "Spend by team in the time range", "USD spent per team over the dashboard's time range.",
         "currencyUSD", 8, [t(f"sum by (team) (increase(metis_cost_usd_total{sel()}[$__range]))", "{{team}}")]),
        ("timeseries", "Series budget: folded usage records",
         "Usage records reported under _other because their user or team was over --metrics-max-users / --metrics-max-teams.",
         "short", 8, [t(f"sum by (label) (rate(metis_metrics_folded_total{sel()}[{RI}]))", "{{label}}")]),
    ]),
    ("Spend caps, rate limits and authentication", [
        ("bargauge", "Cap utilisation (keys nearest their caps)",
         "Spend over cap of the keys nearest their daily / monthly caps (alert MetisKeyNearSpendCap).",
         "percentunit", 8, [t(f"topk(10, max by (gateway_key_id, scope) (metis_quota_used_ratio{sel()}))", "{{gateway_key_id}} {{scope}}")]),
        ("timeseries", "Keys at or over a cap threshold", "Every capped key counted by scope and threshold (0.8, 0.95, 1).",
         "none", 8, [t(f"max by (scope, threshold) (metis_quota_keys{sel()})", "{{scope}} ≥ {{threshold}}")]),
        ("timeseries", "Spend-cap events", "Soft alerts (alert_80, alert_95, once per window) and requests refused at the cap (exceeded), per second.",
         "short", 8, [t(f"sum by (scope, event) (rate(metis_quota_events_total{sel()}[{RI}]))", "{{scope}} {{event}}")]),
        ("timeseries", "Rate-limit denials", "429s from the per-key and per-IP token buckets, per second.", "reqps", 8,
         [t(f'sum by (bucket) (rate(metis_ratelimit_decisions_total{SDENY}[{RI}]))', "{{bucket}}")]),
        ("timeseries", "Authentication failures by reason", "Failed authentications per second (alert MetisGatewayAuthFailuresHigh).",
         "reqps", 8, [t(f"sum by (reason) (rate(metis_gateway_auth_failures_total{sel()}[{RI}]))", "{{reason}}")]),
        ("stat", "Key leak signals in the time range",
         "Keys seen from more client addresses than the leak threshold (gateway.key_leak_suspected; alert MetisKeyLeakSuspected).",
         "none", 8, [t(f"sum(increase(metis_gateway_key_leak_suspected_total{sel()}[$__range]))", "signals")]),
    ]),
    ("Upstreams", [
        ("timeseries", "Upstream failures by class", "Failed upstream calls per second by provider and error class.", "reqps", 8,
         [t(f'sum by (provider, status) (rate(metis_upstream_calls_total{SNOTOK}[{RI}]))', "{{provider}} {{status}}")]),
        ("timeseries", "Upstream failure ratio by provider",
         "Provider-side failures over all calls (alert MetisUpstreamErrorRatioHigh).", "percentunit", 8,
         [t(f'(sum by (provider) (rate(metis_upstream_calls_total{SFAIL}[{RI}])) or 0 * sum by (provider) (rate(metis_upstream_calls_total{sel()}[{RI}])))'
            f" / sum by (provider) (rate(metis_upstream_calls_total{sel()}[{RI}]))", "{{provider}}")]),
        ("timeseries", "Upstream retries", "Extra attempts (429, 5xx, network failures retried before the first byte), per second.",
         "short", 8, [t(f"sum by (provider, model) (rate(metis_upstream_retries_total{sel()}[{RI}]))", "{{provider}} {{model}}")]),
        ("timeseries", "Token counts by method", "Token-count requests answered by method: exact (upstream), tokenizer, estimate.",
         "reqps", 8, [t(f"sum by (method) (rate(metis_token_counts_total{sel()}[{RI}]))", "{{method}}")]),
        ("timeseries", "In-flight requests and open streams", "Provider requests being handled and client SSE streams open.",
         "none", 8, [t(f"sum(metis_inflight_requests{sel()})", "in flight"),
                     t(f"sum(metis_open_streams{sel()})", "streams")]),
    ]),
    ("Trace store", [
        ("timeseries", "Trace queue depth (writer lag)",
         "Events waiting for the trace writer; a growing queue means the writer is behind (alert MetisTraceWriterBehind; overflow at 65536).",
         "none", 8, [t(f"max by (instance) (metis_trace_queue_depth{sel()})", "{{instance}}")]),
        ("timeseries", "Trace events written, overflowed, failed",
         "Events per second; any overflow or failure loses audit and spend data (alert MetisTraceEventsLost).", "short", 8,
         [t(f"sum(rate(metis_trace_events_written_total{sel()}[{RI}]))", "written"),
          t(f"sum(rate(metis_trace_events_overflowed_total{sel()}[{RI}]))", "overflowed"),
          t(f"sum(rate(metis_trace_events_failed_total{sel()}[{RI}]))", "failed")]),
        ("timeseries", "Store and WAL size", "Main store file and SQLite write-ahead log, per instance.", "bytes", 8,
         [t(f"max by (instance) (metis_trace_db_bytes{sel()})", "store {{instance}}"),
          t(f"max by (instance) (metis_trace_wal_bytes{sel()})", "wal {{instance}}")]),
        ("timeseries", "Trace commit lag",
         "How long the oldest event of each committed batch waited: the window of acknowledged events a SIGKILL can lose. p99, the largest since start, and the --trace-commit-deadline it is held to.",
         "s", 12,
         [t(f"histogram_quantile(0.99, sum by (le) (rate(metis_trace_commit_lag_seconds_bucket{sel()}[{RI}])))", "p99"),
          t(f"max by (instance) (metis_trace_commit_lag_max_seconds{sel()})", "max {{instance}}"),
          t(f"max(metis_trace_commit_deadline_seconds{sel()})", "deadline")]),
        ("timeseries", "Trace commit deadline misses", "Batches committed later than --trace-commit-deadline, per second (a slow or throttled disk).",
         "short", 12, [t(f"sum by (instance) (rate(metis_trace_commit_deadline_misses_total{sel()}[{RI}]))", "{{instance}}")]),
        ("timeseries", "Store writable, ready, draining",
         "1/0 per instance: the trace store accepts writes (alert MetisTraceStoreNotWritable), /readyz is 200, shutdown began.",
         "none", 12,
         [t(f"min by (instance) (metis_trace_store_writable{sel()})", "writable {{instance}}"),
          t(f"min by (instance) (metis_ready{sel()})", "ready {{instance}}"),
          t(f"max by (instance) (metis_draining{sel()})", "draining {{instance}}")]),
        ("timeseries", "Build", "Instances by running version.", "none", 12,
         [t(f"count by (version) (metis_build_info{sel()})", "{{version}}")]),
    ]),
    ("Process", [
        ("timeseries", "CPU", "CPU seconds per second, per instance.", "percentunit", 6,
         [t(f"rate(process_cpu_seconds_total{sel()}[{RI}])", "{{instance}}")]),
        ("timeseries", "Resident memory", "Resident set size, per instance.", "bytes", 6,
         [t(f"process_resident_memory_bytes{sel()}", "{{instance}}")]),
        ("timeseries", "File descriptors", "Open descriptors against the limit, per instance.", "none", 6,
         [t(f"process_open_fds{sel()}", "open {{instance}}"),
          t(f"process_max_fds{sel()}", "limit {{instance}}")]),
        ("timeseries", "Threads", "OS threads, per instance.", "none", 6,
         [t(f"process_threads{sel()}", "{{instance}}")]),
    ]),
]

LEGEND = {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True}
REDUCE = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def options(kind: str) -> dict:
    if kind == "timeseries":
        return {"legend": dict(LEGEND), "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        return {
            "reduceOptions": dict(REDUCE), "orientation": "auto", "colorMode": "value",
            "graphMode": "area", "justifyMode": "auto", "textMode": "auto", "wideLayout": True,
            "showPercentChange": False, "percentChangeColorMode": "standard",
        }
    if kind == "bargauge":
        return {
            "reduceOptions": dict(REDUCE), "orientation": "horizontal", "displayMode": "gradient",
            "valueMode": "color", "namePlacement": "auto", "showUnfilled": True, "sizing": "auto",
            "minVizWidth": 8, "minVizHeight": 16, "maxVizHeight": 300,
            "legend": dict(LEGEND, showLegend=False),
        }
    raise ValueError(kind)


def custom(kind: str) -> dict:
    if kind == "timeseries":
        return {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                "spanNulls": False}
    return {}


def dashboard() -> dict:
    panels = []
    pid = 1
    y = 0
    for title, row in ROWS:
        panels.append({"type": "row", "id": pid, "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        x = 0
        line_h = 0
        for kind, ptitle, desc, unit, width, targets in row:
            h = 4 if kind == "stat" and title == "Overview" else 8
            if x + width > 24:
                x = 0
                y += line_h
                line_h = 0
            defaults = {"unit": unit, "color": {"mode": "palette-classic"} if kind == "timeseries" else {"mode": "thresholds"},
                        "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}}
            c = custom(kind)
            if c:
                defaults["custom"] = c
            if kind == "bargauge":
                defaults["min"] = 0
            panels.append({
                "type": kind, "id": pid, "title": ptitle, "description": desc, "datasource": dict(DS),
                "gridPos": {"h": h, "w": width, "x": x, "y": y},
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": options(kind),
                "targets": [dict(tg, refId=chr(ord("A") + i), datasource=dict(DS), range=True, instant=False)
                            for i, tg in enumerate(targets)],
            })
            pid += 1
            line_h = max(line_h, h)
            x += width
        y += line_h
    var_common = {"datasource": dict(DS), "refresh": 2, "includeAll": True, "multi": True,
                  "allValue": ".*", "sort": 1, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}
    return {
        "title": "Metis gateway",
        "uid": "metis-gateway",
        "description": "Traffic, errors, latency, tokens and cost, spend caps, rate limits, authentication, upstreams, trace store and process of Metis gateways. Generated by infra/tests/gen_dashboard.py.",
        "tags": ["metis", "llm-gateway"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "hide": 0, "refresh": 1, "regex": ""},
            dict(var_common, name="job", label="Job", type="query",
                 query={"query": "label_values(metis_build_info, job)", "refId": "job"}),
            dict(var_common, name="instance", label="Instance", type="query",
                 query={"query": 'label_values(metis_build_info{job=~"$job"}, instance)', "refId": "instance"}),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        try:
            with open(OUT, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{os.path.relpath(OUT, ROOT)} is stale: run python3 infra/tests/gen_dashboard.py")
            return 1
        print(f"{os.path.relpath(OUT, ROOT)} matches infra/tests/gen_dashboard.py")
        return 0
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(OUT, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
