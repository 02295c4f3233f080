"""The official `openai` SDK against the gateway's `/v1/chat/completions`, for a model served by
an OpenAI upstream (`gpt-5`, same shape) and one served by an Anthropic upstream (`haiku`,
translated). The fake upstream scripts its behaviour from directives in the prompt."""

from __future__ import annotations

import json
import time

import openai
import pytest

from harness import TOOL_ARGUMENTS, issue_key

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def upstream_path(model: str) -> str:
    return "/v1/chat/completions" if model == "gpt-5" else "/v1/messages"


def test_sync_text(oai, upstream, model, nonce):
    resp = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": f"hello {nonce}"}])
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == model, "the client's model string is echoed"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"echo: hello {nonce}"
    assert choice.finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    [rec] = upstream.requests_containing(nonce)
    assert rec["path"] == upstream_path(model)
    assert rec["auth"] == "matched"
    assert rec["body"]["model"] == ("gpt-5" if model == "gpt-5" else "claude-haiku-4-5")


def test_system_prompt_reaches_the_upstream(oai, upstream, model, nonce):
    resp = oai.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": f"be terse {nonce}"},
            {"role": "user", "content": f"hi {nonce}"},
        ],
    )
    assert resp.choices[0].message.content == f"echo: hi {nonce}"
    [rec] = upstream.requests_containing(nonce)
    if model == "haiku":
        # Anthropic takes the system prompt as a top-level field, never as a message role.
        assert nonce in json.dumps(rec["body"]["system"])
        assert all(m["role"] in ("user", "assistant") for m in rec["body"]["messages"])


def test_cached_tokens_are_reported(oai, model, nonce):
    resp = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": f"[cache] {nonce}"}])
    details = resp.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == 1024
    # OpenAI's `prompt_tokens` includes the cached tokens.
    assert resp.usage.prompt_tokens > 1024


def test_stream_text_without_usage(oai, model, nonce):
    stream = oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"stream this please {nonce}"}], stream=True
    )
    chunks = list(stream)
    assert chunks, "at least one chunk"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.model == model for c in chunks)
    assert len({c.id for c in chunks}) == 1, "one id for every chunk of a completion"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: stream this please {nonce}"
    assert all(c.usage is None for c in chunks), "no usage chunk unless include_usage"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_stream_text_with_usage(oai, model, nonce):
    stream = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"count me {nonce}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: count me {nonce}"


def test_tool_call_round_trip(oai, upstream, model, nonce):
    messages = [{"role": "user", "content": f"[tool:get_weather] weather in Paris? {nonce}"}]
    first = oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS
    assert call.id.startswith("call_")

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": f"18C and sunny {nonce}"})
    second = oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == f"tool result: 18C and sunny {nonce}"

    recs = upstream.requests_containing(f"18C and sunny {nonce}")
    assert len(recs) == 1
    body = recs[0]["body"]
    if model == "haiku":
        # call_… from the client became a valid Anthropic tool id, consistently in the
        # assistant tool_use and the user tool_result.
        assistant = body["messages"][-2]
        result = body["messages"][-1]
        [use] = [b for b in assistant["content"] if b["type"] == "tool_use"]
        [res] = [b for b in result["content"] if b["type"] == "tool_result"]
        assert use["id"] == res["tool_use_id"]
        assert use["input"] == TOOL_ARGUMENTS
        assert [t["name"] for t in body["tools"]] == ["get_weather"]
    else:
        assert body["messages"][-1]["tool_call_id"] == body["messages"][-2]["tool_calls"][0]["id"]


def test_stream_tool_call(oai, model, nonce):
    stream = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"[tool:get_weather] weather? {nonce}"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    name, call_id, args, finish = None, None, "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            assert tc.index == 0
            if tc.id:
                call_id = tc.id
            if tc.function and tc.function.name:
                name = tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert call_id and call_id.startswith("call_")
    assert json.loads(args) == TOOL_ARGUMENTS
    assert finish == "tool_calls"


def test_unknown_model_is_model_not_found(oai):
    with pytest.raises(openai.BadRequestError) as ei:
        oai.chat.completions.create(model="no-such-model-xyz", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 400
    assert ei.value.code == "model_not_found"
    assert "haiku" in ei.value.message, "the error lists the available models"


def test_bad_key_is_authentication_error(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="gw_not_a_real_key", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as ei:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 401
    assert ei.value.code == "invalid_api_key"


def test_expired_key_is_authentication_error_key_expired(gateway, nonce):
    """A key issued with `--expires-in 2s` by the CLI next to the running gateway: the SDK sees
    401 `invalid_api_key` until the gateway has loaded it (within a second), may see it work,
    and from its expiry on gets `AuthenticationError` with code `key_expired`."""
    _, token = issue_key(gateway.data_dir, f"expiring-{nonce}", "--expires-in", "2s")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0, timeout=30)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": nonce}])
        except openai.AuthenticationError as e:
            if e.code == "key_expired":
                err = e
                break
            assert e.code == "invalid_api_key", e
        assert time.monotonic() < deadline, "the key did not expire within 30 s"
        time.sleep(0.1)
    assert err.status_code == 401
    assert isinstance(err.body, dict) and err.body.get("expires_at"), err.body
    assert "expired" in err.message


def test_upstream_429_is_rate_limit_error(oai, model, nonce):
    with pytest.raises(openai.RateLimitError) as ei:
        oai.chat.completions.create(model=model, messages=[{"role": "user", "content": f"[status:429] {nonce}"}])
    assert ei.value.status_code == 429
    assert ei.value.response.headers.get("retry-after") is not None, "upstream Retry-After is forwarded"


def test_upstream_429_before_a_stream_is_a_json_error(oai, model, nonce):
    with pytest.raises(openai.RateLimitError):
        stream = oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"[status:429] {nonce}"}], stream=True
        )
        list(stream)


def test_fail_once_is_retried_by_the_gateway(oai, upstream, model, nonce):
    resp = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": f"[fail-once:503] {nonce}"}])
    assert resp.choices[0].message.content == f"echo: [fail-once:503] {nonce}"
    assert len(upstream.requests_containing(nonce)) == 2, "one failed attempt, one retry"


def test_mid_stream_error_raises(oai, model, nonce):
    stream = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"one two three four five six {nonce} [stream-error]"}],
        stream=True,
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
            assert not (chunk.choices and chunk.choices[0].finish_reason), "no fake success"
    assert received, "the deltas before the failure were delivered"


def test_cut_stream_raises(oai, model, nonce):
    stream = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"one two three four five six {nonce} [cut]"}],
        stream=True,
    )
    with pytest.raises(openai.APIError):
        for chunk in stream:
            assert not (chunk.choices and chunk.choices[0].finish_reason), "no fake success"


def test_gateway_still_serves_after_errors(oai, model, nonce):
    resp = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": f"still here {nonce}"}])
    assert resp.choices[0].message.content == f"echo: still here {nonce}"
