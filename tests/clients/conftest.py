"""Fixtures: one fake upstream, one gateway (with the mock provider beside the fake's two
shapes), a logging proxy in front of the gateway and a stray-traffic catcher, per test session.
Each test starts with empty records so its assertions see only its own traffic (tests run one
at a time)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from clients import TIMINGS, LoggingProxy, StrayCatcher  # noqa: E402
from harness import OPENAI_KEY, FakeUpstream, Gateway  # noqa: E402


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    fake = FakeUpstream(tmp_path_factory.mktemp("fake"))
    yield fake
    fake.stop()


# The fake's OpenAI side serves the Responses API, so the `openai` provider forwards Responses
# clients to it natively; the same fake behind the `openrouter` provider (which has no
# Responses API) is the chat-completions-only upstream that Responses requests are translated
# to. Model routes: `gpt-5` native, `openrouter:gpt-5` translated to chat, `haiku` translated
# to Anthropic, `mock` in process.
GATEWAY_CONFIG = """\
[providers.openai]
responses_api = true
"""


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, upstream):
    root = tmp_path_factory.mktemp("gw")
    config = root / "metis.toml"
    config.write_text(GATEWAY_CONFIG)
    gw = Gateway(
        root / "data",
        upstream,
        [
            "--config", str(config),
            "--enable-mock-provider",
            "--openrouter-base-url", f"{upstream.base_url}/v1",
            "--openrouter-api-key", OPENAI_KEY,
        ],
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def proxy(gateway):
    p = LoggingProxy(gateway.port)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def stray():
    s = StrayCatcher()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _fresh_records(request):
    """Empty the fake's, the proxy's and the catcher's records before each test that uses them."""
    for name in ("upstream", "proxy", "stray"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


@pytest.fixture
def nonce() -> str:
    """A marker unique to the test, so recorded upstream requests can be told apart."""
    return f"n{uuid.uuid4().hex[:12]}"


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("client timings (process start to first answer)")
        for line in TIMINGS:
            terminalreporter.write_line(line)
