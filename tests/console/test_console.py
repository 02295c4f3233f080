"""The operator console in a real browser (Debian's Chromium driven by Playwright) against the
real gateway binary: log in with the admin token, issue a key and see its token exactly once,
send requests with it and watch the spend chart and the key's cap bar move, open a session
tree, revoke the key and find the audit row and the chain status, export the audit, log out;
then single sign-on through the test issuer: an operator issues and revokes a key (the audit
row names them), a viewer gets no key actions.

The tests run in file order and share one gateway and one browser profile (a login carries
across them). Screenshots of each page go to a temporary directory, so a test run never
changes tracked files; `CONSOLE_SCREENSHOTS=docs/console scripts/console-tests.sh` refreshes
the committed ones (referenced by the README)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import openai
import pytest
from playwright.sync_api import Page, expect

from conftest import ADMIN_TOKEN, SESSION_KEY, VIEWPORT

REPO = Path(__file__).resolve().parents[2]


def _shots_dir() -> Path:
    """CONSOLE_SCREENSHOTS=DIR (relative to the repository root) writes the screenshots there;
    unset, they go to a fresh temporary directory (a CI run must not modify tracked files)."""
    wanted = os.environ.get("CONSOLE_SCREENSHOTS")
    if wanted:
        return REPO / wanted
    return Path(tempfile.mkdtemp(prefix="metis-console-shots-"))


SHOTS = _shots_dir()
MODEL = "gpt-5"  # served by the fake upstream and priced, so calls cost money
# One test call costs about $0.00009 on the fake upstream: four of them pass the 80 % mark of
# this cap without reaching it.
DAILY_CAP = "0.00042"
# State the ordered tests hand to each other.
KEY: dict[str, str] = {}


def ui(gateway, fragment: str = "") -> str:
    return f"{gateway.url}/ui/{fragment}"


def ready(page: Page) -> None:
    """Wait until the current page rendered (its data arrived) without an error; on an error,
    fail with the console's banner (the API's message)."""
    main = page.locator("main[data-ready]")
    expect(main).to_have_count(1)
    if main.get_attribute("data-ready") != "true":
        pytest.fail(f"the {page.url} page failed: {page.locator('#banner').inner_text()}")


def shot(page: Page, name: str, **kw) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), **kw)


def no_script_or_csp_errors(page: Page) -> None:
    bad = [e for e in page.console_errors if "Content Security Policy" in e or "Refused to" in e or "Error" in e and "status of" not in e]
    assert not bad, bad


def chat(gateway, token: str, text: str, headers: dict[str, str] | None = None) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0, timeout=30.0,
                           default_headers=headers or {})
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    assert r.choices[0].message.content


def test_console_pages_carry_the_strict_csp(gateway):
    with urllib.request.urlopen(ui(gateway, "login"), timeout=30) as r:
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"


def test_login_refuses_a_wrong_token_then_accepts_the_right_one(gateway, page):
    page.goto(ui(gateway))
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.fill("#token", "not-the-admin-token")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("wrong admin token")
    assert "not-the-admin-token" not in page.content()
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/ui/#/overview$"))
    expect(page.locator("#identity")).to_contain_text("admin")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["metis_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in page.content()


def test_overview_renders_before_any_traffic(gateway, page):
    page.goto(ui(gateway, "#/overview"))
    ready(page)
    expect(page.locator("[data-window=hour] [data-metric=requests] .value")).to_have_text("0")
    expect(page.locator("#providers tbody tr").first).to_be_visible()
    no_script_or_csp_errors(page)


def test_issuing_a_key_shows_its_token_once(gateway, page):
    page.goto(ui(gateway, "#/keys"))
    ready(page)
    name = f"console-{uuid.uuid4().hex[:6]}"
    page.fill("#k-name", name)
    page.fill("#k-workspace", "/srv/console-test")
    # Small caps, so a few test calls fill a visible part of the bars.
    page.fill("#k-daily_cap_usd", DAILY_CAP)
    page.fill("#k-monthly_cap_usd", "0.002")
    page.fill("#k-team", "payments")
    page.fill("#k-user", "alice")
    page.click("#issue-submit")
    token_el = page.locator("#one-time-token")
    expect(token_el).to_be_visible()
    token = token_el.inner_text().strip()
    assert token.startswith("gw_"), token
    row = page.locator("#keys tbody tr", has_text=name)
    expect(row).to_have_count(1)
    key_id = row.get_attribute("data-row")
    KEY.update(name=name, token=token, key_id=key_id)
    expect(page.locator("#copy-token")).to_be_visible()
    shot(page, "keys.png", mask=[token_el], mask_color="#c9ced6")
    # Copy works (clipboard permission granted to this origin only for the check).
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.url)
    page.click("#copy-token")
    expect(page.locator("#token-panel [role=status]")).to_contain_text(re.compile("Copied|Selected"))
    # Dismissed: gone from the DOM, and nothing else on the page holds it.
    page.click("#dismiss-token")
    expect(page.locator("#token-panel")).to_have_count(0)
    assert token not in page.content()
    # Leaving and coming back shows the key, never the token.
    page.goto(ui(gateway, "#/overview"))
    ready(page)
    page.goto(ui(gateway, "#/keys"))
    ready(page)
    expect(page.locator(f"#keys tr[data-row='{key_id}']")).to_be_visible()
    assert token not in page.content()


def test_the_token_vanishes_when_the_operator_navigates_away(gateway, page):
    page.goto(ui(gateway, "#/keys"))
    ready(page)
    page.fill("#k-name", "short-lived")
    page.fill("#k-workspace", "/srv/short")
    page.click("#issue-submit")
    token = page.locator("#one-time-token").inner_text().strip()
    page.click("nav a[data-page=spend]")
    ready(page)
    assert token not in page.content()
    expect(page.locator("#one-time-token")).to_have_count(0)


def cap_ratio(page: Page, key_id: str, cap: str) -> float:
    bar = page.locator(f"svg.capbar[data-key-id='{key_id}'][data-cap='{cap}']")
    expect(bar).to_be_visible()
    return float(bar.get_attribute("data-ratio"))


def chart_total(page: Page, group_label: str) -> float:
    values = page.locator("#spend-chart svg.chart [data-value]").evaluate_all(
        "(els, g) => els.filter(e => e.dataset.group.includes(g)).map(e => Number(e.dataset.value))",
        group_label,
    )
    return sum(values)


def test_spend_chart_and_cap_bar_move_with_traffic(gateway, page):
    key_id = KEY["key_id"]
    view = "#/spend?group_by=key&bucket=hour&range=24h&metric=cost_usd&chart=bar"
    page.goto(ui(gateway, view))
    ready(page)
    before_ratio = cap_ratio(page, key_id, "daily cap")
    before_chart = chart_total(page, key_id)
    assert before_ratio == 0 and before_chart == 0
    for i in range(4):
        chat(gateway, KEY["token"], f"console spend {i}")
    chat(gateway, gateway.token, "another key's spend")
    # Spend is recorded when the answer completes; reload until it shows (bounded).
    for _ in range(40):
        page.goto(ui(gateway, view))
        page.reload()
        ready(page)
        if cap_ratio(page, key_id, "daily cap") > 0 and chart_total(page, key_id) > 0:
            break
        page.wait_for_timeout(250)
    after_ratio = cap_ratio(page, key_id, "daily cap")
    assert after_ratio > before_ratio
    # Past the 80 % alert mark: the bar says so by its colour class.
    bar = page.locator(f"svg.capbar[data-key-id='{key_id}'][data-cap='daily cap'] rect.fill")
    if after_ratio >= 0.8:
        expect(bar).to_have_class(re.compile(r"\b(warn|bad)\b"))
    assert chart_total(page, key_id) > before_chart
    assert cap_ratio(page, key_id, "monthly cap") > 0
    # The totals table lists the key, and a team view is one click away (bookmarkable).
    expect(page.locator("#usage-totals tbody tr", has_text=key_id)).to_have_count(1)
    shot(page, "spend.png")
    page.select_option("#f-group_by", "team")
    expect(page).to_have_url(re.compile(r"group_by=team"))
    ready(page)
    expect(page.locator("#usage-totals tbody tr", has_text="payments")).to_have_count(1)
    # Sorting: clicking a header orders the rows and marks the column.
    page.click("#usage-totals th[data-key=calls]")
    expect(page.locator("#usage-totals th[data-key=calls]")).to_have_attribute("aria-sort", re.compile("ascending|descending"))
    no_script_or_csp_errors(page)


def test_a_session_tree_shows_the_parent_and_its_worker(gateway, page):
    tag = uuid.uuid4().hex[:6]
    parent, worker, second, nested = (f"console-{n}-{tag}" for n in ("parent", "worker", "reviewer", "helper"))

    def turn(session: str, text: str, parent_id: str | None = None, tool_use: str | None = None) -> None:
        headers = {"x-metis-session-id": session}
        if parent_id:
            headers.update({"x-metis-parent-session-id": parent_id, "x-metis-parent-tool-use-id": tool_use,
                            "x-metis-worker": "true"})
        # The default key: the console key's small caps are for the spend test.
        chat(gateway, gateway.token, text, headers)

    turn(parent, "plan the work")
    turn(parent, "plan more")
    turn(worker, "do the work", parent, "toolu_console_1")
    turn(second, "review the work", parent, "toolu_console_2")
    turn(nested, "look something up", worker, "toolu_console_3")
    for _ in range(40):
        page.goto(ui(gateway, "#/sessions"))
        page.reload()
        ready(page)
        if page.locator("#sessions tbody tr", has_text=nested).count():
            break
        page.wait_for_timeout(250)
    page.click(f"#sessions a:text-is('{parent}')")
    ready(page)
    expect(page).to_have_url(re.compile(f"#/sessions/{parent}$"))
    root = page.locator(f"#session-tree > li[data-session='{parent}']")
    expect(root).to_contain_text("turns 2")
    child = root.locator(f"ul > li[data-session='{worker}']")
    expect(child).to_contain_text("turns 1")
    expect(child).to_contain_text("worker")
    expect(root.locator(f"ul > li[data-session='{second}']")).to_be_visible()
    expect(child.locator(f"ul > li[data-session='{nested}']")).to_contain_text("turns 1")
    shot(page, "sessions.png")


def test_revoking_the_key_shows_in_the_audit_with_the_chain_status(gateway, page):
    key_id = KEY["key_id"]
    page.goto(ui(gateway, "#/keys"))
    ready(page)
    page.once("dialog", lambda d: d.accept())
    page.click(f"#keys tr[data-row='{key_id}'] button[data-action=revoke]")
    expect(page.locator("#key-notices")).to_contain_text(f"Key {key_id} revoked")
    row = page.locator(f"#keys tr[data-row='{key_id}']")
    expect(row).to_contain_text("revoked")
    expect(row.locator("button[data-action=revoke]")).to_have_count(0)
    # The gateway refuses the key (it learns of the revoke within seconds).
    for _ in range(40):
        try:
            chat(gateway, KEY["token"], "after revoke")
        except openai.AuthenticationError:
            break
        page.wait_for_timeout(250)
    else:
        pytest.fail("the revoked key kept working")
    page.goto(ui(gateway, "#/audit?type=gateway.key_revoked"))
    ready(page)
    revoked_row = page.locator("#audit-events tbody tr", has_text=key_id)
    expect(revoked_row).to_have_count(1)
    # The revoke made through the console records who made it (the token login's identity).
    expect(revoked_row).to_contain_text("static-token")
    expect(page.locator("#chain-status")).to_have_attribute("data-ok", "true")
    expect(page.locator("#chain-status")).to_contain_text("intact")
    # Export: the JSONL download holds the revoke event.
    with page.expect_download() as dl:
        page.click("#export-jsonl")
    lines = Path(dl.value.path()).read_text().splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    assert any(e["type"] == "gateway.key_revoked" and key_id in json.dumps(e) for e in events), events
    with page.expect_download() as dl:
        page.click("#export-csv")
    assert key_id in Path(dl.value.path()).read_text()
    page.goto(ui(gateway, "#/audit"))
    ready(page)
    expect(page.locator("#audit-events tbody tr", has_text="gateway.key_issued").first).to_be_visible()
    shot(page, "audit.png")
    no_script_or_csp_errors(page)


def test_rotating_a_key_shows_the_successor_token_once(gateway, page):
    page.goto(ui(gateway, "#/keys"))
    ready(page)
    row = page.locator("#keys tbody tr", has_text="short-lived")
    row.locator("button[data-action=rotate]").click()
    page.fill("#rotate-grace", "1h")
    page.click("#rotate-submit")
    token = page.locator("#one-time-token")
    expect(token).to_be_visible()
    expect(page.locator("#token-panel")).to_contain_text("rotated")
    assert token.inner_text().startswith("gw_")
    page.click("#dismiss-token")
    expect(page.locator("#token-panel")).to_have_count(0)


def test_api_errors_show_in_a_banner(gateway, page):
    page.goto(ui(gateway, "#/keys"))
    ready(page)
    page.fill("#k-name", "bad-cap")
    page.fill("#k-workspace", "/srv/bad")
    page.fill("#k-daily_cap_usd", "-1")
    page.click("#issue-submit")
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("daily_cap_usd")


def test_the_admin_api_refuses_the_cookie_without_the_csrf_header(gateway, page):
    cookie = next(c for c in page.context.cookies() if c["name"] == "metis_console")
    req = urllib.request.Request(f"{gateway.url}/admin/v1/keys",
                                 headers={"Cookie": f"metis_console={cookie['value']}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code in (401, 403)


def test_overview_counts_the_traffic_and_provider_health(gateway, page):
    page.goto(ui(gateway, "#/overview"))
    ready(page)
    requests = page.locator("[data-window=hour] [data-metric=requests] .value").inner_text()
    assert int(requests.replace(",", "")) >= 10, requests
    assert page.locator("[data-window=day] [data-metric=cost] .value").inner_text() != "$0"
    expect(page.locator("#providers tbody tr", has_text="openai")).to_contain_text("healthy")
    shot(page, "overview.png")


def test_logout_ends_the_session(gateway, page):
    page.goto(ui(gateway, "#/overview"))
    ready(page)
    old = next(c for c in page.context.cookies() if c["name"] == "metis_console")
    page.click("#logout")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.goto(ui(gateway))
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    # The old cookie, replayed by hand, no longer opens the session.
    req = urllib.request.Request(f"{gateway.url}/ui/api/session",
                                 headers={"Cookie": f"metis_console={old['value']}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 401


def viewer_cookie() -> str:
    """A console session of a `viewer`, signed like the gateway signs them (hex of the JSON
    claims, then hex of HMAC-SHA256 over "cookie:" + that)."""
    claims = {"sid": uuid.uuid4().hex, "sub": "viewer-1", "email": "viewer@example.com",
              "role": "viewer", "method": "oidc", "exp": int(time.time()) + 3600}
    payload = json.dumps(claims).encode().hex()
    sig = hmac.new(SESSION_KEY.encode(), b"cookie:" + payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{sig}"


def test_a_viewer_sees_no_key_actions(gateway, browser):
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        ctx.add_cookies([{"name": "metis_console", "value": viewer_cookie(), "url": gateway.url}])
        pg = ctx.new_page()
        pg.goto(ui(gateway, "#/keys"))
        expect(pg.locator("#identity")).to_contain_text("viewer@example.com (viewer-1) · viewer")
        expect(pg.locator("#keys tbody tr").first).to_be_visible()
        expect(pg.locator("#issue-form")).to_have_count(0)
        expect(pg.locator("button[data-action]")).to_have_count(0)
        expect(pg.locator("main")).to_contain_text("need operator")
    finally:
        ctx.close()


def sso_browser(gateway, browser):
    """A fresh browser profile on the console opened as `localhost` (the test issuer lives at
    `127.0.0.1`: another site, as a real identity provider is). Returns (context, page, the
    console's base URL)."""
    base = gateway.url.replace("127.0.0.1", "localhost")
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(20_000)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.console_errors = errors
    pg.goto(f"{base}/ui/")
    expect(pg).to_have_url(f"{base}/ui/login")
    button = pg.locator("#oidc-login")
    expect(button).to_be_visible()
    expect(button).to_have_text("Sign in with SSO")
    return ctx, pg, base


def signed_in(ctx, pg, base) -> None:
    """The callback's same-origin page moved on to the console with the session cookie."""
    expect(pg).to_have_url(f"{base}/ui/#/overview")
    ready(pg)
    cookies = {c["name"]: c for c in ctx.cookies()}
    assert cookies["metis_console"]["httpOnly"] and cookies["metis_console"]["sameSite"] == "Strict"
    assert "metis_console_oidc" not in cookies, "the pending login is used up"


def test_sso_operator_signs_in_through_the_identity_providers_page(gateway, oidc, browser):
    """A real identity provider shows its own page (the user types a password, clicks
    approve), so the redirect back to the callback is started by a page of another site. The
    test issuer approves at once, so that page is played here: the login is started (its
    cookie lands in this browser profile), the issuer's answer is read, and a page of the
    issuer's origin offers the callback link the user clicks. A callback answering a plain
    redirect to /ui/ would lose the SameSite=Strict session cookie on this path (Chromium
    treats the whole chain as cross-site) and land on the login page again."""
    ctx, pg, base = sso_browser(gateway, browser)
    shot(pg, "login.png")
    start = ctx.request.get(f"{base}/ui/oidc/login?login_hint=oscar", max_redirects=0)
    assert start.status == 302, start.text()
    approved = ctx.request.get(start.headers["location"], max_redirects=0)
    assert approved.status == 302, approved.text()
    callback = approved.headers["location"]
    assert callback.startswith(f"{base}/ui/oidc/callback?"), callback
    ctx.route(f"{oidc.issuer}/consent", lambda route: route.fulfill(
        status=200, content_type="text/html", body=f'<a id="approve" href="{callback}">Approve</a>'))
    pg.goto(f"{oidc.issuer}/consent")
    pg.click("#approve")
    signed_in(ctx, pg, base)
    SSO["ctx"], SSO["page"], SSO["base"] = ctx, pg, base


# The operator's signed-in browser, handed to the next test.
SSO: dict = {}


def test_sso_operator_issues_and_revokes_a_key_and_the_audit_names_them(gateway):
    ctx, pg, base = SSO["ctx"], SSO["page"], SSO["base"]
    try:
        expect(pg.locator("#identity")).to_contain_text("oscar@example.test (user-oscar) · operator")
        pg.goto(f"{base}/ui/#/keys")
        ready(pg)
        name = f"sso-{uuid.uuid4().hex[:6]}"
        pg.fill("#k-name", name)
        pg.fill("#k-workspace", "/srv/sso-test")
        pg.click("#issue-submit")
        token = pg.locator("#one-time-token").inner_text().strip()
        assert token.startswith("gw_"), token
        row = pg.locator("#keys tbody tr", has_text=name)
        expect(row).to_have_count(1)
        key_id = row.get_attribute("data-row")
        pg.click("#dismiss-token")
        pg.once("dialog", lambda d: d.accept())
        pg.click(f"#keys tr[data-row='{key_id}'] button[data-action=revoke]")
        expect(pg.locator("#key-notices")).to_contain_text(f"Key {key_id} revoked")
        pg.goto(f"{base}/ui/#/audit?type=gateway.key_revoked")
        ready(pg)
        revoked = pg.locator("#audit-events tbody tr", has_text=key_id)
        expect(revoked).to_have_count(1)
        expect(revoked).to_contain_text("oscar@example.test (user-oscar)")
        no_script_or_csp_errors(pg)
    finally:
        ctx.close()


def test_sso_viewer_gets_no_key_actions(gateway, browser):
    """The login as a user does it: click "Sign in with SSO" (the issuer approves at once, so
    the whole chain is redirects). The test issuer picks the user by `login_hint`, which the
    gateway passes on: the button's request gets it added (Playwright routes only the first
    request of a redirect chain)."""
    ctx, pg, base = sso_browser(gateway, browser)
    ctx.route(f"{base}/ui/oidc/login", lambda route: route.continue_(url=f"{route.request.url}?login_hint=vera"))
    pg.click("#oidc-login")
    signed_in(ctx, pg, base)
    try:
        expect(pg.locator("#identity")).to_contain_text("vera@example.test (user-vera) · viewer")
        pg.goto(f"{base}/ui/#/keys")
        ready(pg)
        expect(pg.locator("#keys tbody tr").first).to_be_visible()
        expect(pg.locator("#issue-form")).to_have_count(0)
        expect(pg.locator("button[data-action]")).to_have_count(0)
        no_script_or_csp_errors(pg)
    finally:
        ctx.close()

