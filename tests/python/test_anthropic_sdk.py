"""The official `anthropic` SDK against the gateway's `/v1/messages`, for a model served by an
Anthropic upstream (`haiku`, same shape) and one served by an OpenAI upstream (`gpt-5`,
translated)."""

from __future__ import annotations

import json
import re

import anthropic
import pytest

from harness import CACHE_READ_TOKENS, THINKING_SIGNATURE, THINKING_TEXT, TOOL_ARGUMENTS

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TOOL_ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")


def upstream_path(model: str) -> str:
    return "/v1/messages" if model == "haiku" else "/v1/chat/completions"


def test_sync_text(ant, upstream, model, nonce):
    msg = ant.messages.create(model=model, max_tokens=256, messages=[{"role": "user", "content": f"hello {nonce}"}])
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert msg.model == model, "the client's model string is echoed"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == f"echo: hello {nonce}"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0
    assert msg.usage.output_tokens > 0
    [rec] = upstream.requests_containing(nonce)
    assert rec["path"] == upstream_path(model)
    assert rec["auth"] == "matched"


def test_system_prompt_reaches_the_upstream(ant, upstream, model, nonce):
    msg = ant.messages.create(
        model=model,
        max_tokens=100,
        system=f"be terse {nonce}",
        messages=[{"role": "user", "content": f"hi {nonce}"}],
    )
    assert msg.content[0].text == f"echo: hi {nonce}"
    [rec] = upstream.requests_containing(nonce)
    if model == "gpt-5":
        first = rec["body"]["messages"][0]
        assert first["role"] in ("system", "developer")
        assert nonce in json.dumps(first["content"])


def test_cache_usage_buckets(ant, model, nonce):
    msg = ant.messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": f"[cache] {nonce}"}])
    assert msg.usage.cache_read_input_tokens == CACHE_READ_TOKENS
    # Anthropic's `input_tokens` excludes cache reads, whichever upstream counted them.
    assert 0 < msg.usage.input_tokens < CACHE_READ_TOKENS


