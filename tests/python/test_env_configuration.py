"""The product promise: an application keeps its SDK and only changes environment variables
(`OPENAI_BASE_URL`/`OPENAI_API_KEY`, `ANTHROPIC_BASE_URL`/`ANTHROPIC_API_KEY`)."""

from __future__ import annotations

import anthropic
import openai


def test_sdks_configured_only_by_environment(gateway, monkeypatch, nonce):
    monkeypatch.setenv("OPENAI_BASE_URL", f"{gateway.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", gateway.token)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", gateway.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", gateway.token)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)

    oai = openai.OpenAI(max_retries=0, timeout=30)
    r = oai.chat.completions.create(model="haiku", messages=[{"role": "user", "content": f"env {nonce}"}])
    assert r.choices[0].message.content == f"echo: env {nonce}"

    ant = anthropic.Anthropic(max_retries=0, timeout=30)
    m = ant.messages.create(model="gpt-5", max_tokens=32, messages=[{"role": "user", "content": f"env {nonce}"}])
    assert m.content[0].text == f"echo: env {nonce}"
