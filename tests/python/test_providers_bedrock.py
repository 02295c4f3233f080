"""Amazon Bedrock through the gateway with the official SDKs: a gateway whose Bedrock provider
takes its region and static keys from the AWS environment variables (the section only points
it at the fake), the fake verifying every SigV4 signature and answering in the binary event
stream."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from harness import CACHE_READ_TOKENS, TOOL_ARGUMENTS, Gateway

# Constants of the fake Bedrock (tests/src/fake_upstream/bedrock.rs).
BEDROCK_ACCESS_KEY_ID = "AKIAFAKEBEDROCK00001"
BEDROCK_SECRET_ACCESS_KEY = "fake/bedrock+secret/0123456789abcdefghij"
MODEL = "bedrock:anthropic.claude-haiku-4-5-20251001-v1:0"
TOOLS_OPENAI = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOLS_ANTHROPIC = [{"name": "get_weather", "description": "Weather for a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture(scope="module")
def bedrock_gateway(tmp_path_factory, upstream):
    d = tmp_path_factory.mktemp("gw-bedrock")
    config = d / "bedrock.toml"
    config.write_text(f'[providers.bedrock]\nbase_url = "{upstream.base_url}"\n')
    gw = Gateway(d / "data", upstream, ["--config", str(config)], env={
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": BEDROCK_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": BEDROCK_SECRET_ACCESS_KEY,
    })
    yield gw
    gw.stop()


def converse_calls(upstream, marker: str) -> list[dict]:
    return [r for r in upstream.requests_containing(marker) if r["provider"] == "bedrock"]


def test_openai_sdk_through_bedrock(bedrock_gateway, upstream, nonce):
    client = openai.OpenAI(base_url=f"{bedrock_gateway.url}/v1", api_key=bedrock_gateway.token, max_retries=0, timeout=30)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"[cache] hi {nonce}"}])
    assert r.choices[0].message.content == f"echo: [cache] hi {nonce}"
    assert r.usage.prompt_tokens_details.cached_tokens == CACHE_READ_TOKENS

    stream = client.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": f"[split] streamed {nonce}"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"echo: [split] streamed {nonce}"

    question = f"[tool:get_weather] weather? {nonce}"
    first = client.chat.completions.create(
        model=MODEL, tools=TOOLS_OPENAI, messages=[{"role": "user", "content": question}])
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    second = client.chat.completions.create(model=MODEL, tools=TOOLS_OPENAI, messages=[
        {"role": "user", "content": question},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ])
    assert second.choices[0].message.content == "tool result: sunny"

    calls = converse_calls(upstream, nonce)
    assert len(calls) == 4
    assert all(c["auth"] == "matched" for c in calls), calls
    assert {c["api"] for c in calls} == {"converse", "converse_stream"}
    assert all("%3A0/converse" in c["path"] for c in calls)


def test_anthropic_sdk_through_bedrock(bedrock_gateway, upstream, nonce):
    client = anthropic.Anthropic(base_url=bedrock_gateway.url, api_key=bedrock_gateway.token, max_retries=0, timeout=30)
    m = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": f"hello {nonce}"}])
    assert m.content[0].text == f"echo: hello {nonce}"
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0

    with client.messages.stream(model=MODEL, max_tokens=64,
                                messages=[{"role": "user", "content": f"stream {nonce}"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == f"echo: stream {nonce}"
    assert final.stop_reason == "end_turn"

    question = f"[tool:get_weather] weather? {nonce}"
    with client.messages.stream(model=MODEL, max_tokens=64, tools=TOOLS_ANTHROPIC,
                                messages=[{"role": "user", "content": question}]) as s:
        first = s.get_final_message()
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == TOOL_ARGUMENTS
    second = client.messages.create(model=MODEL, max_tokens=64, tools=TOOLS_ANTHROPIC, messages=[
        {"role": "user", "content": question},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ])
    assert second.content[0].text == "tool result: sunny"

    calls = converse_calls(upstream, nonce)
    assert len(calls) == 4
    assert all(c["auth"] == "matched" for c in calls), calls


def test_bedrock_error_statuses_reach_the_sdks(bedrock_gateway, nonce):
    oai = openai.OpenAI(base_url=f"{bedrock_gateway.url}/v1", api_key=bedrock_gateway.token, max_retries=0, timeout=30)
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"[status:429] {nonce}"}])
    ant = anthropic.Anthropic(base_url=bedrock_gateway.url, api_key=bedrock_gateway.token, max_retries=0, timeout=30)
    with pytest.raises(anthropic.RateLimitError):
        ant.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": f"[status:429] {nonce}"}])
