"""The Codex CLI (`codex exec`, pinned in package-lock.json) through the gateway's Responses API:
a tool call to the fake OpenAI upstream (forwarded natively to its `/v1/responses`), to a
chat-completions-only upstream and to the fake Anthropic upstream (both translated), and one
turn through the mock; then the WebSocket transport,
which the gateway must either serve or refuse with 426 so Codex falls back to HTTP at once
(any other answer costs ≈ 7 s of retries per session, see /work/notes/codex.md).

The fake answers the prompt's `[tool:exec_command]` directive with a `function_call` of Codex's
shell tool whose arguments are the fake's fixed `{"city": "Paris"}`; Codex cannot parse them
(no `cmd`), returns the error as the `function_call_output`, and the fake's `tool result: …`
answer ends the run. No command runs on this machine.

Each run prints Codex's time from process start to the first answer (head of the first 2xx).
"""

from __future__ import annotations

import json

import pytest

from clients import CODEX_BIN, GatewayLog, codex_env, report, run, session_row

# Gateway model -> the fake upstream path it must reach (None: the in-process mock).
UPSTREAM_PATH = {
    "gpt-5": "/v1/responses",  # OpenAI upstream with the Responses API: forwarded natively
    "openrouter:gpt-5": "/v1/chat/completions",  # chat-completions-only upstream: translated
    "haiku": "/v1/messages",  # Anthropic: translated
    "mock": None,
}


def codex(tmp_path, stray, proxy, gateway, model: str, prompt: str, websockets: bool = False):
    env = codex_env(tmp_path / "home", stray, proxy.url, gateway.token, model, websockets)
    work = tmp_path / "work"
    work.mkdir()
    last = tmp_path / "last-message.txt"
    args = [str(CODEX_BIN), "exec", "--skip-git-repo-check", "--sandbox", "read-only", "--ephemeral",
            "-o", str(last), prompt]
    r = run(args, env, work)
    r.extra["last"] = last.read_text() if last.exists() else ""
    return r


def report_timing(r, exchanges, label: str) -> None:
    """Codex's time from process start to the head of the first successful answer (to the 101
    for a WebSocket), measured by the proxy; printed in the test summary."""
    ok = [e for e in exchanges if e.status is not None and (e.status == 101 or 200 <= e.status < 300)]
    first = f"{min(e.t_response for e in ok) - r.t_start:.2f}s" if ok else "never"
    sent = f"{exchanges[0].t_request - r.t_start:.2f}s" if exchanges else "never"
    summary = [(e.method, e.path, e.status) for e in exchanges]
    report(f"codex {label}: first answer {first} after start (first request sent at {sent}); "
           f"{len(exchanges)} requests; run {r.elapsed_s:.1f}s; {summary}")


def assert_clean_run(r, proxy, stray, log: GatewayLog, label: str) -> list:
    """Codex succeeded, every request it made was answered 2xx (101 for a WebSocket upgrade) on
    the first try, nothing tried to leave the machine, the gateway logged no error or refusal.
    Prints the time from start to the first answer. Returns the exchanges."""
    exchanges = sorted(proxy.exchanges(), key=lambda e: e.t_request)
    summary = [(e.method, e.path, e.status) for e in exchanges]
    report_timing(r, exchanges, label)
    assert r.returncode == 0, f"{r.describe()}\nrequests: {summary}"
    assert exchanges, "Codex made no request through the gateway"
    assert all(e.status == 101 or (e.status is not None and 200 <= e.status < 300) for e in exchanges), summary
    assert stray.attempts() == [], "a client tried to leave 127.0.0.1"
    assert log.problems() == []
    return exchanges


def items(body, kind: str) -> list:
    return [i for i in (body or {}).get("input", []) if isinstance(i, dict) and i.get("type") == kind]


@pytest.mark.parametrize("model", ["gpt-5", "openrouter:gpt-5", "haiku"])
def test_tool_call(tmp_path, gateway, upstream, proxy, stray, nonce, model):
    log = GatewayLog(gateway)
    r = codex(tmp_path, stray, proxy, gateway, model, f"check the weather {nonce} [tool:exec_command]")
    exchanges = assert_clean_run(r, proxy, stray, log, model)

    assert [(e.method, e.path) for e in exchanges] == [("POST", "/v1/responses")] * 2, \
        "one request for the tool call, one with its output"
    first, second = exchanges
    assert first.body["stream"] is True and first.body["store"] is False
    [call] = items(second.body, "function_call")
    [output] = items(second.body, "function_call_output")
    assert call["name"] == "exec_command"
    assert output["call_id"] == call["call_id"], "the tool output answers the gateway's call id"
    assert "tool result:" in r.extra["last"], r.describe()

    recs = upstream.requests()
    assert [rec["path"] for rec in recs] == [UPSTREAM_PATH[model]] * 2, "each request reached the upstream once"
    assert all(rec["auth"] == "matched" for rec in recs)
    assert all(nonce in json.dumps(rec["body"]) for rec in recs)

    # The run is one gateway session, keyed by Codex's `session-id` header.
    session_ids = {e.header("session-id") for e in exchanges}
    assert len(session_ids) == 1 and None not in session_ids
    row = session_row(gateway, session_ids.pop(), min_turns=2)
    assert row is not None, "Codex's session-id is mapped onto the session store"
    assert row["turn_count"] == 2


def test_mock_provider(tmp_path, gateway, proxy, stray, nonce):
    log = GatewayLog(gateway)
    r = codex(tmp_path, stray, proxy, gateway, "mock", f"say hello {nonce}")
    exchanges = assert_clean_run(r, proxy, stray, log, "mock")
    assert [(e.method, e.path) for e in exchanges] == [("POST", "/v1/responses")]
    assert r.extra["last"].startswith("mock reply:"), r.describe()
    assert nonce in r.extra["last"]


def test_websocket_transport_is_served_or_refused_at_once(tmp_path, gateway, proxy, stray, nonce):
    """With `supports_websockets = true` Codex opens `GET /v1/responses` first. Either the
    gateway serves the WebSocket protocol (one upgrade, 101, the turn runs on it) or it answers
    426 and Codex switches to HTTP for the session right away. A 404 (or any other refusal) is
    retried with back-off for seconds before the fallback, which this test rejects."""
    log = GatewayLog(gateway)
    r = codex(tmp_path, stray, proxy, gateway, "mock", f"say hello {nonce}", websockets=True)
    exchanges = sorted(proxy.exchanges(), key=lambda e: e.t_request)
    summary = [(e.method, e.path, e.status) for e in exchanges]
    upgrades = [e for e in exchanges if e.method == "GET" and e.path == "/v1/responses"]
    report_timing(r, exchanges, "websocket")
    assert r.returncode == 0, f"{r.describe()}\nrequests: {summary}"
    assert len(upgrades) == 1, f"one upgrade attempt, no retries: {summary}"
    assert upgrades[0].header("openai-beta") == "responses_websockets=2026-02-06"
    assert upgrades[0].status in (101, 426), summary
    rest = [e for e in exchanges if e is not upgrades[0]]
    if upgrades[0].status == 101:
        assert rest == [], f"the whole turn runs on the socket: {summary}"
    else:
        assert [(e.method, e.path, e.status) for e in rest] == [("POST", "/v1/responses", 200)], summary
    assert r.extra["last"].startswith("mock reply:"), r.describe()
    assert stray.attempts() == []
    # A 426 is a refusal the gateway logs on purpose; nothing else may be.
    assert [p for p in log.problems() if str(p.get("fields", {}).get("status")) != "426"] == []
