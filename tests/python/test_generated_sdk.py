"""The admin API driven through a Python client GENERATED from the committed
openapi/openapi.json by openapi-python-client (pinned in requirements.txt): issue, list, get,
rotate and revoke a key, read usage and the audit trail. The generated code is written to a
temporary directory, never committed."""

from __future__ import annotations

import importlib
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from harness import Gateway

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "openapi.json"
PACKAGE = "metis_admin_client"


@pytest.fixture(scope="module")
def client_module(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    generator = shutil.which("openapi-python-client") or str(Path(sys.executable).parent / "openapi-python-client")
    proc = subprocess.run(
        [generator, "generate", "--path", str(SPEC), "--output-path", str(out / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=120,
    )
    assert (out / PACKAGE / "client.py").exists(), proc.stdout + proc.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def admin_gateway(tmp_path_factory, upstream):
    token = secrets.token_hex(24)
    token_file = tmp_path_factory.mktemp("admin") / "admin-token"
    token_file.write_text(token + "\n")
    gw = Gateway(tmp_path_factory.mktemp("gw-admin") / "data", upstream, ["--admin-token-file", str(token_file)])
    gw.admin_token = token
    yield gw
    gw.stop()


def test_generated_client_manages_keys_and_reads_usage(client_module, admin_gateway):
    m = client_module
    from importlib import import_module

    api = lambda name: import_module(f"{PACKAGE}.api.admin.{name}")  # noqa: E731
    models = import_module(f"{PACKAGE}.models")
    client = m.AuthenticatedClient(base_url=admin_gateway.url, token=admin_gateway.admin_token)

    # Issue.
    created = api("create_key").sync(
        client=client,
        body=models.CreateKeyBody(name="generated", workspace="/srv/generated", user="alice", team="eng", daily_cap_usd="5"),
    )
    assert created.key_id.startswith("gk_") and created.token.startswith("gw_")
    assert created.key.user_id == "alice" and created.key.daily_cap_usd == "5"

    # The new key serves traffic (the gateway reloads the keystore within a second or two).
    oai = openai.OpenAI(base_url=f"{admin_gateway.url}/v1", api_key=created.token, max_retries=0, timeout=30)
    deadline = time.time() + 5
    while True:
        try:
            r = oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "generated sdk"}])
            break
        except openai.AuthenticationError:
            assert time.time() < deadline, "the API-issued key never authenticated"
            time.sleep(0.2)
    assert r.choices[0].message.content

    # List and get.
    listed = api("list_keys").sync(client=client)
    assert created.key_id in [k.key_id for k in listed.keys]
    got = api("get_key").sync(key_id=created.key_id, client=client)
    assert got.effective_status == "active"

    # Rotate, then revoke the successor.
    rotated = api("rotate_key").sync(key_id=created.key_id, client=client, body=models.RotateBody(grace_period="1h"))
    assert rotated.old_key_id == created.key_id and rotated.new_token.startswith("gw_")
    assert rotated.key.user_id == "alice", "the successor inherits the identity tags"
    revoked = api("revoke_key").sync(key_id=rotated.new_key_id, client=client)
    assert revoked.key_id == rotated.new_key_id and revoked.already_revoked is False
    again = api("revoke_key").sync(key_id=rotated.new_key_id, client=client)
    assert again.already_revoked is True and again.revoked_at == revoked.revoked_at

    # Usage by user includes the call made above.
    usage = api("get_usage").sync(client=client, group_by="user")
    rows = {row.group: row for row in usage.rows}
    assert "alice" in rows and rows["alice"].calls >= 1

    # The audit trail shows the lifecycle.
    # The document lists the audit types, so the generated client takes them as an enum.
    kinds_wanted = [models.ExportAuditTypeItem(t) for t in ("gateway.key_issued", "gateway.key_rotated", "gateway.key_revoked")]
    audit = api("export_audit").sync(client=client, type_=kinds_wanted)
    kinds = [e.type_ for e in audit.events]
    assert "gateway.key_rotated" in kinds and "gateway.key_revoked" in kinds


def test_generated_client_sees_typed_errors(client_module, admin_gateway):
    from importlib import import_module

    m = client_module
    api = lambda name: import_module(f"{PACKAGE}.api.admin.{name}")  # noqa: E731
    wrong = m.AuthenticatedClient(base_url=admin_gateway.url, token="not-the-admin-token")
    resp = api("list_keys").sync_detailed(client=wrong)
    assert resp.status_code == 401
    good = m.AuthenticatedClient(base_url=admin_gateway.url, token=admin_gateway.admin_token)
    missing = api("get_key").sync_detailed(key_id="gk_does_not_exist", client=good)
    assert missing.status_code == 404
    assert "not found" in missing.parsed.error.message


def test_generated_client_reads_the_console_endpoints(client_module, admin_gateway):
    """The console's reads through the generated client: overview, usage series, the audit
    chain check and download, sessions and a session tree."""
    from importlib import import_module

    m = client_module
    api = lambda name: import_module(f"{PACKAGE}.api.admin.{name}")  # noqa: E731
    client = m.AuthenticatedClient(base_url=admin_gateway.url, token=admin_gateway.admin_token)
    created = api("create_key").sync(
        client=client, body=import_module(f"{PACKAGE}.models").CreateKeyBody(name="console", workspace="/srv/console")
    )
    oai = openai.OpenAI(base_url=f"{admin_gateway.url}/v1", api_key=created.token, max_retries=0, timeout=30)
    deadline = time.time() + 5
    while True:
        try:
            oai.chat.completions.create(
                model="gpt-5",
                messages=[{"role": "user", "content": "console"}],
                extra_headers={"x-metis-session-id": "py-console-lead"},
            )
            break
        except openai.AuthenticationError:
            assert time.time() < deadline, "the API-issued key never authenticated"
            time.sleep(0.2)

    overview = api("get_overview").sync(client=client)
    assert overview.replica_scope == "this_process"
    assert overview.windows.hour.requests >= 1
    assert overview.providers and all(p.status in ("healthy", "degraded", "down", "idle") for p in overview.providers)

    series = api("get_usage_series").sync(client=client, bucket="hour", group_by="key")
    mine = [s for s in series.series if s.group == created.key_id]
    assert mine and len(mine[0].points) == 25, "24 hours widened to whole buckets"
    assert sum(p.calls for p in mine[0].points) == 1

    chain = api("verify_audit_chain").sync(client=client)
    assert chain.ok is True and chain.events_checked >= 1

    download = api("download_audit").sync_detailed(client=client, format_="csv")
    assert download.status_code == 200
    assert download.headers["content-disposition"].startswith("attachment; filename=")
    assert download.content.decode().startswith("id,timestamp,session_id,")

    sessions = api("list_sessions").sync(client=client, limit=10)
    assert "py-console-lead" in [s.id for s in sessions.sessions]
    tree = api("get_session_tree").sync(session_id="py-console-lead", client=client)
    assert tree.id == "py-console-lead" and tree.turn_count == 1 and tree.children == []
