"""Fixtures of the console's browser tests: one fake upstream, one test OpenID Connect issuer
(the `fake-oidc` binary of the test crate), one gateway with an admin token and single sign-on
(SQLite store, 127.0.0.1) and one headless Chromium (Debian's, never a downloaded one) per test
session. The process harness is the SDK tests' (tests/python/harness.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from harness import ROOT, FakeUpstream, Gateway, _stop, _wait_for_line, clean_env  # noqa: E402

ADMIN_TOKEN = "console-browser-test-admin-token-5c1d"
# Known, so a test can mint a session of another role.
SESSION_KEY = "console-browser-test-session-key-0123456789abcdef"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}
# Generous for a loaded 2-core CI machine; nothing is timed, this only bounds a hang.
ACTION_TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    fake = FakeUpstream(tmp_path_factory.mktemp("fake"))
    yield fake
    fake.stop()


FAKE_OIDC_BIN = Path(os.environ.get("FAKE_OIDC_BIN", ROOT / "target" / "debug" / "fake-oidc"))
OIDC_RE = re.compile(r"fake-oidc listening on (http://127\.0\.0\.1:\d+)")
# The fake issuer's defaults (tests/src/oidc_issuer.rs) and the role map of its preset users:
# oscar is an operator, vera a viewer.
OIDC_CLIENT_ID = "metis-console"
OIDC_AUDIENCE = "metis-admin"
OIDC_ROLE_MAP = "admin=metis-admins,operator=metis-ops,viewer=metis-read"


class FakeOidc:
    """The `fake-oidc` binary: discovery, JWKS, an auto-approving /authorize (the user is
    chosen by `login_hint`) and a /token endpoint that checks the PKCE verifier."""

    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "fake-oidc.out"
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [str(FAKE_OIDC_BIN)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
        )
        self.issuer = _wait_for_line(self.proc, self.log, OIDC_RE, "fake-oidc").group(1)

    def stop(self) -> None:
        _stop(self.proc)
        self._out.close()


@pytest.fixture(scope="session")
def oidc(tmp_path_factory):
    issuer = FakeOidc(tmp_path_factory.mktemp("oidc"))
    yield issuer
    issuer.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, upstream, oidc):
    gw = Gateway(
        tmp_path_factory.mktemp("gw") / "data",
        upstream,
        ["--admin-token", ADMIN_TOKEN, "--console-session-key", SESSION_KEY,
         "--oidc-issuer", oidc.issuer, "--oidc-client-id", OIDC_CLIENT_ID,
         "--oidc-audience", OIDC_AUDIENCE, "--oidc-role-map", OIDC_ROLE_MAP],
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def context(browser):
    """One browser profile for the whole run, so the login carries across the tests."""
    ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    ctx.set_default_timeout(ACTION_TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture(scope="session")
def page(context):
    pg = context.new_page()
    errors: list[str] = []
    # Any CSP violation or script error would show up here; the tests assert there is none.
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.console_errors = errors
    yield pg
    pg.close()