def test_stream_helper_text_and_final_message(ant, model, nonce):
    with ant.messages.stream(
        model=model, max_tokens=256, messages=[{"role": "user", "content": f"stream this please {nonce}"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == f"echo: stream this please {nonce}"
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.model == model
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


def test_raw_stream_event_sequence(ant, model, nonce):
    events = list(
        ant.messages.create(
            model=model, max_tokens=256, messages=[{"role": "user", "content": f"raw events {nonce}"}], stream=True
        )
    )
    types = [e.type for e in events]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    assert "content_block_start" in types and "content_block_stop" in types
    assert types.index("content_block_start") < types.index("content_block_delta") < types.index("content_block_stop")
    [delta] = [e for e in events if e.type == "message_delta"]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens > 0
    assert events[0].message.model == model


def test_tool_use_round_trip(ant, upstream, model, nonce):
    messages = [{"role": "user", "content": f"[tool:get_weather] weather in Paris? {nonce}"}]
    first = ant.messages.create(model=model, max_tokens=256, messages=messages, tools=[WEATHER_TOOL])
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    assert use.input == TOOL_ARGUMENTS
    assert TOOL_ID_RE.match(use.id), use.id
    if model == "haiku":
        assert use.id.startswith("toolu_"), "same-shape ids pass through"

    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": f"18C {nonce}"}]}
    )
    second = ant.messages.create(model=model, max_tokens=256, messages=messages, tools=[WEATHER_TOOL])
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == f"tool result: 18C {nonce}"

    [rec] = upstream.requests_containing(f"18C {nonce}")
    body = rec["body"]
    if model == "gpt-5":
        assistant, tool = body["messages"][-2], body["messages"][-1]
        assert tool["role"] == "tool"
        assert assistant["tool_calls"][0]["id"] == tool["tool_call_id"]
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == TOOL_ARGUMENTS
        assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    else:
        assert body["messages"][-1]["content"][0]["tool_use_id"] == use.id


def test_stream_tool_use(ant, model, nonce):
    with ant.messages.stream(
        model=model,
        max_tokens=256,
        messages=[{"role": "user", "content": f"[tool:get_weather] weather? {nonce}"}],
        tools=[WEATHER_TOOL],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    assert use.input == TOOL_ARGUMENTS


def test_thinking_blocks_are_kept_anthropic_to_anthropic(ant, upstream, nonce):
    msg = ant.messages.create(model="haiku", max_tokens=512, messages=[{"role": "user", "content": f"[think] {nonce}"}])
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == THINKING_TEXT
    assert msg.content[0].signature == THINKING_SIGNATURE
    assert msg.content[1].text == f"echo: [think] {nonce}"

    # The signed block goes back upstream unchanged in the next turn.
    follow = [
        {"role": "user", "content": f"[think] {nonce}"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": f"again {nonce}-2"},
    ]
    ant.messages.create(model="haiku", max_tokens=512, messages=follow)
    [rec] = upstream.requests_containing(f"{nonce}-2")
    sent = rec["body"]["messages"][1]["content"][0]
    assert sent["type"] == "thinking"
    assert sent["signature"] == THINKING_SIGNATURE


def test_streamed_thinking_keeps_its_signature(ant, nonce):
    with ant.messages.stream(
        model="haiku", max_tokens=512, messages=[{"role": "user", "content": f"[think] {nonce}"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == THINKING_TEXT
    assert final.content[0].signature == THINKING_SIGNATURE
    assert final.content[1].text == f"echo: [think] {nonce}"


def test_unknown_model_is_a_400_listing_models(ant):
    with pytest.raises(anthropic.APIStatusError) as ei:
        ant.messages.create(model="no-such-model-xyz", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 400
    assert ei.value.body["type"] == "error"
    assert "haiku" in ei.value.body["error"]["message"]


def test_bad_key_is_authentication_error(gateway):
    client = anthropic.Anthropic(base_url=gateway.url, api_key="gw_not_a_real_key", max_retries=0, timeout=30)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        client.messages.create(model="haiku", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 401
    assert ei.value.body["error"]["type"] == "authentication_error"


def test_bearer_token_is_accepted_too(gateway, nonce):
    client = anthropic.Anthropic(base_url=gateway.url, auth_token=gateway.token, api_key=None, max_retries=0, timeout=30)
    msg = client.messages.create(model="haiku", max_tokens=10, messages=[{"role": "user", "content": nonce}])
    assert msg.content[0].text == f"echo: {nonce}"


def test_upstream_429_is_rate_limit_error(ant, model, nonce):
    with pytest.raises(anthropic.RateLimitError) as ei:
        ant.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": f"[status:429] {nonce}"}])
    assert ei.value.status_code == 429
    assert ei.value.body["error"]["type"] == "rate_limit_error"
    assert ei.value.response.headers.get("retry-after") is not None, "upstream Retry-After is forwarded"


def test_anthropic_529_overloaded_reaches_the_sdk_as_anthropic_sent_it(ant, nonce):
    # 529 `overloaded_error` is Anthropic's own status; on same-shape traffic the gateway
    # relays it unchanged, and the SDK raises its own OverloadedError for it.
    with pytest.raises(anthropic.APIStatusError) as ei:
        ant.messages.create(model="haiku", max_tokens=10, messages=[{"role": "user", "content": f"[status:529] {nonce}"}])
    assert ei.value.status_code == 529
    assert ei.value.body["type"] == "error"
    assert ei.value.body["error"]["type"] == "overloaded_error"


def test_upstream_500_is_a_server_error(ant, model, nonce):
    with pytest.raises(anthropic.APIStatusError) as ei:
        ant.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": f"[status:500] {nonce}"}])
    assert ei.value.status_code >= 500
    assert ei.value.body["type"] == "error"


def test_fail_once_is_retried_by_the_gateway(ant, upstream, model, nonce):
    msg = ant.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": f"[fail-once:503] {nonce}"}])
    assert msg.content[0].text == f"echo: [fail-once:503] {nonce}"
    assert len(upstream.requests_containing(nonce)) == 2


def test_mid_stream_error_raises(ant, model, nonce):
    with pytest.raises(anthropic.APIError):
        with ant.messages.stream(
            model=model,
            max_tokens=256,
            messages=[{"role": "user", "content": f"one two three four five six {nonce} [stream-error]"}],
        ) as stream:
            for _ in stream.text_stream:
                pass


def test_cut_stream_raises(ant, model, nonce):
    with pytest.raises(anthropic.APIError):
        with ant.messages.stream(
            model=model,
            max_tokens=256,
            messages=[{"role": "user", "content": f"one two three four five six {nonce} [cut]"}],
        ) as stream:
            for _ in stream.text_stream:
                pass


def test_gateway_still_serves_after_errors(ant, model, nonce):
    msg = ant.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": f"still here {nonce}"}])
    assert msg.content[0].text == f"echo: still here {nonce}"
