"""Token limits (tpm) seen through the official SDKs: while a stream holds most of a key's
tokens-per-minute, the next call gets a 429 the SDK raises as its `RateLimitError`, with
`Retry-After` and the error body naming the scope (`key_tpm`) and the limit. SDK retries are
off (`max_retries=0`) so the test sees the gateway's answer, not a retry of it."""

from __future__ import annotations

import anthropic
import openai
import pytest

from harness import Gateway, issue_key

TPM = 600  # 10 tokens per second
SDK_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def tpm_gateway(tmp_path_factory, upstream):
    data_dir = tmp_path_factory.mktemp("tpm") / "data"
    data_dir.mkdir(parents=True)
    tokens = {}
    for sdk in ("openai", "anthropic"):
        _key_id, token = issue_key(data_dir, f"tpm-{sdk}", "--tpm", str(TPM))
        tokens[sdk] = token
    gw = Gateway(data_dir, upstream)
    yield gw, tokens
    gw.stop()


def check_refusal(status: int, headers, body: dict) -> None:
    assert status == 429
    err = body["error"]
    assert err["type"] == "rate_limit_error"
    assert err["code"] == "rate_limit_exceeded"
    assert err["scope"] == "key_tpm"
    assert err["tpm"] == TPM
    retry_after = int(headers["retry-after"])
    assert retry_after == err["retry_after_seconds"]
    # ~550 of 600 tokens are held by the stream; 300 more need ~25 s of refill.
    assert 15 <= retry_after <= 31, retry_after


def test_openai_sdk_sees_the_tpm_429(tpm_gateway):
    gw, tokens = tpm_gateway
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=tokens["openai"], max_retries=0, timeout=SDK_TIMEOUT_S)
    stream = client.chat.completions.create(
        model="gpt-5", max_completion_tokens=550, stream=True,
        messages=[{"role": "user", "content": "[long] hold the bucket"}],
    )
    next(iter(stream))
    try:
        with pytest.raises(openai.RateLimitError) as ei:
            client.chat.completions.create(
                model="gpt-5", max_completion_tokens=300,
                messages=[{"role": "user", "content": "one more"}],
            )
        check_refusal(ei.value.status_code, ei.value.response.headers, {"error": ei.value.body})
    finally:
        stream.close()


def test_anthropic_sdk_sees_the_tpm_429(tpm_gateway):
    gw, tokens = tpm_gateway
    client = anthropic.Anthropic(base_url=gw.url, api_key=tokens["anthropic"], max_retries=0, timeout=SDK_TIMEOUT_S)
    with client.messages.stream(
        model="haiku", max_tokens=550,
        messages=[{"role": "user", "content": "[long] hold the bucket"}],
    ) as stream:
        next(iter(stream))
        with pytest.raises(anthropic.RateLimitError) as ei:
            client.messages.create(
                model="haiku", max_tokens=300,
                messages=[{"role": "user", "content": "one more"}],
            )
        check_refusal(ei.value.status_code, ei.value.response.headers, ei.value.body)
