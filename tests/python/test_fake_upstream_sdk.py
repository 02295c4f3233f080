"""The official SDKs pointed straight at the fake upstream (no gateway): the fake's Responses
API, token counting, embeddings and models must parse in the pinned `openai` and `anthropic`
SDKs exactly as the real APIs do, or the gateway tests built on the fake prove nothing.

Only the `upstream` fixture is used, so these run without a gateway binary."""

from __future__ import annotations

import json
import math
import struct

import anthropic
import openai
import pytest

from harness import ANTHROPIC_KEY, OPENAI_KEY, THINKING_TEXT, TOOL_ARGUMENTS

SDK_TIMEOUT_S = 30.0
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture
def oai_direct(upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{upstream.base_url}/v1", api_key=OPENAI_KEY, max_retries=0, timeout=SDK_TIMEOUT_S)


@pytest.fixture
def ant_direct(upstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=upstream.base_url, api_key=ANTHROPIC_KEY, max_retries=0, timeout=SDK_TIMEOUT_S)


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _estimate(body: dict) -> int:
    """The fake's `estimate_input_tokens`: serialized size of these fields / 4, at least 1."""
    size = sum(len(_compact(body[k]).encode()) for k in ("messages", "system", "input", "instructions") if k in body)
    return max(1, size // 4)


def _f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _last_request(upstream, marker: str) -> dict:
    reqs = upstream.requests_containing(marker)
    assert reqs, f"no recorded request mentions {marker}"
    return reqs[-1]


def test_responses_sync_text_and_usage(oai_direct, upstream, nonce):
    resp = oai_direct.responses.create(model="gpt-5", input=f"hello {nonce}", instructions="be brief")
    assert resp.id.startswith("resp_")
    assert resp.object == "response"
    assert resp.status == "completed"
    assert resp.output_text == f"echo: hello {nonce}"
    assert resp.instructions == "be brief"
    msg = resp.output[0]
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content[0].type == "output_text"
    recorded = _last_request(upstream, nonce)
    assert recorded["api"] == "responses" and recorded["provider"] == "openai"
    assert resp.usage.input_tokens == _estimate(recorded["body"])
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens


def test_responses_tool_call_round_trip_stateless(oai_direct, nonce):
    first = oai_direct.responses.create(
        model="gpt-5", input=f"[tool:get_weather] weather? {nonce}", tools=[WEATHER_TOOL], store=False
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert json.loads(call.arguments) == TOOL_ARGUMENTS
    follow = oai_direct.responses.create(
        model="gpt-5",
        store=False,
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": f"[tool:get_weather] weather? {nonce}"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C sunny"},
        ],
    )
    assert follow.output_text == "tool result: 18C sunny"


def test_responses_previous_response_id_chain(oai_direct, nonce):
    first = oai_direct.responses.create(model="gpt-5", input=f"[tool:lookup] find {nonce}", tools=[WEATHER_TOOL | {"name": "lookup"}])
    call = next(o for o in first.output if o.type == "function_call")
    follow = oai_direct.responses.create(
        model="gpt-5",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "found it"}],
    )
    assert follow.previous_response_id == first.id
    assert follow.output_text == "tool result: found it"
    # Without the chain the same output has no call to answer: the real 400.
    with pytest.raises(openai.BadRequestError) as err:
        oai_direct.responses.create(
            model="gpt-5", input=[{"type": "function_call_output", "call_id": call.call_id, "output": "x"}]
        )
    assert err.value.body["message"] == f"No tool call found for function call output with call_id {call.call_id}."
    assert err.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as err:
        oai_direct.responses.create(model="gpt-5", input="hi", previous_response_id="resp_unknown")
    assert err.value.body["message"] == "Previous response with id 'resp_unknown' not found."
    assert err.value.code == "previous_response_not_found"


def test_responses_stream_event_sequence(oai_direct, nonce):
    stream = oai_direct.responses.create(
        model="gpt-5", input=f"[tool:get_weather] [think] go {nonce}", tools=[WEATHER_TOOL], stream=True,
        reasoning={"effort": "low", "summary": "auto"}, include=["reasoning.encrypted_content"],
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.reasoning_summary_text.delta" in types
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == THINKING_TEXT
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == TOOL_ARGUMENTS
    done = events[-1].response
    kinds = [o.type for o in done.output]
    assert kinds == ["reasoning", "function_call"]
    assert done.output[0].encrypted_content
    assert done.usage.output_tokens_details.reasoning_tokens > 0


def test_responses_stream_helper_accumulates_text(oai_direct, nonce):
    with oai_direct.responses.stream(model="gpt-5", input=f"alpha beta gamma {nonce}") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) >= 2
    assert final.output_text == f"echo: alpha beta gamma {nonce}"
    assert final.status == "completed"


