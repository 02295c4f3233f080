#!/usr/bin/env python3
"""Render the Helm chart under many value sets and assert the wiring that matters.

Usage: check_chart.py HELM CHART_DIR

Checks (each prints one line):
  * the runbook's own `--set` commands render what the runbook promises;
  * every ci/*.yaml scenario: flags, mounts, probes, strategy, PDB, PVC, TLS, ingress,
    secrets, restore initContainer, monitoring objects (PromQL parsed);
  * invalid combinations fail with an actionable message;
  * "no value that does nothing": every leaf of values.yaml, when changed, changes the
    rendered manifests of at least one scenario.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile

import yaml

HELM, CHART = sys.argv[1], sys.argv[2]
KUBE = "1.30.0"
RELEASE = "metis-gateway"
FAILS: list[str] = []
PASSED = 0


def render(*args: str, values: dict | None = None, kube: str = KUBE) -> tuple[int, str, str]:
    cmd = [HELM, "template", RELEASE, CHART, "--namespace", "metis-gateway", "--kube-version", kube]
    tmp = None
    if values is not None:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(values, tmp)
        tmp.close()
        cmd += ["-f", tmp.name]
    cmd += list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if tmp:
        os.unlink(tmp.name)
    return p.returncode, p.stdout, p.stderr


def docs(*args: str, **kw) -> dict[tuple[str, str], dict]:
    rc, out, err = render(*args, **kw)
    if rc != 0:
        raise AssertionError(f"helm template {' '.join(args)} failed: {err.strip()}")
    objs = {}
    for d in yaml.safe_load_all(out):
        if d:
            objs[(d["kind"], d["metadata"]["name"])] = d
    return objs


def check(name: str, cond: bool, detail: str = "") -> None:
    global PASSED
    if cond:
        PASSED += 1
        print(f"  ok   {name}")
    else:
        FAILS.append(f"{name} {detail}")
        print(f"  FAIL {name} {detail}")


def ci(name: str) -> list[str]:
    return ["-f", os.path.join(CHART, "ci", name)]


def deploy(objs):
    return objs[("Deployment", "metis-gateway")]


def pod(objs):
    return deploy(objs)["spec"]["template"]["spec"]


def gw(objs):
    return next(c for c in pod(objs)["containers"] if c["name"] == "gateway")


def mounts(c):
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def volumes(objs):
    return {v["name"]: v for v in pod(objs)["volumes"]}


def kinds(objs):
    return sorted({k for k, _ in objs})


# ---------------------------------------------------------------- defaults
print("== defaults (values.yaml as shipped)")
o = docs()
d, p, c = deploy(o), pod(o), gw(o)
args = c["args"]
check("Deployment, container and label names match the runbook (deploy/metis-gateway, -c gateway, app.kubernetes.io/name=metis-gateway)",
      d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "metis-gateway" and c["name"] == "gateway")
check("strategy RollingUpdate maxSurge 1 / maxUnavailable 0",
      d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, str(d["spec"]["strategy"]))
check("no PodDisruptionBudget with replicaCount 1 (would block kubectl drain)", not any(k == "PodDisruptionBudget" for k, _ in o))
check("readiness httpGet /readyz, liveness and startup httpGet /healthz on the named port",
      c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
      and c["startupProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["port"] == "http")
check("--shutdown-grace=25s passed", "--shutdown-grace=25s" in args, str(args))
check("terminationGracePeriodSeconds (40) > preStop sleep (5) + shutdown grace (25)",
      p["terminationGracePeriodSeconds"] == 40 and c["lifecycle"]["preStop"]["sleep"]["seconds"] == 5)
check("binds 0.0.0.0 on 8422 in the pod", "--host=0.0.0.0" in args and "--port=8422" in args)
check("trace DB on /var/lib/metis", "--db-path=/var/lib/metis/metis.db" in args and mounts(c)["data"]["mountPath"] == "/var/lib/metis")
km = mounts(c)["keystore"]
check("keystore Secret mounted as a directory (no subPath), read-only, at /etc/metis/keys",
      "subPath" not in km and km["mountPath"] == "/etc/metis/keys" and km.get("readOnly") is True)
check("--keystore=/etc/metis/keys/keys.json and Secret metis-gateway-keystore",
      "--keystore=/etc/metis/keys/keys.json" in args and volumes(o)["keystore"]["secret"]["secretName"] == "metis-gateway-keystore")
check("no subPath anywhere", all("subPath" not in m for m in c["volumeMounts"]))
sc = c["securityContext"]
check("container: readOnlyRootFilesystem, no privilege escalation, drop ALL, runAsNonRoot",
      sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"])
check("pod: runAsNonRoot uid 10001, fsGroup 10001, seccomp RuntimeDefault",
      p["securityContext"]["runAsUser"] == 10001 and p["securityContext"]["fsGroup"] == 10001
      and p["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault")
check("no service-account token mounted", p["automountServiceAccountToken"] is False)
check("rate limiting off by default (no --rate-limit)", "--rate-limit" not in args)
pvc = o[("PersistentVolumeClaim", "metis-gateway-data")]
check("PVC ReadWriteOnce 1Gi kept on uninstall",
      pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
      and pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep")
req = p["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
check("RWO + surge: required podAffinity to the running gateway pod's node (kubernetes.io/hostname)",
      len(req) == 1 and req[0]["topologyKey"] == "kubernetes.io/hostname"
      and req[0]["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "metis-gateway", "app.kubernetes.io/instance": "metis-gateway"})
check("no initContainers, no envFrom without provider credentials", "initContainers" not in p and "envFrom" not in c)
svc = o[("Service", "metis-gateway")]
check("Service ClusterIP port 8422 -> named port http",
      svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["port"] == 8422 and svc["spec"]["ports"][0]["targetPort"] == "http")
check("image metis-gateway:<appVersion>, IfNotPresent", c["image"] == "metis-gateway:0.1.0" and c["imagePullPolicy"] == "IfNotPresent")
check("healthcheck URL for `kubectl exec … metis healthcheck`",
      {"name": "METIS_GATEWAY_HEALTHCHECK_URL", "value": "http://127.0.0.1:8422/healthz"} in c["env"])
check("default objects", kinds(o) == ["Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"], str(kinds(o)))

print("== Kubernetes < 1.30: no preStop sleep action, grace still above the drain")
o = docs(kube="1.29.0")
check("no lifecycle; terminationGracePeriodSeconds 35", "lifecycle" not in gw(o) and pod(o)["terminationGracePeriodSeconds"] == 35)

# ---------------------------------------------------------------- runbook commands
print("== runbook: kind rehearsal install + upgrade (--set, --reuse-values emulated)")
install = ["--set", "image.repository=metis-gateway", "--set", "image.tag=v0", "--set", "image.pullPolicy=Never",
           "--set", "provider.anthropicApiKey=sk-ant-test", "--set", "keystore.existingSecret=metis-gateway-keystore"]
o = docs(*install)
c = gw(o)
check("image metis-gateway:v0 with pullPolicy Never", c["image"] == "metis-gateway:v0" and c["imagePullPolicy"] == "Never")
sec = o[("Secret", "metis-gateway-providers")]
check("provider.anthropicApiKey -> chart Secret metis-gateway-providers -> envFrom",
      sec["stringData"] == {"ANTHROPIC_API_KEY": "sk-ant-test"}
      and c["envFrom"] == [{"secretRef": {"name": "metis-gateway-providers"}}])
check("provider Secret checksum on the pod template (a key change rolls the pods)",
      "checksum/providers" in deploy(o)["spec"]["template"]["metadata"]["annotations"])
o = docs(*install, "--set", "image.tag=v1")
check("--set image.tag=v1 upgrades the image only", gw(o)["image"] == "metis-gateway:v1")

print("== runbook: going public, step 1 (--set rateLimit.enabled=true)")
o = docs("--set", "rateLimit.enabled=true")
args = gw(o)["args"]
check("--rate-limit --rate-limit-per-key-rpm=60 --rate-limit-per-ip-rpm=1000",
      all(a in args for a in ["--rate-limit", "--rate-limit-per-key-rpm=60", "--rate-limit-per-ip-rpm=1000"]), str(args))

print("== runbook: going public, step 2 (LoadBalancer + nginx Ingress + TLS secret)")
public = ["--set", "service.type=LoadBalancer", "--set", "ingress.enabled=true", "--set", "ingress.className=nginx",
          "--set", "ingress.hosts[0].host=gateway.example.com", "--set", "ingress.tls[0].secretName=metis-gateway-tls"]
o = docs("--set", "rateLimit.enabled=true", *public)
ing = o[("Ingress", "metis-gateway")]
rule = ing["spec"]["rules"][0]
check("Service type LoadBalancer", o[("Service", "metis-gateway")]["spec"]["type"] == "LoadBalancer")
check("Ingress class nginx, host gateway.example.com",
      ing["spec"]["ingressClassName"] == "nginx" and rule["host"] == "gateway.example.com")
check("paths default to /v1 Prefix when --set replaces the hosts list (API only: no /metrics, /admin)",
      rule["http"]["paths"] == [{"path": "/v1", "pathType": "Prefix",
                                 "backend": {"service": {"name": "metis-gateway", "port": {"number": 8422}}}}])
check("TLS entry without hosts covers the Ingress hosts",
      ing["spec"]["tls"] == [{"secretName": "metis-gateway-tls", "hosts": ["gateway.example.com"]}])
check("no backend-protocol annotation when the gateway speaks plain HTTP", "annotations" not in ing["metadata"])
o = docs("--set", "rateLimit.enabled=true", *public, "--set", "service.type=ClusterIP", "--set", "ingress.enabled=false")
check("backing out (ClusterIP, ingress off) removes the Ingress",
      ("Ingress", "metis-gateway") not in o and o[("Service", "metis-gateway")]["spec"]["type"] == "ClusterIP")

print("== runbook: restore (fixed recipe)")
o = docs("--set", "restore.enabled=true", "--set", "restore.fromFile=metis-pre-upgrade.db")
init = pod(o)["initContainers"]
check("strategy Recreate while restoring (the writer is gone before the restore)",
      deploy(o)["spec"]["strategy"] == {"type": "Recreate"})
check("initContainer runs `metis restore /var/lib/metis/metis-pre-upgrade.db --db-path /var/lib/metis/metis.db --force`",
      len(init) == 1 and init[0]["command"] == ["/usr/local/bin/metis"]
      and init[0]["args"] == ["restore", "/var/lib/metis/metis-pre-upgrade.db", "--db-path=/var/lib/metis/metis.db", "--force"])
check("initContainer mounts the trace volume, same hardened securityContext",
      mounts(init[0])["data"]["mountPath"] == "/var/lib/metis" and init[0]["securityContext"]["readOnlyRootFilesystem"])
o = docs("--set", "restore.enabled=true", "--set", "restore.fromFile=metis-pre-upgrade.db", "--set", "restore.enabled=false")
check("turning restore off restores RollingUpdate and drops the initContainer",
      deploy(o)["spec"]["strategy"]["type"] == "RollingUpdate" and "initContainers" not in pod(o))

# ---------------------------------------------------------------- ci scenarios
print("== ci/tls-values.yaml")
o = docs(*ci("tls-values.yaml"))
c = gw(o)
check("--tls-cert/--tls-key from /etc/metis/tls",
      "--tls-cert=/etc/metis/tls/tls.crt" in c["args"] and "--tls-key=/etc/metis/tls/tls.key" in c["args"])
check("TLS Secret mounted read-only at /etc/metis/tls",
      mounts(c)["tls"]["mountPath"] == "/etc/metis/tls" and volumes(o)["tls"]["secret"]["secretName"] == "metis-gateway-inprocess-tls")
check("all probes use HTTPS", all(c[p]["httpGet"]["scheme"] == "HTTPS" for p in ("readinessProbe", "livenessProbe", "startupProbe")))
check("healthcheck URL is https", {"name": "METIS_GATEWAY_HEALTHCHECK_URL", "value": "https://127.0.0.1:8422/healthz"} in c["env"])
check("ingress-nginx told the backend speaks HTTPS",
      o[("Ingress", "metis-gateway")]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS")

print("== ci/ingress-values.yaml")
o = docs(*ci("ingress-values.yaml"))
ing, svc = o[("Ingress", "metis-gateway")], o[("Service", "metis-gateway")]
check("LoadBalancer with source ranges and annotations",
      svc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"] and "service.beta.kubernetes.io/aws-load-balancer-type" in svc["metadata"]["annotations"])
check("explicit paths and two hosts kept", [r["host"] for r in ing["spec"]["rules"]] == ["gateway.example.com", "gw.internal.example.com"]
      and ing["spec"]["rules"][1]["http"]["paths"][0]["path"] == "/")
check("ingress annotations passed", ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off")

print("== ci/ratelimit-values.yaml")
args = gw(docs(*ci("ratelimit-values.yaml")))["args"]
check("rpm values and one --trusted-proxy per CIDR",
      all(a in args for a in ["--rate-limit", "--rate-limit-per-key-rpm=30", "--rate-limit-per-ip-rpm=600",
                              "--trusted-proxy=10.0.0.0/8", "--trusted-proxy=192.168.10.5"]), str(args))

print("== ci/existing-secrets-values.yaml")
o = docs(*ci("existing-secrets-values.yaml"))
c, p = gw(o), pod(o)
check("provider.existingSecret -> envFrom, no chart Secret",
      c["envFrom"] == [{"secretRef": {"name": "metis-providers"}}] and not any(k == "Secret" for k, _ in o))
check("admin token Secret mounted as a file dir, --admin-token-file passed",
      "--admin-token-file=/etc/metis/admin/admin-token" in c["args"] and mounts(c)["admin"]["readOnly"]
      and volumes(o)["admin"]["secret"]["secretName"] == "metis-admin-token" and "subPath" not in mounts(c)["admin"])
check("keystore secret/key configurable",
      "--keystore=/etc/metis/keys/gateway-keys.json" in c["args"] and volumes(o)["keystore"]["secret"]["secretName"] == "team-keystore")
cm = o[("ConfigMap", "metis-gateway-config")]
check("config -> ConfigMap -> --config, checksum on the pod",
      "llama" in cm["data"]["metis.toml"] and "--config=/etc/metis/config/metis.toml" in c["args"]
      and "checksum/config" in deploy(o)["spec"]["template"]["metadata"]["annotations"])
check("grace 60 s + preStop 10 s -> terminationGracePeriodSeconds 80",
      "--shutdown-grace=60s" in c["args"] and p["terminationGracePeriodSeconds"] == 80)
check("extraArgs/extraEnv/maxConnections/logFormat",
      "--openai-base-url=http://vllm.llm.svc:8000/v1" in c["args"] and "--max-connections=4000" in c["args"]
      and "--log-format=text" in c["args"] and {"name": "RUST_LOG", "value": "info,metis_http=debug"} in c["env"])
check("serviceAccount.create=false uses the named SA", p["serviceAccountName"] == "metis-runtime" and not any(k == "ServiceAccount" for k, _ in o))
check("image pull secrets", p["imagePullSecrets"] == [{"name": "regcred"}])

print("== ci/oidc-values.yaml (single sign-on and the console)")
o = docs(*ci("oidc-values.yaml"))
env = {e["name"]: e for e in gw(o)["env"]}
check("SSO settings reach the gateway as METIS_GATEWAY_OIDC_* environment",
      env["METIS_GATEWAY_OIDC_ISSUER"]["value"] == "https://sso.example.com/realms/platform"
      and env["METIS_GATEWAY_OIDC_AUDIENCE"]["value"] == "metis-admin"
      and env["METIS_GATEWAY_OIDC_CLIENT_ID"]["value"] == "metis-console"
      and env["METIS_GATEWAY_OIDC_SCOPE"]["value"] == "groups"
      and env["METIS_GATEWAY_OIDC_ROLE_CLAIM"]["value"] == "groups"
      and env["METIS_GATEWAY_OIDC_ROLE_MAP"]["value"] == "platform-admins=admin,sre=operator"
      and env["METIS_GATEWAY_OIDC_DEFAULT_ROLE"]["value"] == "viewer", str(env))
check("client secret and console session key come from Secrets (never a plain value)",
      env["METIS_GATEWAY_OIDC_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "metis-oidc", "key": "client-secret"}
      and env["METIS_GATEWAY_CONSOLE_SESSION_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "metis-console", "key": "session-key"}
      and env["METIS_GATEWAY_CONSOLE_PUBLIC_URL"]["value"] == "https://metis.example.com")
check("alert webhook URL and signing secret from one Secret, timeout and attempts as env",
      env["METIS_GATEWAY_ALERT_WEBHOOK"]["valueFrom"]["secretKeyRef"] == {"name": "metis-alert-webhook", "key": "url"}
      and env["METIS_GATEWAY_ALERT_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "metis-alert-webhook", "key": "secret"}
      and env["METIS_GATEWAY_ALERT_WEBHOOK_TIMEOUT"]["value"] == "5s"
      and env["METIS_GATEWAY_ALERT_WEBHOOK_MAX_ATTEMPTS"]["value"] == "8")
check("defaults: SSO off, no OIDC or console environment",
      not any(e["name"].startswith(("METIS_GATEWAY_OIDC_", "METIS_GATEWAY_CONSOLE_", "METIS_GATEWAY_ALERT_"))
          for e in gw(docs())["env"]))

print("== ci/persistence-off-values.yaml")
o = docs(*ci("persistence-off-values.yaml"))
check("one replica", deploy(o)["spec"]["replicas"] == 1)
check("emptyDir trace, no PVC, no chart podAffinity (user anti-affinity kept)",
      "emptyDir" in volumes(o)["data"] and not any(k == "PersistentVolumeClaim" for k, _ in o)
      and "podAffinity" not in pod(o)["affinity"] and "podAntiAffinity" in pod(o)["affinity"])

print("== ci/persistence-existing-claim-values.yaml")
o = docs(*ci("persistence-existing-claim-values.yaml"))
aff = pod(o)["affinity"]["podAffinity"]
check("existingClaim used, no PVC rendered",
      volumes(o)["data"]["persistentVolumeClaim"]["claimName"] == "metis-trace" and not any(k == "PersistentVolumeClaim" for k, _ in o))
check("user podAffinity kept and co-location term appended",
      len(aff["preferredDuringSchedulingIgnoredDuringExecution"]) == 1 and len(aff["requiredDuringSchedulingIgnoredDuringExecution"]) == 1)
check("nodeSelector and tolerations", pod(o)["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod(o)["tolerations"][0]["key"] == "dedicated")

print("== ci/restore-values.yaml")
o = docs(*ci("restore-values.yaml"))
check("restore from ci file: Recreate + initContainer + annotation",
      deploy(o)["spec"]["strategy"]["type"] == "Recreate" and pod(o)["initContainers"][0]["name"] == "restore"
      and deploy(o)["spec"]["template"]["metadata"]["annotations"]["metis.io/restore-from"] == "metis-pre-upgrade.db")
pvc = o[("PersistentVolumeClaim", "metis-gateway-data")]
check("PVC size and storageClass", pvc["spec"]["resources"]["requests"]["storage"] == "5Gi" and pvc["spec"]["storageClassName"] == "standard")

print("== ci/monitoring-values.yaml")
o = docs(*ci("monitoring-values.yaml"))
sm = o[("ServiceMonitor", "metis-gateway")]
ep = sm["spec"]["endpoints"][0]
check("ServiceMonitor scrapes port http /metrics over https with tlsConfig, selects the Service",
      ep["port"] == "http" and ep["path"] == "/metrics" and ep["scheme"] == "https" and ep["tlsConfig"] == {"insecureSkipVerify": True}
      and sm["spec"]["selector"]["matchLabels"] == o[("Service", "metis-gateway")]["spec"]["selector"]
      and sm["metadata"]["labels"]["release"] == "kube-prometheus-stack")
rules = o[("PrometheusRule", "metis-gateway")]["spec"]["groups"][0]["rules"]
names = [r["alert"] for r in rules]
check("disabled rule absent, the other twelve present",
      "MetisGatewayAuthFailuresHigh" not in names and "MetisUpstreamErrorRatioHigh" in names and len(names) == 12, str(names))
check("threshold override applied", next(r for r in rules if r["alert"] == "MetisUpstreamErrorRatioHigh")["expr"].endswith("> 0.1"))
check("every rule selects the release's namespace and Service, and links its runbook",
      all('namespace="metis-gateway", service="metis-gateway"' in r["expr"]
          and r["annotations"]["runbook_url"] == "docs/alerts.md#" + r["alert"].lower() for r in rules))
cm = o[("ConfigMap", "metis-gateway-dashboard")]
with open(os.path.join(CHART, "dashboards", "metis-gateway.json"), encoding="utf-8") as f:
    dashboard_json = f.read()
import json  # noqa: E402
check("dashboard ConfigMap: sidecar label, folder annotation, sidecar namespace, the chart's JSON verbatim",
      cm["metadata"]["labels"].get("grafana_dashboard") == "1"
      and cm["metadata"]["annotations"] == {"grafana_folder": "Metis"}
      and cm["metadata"]["namespace"] == "monitoring"
      and json.loads(cm["data"]["metis-gateway.json"]) == json.loads(dashboard_json)
      and cm["data"]["metis-gateway.json"] == dashboard_json.rstrip("\n"))
o2 = docs("--set", "monitoring.prometheusRule.enabled=true", "--set-string",
          'monitoring.prometheusRule.selector=job="gw"', "--set",
          "monitoring.prometheusRule.runbookUrl=https://docs.example.com/alerts")
rules2 = o2[("PrometheusRule", "metis-gateway")]["spec"]["groups"][0]["rules"]
check("selector and runbookUrl overrides reach every rule",
      len(rules2) == 13 and all('{job="gw"' in r["expr"] and "namespace=" not in r["expr"]
                                and r["annotations"]["runbook_url"].startswith("https://docs.example.com/alerts#")
                                for r in rules2))
check("no dashboard ConfigMap unless enabled", ("ConfigMap", "metis-gateway-dashboard") not in o2)
try:
    import promql_parser  # type: ignore

    bad = []
    for r in rules:
        try:
            promql_parser.parse(r["expr"])
        except Exception as e:  # noqa: BLE001
            bad.append(f"{r['alert']}: {e}")
    check(f"every alert expression parses as PromQL ({len(rules)} rules, promql-parser)", not bad, "; ".join(bad))
except ImportError:
    check("promql-parser importable", False)
check("every rule has for/severity/summary",
      all(r.get("for") and r["labels"]["severity"] and r["annotations"]["summary"] for r in rules))
with open(os.environ.get("METIS_RULES_OUT", os.devnull), "w") as f:
    yaml.safe_dump({"groups": o[("PrometheusRule", "metis-gateway")]["spec"]["groups"]}, f)

# ---------------------------------------------------------------- store backends
def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def spread_ok(p, whenUnsatisfiable="ScheduleAnyway"):
    tsc = p.get("topologySpreadConstraints", [])
    sel = {"app.kubernetes.io/name": "metis-gateway", "app.kubernetes.io/instance": "metis-gateway"}
    return [t["topologyKey"] for t in tsc] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"] and all(
        t["maxSkew"] == 1 and t["whenUnsatisfiable"] == whenUnsatisfiable and t["labelSelector"]["matchLabels"] == sel
        and t.get("matchLabelKeys") == ["pod-template-hash"] for t in tsc)


print("== ci/postgres-values.yaml (a fleet on PostgreSQL)")
o = docs(*ci("postgres-values.yaml"))
d, p, c = deploy(o), pod(o), gw(o)
env, args = env_of(c), c["args"]
check("replicaCount unset -> 2 replicas with postgres", d["spec"]["replicas"] == 2, str(d["spec"]["replicas"]))
pdb = o.get(("PodDisruptionBudget", "metis-gateway"))
check("PDB kept: minAvailable 1 over the gateway pods",
      pdb is not None and pdb["spec"]["minAvailable"] == 1
      and pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"])
check("topologySpreadConstraints by hostname and zone, maxSkew 1, ScheduleAnyway, per ReplicaSet (matchLabelKeys)",
      spread_ok(p), str(p.get("topologySpreadConstraints")))
check("no PersistentVolumeClaim, no co-location podAffinity (pods may go to any node)",
      not any(k == "PersistentVolumeClaim" for k, _ in o) and "affinity" not in p)
check("/var/lib/metis is an emptyDir (scratch for one-off commands), mounted where the file stores were",
      volumes(o)["data"] == {"name": "data", "emptyDir": {}} and mounts(c)["data"]["mountPath"] == "/var/lib/metis")
check("no keystore Secret volume or mount; no --keystore/--db-path flags (keys and store in the database)",
      "keystore" not in volumes(o) and "keystore" not in mounts(c)
      and not any(a.startswith(("--keystore", "--db-path")) for a in args), str(args))
check("METIS_GATEWAY_STORE=postgres and METIS_GATEWAY_KEYSTORE=store as env (`kubectl exec … metis …` inherits them)",
      env["METIS_GATEWAY_STORE"] == {"name": "METIS_GATEWAY_STORE", "value": "postgres"}
      and env["METIS_GATEWAY_KEYSTORE"] == {"name": "METIS_GATEWAY_KEYSTORE", "value": "store"})
check("METIS_GATEWAY_DATABASE_URL only from the Secret (secretKeyRef metis-gateway-database/database-url, no value)",
      env["METIS_GATEWAY_DATABASE_URL"] == {"name": "METIS_GATEWAY_DATABASE_URL", "valueFrom": {
          "secretKeyRef": {"name": "metis-gateway-database", "key": "database-url"}}})
check("pool size, statement timeout and spend outage policy (fail-closed default) as env",
      env["METIS_GATEWAY_DATABASE_POOL_SIZE"]["value"] == "12"
      and env["METIS_GATEWAY_DATABASE_STATEMENT_TIMEOUT"]["value"] == "3s"
      and env["METIS_GATEWAY_SPEND_OUTAGE"]["value"] == "fail-closed")
check("the other serving flags are unchanged (data dir, bind, grace, rate limit)",
      all(a in args for a in ["--data-dir=/var/lib/metis", "--host=0.0.0.0", "--shutdown-grace=25s", "--rate-limit"]))
check("rolling update 1/0 and the /readyz readiness gate kept",
      d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
      and c["readinessProbe"]["httpGet"]["path"] == "/readyz")
check("objects: Deployment, PDB, Service, ServiceAccount (no PVC, no Secret)",
      kinds(o) == ["Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"], str(kinds(o)))
pg = ["--set", "store.backend=postgres", "--set", "store.postgres.existingSecret=db"]
secret_url = "postgres://metis:s3cret-pw@db.example.com:5432/metis?sslmode=verify-full"
leaked = []
for label, extra in [("defaults", []), ("postgres", pg), ("postgres ci", ci("postgres-values.yaml")),
                     ("postgres, 3 replicas, fail-open", pg + ["--set", "replicaCount=3", "--set", "store.postgres.spendOutage=fail-open"])]:
    _, out, _ = render(*extra)
    if "postgres://" in out or "s3cret" in out:
        leaked.append(label)
check("no database URL literal in any rendered manifest", not leaked, str(leaked))
rc, _, err = render(*pg, "--set", f"store.postgres.existingSecret={secret_url}")
check("a URL pasted where the Secret name goes is refused (schema: Secret names are DNS names)",
      rc != 0 and "store.postgres.existingSecret" in err, err.strip()[-200:])
o = docs(*pg, "--set", "store.postgres.secretKey=url", "--set", "store.postgres.spendOutage=fail-open")
env = env_of(gw(o))
check("secretKey and spendOutage=fail-open honoured",
      env["METIS_GATEWAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "url"}
      and env["METIS_GATEWAY_SPEND_OUTAGE"]["value"] == "fail-open")
o = docs(*pg, "--set", "replicaCount=3")
check("replicaCount=3 with postgres: 3 replicas, PDB, spread", deploy(o)["spec"]["replicas"] == 3
      and ("PodDisruptionBudget", "metis-gateway") in o and spread_ok(pod(o)))
o = docs(*pg, "--set", "replicaCount=1")
check("replicaCount=1 with postgres: no PDB (would block drains), no spread",
      deploy(o)["spec"]["replicas"] == 1 and ("PodDisruptionBudget", "metis-gateway") not in o
      and "topologySpreadConstraints" not in pod(o))
o = docs(*pg, "--set", "topologySpread.enabled=false")
check("topologySpread.enabled=false removes the constraints", "topologySpreadConstraints" not in pod(o))
o = docs(*pg, "--set", "topologySpread.whenUnsatisfiable=DoNotSchedule")
check("topologySpread.whenUnsatisfiable=DoNotSchedule (hard spread) honoured", spread_ok(pod(o), "DoNotSchedule"))
o = docs(*pg, kube="1.26.0")
check("Kubernetes < 1.27: spread without matchLabelKeys",
      all("matchLabelKeys" not in t for t in pod(o)["topologySpreadConstraints"]))
o = docs(*pg, "--set", "persistence.existingClaim=metis-trace", "--set", "keystore.existingSecret=")
check("persistence.* and keystore.* are not used with postgres (no claim mounted, no keystore required)",
      volumes(o)["data"] == {"name": "data", "emptyDir": {}} and "keystore" not in volumes(o))

print("== ci/redb-values.yaml")
o = docs(*ci("redb-values.yaml"))
c = gw(o)
check("redb: --db-path=/var/lib/metis/metis.redb, METIS_GATEWAY_STORE=redb, keystore Secret still mounted",
      "--db-path=/var/lib/metis/metis.redb" in c["args"] and env_of(c)["METIS_GATEWAY_STORE"]["value"] == "redb"
      and "--keystore=/etc/metis/keys/keys.json" in c["args"] and "keystore" in volumes(o))
check("redb: PVC, co-location podAffinity, one replica, no spread",
      o[("PersistentVolumeClaim", "metis-gateway-data")]["spec"]["resources"]["requests"]["storage"] == "2Gi"
      and "podAffinity" in pod(o)["affinity"] and deploy(o)["spec"]["replicas"] == 1
      and "topologySpreadConstraints" not in pod(o))
o = docs(*ci("redb-values.yaml"), "--set", "restore.enabled=true", "--set", "restore.fromFile=snapshots/pre.redb")
check("redb: the restore initContainer restores onto metis.redb",
      pod(o)["initContainers"][0]["args"] == ["restore", "/var/lib/metis/snapshots/pre.redb",
                                              "--db-path=/var/lib/metis/metis.redb", "--force"])
check("sqlite default: no METIS_GATEWAY_STORE env (unchanged rendering)", "METIS_GATEWAY_STORE" not in env_of(gw(docs())))

print("== helm upgrade --reuse-values from a release made with chart 0.2.0 (no store.*, no topologySpread.*)")
# --reuse-values takes the old release's values as the chart's values: keys added since are
# absent, not defaulted. Emulated by a copy of the chart whose values.yaml lacks them.
with tempfile.TemporaryDirectory() as tmpd:
    import shutil  # noqa: E402

    old_chart = os.path.join(tmpd, "chart")
    shutil.copytree(CHART, old_chart)
    with open(os.path.join(CHART, "values.yaml")) as f:
        old_values = yaml.safe_load(f)
    for k in ("store", "topologySpread"):
        old_values.pop(k)
    old_values["replicaCount"] = 1
    with open(os.path.join(old_chart, "values.yaml"), "w") as f:
        yaml.safe_dump(old_values, f)
    for label, sets in [("image.tag upgrade", ["--set", "image.tag=v1"]),
                        ("restore on", ["--set", "restore.enabled=true", "--set", "restore.fromFile=snapshots/metis-pre-upgrade.db"])]:
        base = [HELM, "template", RELEASE, "--namespace", "metis-gateway", "--kube-version", KUBE]
        old_out = subprocess.run(base[:3] + [old_chart] + base[3:] + sets, capture_output=True, text=True, timeout=60)
        new_out = subprocess.run(base[:3] + [CHART] + base[3:] + sets, capture_output=True, text=True, timeout=60)
        check(f"reused 0.2.0 values render as a fresh install on SQLite ({label})",
              old_out.returncode == 0 and old_out.stdout == new_out.stdout, old_out.stderr.strip()[-300:])
    rc = subprocess.run([HELM, "template", RELEASE, old_chart, "--set", "store.backend=postgres",
                         "--set", "store.postgres.existingSecret=db"], capture_output=True, text=True, timeout=60)
    check("switching such a release to postgres with --reuse-values names the missing value (schema)",
          rc.returncode != 0 and "store.postgres: secretKey is required" in rc.stderr, rc.stderr.strip()[-200:])

# ---------------------------------------------------------------- refusals
print("== invalid combinations fail with an actionable message")
for label, sets, needle in [
    ("empty keystore.existingSecret", ["--set", "keystore.existingSecret="], "issue-key"),
    ("2 replicas on sqlite with persistence (schema: replicaCount > 1 needs store.backend=postgres)",
     ["--set", "replicaCount=2"], "replicaCount: Must be less than or equal to 1"),
    ("2 replicas on redb with persistence (schema)", ["--set", "store.backend=redb", "--set", "replicaCount=2"],
     "replicaCount: Must be less than or equal to 1"),
    ("3 replicas with per-pod stores, persistence off (schema: caps and limits would hold per pod)",
     ["--set", "persistence.enabled=false", "--set", "replicaCount=3"],
     "replicaCount: Must be less than or equal to 1"),
    ("postgres without the URL Secret (schema)", ["--set", "store.backend=postgres"], "store.postgres.existingSecret"),
    ("postgres with an empty Secret key (schema)", ["--set", "store.backend=postgres", "--set", "store.postgres.existingSecret=db",
                                                     "--set", "store.postgres.secretKey="], "store.postgres.secretKey"),
    ("the database URL as a plain value (schema: no such key)",
     ["--set", "store.backend=postgres", "--set", "store.postgres.existingSecret=db",
      "--set", "store.postgres.url=postgres://metis:pw@db:5432/metis"], "url"),
    ("unknown store.backend (schema)", ["--set", "store.backend=mysql"], "store.backend"),
    ("bad spendOutage (schema)", ["--set", "store.backend=postgres", "--set", "store.postgres.existingSecret=db",
                                  "--set", "store.postgres.spendOutage=open"], "spendOutage"),
    ("bad statementTimeout (schema)", ["--set", "store.backend=postgres", "--set", "store.postgres.existingSecret=db",
                                       "--set", "store.postgres.statementTimeout=5"], "statementTimeout"),
    ("restore initContainer with postgres", ["--set", "store.backend=postgres", "--set", "store.postgres.existingSecret=db",
                                             "--set", "restore.enabled=true", "--set", "restore.fromFile=b.db"],
     "does not apply to store.backend=postgres"),
    ("restore onto metis.redb itself", ["--set", "store.backend=redb", "--set", "restore.enabled=true",
                                        "--set", "restore.fromFile=metis.redb"], "restore.fromFile"),
    ("tls without secretName", ["--set", "tls.enabled=true"], "tls.secretName"),
    ("provider secret and key both", ["--set", "provider.existingSecret=x", "--set", "provider.openaiApiKey=y"], "not both"),
    ("restore without file", ["--set", "restore.enabled=true"], "restore.fromFile"),
    ("restore onto metis.db itself", ["--set", "restore.enabled=true", "--set", "restore.fromFile=metis.db"], "restore.fromFile"),
    ("restore path escaping the volume", ["--set", "restore.enabled=true", "--set", "restore.fromFile=../etc/x"], "restore.fromFile"),
    ("restore without persistence", ["--set", "restore.enabled=true", "--set", "restore.fromFile=b.db", "--set", "persistence.enabled=false"], "needs persistence"),
    ("an unknown role in admin.oidc.roleMap (schema)", ["--set", "admin.oidc.roleMap={sre=root}"], "roleMap"),
    ("the OIDC client secret as a plain value (schema: no such key)",
     ["--set", "admin.oidc.clientSecret.value=s3cret"], "value"),
    ("alert webhook attempts out of range (schema)", ["--set", "alerts.webhook.maxAttempts=50"], "maxAttempts"),
    ("unknown value key (schema)", ["--set", "workers=4"], "workers"),
    ("wrong type (schema)", ["--set", "rateLimit.perKey.rpm=fast"], "rpm"),
    ("bad service type (schema)", ["--set", "service.type=Magic"], "service.type"),
]:
    rc, _, err = render(*sets)
    check(f"refused: {label}", rc != 0 and needle in err, err.strip()[-200:])

# ---------------------------------------------------------------- no value that does nothing
print("== every value in values.yaml changes the rendered manifests in some scenario")
with open(os.path.join(CHART, "values.yaml")) as f:
    base_values = yaml.safe_load(f)
scenarios = [None] + sorted(
    os.path.join(CHART, "ci", n) for n in os.listdir(os.path.join(CHART, "ci")) if n.endswith(".yaml"))
SPECIAL = {
    "image.pullPolicy": "Always", "strategy.type": "Recreate", "gateway.logFormat": "text",
    "service.type": "NodePort", "persistence.size": "2Gi", "keystore.secretKey": "other.json",
    "admin.secretKey": "other", "restore.fromFile": "other.db", "config": "models = []\n",
    "monitoring.serviceMonitor.interval": "45s", "monitoring.serviceMonitor.scrapeTimeout": "5s",
    "rateLimit.trustedProxies": ["172.16.0.0/12"], "gateway.extraArgs": ["--reuse-port"],
    "gateway.extraEnv": [{"name": "X", "value": "1"}], "image.pullSecrets": [{"name": "r"}],
    "service.loadBalancerSourceRanges": ["198.51.100.0/24"], "ingress.tls": [{"secretName": "t"}],
    "ingress.hosts": [{"host": "other.example.com"}], "tolerations": [{"key": "k", "operator": "Exists"}],
    "containerSecurityContext.capabilities.drop": ["NET_RAW"],
    "replicaCount": 3, "store.backend": "redb", "store.postgres.statementTimeout": "9s",
    "store.postgres.spendOutage": "fail-open", "topologySpread.whenUnsatisfiable": "DoNotSchedule",
    "topologySpread.topologyKeys": ["kubernetes.io/hostname"],
    "admin.oidc.issuer": "https://other.example.com", "admin.oidc.audience": ["other"],
    "admin.oidc.scopes": ["offline_access"], "admin.oidc.roleMap": ["ops=operator"],
    "admin.oidc.defaultRole": "operator", "admin.console.publicUrl": "https://other.example.com",
    "alerts.webhook.timeout": "30s",
}


def leaves(v, path=""):
    if isinstance(v, dict) and v:
        for k, sub in v.items():
            yield from leaves(sub, f"{path}.{k}" if path else k)
    else:
        yield path, v


def mutate(path, v):
    if path in SPECIAL:
        return SPECIAL[path]
    if v is None:
        return "x1"
    if path.endswith(".for"):
        return "7m"
    if path.endswith(".severity"):
        return "info" if v != "info" else "warning"
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return (v + "x") if v else "x1"
    if isinstance(v, dict):
        return {"example.com/k": "v"}
    raise ValueError(path)


def set_path(d, path, value):
    d = copy.deepcopy(d)
    cur = d
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return d


def scenario_values(s):
    vals = copy.deepcopy(base_values)
    if s:
        with open(s) as f:
            over = yaml.safe_load(f) or {}

        def merge(a, b):
            for k, v in b.items():
                if isinstance(v, dict) and isinstance(a.get(k), dict):
                    merge(a[k], v)
                else:
                    a[k] = v
        merge(vals, over)
    return vals


# Some values only matter together with others (e.g. the ingress only renders when enabled).
ENABLERS = {"ingress.": {"ingress": {"enabled": True}}, "tls.secretName": {"tls": {"enabled": True}},
            "service.loadBalancerSourceRanges": {"service": {"type": "LoadBalancer"}},
            "monitoring.serviceMonitor.tlsConfig": {"tls": {"enabled": True, "secretName": "s"}},
            "restore.fromFile": {"restore": {"enabled": True}},
            "monitoring.prometheusRule.rules.": {"monitoring": {"prometheusRule": {"enabled": True}}},
            "monitoring.grafanaDashboard.": {"monitoring": {"grafanaDashboard": {"enabled": True}}}}
dead = []
count = 0
for path, v in leaves(base_values):
    count += 1
    found = False
    for s in scenarios:
        vals = scenario_values(s)
        for prefix, extra in ENABLERS.items():
            if path.startswith(prefix):
                def merge(a, b):
                    for k, x in b.items():
                        if isinstance(x, dict) and isinstance(a.get(k), dict):
                            merge(a[k], x)
                        else:
                            a[k] = x
                merge(vals, extra)
        before = render(values=vals)
        cur = vals
        for k in path.split("."):
            cur = cur.get(k) if isinstance(cur, dict) else None
        after = render(values=set_path(vals, path, mutate(path, cur)))
        if before[0] == 0 and after[0] == 0 and before[1] != after[1]:
            found = True
            break
    if not found:
        dead.append(path)
check(f"all {count} leaf values of values.yaml are live", not dead, "no effect: " + ", ".join(dead))

print(f"chart checks: {PASSED} passed, {len(FAILS)} failed")
if FAILS:
    for f in FAILS:
        print("FAILED:", f)
    sys.exit(1)
