"""Harness for the real-client tests: a logging proxy between the clients and the gateway, a
catcher for any attempt to leave the machine, and the environments that keep Claude Code, the
Codex CLI and the SDKs on 127.0.0.1.

The gateway and the fake upstream themselves are started by tests/python/harness.py (shared
with the Python SDK tests).

Why a proxy: a CLI's own view of "was every request answered 2xx on the first try" is what the
tests assert, including requests the gateway refuses before they reach a provider (an unknown
route, a 400 on validation) and WebSocket upgrade attempts, which leave no trace in the fake
upstream's record. The proxy forwards bytes unchanged (only `Connection` is set to `close`, so
the end of each answer is the end of the upstream connection) and records, for each request,
the method, path, request headers and body, the answer's status and when its head arrived.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_DIR = Path(os.environ.get("CLIENTS_NODE_DIR", ROOT / ".clients" / "node"))
NODE_MODULES = NODE_DIR / "node_modules"
CLAUDE_BIN = NODE_MODULES / ".bin" / "claude"
CODEX_BIN = NODE_MODULES / ".bin" / "codex"

# Bounds. A CLI run is a handful of requests to a local fake; minutes mean it hangs.
CLI_TIMEOUT_S = 150.0
SCRIPT_TIMEOUT_S = 90.0
HEAD_TIMEOUT_S = 30.0

# Environment variables of the test process that would point a client elsewhere or change how
# it authenticates; every client run starts from an environment without them.
_DROP_ENV = re.compile(
    r"^(OPENAI_|ANTHROPIC_|CLAUDE_|CODEX_|AI_SDK_|METIS_|HTTPS?_PROXY$|ALL_PROXY$|NO_PROXY$)",
    re.IGNORECASE,
)


# One line per client run ("codex gpt-5: first answer 0.62s after start; …"), printed in the
# pytest summary by conftest.py so CI logs show the measurements of passing tests too.
TIMINGS: list[str] = []


def report(line: str) -> None:
    TIMINGS.append(line)
    print(line)


@dataclass
class Exchange:
    """One request the proxy forwarded and the head of its answer."""

    method: str
    path: str
    headers: dict[str, str]
    body: object
    t_request: float  # time.monotonic() when the request head arrived
    status: int | None = None
    t_response: float | None = None  # when the answer's head arrived

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Loop:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread


def _start_loop() -> _Loop:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="client-test-proxy", daemon=True)
    thread.start()
    return _Loop(loop, thread)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return lines[0], headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    lower = {k.lower(): v for k, v in headers}
    if "content-length" in lower:
        return await reader.readexactly(int(lower["content-length"]))
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from these clients
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return b""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - already gone
            pass


class LoggingProxy:
    """HTTP/1.1 reverse proxy on 127.0.0.1 in front of `target` (host, port)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._loop = _start_loop()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop.loop
        )
        self._server = fut.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def reset(self) -> None:
        with self._lock:
            self._exchanges.clear()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(creader, cwriter)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, asyncio.LimitOverrunError):
            cwriter.close()

    async def _serve_one(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        head = await _read_head(creader)
        t_request = time.monotonic()
        request_line, headers = _parse_head(head)
        method, target, _version = request_line.split(" ", 2)
        body = await _read_body(creader, headers)
        lower = {k.lower(): v for k, v in headers}
        upgrade = "upgrade" in lower.get("connection", "").lower()
        try:
            parsed: object = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        ex = Exchange(method, target, lower, parsed, t_request)
        with self._lock:
            self._exchanges.append(ex)

        out = [request_line]
        for k, v in headers:
            if k.lower() in ("connection", "content-length", "transfer-encoding", "keep-alive"):
                continue
            out.append(f"{k}: {v}")
        out.append("Connection: Upgrade" if upgrade else "Connection: close")
        if body or method in ("POST", "PUT", "PATCH"):
            out.append(f"Content-Length: {len(body)}")
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        uwriter.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
        await uwriter.drain()

        rhead = await asyncio.wait_for(ureader.readuntil(b"\r\n\r\n"), CLI_TIMEOUT_S)
        status_line, _ = _parse_head(rhead)
        with self._lock:
            ex.status = int(status_line.split(" ", 2)[1])
            ex.t_response = time.monotonic()
        cwriter.write(rhead)
        await cwriter.drain()
        if ex.status == 101:
            await asyncio.gather(_pipe(ureader, cwriter), _pipe(creader, uwriter))
        else:
            await _pipe(ureader, cwriter)
            uwriter.close()

    def stop(self) -> None:
        self._loop.loop.call_soon_threadsafe(self._server.close)
        self._loop.loop.call_soon_threadsafe(self._loop.loop.stop)
        self._loop.thread.join(timeout=10)


class StrayCatcher:
    """A loopback listener used as HTTP_PROXY/HTTPS_PROXY for every client: any attempt to reach
    a non-loopback host goes through it, is recorded (its first line, e.g. `CONNECT
    api.anthropic.com:443`) and refused, so nothing leaves the machine and the test can say what
    was tried."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: list[str] = []
        self._loop = _start_loop()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop.loop
        )
        self._server = fut.result(timeout=10)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            with self._lock:
                self._attempts.append(line.decode("latin-1").strip())
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def attempts(self) -> list[str]:
        with self._lock:
            return list(self._attempts)

    def reset(self) -> None:
        with self._lock:
            self._attempts.clear()

    def stop(self) -> None:
        self._loop.loop.call_soon_threadsafe(self._server.close)
        self._loop.loop.call_soon_threadsafe(self._loop.loop.stop)
        self._loop.thread.join(timeout=10)


def base_env(home: Path, stray: StrayCatcher, **extra: str) -> dict[str, str]:
    """A client environment: the test process's, minus anything that points a client elsewhere,
    with a scratch HOME and every proxy variable aimed at the stray catcher."""
    env = {k: v for k, v in os.environ.items() if not _DROP_ENV.match(k)}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        HTTPS_PROXY=stray.url,
        HTTP_PROXY=stray.url,
        https_proxy=stray.url,
        http_proxy=stray.url,
        ALL_PROXY=stray.url,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        NODE_PATH=str(NODE_MODULES),
        DO_NOT_TRACK="1",
    )
    env.update(extra)
    return env


def claude_env(home: Path, stray: StrayCatcher, base_url: str, token: str, model: str) -> dict[str, str]:
    """Claude Code with every model role pinned to one gateway model, telemetry, error reports,
    auto-update, feature flags and other non-essential traffic off."""
    return base_env(
        home,
        stray,
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY=token,
        ANTHROPIC_MODEL=model,
        ANTHROPIC_SMALL_FAST_MODEL=model,
        ANTHROPIC_DEFAULT_HAIKU_MODEL=model,
        ANTHROPIC_DEFAULT_SONNET_MODEL=model,
        ANTHROPIC_DEFAULT_OPUS_MODEL=model,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_GROWTHBOOK="1",
    )


CODEX_CONFIG = """\
model = "{model}"
model_provider = "metis"
check_for_update_on_startup = false

[model_providers.metis]
name = "metis gateway"
base_url = "{base_url}/v1"
env_key = "METIS_TOKEN"
wire_api = "responses"
supports_websockets = {websockets}
# Fail fast instead of retrying: a retry would hide a refused request from the assertions
# (the proxy record would still show it, but the run would take seconds longer).
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false
plugin_sharing = false
in_app_updates = false
"""


def codex_env(
    home: Path, stray: StrayCatcher, base_url: str, token: str, model: str, websockets: bool = False
) -> dict[str, str]:
    """Codex with a custom provider pointed at `base_url` (config.toml in CODEX_HOME) and the
    features that reach github.com/chatgpt.com at start switched off. With `websockets`, Codex
    first tries the Responses WebSocket transport (`GET /v1/responses`, Upgrade: websocket)."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        CODEX_CONFIG.format(model=model, base_url=base_url, websockets=str(websockets).lower())
    )
    return base_env(home, stray, CODEX_HOME=str(codex_home), METIS_TOKEN=token)


