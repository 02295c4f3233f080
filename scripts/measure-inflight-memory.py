#!/usr/bin/env python3
"""Peak RSS of a gateway handling N concurrent large request bodies (issue 12, item 9).

    scripts/measure-inflight-memory.py [--bin target/debug/metis] [--n 30] [--mib 9.9] [-- extra serve flags]

Starts `metis gateway` on 127.0.0.1 with a fresh data dir (mock provider only), sends N
concurrent POST /v1/chat/completions whose bodies are ~MIB MiB of many short messages (the
shape that costs most to parse), and prints the status counts and the process's peak RSS
(VmHWM from /proc) before and after. Bounded: one round of N requests, 120 s timeouts.
"""
import argparse, json, os, re, subprocess, sys, tempfile, threading, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "debug", "metis"))
ap.add_argument("--n", type=int, default=30)
ap.add_argument("--mib", type=float, default=9.9)
ap.add_argument("--long", action="store_true", help="ten long messages instead of many short ones")
ap.add_argument("extra", nargs="*")
a = ap.parse_args()

def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024  # MiB
    return -1

with tempfile.TemporaryDirectory() as d:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METIS_GATEWAY_") and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY")}
    out = subprocess.run([a.bin, "gateway", "issue-key", "--name", "m", "--workspace", "/srv/m", "--data-dir", d], capture_output=True, text=True, env=env)
    token = re.search(r"^token:\s*(\S+)", out.stdout, re.M).group(1)
    log = open(os.path.join(d, "gw.log"), "w+")
    gw = subprocess.Popen([a.bin, "gateway", "--port", "0", "--data-dir", d, *a.extra], stderr=log, env=env)
    try:
        url = None
        for _ in range(300):
            log.seek(0)
            m = re.search(r"listening on (http://\S+)", log.read())
            if m:
                url = m.group(1); break
            time.sleep(0.1)
        assert url, "no boot line"
        # Many short messages: the most parse overhead per byte.
        if a.long:
            count = 10
            msgs = [{"role": "user", "content": "x" * int(a.mib * 1024 * 1024 / count)} for _ in range(count)]
        else:
            msg = {"role": "user", "content": "hi"}
            count = int(a.mib * 1024 * 1024 / (len(json.dumps(msg)) + 2))
            msgs = [msg] * count
        body = json.dumps({"model": "mock", "messages": msgs}).encode()
        base = vm(gw.pid, "VmRSS")
        statuses = []
        def one():
            req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    r.read(); statuses.append(str(r.status))
            except urllib.error.HTTPError as e:
                e.read(); statuses.append(str(e.code))
            except Exception as e:  # noqa: BLE001
                statuses.append(str(type(e).__name__))
        threads = [threading.Thread(target=one) for _ in range(a.n)]
        t0 = time.time()
        for t in threads: t.start()
        for t in threads: t.join()
        took = time.time() - t0
        peak = vm(gw.pid, "VmHWM")
        counts = {s: statuses.count(s) for s in sorted(set(statuses))}
        print(f"{a.n} x {len(body)/1048576:.1f} MiB bodies ({count} messages each) in {took:.1f}s: statuses {counts}; RSS before {base} MiB, peak {peak} MiB")
    finally:
        gw.terminate()
        try: gw.wait(30)
        except subprocess.TimeoutExpired: gw.kill()
