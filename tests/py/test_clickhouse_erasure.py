"""GDPR erasure and the CLI on the ClickHouse backend, end to end against the two-shard
cluster, with the embedded store as the reference.

The demo's headphones project is copied: one copy stays embedded (the reference), the
other is migrated into ClickHouse and served with `--backend clickhouse`. Two persons with
several devices and an email get events only the live servers see (a new device, a
trait no one else has), so their payloads sit in the ClickHouse outbox too. One is erased
over HTTP, the other with `delete-person --backend clickhouse`, on both sides. Afterwards
no query answer, profile, export, table of either shard (read directly, `FINAL` too),
outbox log, identity checkpoint, store file or backup of the project holds any of their
ids, their email or that trait (the demo's persons are customers of both of its brands,
and the other project keeps them); every answer equals the reference's after its own
erasure (so everyone else's answers are what they were, minus the erased persons); the
audit log names each erasure by the id's SHA-256 only. The CLI's `query`, `profile` and
`export` with `--backend clickhouse` answer as the ClickHouse-backed server and as the
embedded CLI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import requests

from clickhouse_env import drop_database, new_database, wait_forwarded
from harness import Server, parse_jsonl, run_cli

PERSONS = 150
PROJECT = "headphones"
FUNNEL = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]

# (name, kind, HTTP body, CLI flags): the same question both ways.
QUERIES = [
    ("funnel", "funnel", {"steps": FUNNEL, "window": "7d"},
     [a for s in FUNNEL for a in ("--step", s)] + ["--window", "7d"]),
    ("funnel-persons", "funnel", {"steps": FUNNEL[:1], "window": "30d", "persons": {"step": 1, "limit": 1000}},
     ["--step", FUNNEL[0], "--window", "30d", "--persons-at", "1", "--persons-limit", "1000"]),
    ("trends", "trends", {"events": ["*"], "interval": "week"}, ["--event", "*", "--interval", "week"]),
    ("sessions", "sessions", {"by": "channel"}, ["--by", "channel"]),
    ("paths", "paths", {"of": "channels", "conversion": "Order Completed", "depth": 4},
     ["--of", "channels", "--conversion", "Order Completed", "--depth", "4"]),
    ("retention", "retention", {"start": "Product Viewed", "return": "Product Viewed", "period": "week", "periods": 4},
     ["--start", "Product Viewed", "--return", "Product Viewed", "--period", "week", "--periods", "4"]),
    ("assets", "assets", {"conversion": "Order Completed", "window": "7d"},
     ["--conversion", "Order Completed", "--window", "7d"]),
    ("attribution", "attribution", {"conversion": "Order Completed", "model": "all", "by": "channel"},
     ["--conversion", "Order Completed", "--model", "all", "--by", "channel"]),
    ("emotion", "emotion", {"by": "stage"}, ["--by", "stage"]),
    ("fatigue", "fatigue", {"conversion": "Order Completed"}, ["--conversion", "Order Completed"]),
    ("audit", "audit", {"conversion": "Order Completed"}, ["--conversion", "Order Completed"]),
]


def cli_json(bin_path, *args) -> dict:
    return json.loads(run_cli(bin_path, *args, timeout=300).stdout)


def http_answers(server_url: str, key: str, profiles: list[str]) -> dict[str, dict]:
    out = {}
    for name, kind, body, _ in QUERIES:
        r = requests.post(f"{server_url}/api/v1/projects/{PROJECT}/query/{kind}", json=body,
                          headers={"Authorization": f"Bearer {key}"}, timeout=300)
        assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:500]}"
        out[name] = r.json()
    for pid in profiles:
        r = requests.get(f"{server_url}/api/v1/projects/{PROJECT}/persons/{pid}",
                         headers={"Authorization": f"Bearer {key}"}, timeout=60)
        out[f"person {pid}"] = {"status": r.status_code, "body": r.json()}
    return out


def cli_answers(bin_path, data: Path, backend: list[str]) -> dict[str, dict]:
    return {
        name: cli_json(bin_path, "query", kind, "--data", str(data), "--project", PROJECT, *flags, *backend)
        for name, kind, _, flags in QUERIES
    }


def multi_device_persons(bin_path, data: Path, want: int) -> list[dict]:
    """Profiles of persons with at least two anonymous ids and an email."""
    ids = cli_json(bin_path, "query", "funnel", "--data", str(data), "--project", PROJECT, "--step", "Product Viewed",
                   "--window", "30d", "--persons-at", "1", "--persons-limit", "1000")["persons"]["person_ids"]
    found = []
    for pid in ids:
        p = cli_json(bin_path, "profile", "--data", str(data), "--project", PROJECT, "--id", pid)
        kinds = [i["kind"] for i in p["ids"]]
        if kinds.count("anonymous_id") >= 2 and "email" in kinds and "user_id" in kinds:
            found.append(p)
            if len(found) == want:
                return found
    raise AssertionError(f"only {len(found)} persons of the demo have two devices and an email")


def files_holding(root: Path, needles: list[bytes]) -> dict[str, list[bytes]]:
    """Every file under `root` that holds one of the needles, with the needles it holds."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            b = p.read_bytes()
            hit = [n for n in needles if n in b]
            if hit:
                out[str(p.relative_to(root))] = hit
    return out