@dataclass
class Run:
    """A finished client process."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    t_start: float  # time.monotonic() just before the process was started
    elapsed_s: float
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode} after {self.elapsed_s:.1f}s\n"
            f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"
        )


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = CLI_TIMEOUT_S) -> Run:
    """Run a client to completion with stdin closed, bounded in time (killed on timeout)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = -9
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or ""))
        err += f"\n[killed after {timeout}s]"
    return Run(args, rc, out, err, t0, time.monotonic() - t0)


def run_script(script: str, case: str, env: dict[str, str], cwd: Path) -> dict:
    """Run a client script, tests/clients/node/<script>.cjs with Node or
    tests/clients/py/<script>.py with this interpreter (the venv holding the Python clients),
    for one case. It prints one JSON object on its last stdout line; fails with the script's
    output when it exits non-zero or prints no JSON."""
    if script.endswith(".cjs"):
        args = [shutil.which("node") or "node", str(HERE / "node" / script), case]
    else:
        args = [sys.executable, str(HERE / "py" / script), case]
    r = run(args, env, cwd, timeout=SCRIPT_TIMEOUT_S)
    lines = [line for line in r.stdout.strip().splitlines() if line.strip()]
    if r.returncode != 0 or not lines:
        raise AssertionError(f"{script} {case} failed:\n{r.describe()}")
    try:
        return json.loads(lines[-1])
    except ValueError as e:
        raise AssertionError(f"{script} {case} printed no JSON:\n{r.describe()}") from e


class GatewayLog:
    """The part of the gateway's stderr (JSON lines) written after this object was made."""

    def __init__(self, gateway) -> None:
        self._path = gateway.log
        self._offset = self._path.stat().st_size

    def lines(self) -> list[dict]:
        with open(self._path, "rb") as f:
            f.seek(self._offset)
            text = f.read().decode("utf-8", "replace")
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"level": "?", "fields": {"message": line}})
        return out

    def problems(self) -> list[dict]:
        """ERROR lines, and any line that reports an answer status >= 400 (the gateway logs
        one line per refused request)."""
        bad = []
        for rec in self.lines():
            fields = rec.get("fields", {})
            status = fields.get("status")
            try:
                refused = int(status) >= 400
            except (TypeError, ValueError):
                refused = False
            if rec.get("level") == "ERROR" or refused:
                bad.append(rec)
        return bad


def session_row(gateway, session_id: str, min_turns: int = 1, timeout_s: float = 10.0) -> dict | None:
    """The `sessions` row of `session_id` in the gateway's database once it counts `min_turns`
    turns (polled: session updates are written after the answer), or the last row seen (None
    if there is none) when that does not happen within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        con = sqlite3.connect(f"file:{gateway.db_path}?mode=ro", uri=True, timeout=10)
        try:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        except sqlite3.OperationalError:
            row = None
        finally:
            con.close()
        if (row is not None and row["turn_count"] >= min_turns) or time.monotonic() > deadline:
            return dict(row) if row is not None else None
        time.sleep(0.2)
