"""Azure OpenAI and the OpenAI-compatible presets through the real gateway, with the official
`openai` and `anthropic` SDKs, to the fake upstream's Azure deployment paths (`api-key` and an
Entra ID client-credentials token from the fake token endpoint) and OpenAI paths (presets)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from harness import OPENAI_KEY, TOOL_ARGUMENTS, Gateway

SDK_TIMEOUT_S = 30.0
# Constants of the fake upstream (tests/src/fake_upstream/azure.rs).
AZURE_API_KEY = "fake-azure-key"
ENTRA_TENANT_ID = "00000000-0000-4000-8000-00000000fa6e"
ENTRA_CLIENT_ID = "11111111-1111-4111-8111-11111111c1d0"
ENTRA_CLIENT_SECRET = "fake~entra~client~secret"

DEPLOYMENT = "gpt-4o-mini"
PRESETS = {
    "mistral": "mistral-small-latest",
    "groq": "llama-3.3-70b-versatile",
    "deepseek": "deepseek-chat",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "fireworks": "accounts/fireworks/models/llama-v3p3-70b-instruct",
}
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def providers_gateway(tmp_path_factory, upstream):
    """A gateway with `azure` (api-key), `azure-entra` (client credentials) and every preset
    pointed at the fake."""
    base = upstream.base_url
    config = (
        f'[providers.azure]\nbase_url = "{base}"\napi_key = "{AZURE_API_KEY}"\n\n'
        f'[providers.azure-entra]\nkind = "azure"\nbase_url = "{base}"\nauthority_url = "{base}"\n'
        f'tenant_id = "{ENTRA_TENANT_ID}"\nclient_id = "{ENTRA_CLIENT_ID}"\n'
        'client_secret_env = "METIS_SDK_AZURE_SECRET"\n\n'
    )
    for name in PRESETS:
        config += f'[providers.{name}]\nbase_url = "{base}/v1"\napi_key = "{OPENAI_KEY}"\n\n'
    data_dir = tmp_path_factory.mktemp("gw-providers") / "data"
    data_dir.mkdir(parents=True)
    path = data_dir.parent / "providers.toml"
    path.write_text(config)
    gw = Gateway(
        data_dir,
        upstream,
        extra_args=["--config", str(path)],
        env={"METIS_SDK_AZURE_SECRET": ENTRA_CLIENT_SECRET},
    )
    yield gw
    gw.stop()


@pytest.fixture
def p_oai(providers_gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{providers_gateway.url}/v1", api_key=providers_gateway.token, max_retries=0, timeout=SDK_TIMEOUT_S
    )


@pytest.fixture
def p_ant(providers_gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=providers_gateway.url, api_key=providers_gateway.token, max_retries=0, timeout=SDK_TIMEOUT_S
    )


def _only(upstream, marker: str) -> dict:
    reqs = upstream.requests_containing(marker)
    assert len(reqs) == 1, reqs
    return reqs[0]


def _exercise(p_oai, p_ant, upstream, model: str, nonce: str) -> list[dict]:
    """OpenAI SDK sync + stream with a tool; Anthropic SDK sync + stream. Returns the recorded
    upstream requests."""
    recs = []
    r = p_oai.chat.completions.create(model=model, messages=[{"role": "user", "content": f"hi {nonce}a"}])
    assert r.choices[0].message.content == f"echo: hi {nonce}a"
    recs.append(_only(upstream, f"{nonce}a"))

    stream = p_oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"[tool:get_weather] {nonce}b"}],
        tools=[{"type": "function", "function": WEATHER}],
        stream=True,
        stream_options={"include_usage": True},
    )
    name, args, usage = "", "", None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
    assert name == "get_weather"
    assert json.loads(args) == TOOL_ARGUMENTS
    assert usage is not None and usage.completion_tokens > 0
    recs.append(_only(upstream, f"{nonce}b"))

    m = p_ant.messages.create(
        model=model,
        max_tokens=64,
        tools=[{"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}],
        messages=[{"role": "user", "content": f"[tool:get_weather] {nonce}c"}],
    )
    assert m.stop_reason == "tool_use"
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.input == TOOL_ARGUMENTS
    recs.append(_only(upstream, f"{nonce}c"))

    with p_ant.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": f"hello {nonce}d"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == f"echo: hello {nonce}d"
    assert final.usage.output_tokens > 0
    recs.append(_only(upstream, f"{nonce}d"))
    return recs


def test_azure_api_key_both_sdks(p_oai, p_ant, upstream, nonce):
    recs = _exercise(p_oai, p_ant, upstream, f"azure:{DEPLOYMENT}", nonce)
    for rec in recs:
        assert rec["path"] == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
        assert rec["query"] == "api-version=2024-10-21"
        assert rec["auth"] == "matched"
        assert rec["headers"]["api-key"] == "<matched>"


def test_azure_entra_client_credentials_both_sdks(p_oai, p_ant, upstream, nonce):
    recs = _exercise(p_oai, p_ant, upstream, f"azure-entra:{DEPLOYMENT}", nonce)
    for rec in recs:
        assert rec["auth"] == "matched"
        assert rec["headers"]["authorization"] == "<matched>"
        assert "api-key" not in rec["headers"]


def test_azure_rate_limit_reaches_the_openai_sdk(p_oai, nonce):
    with pytest.raises(openai.RateLimitError) as e:
        p_oai.chat.completions.create(
            model=f"azure:{DEPLOYMENT}", messages=[{"role": "user", "content": f"[status:429] {nonce}"}]
        )
    assert e.value.status_code == 429


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_both_sdks(p_oai, p_ant, upstream, nonce, preset):
    model = PRESETS[preset]
    recs = _exercise(p_oai, p_ant, upstream, f"{preset}:{model}", nonce)
    for rec in recs:
        assert rec["path"] == "/v1/chat/completions"
        assert rec["body"]["model"] == model
        assert rec["auth"] == "matched"
