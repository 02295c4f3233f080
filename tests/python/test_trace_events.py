"""What the gateway writes to its trace store for SDK traffic: one `llm.call_completed` per call
carrying the key, the inbound shape and the cost, and never any prompt or completion text.

Uses its own gateway so it can stop it (SIGTERM drains and flushes the trace writer) before
reading `metis.db`."""

from __future__ import annotations

import json
import uuid

import anthropic
import openai
import pytest

from harness import Gateway


@pytest.fixture
def own_gateway(tmp_path, upstream):
    gw = Gateway(tmp_path / "data", upstream)
    yield gw
    gw.stop()


def test_calls_are_traced_without_prompt_text(own_gateway):
    gw = own_gateway
    secret = f"SECRET-PROMPT-{uuid.uuid4().hex}"
    oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.token, max_retries=0, timeout=30)
    ant = anthropic.Anthropic(base_url=gw.url, api_key=gw.token, max_retries=0, timeout=30)

    oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": f"{secret} a"}])
    list(
        oai.chat.completions.create(
            model="haiku",
            messages=[{"role": "system", "content": f"{secret} sys"}, {"role": "user", "content": f"{secret} b"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    ant.messages.create(model="haiku", max_tokens=50, messages=[{"role": "user", "content": f"{secret} c"}])
    with ant.messages.stream(
        model="gpt-5", max_tokens=50, messages=[{"role": "user", "content": f"{secret} d"}]
    ) as s:
        s.get_final_message()

    code = gw.stop()
    assert code == 0, f"gateway exit code {code} after SIGTERM:\n{gw.stderr()[-4000:]}"

    rows = gw.events()
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append(r)
    completed = [json.loads(r["payload_json"]) for r in by_type.get("llm.call_completed", [])]
    assert len(completed) == 4, f"one llm.call_completed per call; types seen: {sorted(by_type)}"
    for p in completed:
        assert p["gateway_key_id"] == gw.key_id
        assert isinstance(p["cost_usd"], (int, float)) and p["cost_usd"] >= 0
        assert p["input_tokens"] > 0 and p["output_tokens"] > 0
        assert p.get("pricing_version")
        assert isinstance(p.get("latency_ms"), (int, float))
    assert sorted(p["inbound_shape"] for p in completed) == ["anthropic", "anthropic", "openai", "openai"]
    assert {p["model"] for p in completed} == {"openai:gpt-5", "anthropic:claude-haiku-4-5"}
    for t in ("route.decided", "llm.call_started", "turn.completed"):
        assert len(by_type.get(t, [])) == 4, f"4 x {t}; types seen: {sorted(by_type)}"

    dump = json.dumps(rows)
    assert secret not in dump, "prompt text must never enter the trace"
    assert "echo:" not in dump, "completion text must never enter the trace"
    assert gw.token not in dump, "the key token must never enter the trace"
    assert "fake-anthropic-key" not in dump and "fake-openai-key" not in dump