def shard_dump(cluster, db: str) -> str:
    """Every row of the project in both shards' local tables, as stored and as FINAL reads."""
    text = []
    for url in cluster.urls:
        for table in ("events_local", "identities_local", "person_overrides_local"):
            for final in ("", " FINAL"):
                text.append(cluster.query(f"SELECT * FROM {db}.{table}{final} WHERE project = '{PROJECT}' FORMAT TSV", url))
    return "".join(text)


def extra_messages(victim: dict, tag: str) -> list[dict]:
    """Events only the live servers get: a new device that logs in, buys, and a trait."""
    user = next(i["id"] for i in victim["ids"] if i["kind"] == "user_id")
    dev = f"erase-dev-{tag}-5c1e"
    t = "2026-12-01T10:00:0{}Z"
    return [
        {"type": "page", "anonymousId": dev, "messageId": f"x-{tag}-1", "timestamp": t.format(1),
         "name": "Home", "properties": {"path": "/"}},
        {"type": "identify", "userId": user, "anonymousId": dev, "messageId": f"x-{tag}-2", "timestamp": t.format(2),
         "traits": {"favourite_colour": f"ultramarine-{tag}-q7"}},
        {"type": "track", "userId": user, "anonymousId": dev, "event": "Order Completed", "messageId": f"x-{tag}-3",
         "timestamp": t.format(3), "properties": {"revenue": 42.5, "order_id": f"ord-{tag}-zz9"}},
    ]


def needles_of(victim: dict, tag: str) -> list[str]:
    return [i["id"] for i in victim["ids"]] + [f"erase-dev-{tag}-5c1e", f"ultramarine-{tag}-q7", f"ord-{tag}-zz9"]


def assert_clean(text: str, needles: list[str], where: str):
    found = [n for n in needles if n in text]
    assert not found, f"{where} still holds {found}"


