"""SDKs whose defaults use the gateway's newer endpoints, each run as a client process through the
logging proxy: the `openai` npm package (responses.create sync and stream with tools,
embeddings.create, models.list), `@anthropic-ai/sdk` (messages.countTokens, models.list), the
Vercel AI SDK's default `openai(model)` provider (generateText with and without a tool,
streamText), openai-agents' default model (Runner.run with a function tool) and pydantic-ai's
OpenAIResponsesModel. Models: `gpt-5` (fake OpenAI upstream, Responses forwarded natively),
`openrouter:gpt-5` (the same fake as a chat-completions-only upstream, translated), `haiku`
(fake Anthropic upstream, translated) and `mock` (the in-process test double); the fake
echoes `echo: <text>`, calls the tool on `[tool:NAME]` with `{"city": "Paris"}` and answers
`tool result: <text>` after a tool result; the mock answers `mock reply: <text>`.
"""

from __future__ import annotations

import json

import pytest

from clients import GatewayLog, base_env, run_script

FAKE_MODELS = ["gpt-5", "openrouter:gpt-5", "haiku"]
ALL_MODELS = [*FAKE_MODELS, "mock"]
UPSTREAM_PATH = {"gpt-5": "/v1/responses", "openrouter:gpt-5": "/v1/chat/completions", "haiku": "/v1/messages"}
PARIS = {"city": "Paris"}


@pytest.fixture
def client(tmp_path, gateway, proxy, stray, nonce):
    """Runs one case of a client script against the gateway (through the proxy) and checks what
    every SDK test must hold: each request answered 2xx the first time, no attempt to leave the
    machine, no error or refusal in the gateway's log."""
    log = GatewayLog(gateway)

    def call(script: str, case: str, model: str, paths: set[str]) -> dict:
        env = base_env(
            tmp_path / "home", stray, GATEWAY_URL=proxy.url, GATEWAY_TOKEN=gateway.token, MODEL=model,
            NONCE=nonce, OPENAI_AGENTS_DISABLE_TRACING="1",
        )
        out = run_script(script, case, env, tmp_path)
        exchanges = proxy.exchanges()
        summary = [(e.method, e.path, e.status) for e in exchanges]
        assert exchanges, "the client made no request"
        assert all(e.status is not None and 200 <= e.status < 300 for e in exchanges), summary
        assert {e.path.split("?")[0] for e in exchanges} <= paths, summary
        assert stray.attempts() == []
        assert log.problems() == []
        out["_requests"] = len(exchanges)
        return out

    return call


def expected_echo(model: str, text: str) -> str:
    return f"mock reply: {text}" if model == "mock" else f"echo: {text}"


def function_calls(output: list) -> list:
    return [o for o in output if o["type"] == "function_call"]


def output_text(response: dict) -> str:
    """The text parts of a response object's message items, joined (the SDK's `output_text`)."""
    return "".join(
        part["text"]
        for item in response["output"] if item["type"] == "message"
        for part in item["content"] if part["type"] == "output_text"
    )


def assert_usage(usage: dict) -> None:
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


# --- openai (npm): Responses API -------------------------------------------------------------

@pytest.mark.parametrize("model", FAKE_MODELS)
def test_openai_responses_tool_loop(client, upstream, model, nonce):
    out = client("openai_sdk.cjs", "responses_tool_loop", model, {"/v1/responses"})
    first, second = out["first"], out["second"]
    assert first["object"] == "response" and first["status"] == "completed"
    assert first["id"].startswith("resp_")
    assert first["model"] == model, "the client's model string is echoed"
    [call] = function_calls(first["output"])
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == PARIS
    assert call["call_id"]
    assert_usage(first["usage"])
    assert second is not None and second["output_text"] == "tool result: sunny, 21 C"
    assert_usage(second["usage"])

    recs = upstream.requests()
    assert [r["path"] for r in recs] == [UPSTREAM_PATH[model]] * 2
    assert "sunny, 21 C" in json.dumps(recs[1]["body"]), "the tool output reached the upstream"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_openai_responses_text(client, upstream, model, nonce):
    out = client("openai_sdk.cjs", "responses_text", model, {"/v1/responses"})
    assert out["status"] == "completed"
    assert out["output_text"] == expected_echo(model, f"hello {nonce}")
    [msg] = [o for o in out["output"] if o["type"] == "message"]
    assert msg["role"] == "assistant" and msg["content"][0]["type"] == "output_text"
    assert_usage(out["usage"])
    if model != "mock":
        [rec] = upstream.requests()
        assert rec["path"] == UPSTREAM_PATH[model]
        assert "be brief" in json.dumps(rec["body"]), "instructions reach the upstream"


@pytest.mark.parametrize("model", FAKE_MODELS)
def test_openai_responses_stream_tool(client, model):
    out = client("openai_sdk.cjs", "responses_stream_tool", model, {"/v1/responses"})
    types = out["types"]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    for t in ("response.in_progress", "response.output_item.added", "response.function_call_arguments.delta",
              "response.function_call_arguments.done", "response.output_item.done"):
        assert t in types, f"{t} missing from {types}"
    assert out["sequence"] == list(range(len(types))), "sequence_number counts every event from 0"
    assert json.loads(out["args"]) == PARIS
    [call] = function_calls(out["completed"]["output"])
    assert call["name"] == "get_weather"
    assert_usage(out["completed"]["usage"])


