"""Secrets and accountability: api keys kept hashed and shown once, key rotation taking
effect on a running server, the audit log of who created, re-keyed and erased what, and
GDPR erasure over HTTP leaving nothing of the person in queries or exports."""

from __future__ import annotations

import hashlib
import json

import requests

from harness import create_project, export_events, run_cli


def test_api_keys_are_shown_once_and_stored_hashed(throughline_bin, data_dir):
    keys = create_project(throughline_bin, data_dir, "shop")
    catalog = (data_dir / "catalog.json").read_text()
    assert keys["api_key"] not in catalog
    assert keys["write_key"] in catalog, "write keys are public and kept as they are"
    listed = run_cli(throughline_bin, "projects", "list", "--data", str(data_dir)).stdout
    assert keys["api_key"] not in listed and "api_key" not in listed


def test_rotation_takes_effect_on_a_running_server_and_everything_is_audited(throughline_bin, data_dir, make_server):
    keys = create_project(throughline_bin, data_dir, "shop")
    server = make_server(data_dir).start()
    msgs = [{"type": "track", "userId": "ann", "event": "Order Completed", "messageId": "m1"},
            {"type": "identify", "userId": "ann", "anonymousId": "dev-1", "messageId": "m2",
             "traits": {"email": "ann@example.com"}},
            {"type": "page", "anonymousId": "dev-1", "messageId": "m3", "name": "Home"},
            {"type": "track", "userId": "bob", "event": "Order Completed", "messageId": "m4"}]
    r = server.post("/v1/batch", {"batch": msgs}, keys["write_key"])
    assert r.status_code == 200, r.text
    person = f"{server.url}/api/v1/projects/shop/persons"
    old = {"Authorization": f"Bearer {keys['api_key']}"}
    assert requests.get(f"{person}/ann", headers=old).status_code == 200

    rotated = json.loads(run_cli(throughline_bin, "projects", "rotate-key", "shop", "--data", str(data_dir)).stdout)
    new = {"Authorization": f"Bearer {rotated['api_key']}"}
    assert requests.get(f"{person}/ann", headers=old).status_code == 401, "the old key stops working at once"
    assert requests.get(f"{person}/ann", headers=new).status_code == 200

    # Erasure over HTTP: by any of the person's ids.
    r = requests.delete(f"{person}/ann@example.com", headers=new)
    assert r.status_code == 200, r.text
    assert r.json()["erased_events"] == 3
    assert requests.get(f"{person}/ann", headers=new).status_code == 404
    assert requests.delete(f"{person}/ann", headers=new).status_code == 404
    assert requests.delete(f"{person}/bob").status_code == 401
    funnel = requests.post(f"{server.url}/api/v1/projects/shop/query/funnel", headers=new,
                           json={"steps": ["Order Completed"], "window": "1d"}).json()
    assert funnel["steps"][0]["persons"] == 1
    # A retry of an erased message is acknowledged and not stored again.
    r = server.post("/v1/batch", {"batch": msgs[:1]}, rotated["write_key"])
    assert r.status_code == 200
    server.stop()

    events = export_events(throughline_bin, data_dir, "shop")
    assert [e["messageId"] for e in events] == ["m4"]
    raw = b"".join(p.read_bytes() for p in (data_dir / "projects" / "shop").rglob("*") if p.is_file())
    for needle in [b"ann@example.com", b"dev-1"]:
        assert needle not in raw, f"{needle} is still somewhere in the project's files"

    log = json.loads(run_cli(throughline_bin, "audit-log", "--data", str(data_dir)).stdout)
    actions = [(e["action"], e["project"]) for e in log]
    assert actions == [("project.create", "shop"), ("project.rotate_key", "shop"), ("person.delete", "shop")]
    assert log[0]["actor"].startswith("cli user=")
    assert log[2]["actor"].startswith("http 127.0.0.1:")
    # The erased id only as its SHA-256: the audit log (and backups of it) keep nothing of the person.
    assert hashlib.sha256(b"ann@example.com").hexdigest() in log[2]["detail"]
    assert "ann@example.com" not in json.dumps(log)
    assert all(keys["api_key"] not in json.dumps(e) and rotated["api_key"] not in json.dumps(e) for e in log)


def test_cli_erasure_is_audited(throughline_bin, data_dir, tmp_path):
    create_project(throughline_bin, data_dir, "shop")
    f = tmp_path / "events.jsonl"
    f.write_text(json.dumps({"type": "track", "userId": "cy", "event": "Signed Up", "messageId": "x1"}) + "\n")
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "shop", str(f))
    run_cli(throughline_bin, "delete-person", "--data", str(data_dir), "--project", "shop", "--id", "cy")
    table = run_cli(throughline_bin, "audit-log", "--data", str(data_dir), "--project", "shop", "--format",
                    "table").stdout
    assert "person.delete" in table and hashlib.sha256(b"cy").hexdigest() in table
    r = run_cli(throughline_bin, "delete-person", "--data", str(data_dir), "--project", "shop", "--id", "cy",
                check=False)
    assert r.returncode != 0 and "no person" in r.stderr