def test_erasure_on_clickhouse_leaves_nothing_and_the_cli_reads_clickhouse(
    throughline_bin, tmp_path, clickhouse_cluster
):
    cluster, b = clickhouse_cluster, throughline_bin
    data, ref = tmp_path / "data", tmp_path / "ref"
    run_cli(b, "demo", "--data", str(data), "--no-serve", "--persons", str(PERSONS), timeout=300)
    keys = json.loads(run_cli(b, "projects", "rotate-key", PROJECT, "--data", str(data)).stdout)
    victims = multi_device_persons(b, data, 3)
    v1, v2, bystander = victims
    v1_email = next(i["id"] for i in v1["ids"] if i["kind"] == "email")
    v2_anon = next(i["id"] for i in v2["ids"] if i["kind"] == "anonymous_id")
    needles = {"v1": needles_of(v1, "a"), "v2": needles_of(v2, "b")}
    every_needle = needles["v1"] + needles["v2"]
    # The needles name the victims alone: every exported event holding one is theirs.
    for e in parse_jsonl(run_cli(b, "export", "--data", str(data), "--project", PROJECT).stdout):
        line = json.dumps(e)
        for tag, v in (("v1", v1), ("v2", v2)):
            if any(n in line for n in needles[tag]):
                assert e["person_id"] == v["person_id"], f"{tag}'s ids also appear in {line[:300]}"
    shutil.copytree(data, ref)

    db = new_database()
    servers = []
    try:
        run_cli(b, "clickhouse", "init", *cluster.args(db))
        run_cli(b, "migrate", "--data", str(data), "--to", cluster.urls[0], *cluster.args(db)[2:], timeout=300)
        ch_flags = ["--backend", "clickhouse", *cluster.args(db)]
        ch = Server(b, data, tmp_path, tuple(ch_flags))
        emb = Server(b, ref, tmp_path)
        servers += [ch, emb]
        ch.start()
        emb.start()
        extras = extra_messages(v1, "a") + extra_messages(v2, "b")
        for s in (ch, emb):
            r = s.post("/v1/batch", {"batch": extras}, keys["write_key"])
            assert r.status_code == 200 and r.json()["accepted"] == len(extras), r.text
        wait_forwarded(ch.url, PROJECT)
        profiles = [bystander["person_id"], v1["person_id"]]
        before = http_answers(ch.url, keys["api_key"], profiles)
        assert before == http_answers(emb.url, keys["api_key"], profiles), "ClickHouse and the reference differ before"
        assert before[f"person {v1['person_id']}"]["body"]["traits"]["favourite_colour"] == "ultramarine-a-q7"
        # What the greps below look for is there before the erasure.
        assert all(n in shard_dump(cluster, db) for n in every_needle)
        outbox = data / "projects" / PROJECT / "clickhouse"
        assert files_holding(outbox / "log", [f"ultramarine-{t}-q7".encode() for t in "ab"])

        # Erasure over HTTP, by the email, on both sides.
        answers = []
        for s in (ch, emb):
            r = requests.delete(f"{s.url}/api/v1/projects/{PROJECT}/persons/{v1_email}",
                                headers={"Authorization": f"Bearer {keys['api_key']}"}, timeout=300)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        assert answers[0] == answers[1] and answers[0]["erased_events"] > v1["event_count"], answers
        r = requests.delete(f"{ch.url}/api/v1/projects/{PROJECT}/persons/{v1_email}",
                            headers={"Authorization": f"Bearer {keys['api_key']}"}, timeout=60)
        assert r.status_code == 404, r.text
        after = http_answers(ch.url, keys["api_key"], [bystander["person_id"]])
        assert after == http_answers(emb.url, keys["api_key"], [bystander["person_id"]]), "answers differ after the erasure"
        assert after[f"person {bystander['person_id']}"] == before[f"person {bystander['person_id']}"]
        assert_clean(json.dumps(after), needles["v1"], "a query answer")
        for n in needles["v1"][: len(v1["ids"])]:
            r = requests.get(f"{ch.url}/api/v1/projects/{PROJECT}/persons/{n}",
                             headers={"Authorization": f"Bearer {keys['api_key']}"}, timeout=60)
            assert r.status_code == 404, f"{n}: {r.status_code} {r.text[:300]}"
        for s in (ch, emb):
            s.stop()

        # Erasure with the CLI, by an anonymous id, on both sides.
        got = cli_json(b, "delete-person", "--data", str(data), "--project", PROJECT, "--id", v2_anon, *ch_flags)
        want = cli_json(b, "delete-person", "--data", str(ref), "--project", PROJECT, "--id", v2_anon)
        assert got == want and got["erased_events"] > v2["event_count"], (got, want)

        # The CLI on ClickHouse answers as the embedded CLI and as the server.
        ch_cli = cli_answers(b, data, ch_flags)
        assert ch_cli == cli_answers(b, ref, []), "the CLI on ClickHouse differs from the embedded CLI"
        ch.start()
        served = http_answers(ch.url, keys["api_key"], [])
        assert served == ch_cli, "the CLI on ClickHouse differs from the ClickHouse-backed server"
        # ... also while that server runs (no lock is taken).
        p = cli_json(b, "profile", "--data", str(data), "--project", PROJECT, "--id", bystander["person_id"],
                     "--timeline", "100", *ch_flags)
        assert p == before[f"person {bystander['person_id']}"]["body"]
        exported = run_cli(b, "export", "--data", str(data), "--project", PROJECT, *ch_flags, timeout=300).stdout
        ch.stop()
        reference = run_cli(b, "export", "--data", str(ref), "--project", PROJECT, timeout=300).stdout
        assert exported == reference, "export from ClickHouse differs from the reference's"
        assert_clean(exported, every_needle, "the ClickHouse export")
        assert_clean(json.dumps(ch_cli) + json.dumps(served), every_needle, "a CLI or HTTP answer")

        # Nothing of either person in ClickHouse, the data directory or a backup.
        assert_clean(shard_dump(cluster, db), every_needle, "a shard's local tables")
        embedded = run_cli(b, "export", "--data", str(data), "--project", PROJECT, timeout=300).stdout
        assert_clean(embedded, every_needle, "the migrated embedded store's export")
        # (The demo's persons are customers of both brands: the other project keeps them.)
        held = files_holding(data, [n.encode() for n in every_needle])
        held = {f: n for f, n in held.items() if not f.startswith("projects/subscription/")}
        assert not held, f"files of the data directory still hold {held}"
        checkpoints = sorted(p.name for p in outbox.glob("identity-*"))
        assert len(checkpoints) == 1, checkpoints
        assert not (outbox / "ERASE").exists()
        backup = tmp_path / "after.tar"
        run_cli(b, "backup", "--data", str(data), "--out", str(backup), timeout=300)
        with tarfile.open(backup) as tar:
            for member in tar.getmembers():
                if member.isfile() and "projects/subscription/" not in member.name:
                    raw = tar.extractfile(member).read()
                    held = [n for n in every_needle if n.encode() in raw]
                    assert not held, f"{member.name} of a backup taken afterwards holds {held}"

        log = cli_json(b, "audit-log", "--data", str(data), "--project", PROJECT)
        erasures = [e for e in log if e["action"] == "person.delete"]
        assert [e["actor"].split()[0] for e in erasures] == ["http", "cli"], erasures
        for e, given, n in zip(erasures, (v1_email, v2_anon), (answers[0]["erased_events"], got["erased_events"])):
            assert e["detail"] == f"id sha256:{hashlib.sha256(given.encode()).hexdigest()}: {n} events erased", e
        assert_clean(json.dumps(log), every_needle, "the audit log")
    finally:
        for s in servers:
            if s.running():
                s.kill9()
        drop_database(cluster, db)