def test_responses_length_is_incomplete(oai_direct, nonce):
    resp = oai_direct.responses.create(model="gpt-5", input=f"[length] {nonce}")
    assert resp.status == "incomplete"
    assert resp.incomplete_details.reason == "max_output_tokens"
    events = list(oai_direct.responses.create(model="gpt-5", input=f"[length] {nonce}", stream=True))
    assert events[-1].type == "response.incomplete"


def test_responses_stream_errors(oai_direct, nonce):
    events = list(
        oai_direct.responses.create(model="gpt-5", input=f"one two three four five six [stream-error] {nonce}", stream=True)
    )
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error"
    with pytest.raises(openai.APIError) as err:
        list(
            oai_direct.responses.create(
                model="gpt-5", input=f"one two three four five six [stream-error:event] {nonce}", stream=True
            )
        )
    assert "error occurred while processing your request" in str(err.value)


def test_responses_input_tokens(oai_direct, upstream, nonce):
    counted = oai_direct.responses.input_tokens.count(model="gpt-5", input=f"count me {nonce}")
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == _estimate(_last_request(upstream, nonce)["body"])


def test_embeddings_base64_default_float_and_dimensions(oai_direct, upstream, nonce):
    # The SDK asks for base64 unless told otherwise, and decodes it.
    b64 = oai_direct.embeddings.create(model="text-embedding-3-small", input=[f"a {nonce}", f"b {nonce}"])
    assert _last_request(upstream, nonce)["body"]["encoding_format"] == "base64"
    assert [d.index for d in b64.data] == [0, 1]
    vec = b64.data[0].embedding
    assert len(vec) == 1536
    assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-5)
    assert b64.data[0].embedding != b64.data[1].embedding
    floats = oai_direct.embeddings.create(model="text-embedding-3-small", input=f"a {nonce}", encoding_format="float")
    # The float form prints each f32 in its shortest form, as the real API does: the same
    # f32 values as the base64 bytes.
    assert [_f32(v) for v in floats.data[0].embedding] == vec
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    short = oai_direct.embeddings.create(model="text-embedding-3-large", input=f"a {nonce}", dimensions=256)
    assert len(short.data[0].embedding) == 256
    assert short.model == "text-embedding-3-large"


def test_models_in_both_shapes(oai_direct, ant_direct):
    ids = [m.id for m in oai_direct.models.list()]
    assert "gpt-5" in ids and "text-embedding-3-small" in ids
    assert oai_direct.models.retrieve("gpt-5").owned_by == "system"
    with pytest.raises(openai.NotFoundError):
        oai_direct.models.retrieve("gpt-nope")
    page = ant_direct.models.list()
    assert all(m.type == "model" and m.display_name for m in page.data)
    assert ant_direct.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5-20251001"
    with pytest.raises(anthropic.NotFoundError):
        ant_direct.models.retrieve("claude-nope")


def test_anthropic_count_tokens_and_betas(ant_direct, upstream, nonce):
    counted = ant_direct.messages.count_tokens(
        model="claude-haiku-4-5",
        system="be brief",
        messages=[{"role": "user", "content": f"count {nonce}"}],
        extra_headers={"anthropic-beta": "token-counting-2024-11-01,some-future-beta"},
    )
    recorded = _last_request(upstream, nonce)
    assert recorded["api"] == "count_tokens"
    assert counted.input_tokens == _estimate(recorded["body"])
    assert recorded["headers"]["anthropic-beta"] == "token-counting-2024-11-01,some-future-beta"
    # The pinned SDK sends its API key as a Bearer token, which the real API accepts.
    assert recorded["headers"]["authorization"] == "<matched>"
    assert ANTHROPIC_KEY not in json.dumps(recorded)


def test_anthropic_mid_conversation_system_message(ant_direct, nonce):
    messages = [
        {"role": "user", "content": f"first {nonce}"},
        {"role": "system", "content": "answer in French from now on"},
    ]
    ok = ant_direct.messages.create(model="claude-opus-4-8", max_tokens=64, messages=messages)
    assert ok.content[0].text == f"echo: first {nonce}"
    with pytest.raises(anthropic.BadRequestError):
        ant_direct.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=messages)
