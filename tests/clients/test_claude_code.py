"""Claude Code (`claude -p`, pinned in package-lock.json) through the gateway: a two-turn tool
loop to the fake Anthropic upstream (same shape: betas and `anthropic-version` must arrive
unchanged) and to the fake OpenAI upstream (translated), and one turn through the mock.

The same-shape model is `anthropic:claude-opus-4-8`, not the `haiku` alias: Claude Code's first
request of a run carries a `system` message inside `messages` (beta
`mid-conversation-system-2026-04-07`, sent whatever the model), which Anthropic — and the fake,
following it — accepts from Claude Opus 4.8 on and refuses with a 400 for older models such as
Haiku 4.5; Claude Code then retries without it. That refusal is the upstream's, so the test
uses a model that accepts the message and requires every request to succeed the first time.

The fake answers the prompt's `[tool:Bash]` directive with a `tool_use` of `Bash` whose input
is the fake's fixed `{"city": "Paris"}`; Claude Code rejects that input (no `command`) and
sends the error back as a `tool_result`, which closes the loop: the fake answers
`tool result: …` and the run ends. No command runs on this machine.
"""

from __future__ import annotations

import json

import pytest

from clients import CLAUDE_BIN, GatewayLog, claude_env, report, run, session_row

# Gateway model -> the fake upstream path it must reach (None: the in-process mock).
SAME_SHAPE = "anthropic:claude-opus-4-8"
UPSTREAM_PATH = {SAME_SHAPE: "/v1/messages", "gpt-5": "/v1/chat/completions", "mock": None}


def claude(tmp_path, stray, proxy, gateway, model: str, prompt: str):
    env = claude_env(tmp_path / "home", stray, proxy.url, gateway.token, model)
    work = tmp_path / "work"
    work.mkdir()
    args = [str(CLAUDE_BIN), "-p", prompt, "--output-format", "json", "--max-turns", "4"]
    r = run(args, env, work)
    try:
        r.extra["result"] = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        r.extra["result"] = None
    return r


def assert_clean_run(r, proxy, stray, log: GatewayLog) -> list:
    """The CLI succeeded, every request it made got a 2xx on the first try, nothing tried to
    leave the machine and the gateway logged no error or refusal. Returns the exchanges."""
    exchanges = proxy.exchanges()
    summary = [(e.method, e.path, e.status) for e in exchanges]
    answered = [e.t_response for e in exchanges if e.t_response is not None]
    first = f"{min(answered) - r.t_start:.2f}s" if answered else "never"
    report(f"claude: first answer {first} after start; {len(exchanges)} requests; run {r.elapsed_s:.1f}s; {summary}")
    assert r.returncode == 0, f"{r.describe()}\nrequests: {summary}"
    assert r.extra["result"] is not None and not r.extra["result"].get("is_error"), r.describe()
    assert exchanges, "Claude Code made no request through the gateway"
    assert all(e.status is not None and 200 <= e.status < 300 for e in exchanges), summary
    assert stray.attempts() == [], "a client tried to leave 127.0.0.1"
    assert log.problems() == []
    return exchanges


def tool_loop_requests(exchanges) -> tuple:
    """The request that got the tool_use answer and the one that sent the tool_result back."""
    messages_calls = [e for e in exchanges if e.path.split("?")[0] == "/v1/messages"]
    for later in messages_calls:
        msgs = later.body.get("messages", [])
        last = msgs[-1] if msgs else {}
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
        results = [b for b in blocks if b.get("type") == "tool_result"]
        if results:
            uses = [b for m in msgs[:-1] if m.get("role") == "assistant"
                    for b in (m.get("content") or []) if isinstance(b, dict) and b.get("type") == "tool_use"]
            return uses, results
    return [], []


@pytest.mark.parametrize("model", [SAME_SHAPE, "gpt-5"])
def test_tool_loop(tmp_path, gateway, upstream, proxy, stray, nonce, model):
    log = GatewayLog(gateway)
    r = claude(tmp_path, stray, proxy, gateway, model, f"check the weather {nonce} [tool:Bash]")
    exchanges = assert_clean_run(r, proxy, stray, log)

    uses, results = tool_loop_requests(exchanges)
    assert [u["name"] for u in uses][-1:] == ["Bash"], "the scripted tool_use reached Claude Code"
    assert results and results[0]["tool_use_id"] == uses[-1]["id"], "tool_result answers the tool_use"
    assert "tool result:" in r.extra["result"]["result"], r.describe()

    # Every CLI request reached the upstream exactly once (no retry, no extra request).
    recs = upstream.requests()
    assert [rec["path"] for rec in recs] == [UPSTREAM_PATH[model]] * len(exchanges)
    assert all(rec["auth"] == "matched" for rec in recs)
    assert all(nonce in json.dumps(rec["body"]) for rec in recs)

    if model == SAME_SHAPE:
        # Same shape: the client's betas and API version reach Anthropic unchanged, in order.
        for ex, rec in zip(sorted(exchanges, key=lambda e: e.t_request), recs):
            assert ex.header("anthropic-beta"), "Claude Code sends betas"
            assert rec["headers"].get("anthropic-beta") == ex.header("anthropic-beta")
            assert rec["headers"].get("anthropic-version") == ex.header("anthropic-version")
            # A system message inside `messages` passes through as sent.
            sent = [m for m in ex.body.get("messages", []) if m.get("role") == "system"]
            got = [m for m in rec["body"].get("messages", []) if m.get("role") == "system"]
            assert got == sent

    # The run is one gateway session, keyed by Claude Code's own session header.
    session_ids = {e.header("x-claude-code-session-id") for e in exchanges}
    assert len(session_ids) == 1 and None not in session_ids
    row = session_row(gateway, session_ids.pop(), min_turns=len(exchanges))
    assert row is not None, "X-Claude-Code-Session-Id is mapped onto the session store"
    assert row["turn_count"] == len(exchanges)


def test_mock_provider(tmp_path, gateway, proxy, stray, nonce):
    log = GatewayLog(gateway)
    r = claude(tmp_path, stray, proxy, gateway, "mock", f"say hello {nonce}")
    exchanges = assert_clean_run(r, proxy, stray, log)
    # The mock echoes the last text block of the last message, which Claude Code fills with its
    # own context; the prompt is in the request.
    assert r.extra["result"]["result"].startswith("mock reply:"), r.describe()
    assert all(nonce in json.dumps(e.body) for e in exchanges)
    assert all(e.path.split("?")[0] in ("/v1/messages", "/v1/messages/count_tokens") for e in exchanges)