@pytest.mark.parametrize("model", ALL_MODELS)
def test_openai_responses_stream_text(client, model, nonce):
    out = client("openai_sdk.cjs", "responses_stream_text", model, {"/v1/responses"})
    types = out["types"]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    for t in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
              "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert t in types, f"{t} missing from {types}"
    assert out["text"] == expected_echo(model, f"hello {nonce}")
    # Streamed response objects are raw (the SDK adds `output_text` only to non-streamed ones).
    assert output_text(out["completed"]) == out["text"]
    assert_usage(out["completed"]["usage"])


# --- openai (npm): embeddings and models ------------------------------------------------------

@pytest.mark.parametrize("model", ["openai:text-embedding-3-small", "mock"])
def test_openai_embeddings(client, upstream, model):
    out = client("openai_sdk.cjs", "embeddings", model, {"/v1/embeddings"})
    assert out["object"] == "list"
    assert out["count"] == 2 and out["indexes"] == [0, 1]
    assert out["dims"][0] == out["dims"][1] > 0
    assert out["usage"]["prompt_tokens"] > 0
    if model == "mock":
        again = client("openai_sdk.cjs", "embeddings", model, {"/v1/embeddings"})
        assert again["first"] == out["first"], "the mock's vectors are deterministic"
    else:
        [rec] = upstream.requests()
        assert rec["path"] == "/v1/embeddings" and rec["auth"] == "matched"


def test_openai_models_list(client):
    out = client("openai_sdk.cjs", "models_list", "gpt-5", {"/v1/models", "/v1/models/gpt-5"})
    assert {"gpt-5", "haiku", "mock"} <= set(out["ids"])
    assert out["sample"]["object"] == "model"
    assert out["sample"]["created"] > 0, "a real created timestamp"
    assert out["retrieved"]["id"] == "gpt-5" and out["retrieved"]["object"] == "model"
    assert out["retrieved"]["created"] == out["sample"]["created"]


# --- @anthropic-ai/sdk (npm) -------------------------------------------------------------------

@pytest.mark.parametrize("model", ALL_MODELS)
def test_anthropic_count_tokens(client, upstream, model):
    out = client("anthropic_sdk.cjs", "count_tokens", model, {"/v1/messages/count_tokens"})
    assert out["status"] == 200
    assert out["data"]["input_tokens"] > 0
    recs = upstream.requests()
    assert all(r["path"] != "/v1/messages" for r in recs), "counting never generates"
    if model == "haiku":
        [rec] = recs
        assert rec["path"] == "/v1/messages/count_tokens", "an Anthropic model is counted by Anthropic"
        assert rec["body"]["model"] == "claude-haiku-4-5"


def test_anthropic_models_list(client):
    out = client("anthropic_sdk.cjs", "models_list", "haiku", {"/v1/models", "/v1/models/haiku"})
    data = out["data"]
    assert {"haiku", "gpt-5", "mock"} <= {m["id"] for m in data}
    assert all(m["type"] == "model" and m["display_name"] and m["created_at"] for m in data)
    assert out["first_page"]["first_id"] == data[0]["id"]
    assert out["first_page"]["has_more"] is False
    assert out["retrieved"]["id"] == "haiku" and out["retrieved"]["type"] == "model"


# --- Vercel AI SDK: default openai(model) provider --------------------------------------------

@pytest.mark.parametrize("model", ALL_MODELS)
def test_ai_sdk_generate_text(client, model, nonce):
    out = client("ai_sdk.cjs", "generate_text", model, {"/v1/responses"})
    assert out["text"] == expected_echo(model, f"hello {nonce}")
    assert out["finishReason"] == "stop"
    assert out["usage"]["inputTokens"] > 0 and out["usage"]["outputTokens"] > 0


@pytest.mark.parametrize("model", FAKE_MODELS)
def test_ai_sdk_tool(client, model):
    out = client("ai_sdk.cjs", "generate_tool", model, {"/v1/responses"})
    first, last = out["steps"][0], out["steps"][-1]
    assert first["toolCalls"] == [{"toolName": "get_weather", "input": PARIS}]
    assert first["toolResults"] == ["sunny in Paris"]
    assert len(out["steps"]) == 2 and out["_requests"] == 2
    assert last["finishReason"] == "stop"
    assert out["text"] == "tool result: sunny in Paris"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_ai_sdk_stream_text(client, model, nonce):
    out = client("ai_sdk.cjs", "stream_text", model, {"/v1/responses"})
    assert out["text"] == expected_echo(model, f"hello {nonce}")
    assert out["finishReason"] == "stop"
    assert out["usage"]["inputTokens"] > 0


# --- Python agent frameworks -------------------------------------------------------------------

@pytest.mark.parametrize("model", FAKE_MODELS)
def test_openai_agents_default_model(client, upstream, model):
    out = client("python_agents.py", "openai_agents", model, {"/v1/responses"})
    assert out["final_output"] == "tool result: sunny in Paris"
    assert "ToolCallItem" in out["items"] and "ToolCallOutputItem" in out["items"]
    assert out["responses"] == 2 and out["_requests"] == 2
    assert [r["path"] for r in upstream.requests()] == [UPSTREAM_PATH[model]] * 2


@pytest.mark.parametrize("model", FAKE_MODELS)
def test_pydantic_ai_responses_model(client, upstream, model):
    out = client("python_agents.py", "pydantic_ai", model, {"/v1/responses"})
    assert out["output"] == "tool result: sunny in Paris"
    assert out["messages"] == ["request", "response", "request", "response"]
    assert out["usage"]["input_tokens"] > 0
    assert [r["path"] for r in upstream.requests()] == [UPSTREAM_PATH[model]] * 2
