#!/usr/bin/env python3
"""Run the real `metis` binary the way the image, compose and the chart run it.

Usage: check_runtime.py METIS_BINARY HELM CHART_DIR REPO_ROOT

No container engine or cluster exists here, so the packaging is exercised from its own
files: the Dockerfile's ENV/ENTRYPOINT/CMD/HEALTHCHECK, docker-compose.yml's entrypoint +
`run --rm gateway issue-key …`, and the chart's rendered command/args/env/probes are executed
against the binary, with container paths mapped into a temp dir and the bind moved from
0.0.0.0 to 127.0.0.1 (nothing here listens beyond loopback). Every flag the packaging passes
must be accepted by the real CLI; the probes must answer; SIGTERM must drain and exit 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

METIS, HELM, CHART, ROOT = sys.argv[1:5]
FAILS: list[str] = []
PASSED = 0
SKIPPED: list[str] = []


def check(name: str, cond: bool, detail: str = "") -> None:
    global PASSED
    if cond:
        PASSED += 1
        print(f"  ok   {name}")
    else:
        FAILS.append(f"{name} {detail}")
        print(f"  FAIL {name} {detail}")


def skip(name: str, why: str) -> None:
    SKIPPED.append(f"{name}: {why}")
    print(f"  SKIP {name}: {why}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mapper:
    """Container paths -> temp dir paths; 0.0.0.0 -> 127.0.0.1; port -> a free one."""

    def __init__(self, root: str, port: int):
        self.root, self.port = root, port

    def path(self, p: str) -> str:
        for prefix in ("/var/lib/metis", "/etc/metis"):
            if p == prefix or p.startswith(prefix + "/"):
                return self.root + p
        return p

    def arg(self, a: str) -> str:
        if a == "/usr/local/bin/metis":
            return METIS
        if a in ("--host=0.0.0.0",):
            return "--host=127.0.0.1"
        if re.fullmatch(r"--port=\d+", a):
            return f"--port={self.port}"
        m = re.fullmatch(r"(--[a-z-]+=)(/.*)", a)
        if m:
            return m.group(1) + self.path(m.group(2))
        if a.startswith("/"):
            return self.path(a)
        return a

    def env(self, k: str, v: str) -> str:
        if k == "METIS_GATEWAY_HOST":
            return "127.0.0.1"
        if k == "METIS_GATEWAY_PORT":
            return str(self.port)
        if k == "METIS_GATEWAY_HEALTHCHECK_URL":
            return re.sub(r":\d+/", f":{self.port}/", v)
        return self.path(v) if v.startswith("/") else v


def run(argv, env, timeout=30, **kw):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def wait_healthy(argv, env, deadline=20.0) -> bool:
    end = time.time() + deadline
    while time.time() < end:
        if run(argv, env, timeout=10).returncode == 0:
            return True
        time.sleep(0.2)
    return False


def base_env() -> dict:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
    keep["RUST_LOG"] = "warn"
    return keep


def start(argv, env, log):
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(proc) -> int | None:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def issue_key(env, keystore: str, name: str) -> str:
    env = dict(env)
    env.setdefault("METIS_GATEWAY_DATA_DIR", os.path.join(os.path.dirname(keystore), "operator-data"))
    r = run([METIS, "gateway", "issue-key", "--keystore", keystore, "--name", name, "--workspace", "/workspace"], env)
    if r.returncode != 0:
        raise AssertionError(f"issue-key failed: {r.stderr}")
    return re.search(r"token:\s*(gw_\S+)", r.stdout).group(1)


def models_status(port: int, token: str, scheme: str = "http") -> int:
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {token}"})
    ctx = None
    if scheme == "https":
        import ssl
        ctx = ssl._create_unverified_context()  # noqa: S323 - local self-signed test cert
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# ------------------------------------------------------------------ Dockerfile
print("== Dockerfile contract, executed with the binary")
df_path = os.path.join(ROOT, "infra/gateway/Dockerfile")
with open(df_path) as f:
    text = f.read().replace("\\\n", " ")
lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
runtime_idx = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
runtime = lines[runtime_idx:]


def instr(name, block=runtime):
    return [ln[len(name) + 1:].strip() for ln in block if ln.upper().startswith(name + " ")]


env_img: dict[str, str] = {}
for e in instr("ENV"):
    for k, v in re.findall(r"(\w+)=(\S+)", e):
        env_img[k] = v
entry = json.loads(instr("ENTRYPOINT")[0])
cmd = json.loads(instr("CMD")[0])
hc = instr("HEALTHCHECK")[0]
hc_cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
check("multi-stage: rust builder with `cargo build --release -p metis --locked`",
      len(froms) >= 2 and "rust:" in froms[0] and "cargo build --release -p metis --locked" in text)
check("runtime stage: distroless, no shell needed (exec-form ENTRYPOINT/CMD/HEALTHCHECK)",
      "distroless" in froms[-1] and isinstance(entry, list) and isinstance(cmd, list))
check("USER 10001, EXPOSE 8422", instr("USER") == ["10001:10001"] and instr("EXPOSE") == ["8422"])
check("ENV binds 0.0.0.0, data dir /var/lib/metis, keystore /etc/metis/keys/keys.json",
      env_img.get("METIS_GATEWAY_HOST") == "0.0.0.0" and env_img.get("METIS_GATEWAY_DATA_DIR") == "/var/lib/metis"
      and env_img.get("METIS_GATEWAY_KEYSTORE") == "/etc/metis/keys/keys.json")
check("HEALTHCHECK runs `metis healthcheck`", hc_cmd[:2] == ["/usr/local/bin/metis", "healthcheck"])
check("the image ships the binary's SBOM at /usr/share/doc/metis/sbom.cdx.json (scripts/sbom.py, from cargo tree)",
      "--from=sbom /sbom/sbom.cdx.json /usr/share/doc/metis/sbom.cdx.json" in instr("COPY")
      and "cargo tree --locked --offline -p metis -e normal --prefix depth" in text
      and "sbom.py --tree tree.txt --metadata metadata.json --lock Cargo.lock" in text)

tmp = tempfile.mkdtemp(prefix="metis-infra-")
try:
    port = free_port()
    mp = Mapper(os.path.join(tmp, "image"), port)
    os.makedirs(mp.path("/var/lib/metis"))
    os.makedirs(mp.path("/etc/metis/keys"))
    env = base_env()
    env.update({k: mp.env(k, v) for k, v in env_img.items()})
    env["METIS_GATEWAY_LOG_FORMAT"] = "text"

    # docker-compose.yml: entrypoint + `run --rm gateway issue-key …`
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    svc = compose["services"]["gateway"]
    c_entry = [mp.arg(a) for a in svc["entrypoint"]]
    env.update({k: mp.env(k, str(v)) for k, v in svc.get("environment", {}).items()})
    r = run(c_entry + ["issue-key", "--name", "alice", "--workspace", "/workspace"], env)
    check("`docker compose run --rm gateway issue-key --name alice --workspace /workspace` issues a key into the keys volume",
          r.returncode == 0 and "token:" in r.stdout and os.path.exists(mp.path("/etc/metis/keys/keys.json")), r.stderr)
    token = re.search(r"token:\s*(gw_\S+)", r.stdout).group(1) if r.returncode == 0 else ""
    r = run(c_entry + ["list-keys"], env)
    check("`docker compose run --rm gateway list-keys`", r.returncode == 0 and "alice" in r.stdout, r.stderr)

    # docker compose up: entrypoint with no command = serve; image ENTRYPOINT+CMD likewise.
    with open(os.path.join(tmp, "compose-up.log"), "w") as log:
        proc = start(c_entry, env, log)
        hc_argv = [mp.arg(a) for a in hc_cmd]
        healthy = wait_healthy(hc_argv, env)
        check("`docker compose up`: serves, the image HEALTHCHECK command exits 0", healthy)
        check("the issued token authenticates (GET /v1/models 200)", healthy and models_status(port, token) == 200)
        rc = stop(proc)
        check("SIGTERM (docker stop) drains and exits 0", rc == 0, f"rc={rc}")
        check("HEALTHCHECK command exits non-zero once the gateway is gone", run(hc_argv, env).returncode != 0)
    with open(os.path.join(tmp, "compose-up.log")) as f:
        boot = f.read()
    check("boot line names the mapped data dir", "metis gateway listening on http://127.0.0.1" in boot, boot[-300:])

    with open(os.path.join(tmp, "image.log"), "w") as log:
        proc = start([mp.arg(a) for a in entry] + cmd, env, log)
        ok = wait_healthy(hc_argv, env)
        check("image ENTRYPOINT + CMD (`metis gateway`) serves", ok)
        check("SIGTERM exits 0", stop(proc) == 0)
except Exception as e:  # noqa: BLE001
    check("image/compose emulation ran", False, repr(e))

# ------------------------------------------------------------------ chart args
print("== chart: rendered command/args/env/probes run against the binary")


def render_deploy(*args):
    p = subprocess.run([HELM, "template", "metis-gateway", CHART, "--kube-version", "1.30.0", *args],
                       capture_output=True, text=True, timeout=60, check=True)
    objs = [d for d in yaml.safe_load_all(p.stdout) if d]
    dep = next(d for d in objs if d["kind"] == "Deployment")
    cms = {d["metadata"]["name"]: d for d in objs if d["kind"] == "ConfigMap"}
    return dep, cms


def kubelet_secret_dir(path: str, files: dict[str, str], gen: str) -> None:
    """Lay out a Secret volume as kubelet does: timestamped dir, ..data symlink, file links."""
    os.makedirs(path, exist_ok=True)
    d = os.path.join(path, gen)
    os.makedirs(d)
    for name, src in files.items():
        shutil.copy(src, os.path.join(d, name))
        os.chmod(os.path.join(d, name), 0o440)
    tmp_link = os.path.join(path, "..data_tmp")
    os.symlink(gen, tmp_link)
    os.replace(tmp_link, os.path.join(path, "..data"))
    for name in files:
        link = os.path.join(path, name)
        if not os.path.islink(link):
            os.symlink(os.path.join("..data", name), link)


scenarios = [
    ("defaults", []),
    ("ci/tls-values.yaml", ["-f", os.path.join(CHART, "ci/tls-values.yaml")]),
    ("ci/ratelimit-values.yaml", ["-f", os.path.join(CHART, "ci/ratelimit-values.yaml")]),
    ("ci/existing-secrets-values.yaml", ["-f", os.path.join(CHART, "ci/existing-secrets-values.yaml")]),
    ("ci/redb-values.yaml", ["-f", os.path.join(CHART, "ci/redb-values.yaml")]),
    ("runbook going-public --set", ["--set", "rateLimit.enabled=true", "--set", "service.type=LoadBalancer",
                                    "--set", "ingress.enabled=true", "--set", "ingress.className=nginx",
                                    "--set", "ingress.hosts[0].host=gateway.example.com",
                                    "--set", "ingress.tls[0].secretName=metis-gateway-tls"]),
]
for label, args in scenarios:
    try:
        dep, cms = render_deploy(*args)
        spec = dep["spec"]["template"]["spec"]
        ctr = next(c for c in spec["containers"] if c["name"] == "gateway")
        root = os.path.join(tmp, re.sub(r"\W+", "_", label))
        port = free_port()
        mp = Mapper(root, port)
        env = base_env()
        for e in ctr.get("env", []):
            env[e["name"]] = mp.env(e["name"], e["value"])
        store = env.get("METIS_GATEWAY_STORE", "sqlite")
        if ctr.get("envFrom"):
            env["ANTHROPIC_API_KEY"] = "sk-ant-not-used"
        os.makedirs(mp.path("/var/lib/metis"))
        staging = os.path.join(root, "staging")
        os.makedirs(staging)
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
        keyname = vols["keystore"]["secret"].get("items", [{}])[0].get("path") if vols["keystore"]["secret"].get("items") else None
        kfile = next(a.split("=", 1)[1] for a in ctr["args"] if a.startswith("--keystore="))
        kname = os.path.basename(kfile)
        check(f"[{label}] keystore file lives in the mounted Secret dir", os.path.dirname(kfile) == mounts["keystore"] and keyname is None)
        token = issue_key(env, os.path.join(staging, kname), "svc")
        kubelet_secret_dir(mp.path(mounts["keystore"]), {kname: os.path.join(staging, kname)}, "..2026_01")
        scheme = "http"
        if "tls" in vols:
            scheme = "https"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-days", "2", "-subj", "/CN=metis.test", "-keyout", os.path.join(staging, "tls.key"),
                            "-out", os.path.join(staging, "tls.crt")], check=True, capture_output=True)
            kubelet_secret_dir(mp.path(mounts["tls"]), {"tls.crt": os.path.join(staging, "tls.crt"),
                                                         "tls.key": os.path.join(staging, "tls.key")}, "..2026_01")
        if "admin" in vols:
            afile = next(a.split("=", 1)[1] for a in ctr["args"] if a.startswith("--admin-token-file="))
            with open(os.path.join(staging, "admin"), "w") as f:
                f.write("admin-token-0123456789abcdef\n")
            kubelet_secret_dir(mp.path(mounts["admin"]), {os.path.basename(afile): os.path.join(staging, "admin")}, "..2026_01")
        if "config" in vols:
            cm = cms[vols["config"]["configMap"]["name"]]
            os.makedirs(mp.path(mounts["config"]))
            for name, body in cm["data"].items():
                with open(os.path.join(mp.path(mounts["config"]), name), "w") as f:
                    f.write(body)
        argv = [mp.arg(a) for a in ctr["command"] + ctr["args"]]
        with open(os.path.join(root, "gateway.log"), "w") as log:
            proc = start(argv, env, log)
            probes = {}
            for pname in ("startupProbe", "readinessProbe", "livenessProbe"):
                hg = ctr[pname]["httpGet"]
                url = f"{hg['scheme'].lower()}://127.0.0.1:{port}{hg['path']}"
                probes[pname] = [METIS, "healthcheck", "--url", url]
            up = wait_healthy(probes["startupProbe"], env)
            if not up:
                proc.kill()
                proc.wait()
                with open(os.path.join(root, "gateway.log")) as f:
                    check(f"[{label}] every rendered flag is accepted and the gateway starts", False, f.read()[-600:])
                continue
            check(f"[{label}] every rendered flag is accepted and the gateway starts ({len(ctr['args'])} args)", True)
            check(f"[{label}] readiness ({ctr['readinessProbe']['httpGet']['path']}) and liveness probes answer 200 over {scheme}",
                  all(run(probes[p], env).returncode == 0 for p in ("readinessProbe", "livenessProbe")))
            check(f"[{label}] `metis healthcheck` with the pod's env answers", run([METIS, "healthcheck"], env).returncode == 0)
            check(f"[{label}] the keystore key authenticates", models_status(port, token, scheme) == 200)
            db_arg = next(a.split("=", 1)[1] for a in ctr["args"] if a.startswith("--db-path="))
            magic = {"sqlite": b"SQLite format 3\0", "redb": b"redb\x1a\n"}[store]
            with open(mp.path(db_arg), "rb") as f:
                head = f.read(len(magic))
            check(f"[{label}] a {store} store is created at --db-path ({os.path.basename(db_arg)})", head == magic, repr(head))
            if store != "sqlite":
                # `kubectl exec … metis trace status` (no flags) inherits the pod's env.
                r = run([METIS, "trace", "status", "--db-path", mp.path(db_arg)], env)
                check(f"[{label}] `metis trace status` with the pod's env reads the {store} store",
                      r.returncode == 0 and "schema version" in r.stdout, r.stdout + r.stderr)
            if label == "defaults":
                # A Secret update as kubelet applies it (new dir, atomic ..data swap) reaches the
                # running gateway without a restart.
                token2 = issue_key(env, os.path.join(staging, kname), "svc-2")
                kubelet_secret_dir(mp.path(mounts["keystore"]), {kname: os.path.join(staging, kname)}, "..2026_02")
                seen = False
                for _ in range(40):
                    if models_status(port, token2, scheme) == 200:
                        seen = True
                        break
                    time.sleep(0.25)
                check("[defaults] a Secret update (kubelet ..data swap) is picked up without a restart", seen)
            if "--rate-limit" in ctr["args"]:
                rpm = int(next(a.split("=")[1] for a in ctr["args"] if a.startswith("--rate-limit-per-key-rpm=")))
                codes = []
                for _ in range(rpm + 5):
                    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                                 data=b'{"model":"mock","messages":[{"role":"user","content":"ping"}]}',
                                                 headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})
                    try:
                        with urllib.request.urlopen(req, timeout=5) as rr:
                            codes.append(rr.status)
                    except urllib.error.HTTPError as e:
                        codes.append(e.code)
                check(f"[{label}] --rate-limit-per-key-rpm={rpm}: 429 after about {rpm} requests",
                      # the limiter runs before auth and model resolution: every non-429 was admitted
                      429 in codes and len([c for c in codes if c != 429]) >= rpm - 2, str(sorted(set(codes))))
            rc = stop(proc)
            check(f"[{label}] SIGTERM drains and exits 0 within terminationGracePeriodSeconds", rc == 0, f"rc={rc}")
    except Exception as e:  # noqa: BLE001
        check(f"[{label}] chart args run", False, repr(e))

# ------------------------------------------------------------------ restore initContainer
print("== chart: restore initContainer args against the binary")
help_out = run([METIS, "--help"], base_env()).stdout
if re.search(r"^\s+restore\b", help_out, re.M) and re.search(r"^\s+backup\b", help_out, re.M):
    try:
        dep, _ = render_deploy("--set", "restore.enabled=true", "--set", "restore.fromFile=metis-pre-upgrade.db")
        init = dep["spec"]["template"]["spec"]["initContainers"][0]
        root = os.path.join(tmp, "restore")
        mp = Mapper(root, free_port())
        os.makedirs(mp.path("/var/lib/metis"))
        env = base_env()
        db = mp.path("/var/lib/metis/metis.db")
        issue_key(dict(env, METIS_GATEWAY_DB_PATH=db), os.path.join(root, "keys.json"), "before-backup")
        r = run([METIS, "backup", mp.path("/var/lib/metis/metis-pre-upgrade.db"), "--db-path", db], env)
        check("`metis backup` onto the volume", r.returncode == 0, r.stderr)
        issue_key(dict(env, METIS_GATEWAY_DB_PATH=db), os.path.join(root, "keys.json"), "after-backup")
        r = run([mp.arg(a) for a in init["command"] + init["args"]], env)
        check("initContainer `metis restore … --force` succeeds on the volume", r.returncode == 0, r.stdout + r.stderr)
    except Exception as e:  # noqa: BLE001
        check("restore initContainer ran", False, repr(e))
else:
    skip("restore initContainer against the binary", "`metis backup`/`metis restore` are not in this build yet (being built)")

# ------------------------------------------------------------------ PostgreSQL
print("== chart and compose on PostgreSQL: rendered env/args against the binary and a test database")


def psql(url: str, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-qAt", "-d", url, "-c", sql],
                          capture_output=True, text=True, timeout=60)


def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


# clap checks the value before it acts on --help: exit 0 only if this build knows `postgres`.
if run([METIS, "gateway", "--store", "postgres", "--help"], base_env()).returncode != 0:
    skip("chart/compose on PostgreSQL against the binary", "`--store postgres` is not in this build yet (being built)")
elif not os.environ.get("METIS_TEST_DATABASE_URL"):
    check("METIS_TEST_DATABASE_URL is set for the PostgreSQL runtime checks", False,
          "start a throwaway server and export its URL with `eval \"$(scripts/pg-server.sh start)\"` "
          "(scripts/test.sh and scripts/infra-tests.sh do it when the variable is unset)")
elif shutil.which("psql") is None:
    check("psql is on PATH (creates the checks' databases)", False, "apt-get install postgresql-client")
else:
    admin_url = os.environ["METIS_TEST_DATABASE_URL"]
    dbs = [f"metis_infra_{os.getpid()}_chart", f"metis_infra_{os.getpid()}_compose"]
    procs = []
    try:
        for name in dbs:
            r = psql(admin_url, f"CREATE DATABASE {name}")
            if r.returncode != 0:
                raise AssertionError(f"CREATE DATABASE {name}: {r.stderr.strip()}")
        chart_url, compose_url = (with_database(admin_url, n) for n in dbs)

        dep, _ = render_deploy("-f", os.path.join(CHART, "ci/postgres-values.yaml"))
        spec = dep["spec"]["template"]["spec"]
        ctr = next(c for c in spec["containers"] if c["name"] == "gateway")
        replicas = dep["spec"]["replicas"]
        url_refs = [e for e in ctr["env"] if "valueFrom" in e]
        check("the only Secret-sourced env is METIS_GATEWAY_DATABASE_URL",
              [e["name"] for e in url_refs] == ["METIS_GATEWAY_DATABASE_URL"])
        pods = []
        for i in range(replicas):
            port = free_port()
            mp = Mapper(os.path.join(tmp, f"pg-pod-{i}"), port)
            os.makedirs(mp.path("/var/lib/metis"))
            # The image's ENV (METIS_GATEWAY_DATA_DIR, and a KEYSTORE the chart's env overrides),
            # then the container's env: what the gateway and `kubectl exec` see in the pod.
            env = base_env()
            env.update({k: mp.env(k, v) for k, v in env_img.items()})
            env["ANTHROPIC_API_KEY"] = "sk-ant-not-used"  # envFrom: provider Secret
            for e in ctr["env"]:
                env[e["name"]] = chart_url if "valueFrom" in e else mp.env(e["name"], e["value"])
            pods.append((mp, port, env))
        # The first key, before any pod can start (NOTES step 1): flags on an operator machine.
        op_env = dict(base_env(), METIS_GATEWAY_DATABASE_URL=chart_url, METIS_GATEWAY_DATA_DIR=os.path.join(tmp, "pg-operator"))
        r = run([METIS, "gateway", "issue-key", "--store", "postgres", "--keystore", "store",
                 "--name", "first", "--workspace", "/workspace"], op_env)
        check("NOTES: `metis gateway issue-key --store postgres --keystore store` issues the first key into the database",
              r.returncode == 0 and "token:" in r.stdout, r.stderr)
        token = re.search(r"token:\s*(gw_\S+)", r.stdout).group(1) if r.returncode == 0 else ""
        for i, (mp, port, env) in enumerate(pods):
            log = open(os.path.join(tmp, f"pg-pod-{i}.log"), "w")
            procs.append((start([mp.arg(a) for a in ctr["command"] + ctr["args"]], env, log), log))
        up = []
        for (mp, port, env), (proc, _) in zip(pods, procs):
            hg = ctr["startupProbe"]["httpGet"]
            up.append(wait_healthy([METIS, "healthcheck", "--url", f"http://127.0.0.1:{port}{hg['path']}"], env, deadline=60))
        check(f"{replicas} replicas with the rendered flags and env start on one database", all(up), str(up))
        if not all(up):
            for i in range(replicas):
                with open(os.path.join(tmp, f"pg-pod-{i}.log")) as f:
                    print(f"  pod {i} log: {f.read()[-600:]}")
            raise AssertionError("the replicas did not start; their logs are above")
        check("every replica is ready (/readyz) and its `metis healthcheck` answers",
              all(run([METIS, "healthcheck", "--url", f"http://127.0.0.1:{port}/readyz"], env).returncode == 0
                  and run([METIS, "healthcheck"], env).returncode == 0 for _, port, env in pods))
        check("the first key authenticates on every replica", all(models_status(port, token) == 200 for _, port, _ in pods))
        # `kubectl exec deploy/… -- metis gateway issue-key …`: no flags, the pod's env.
        mp0, _, env0 = pods[0]
        r = run([METIS, "gateway", "issue-key", "--name", "exec", "--workspace", "/workspace"], env0)
        check("`kubectl exec … metis gateway issue-key` (the pod's env, no flags) writes into the database",
              r.returncode == 0 and "token:" in r.stdout, r.stderr)
        token2 = re.search(r"token:\s*(gw_\S+)", r.stdout).group(1) if r.returncode == 0 else ""
        end = time.time() + 10
        while time.time() < end and not all(models_status(port, token2) == 200 for _, port, _ in pods):
            time.sleep(0.25)
        check("a key issued in one pod authenticates on every replica (within 10 s)",
              all(models_status(port, token2) == 200 for _, port, _ in pods))
        r = run([METIS, "trace", "status"], env0)
        check("`kubectl exec … metis trace status` (no flags) reads the database", r.returncode == 0, r.stdout + r.stderr)
        check("nothing but scratch under /var/lib/metis: the gateway writes no store file there",
              all(not os.listdir(mp.path("/var/lib/metis")) for mp, _, _ in pods),
              str([os.listdir(mp.path("/var/lib/metis")) for mp, _, _ in pods]))
        codes = [stop(p) for p, _ in procs]
        for _, log in procs:
            log.close()
        procs.clear()
        check("SIGTERM drains and exits 0 on every replica", codes == [0] * replicas, str(codes))

        # docker compose --profile postgres: the gateway-postgres service's entrypoint and env.
        with open(os.path.join(ROOT, "docker-compose.yml")) as f:
            svc = yaml.safe_load(f)["services"]["gateway-postgres"]
        port = free_port()
        mp = Mapper(os.path.join(tmp, "compose-pg"), port)
        os.makedirs(mp.path("/var/lib/metis"))
        env = base_env()
        env.update({k: mp.env(k, v) for k, v in env_img.items()})
        for k, v in svc["environment"].items():
            # The URL's host is the compose service `postgres`: point it at the test database.
            env[k] = compose_url if k == "METIS_GATEWAY_DATABASE_URL" else mp.env(k, str(v))
        c_entry = [mp.arg(a) for a in svc["entrypoint"]]
        r = run(c_entry + ["issue-key", "--name", "alice", "--workspace", "/workspace"], env)
        check("`docker compose --profile postgres run --rm gateway-postgres issue-key …` issues into the database",
              r.returncode == 0 and "token:" in r.stdout, r.stderr)
        token = re.search(r"token:\s*(gw_\S+)", r.stdout).group(1) if r.returncode == 0 else ""
        log = open(os.path.join(tmp, "compose-pg.log"), "w")
        procs.append((start(c_entry, env, log), log))
        ok = wait_healthy([METIS, "healthcheck", "--url", f"http://127.0.0.1:{port}/healthz"], env, deadline=60)
        check("`docker compose --profile postgres up gateway-postgres` serves; the key authenticates",
              ok and models_status(port, token) == 200)
        codes = [stop(p) for p, _ in procs]
        for _, log in procs:
            log.close()
        procs.clear()
        check("gateway-postgres: SIGTERM exits 0", codes == [0], str(codes))
    except Exception as e:  # noqa: BLE001
        check("PostgreSQL runtime checks ran", False, repr(e))
    finally:
        for p, log in procs:
            p.kill()
            p.wait()
            log.close()
        for name in dbs:
            psql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

shutil.rmtree(tmp, ignore_errors=True)
print(f"runtime checks: {PASSED} passed, {len(FAILS)} failed, {len(SKIPPED)} skipped")
for f in FAILS:
    print("FAILED:", f)
sys.exit(1 if FAILS else 0)
