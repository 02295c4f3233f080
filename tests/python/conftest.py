"""Fixtures: one fake upstream and one gateway per test session, SDK clients pointed at the
gateway with SDK retries off (so every status the gateway answers is what the test sees)."""

from __future__ import annotations

import uuid

import anthropic
import openai
import pytest

from harness import FakeUpstream, Gateway

MODELS = ["gpt-5", "haiku"]  # OpenAI upstream, Anthropic upstream
SDK_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    fake = FakeUpstream(tmp_path_factory.mktemp("fake"))
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, upstream):
    gw = Gateway(tmp_path_factory.mktemp("gw") / "data", upstream)
    yield gw
    gw.stop()


@pytest.fixture
def oai(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.token, max_retries=0, timeout=SDK_TIMEOUT_S)


@pytest.fixture
def ant(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0, timeout=SDK_TIMEOUT_S)


@pytest.fixture
def nonce() -> str:
    """A marker unique to the test, so recorded upstream requests can be told apart."""
    return f"n{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=MODELS)
def model(request) -> str:
    return request.param
