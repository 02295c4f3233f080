"""Google providers through the real gateway with the official SDKs: kind `gemini` (Gemini
API, `x-goog-api-key`), `vertex` (Gemini on Vertex AI) and `vertex-anthropic` (Claude on
Vertex AI), both Vertex kinds with the fake's test service account (its RS256 assertion is
verified by the fake token endpoint). One gateway for the module, configured by a
`[providers.*]` config file pointing at the session's fake upstream."""

from __future__ import annotations

import json
import urllib.request

import anthropic
import openai
import pytest

from harness import Gateway, TOOL_ARGUMENTS

SDK_TIMEOUT_S = 30.0
GEMINI_KEY = "fake-gemini-key"  # DEFAULT_GEMINI_KEY of tests/src/fake_upstream/gemini.rs
KINDS = {
    "gemini": ("gemini:gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash:"),
    "vertex": (
        "vertex:gemini-2.5-flash",
        "/v1/projects/metis-test-project/locations/us-central1/publishers/google/models/gemini-2.5-flash:",
    ),
    "vertex-anthropic": (
        "vertex-anthropic:claude-haiku-4-5@20251001",
        "/v1/projects/metis-test-project/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5%4020251001:",
    ),
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def google_gateway(tmp_path_factory, upstream):
    work = tmp_path_factory.mktemp("google")
    with urllib.request.urlopen(f"{upstream.base_url}/_google/credentials", timeout=10) as r:
        creds = work / "service-account.json"
        creds.write_bytes(r.read())
    config = work / "metis.toml"
    config.write_text(
        f"""
[providers.gemini]
api_key = "{GEMINI_KEY}"
base_url = "{upstream.base_url}"

[providers.vertex]
credentials_file = "{creds}"
location = "us-central1"
base_url = "{upstream.base_url}"

[providers.vertex-anthropic]
credentials_file = "{creds}"
location = "us-east5"
base_url = "{upstream.base_url}"
"""
    )
    gw = Gateway(work / "data", upstream, ["--config", str(config), "--upstream-retries", "0"])
    yield gw
    gw.stop()


@pytest.fixture
def g_oai(google_gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{google_gateway.url}/v1", api_key=google_gateway.token, max_retries=0, timeout=SDK_TIMEOUT_S)


@pytest.fixture
def g_ant(google_gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=google_gateway.url, api_key=google_gateway.token, max_retries=0, timeout=SDK_TIMEOUT_S)


@pytest.mark.parametrize("kind", list(KINDS))
def test_google_kind_with_both_sdks(kind, g_oai, g_ant, upstream, nonce):
    model, path_prefix = KINDS[kind]

    # OpenAI SDK, sync.
    chat = g_oai.chat.completions.create(model=model, messages=[{"role": "user", "content": f"hi {nonce}"}])
    assert chat.choices[0].message.content == f"echo: hi {nonce}"
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0

    # Anthropic SDK, streamed.
    with g_ant.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": f"yo {nonce}"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == f"echo: yo {nonce}"
    assert final.stop_reason == "end_turn"

    # OpenAI SDK: a tool call, then the tool result turn.
    question = f"[tool:get_weather] weather? {nonce}"
    first = g_oai.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    second = g_oai.chat.completions.create(
        model=model,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": question},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": f"sunny {nonce}"},
        ],
    )
    assert second.choices[0].message.content == f"tool result: sunny {nonce}"

    seen = upstream.requests_containing(nonce)
    assert len(seen) == 4, seen
    assert all(r["path"].startswith(path_prefix) for r in seen), [r["path"] for r in seen]
    assert all(r["auth"] == "matched" for r in seen)
