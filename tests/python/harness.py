"""Process harness for the SDK tests: start the fake upstream and the real `metis` gateway
binary on 127.0.0.1, find their ports from their announcement lines, and stop them.

Output of both processes goes to files (not pipes) so a chatty process can never block on a
full pipe; the announcement lines are found by polling those files with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METIS_BIN = Path(os.environ.get("METIS_BIN", ROOT / "target" / "debug" / "metis"))
FAKE_UPSTREAM_BIN = Path(
    os.environ.get("FAKE_UPSTREAM_BIN", ROOT / "target" / "debug" / "fake-upstream")
)

ANTHROPIC_KEY = "fake-anthropic-key"
OPENAI_KEY = "fake-openai-key"

# Constants of the fake upstream (tests/src/fake_upstream.rs).
TOOL_ARGUMENTS = {"city": "Paris"}
THINKING_TEXT = "The user wants an echo. I will echo their words back."
THINKING_SIGNATURE = "EqQBCkYIBRgCKkBmYWtlLXNpZ25hdHVyZS1mb3ItdGVzdHM="
CACHE_READ_TOKENS = 1024

BOOT_RE = re.compile(r"metis gateway listening on (https?)://127\.0\.0\.1:(\d+)")
FAKE_RE = re.compile(r"fake-upstream listening on (http://127\.0\.0\.1:\d+)")

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0


def _wait_for_line(proc: subprocess.Popen, path: Path, pattern: re.Pattern, what: str) -> re.Match:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        m = pattern.search(text)
        if m:
            return m
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before announcing itself:\n{text}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not announce itself within {START_TIMEOUT_S}s:\n{path.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that could redirect or reconfigure the
    gateway: SDK base URLs (the gateway must never loop to itself), other provider keys,
    `AWS_*` credentials (they would register a Bedrock provider) and `METIS_GATEWAY_*`
    settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OPENROUTER_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
                     "GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
                     "GOOGLE_CLOUD_LOCATION")
        and not k.startswith("METIS_GATEWAY_")
        and not k.startswith("AWS_")
    }
    env.setdefault("RUST_LOG", "info")
    env.update(extra)
    return env


class FakeUpstream:
    """The `fake-upstream` binary."""

    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "fake-upstream.out"
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(FAKE_UPSTREAM_BIN), "--anthropic-key", ANTHROPIC_KEY, "--openai-key", OPENAI_KEY],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
        )
        self.base_url = _wait_for_line(self.proc, self.log, FAKE_RE, "fake-upstream").group(1)

    def requests(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.base_url}/_requests", timeout=10) as r:
            return json.loads(r.read())

    def requests_containing(self, marker: str) -> list[dict]:
        """Recorded provider requests whose body mentions `marker`."""
        return [r for r in self.requests() if marker in json.dumps(r.get("body"))]

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.base_url}/_reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def stop(self) -> None:
        _stop(self.proc)
        self._out.close()


def issue_key(data_dir: Path, name: str, *extra: str) -> tuple[str, str]:
    """`metis gateway issue-key`; returns (key_id, token)."""
    out = subprocess.run(
        [str(METIS_BIN), "gateway", "issue-key", "--data-dir", str(data_dir), "--name", name,
         "--workspace", str(data_dir / "ws"), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"issue-key failed ({out.returncode}): {out.stderr}")
    key_id = re.search(r"^key_id:\s*(\S+)", out.stdout, re.M)
    token = re.search(r"^token:\s*(\S+)", out.stdout, re.M)
    if not key_id or not token:
        raise RuntimeError(f"issue-key printed no key_id/token: {out.stdout!r}")
    return key_id.group(1), token.group(1)


class Gateway:
    """The real `metis gateway` binary, pointed at a fake upstream."""

    def __init__(
        self,
        data_dir: Path,
        upstream: FakeUpstream,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.db_path = data_dir / "metis.db"
        self.key_id, self.token = issue_key(data_dir, "sdk")
        self.log = data_dir / "gateway.err"
        self._err = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(METIS_BIN), "gateway", "--port", "0", "--data-dir", str(data_dir),
             "--anthropic-base-url", upstream.base_url,
             "--openai-base-url", f"{upstream.base_url}/v1", *(extra_args or [])],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env=clean_env(ANTHROPIC_API_KEY=ANTHROPIC_KEY, OPENAI_API_KEY=OPENAI_KEY, **(env or {})),
        )
        m = _wait_for_line(self.proc, self.log, BOOT_RE, "metis gateway")
        self.port = int(m.group(2))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """SIGTERM, wait for the drain and the trace flush; returns the exit code."""
        code = _stop(self.proc)
        self._err.close()
        return code

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[dict]:
        """Every row of the `events` table, as dicts."""
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM events ORDER BY id")]
        finally:
            con.close()
