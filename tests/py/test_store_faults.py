"""Store faults through the real binary: `throughline check` on damaged files, backup while
a server ingests and restore with the same answers, erasure leaving nothing in backups
taken afterwards, store format versions, and a disk that fills up under load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from harness import create_project, export_events, run_cli

SMALL_TABLES_CONFIG = """
[store]
flush_bytes = 65536
frozen_tables_max = 2
compact_segments_min = 2
compact_rows_max = 20000
"""


def small_tables(tmp_path: Path) -> tuple[str, str]:
    config = tmp_path / "small-tables.toml"
    config.write_text(SMALL_TABLES_CONFIG)
    return ("--config", str(config))


def generated(throughline_bin: str, tmp_path: Path, persons: int = 150) -> list[dict]:
    out = tmp_path / "generated.jsonl"
    run_cli(throughline_bin, "generate", "--brand", "headphones", "--persons", str(persons), "--seed", "11",
            "--out", str(out))
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def every_query(throughline_bin: str, data_dir: Path, project: str) -> dict[str, object]:
    """The answers of every query kind (and a profile), as JSON."""
    d = ["--data", str(data_dir), "--project", project]
    queries = {
        "funnel": ["query", "funnel", *d, "--step", "Product Viewed", "--step", "Product Added", "--step",
                   "Order Completed", "--window", "7d"],
        "trends": ["query", "trends", *d, "--event", "Order Completed", "--interval", "week"],
        "retention": ["query", "retention", *d, "--start", "Product Viewed", "--return", "Product Viewed"],
        "sessions": ["query", "sessions", *d, "--by", "channel"],
        "paths": ["query", "paths", *d, "--of", "channels", "--conversion", "Order Completed"],
        "assets": ["query", "assets", *d, "--conversion", "Order Completed", "--value", "revenue"],
        "attribution": ["query", "attribution", *d, "--conversion", "Order Completed", "--model", "all"],
        "emotion": ["query", "emotion", *d],
        "fatigue": ["query", "fatigue", *d, "--conversion", "Order Completed"],
        "audit": ["query", "audit", *d, "--conversion", "Order Completed"],
        "stats": ["stats", *d],
    }
    return {k: json.loads(run_cli(throughline_bin, *args).stdout) for k, args in queries.items()}


class Ingester(threading.Thread):
    """Posts batches of the given messages in order, recording which were acknowledged."""

    def __init__(self, server, write_key: str, messages: list[dict], batch: int = 50):
        super().__init__(daemon=True)
        self.server, self.write_key, self.messages, self.batch = server, write_key, messages, batch
        self.acked: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []

    def acked_now(self) -> set[str]:
        with self.lock:
            return set(self.acked)

    def run(self):
        for i in range(0, len(self.messages), self.batch):
            if self.stop.is_set():
                return
            chunk = self.messages[i:i + self.batch]
            for _ in range(50):
                r = self.server.post("/v1/batch", {"batch": chunk}, self.write_key, timeout=60)
                if r.status_code == 200:
                    with self.lock:
                        self.acked.extend(m["messageId"] for m in chunk)
                    break
                if r.status_code != 503:
                    self.errors.append(f"{r.status_code} {r.text[:200]}")
                    return
                time.sleep(float(r.headers.get("Retry-After", "1")))


def test_backup_while_ingesting_restores_every_acknowledged_event_and_the_same_answers(
        throughline_bin, data_dir, make_server, tmp_path):
    keys = create_project(throughline_bin, data_dir, "shop")
    messages = generated(throughline_bin, tmp_path)
    server = make_server(data_dir, small_tables(tmp_path)).start()
    ingest = Ingester(server, keys["write_key"], messages)
    ingest.start()
    deadline = time.monotonic() + 60
    while len(ingest.acked_now()) < len(messages) // 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = ingest.acked_now()
    assert before, "nothing acknowledged before the backup"
    during = tmp_path / "during.tar"
    run_cli(throughline_bin, "backup", "--data", str(data_dir), "--out", str(during))
    assert ingest.is_alive(), "the ingest finished before the backup: it did not run beside writes"
    ingest.join(timeout=120)
    assert not ingest.errors, ingest.errors

    restored = tmp_path / "restored"
    run_cli(throughline_bin, "restore", "--from", str(during), "--data", str(restored))
    events = export_events(throughline_bin, restored, "shop", out=tmp_path / "during.jsonl")
    ids = [e["messageId"] for e in events]
    assert len(ids) == len(set(ids)), "an event restored twice"
    assert before <= set(ids), f"{len(before - set(ids))} events acknowledged before the backup are missing"
    assert set(ids) <= {m["messageId"] for m in messages}

    # Quiet now: a backup of the settled store answers every query as the store itself does.
    quiet = tmp_path / "quiet.tar"
    run_cli(throughline_bin, "backup", "--data", str(data_dir), "--out", str(quiet))
    server.stop()
    again = tmp_path / "restored-quiet"
    run_cli(throughline_bin, "restore", "--from", str(quiet), "--data", str(again))
    restored_files = [p for p in again.rglob("*") if p.is_file() and p.name != "LOCK"]
    assert restored_files and all(p.stat().st_mode & 0o077 == 0 for p in restored_files), \
        "restored files are readable by others (the token secret must stay 0600)"
    source = every_query(throughline_bin, data_dir, "shop")
    copy = every_query(throughline_bin, again, "shop")
    assert source["stats"]["events"] == len(messages)
    for kind in source:
        assert copy[kind] == source[kind], f"{kind} answers differently after restore"
    run_cli(throughline_bin, "check", "--data", str(again))


def test_a_backup_after_erasure_holds_nothing_of_the_person(throughline_bin, data_dir, make_server, tmp_path):
    keys = create_project(throughline_bin, data_dir, "shop")
    server = make_server(data_dir, small_tables(tmp_path)).start()
    person = {"user": "zelda-7f3a9c", "device": "dev-zelda-91c2e4", "email": "zelda.quixotic@example.org",
              "name": "Zelda Quixotic-Vantablack"}
    mine = [
        {"type": "page", "anonymousId": person["device"], "messageId": "z1", "name": "Home",
         "properties": {"path": "/"}},
        {"type": "identify", "userId": person["user"], "anonymousId": person["device"], "messageId": "z2",
         "traits": {"email": person["email"], "name": person["name"]}},
        {"type": "track", "userId": person["user"], "event": "Order Completed", "messageId": "z3",
         "properties": {"revenue": 12.5, "note": person["name"]}},
    ]
    others = [{"type": "track", "userId": f"other-{i}", "anonymousId": f"odev-{i}", "event": "Product Viewed",
               "messageId": f"o{i}", "properties": {"pad": "x" * 400}} for i in range(600)]
    for chunk in [mine, *[others[i:i + 100] for i in range(0, len(others), 100)]]:
        r = server.post("/v1/batch", {"batch": chunk}, keys["write_key"])
        assert r.status_code == 200, r.text
    needles = [v.encode() for v in person.values()]

    before = tmp_path / "before.tar"
    run_cli(throughline_bin, "backup", "--data", str(data_dir), "--out", str(before))
    raw = before.read_bytes()
    assert all(n in raw for n in needles), "the grep below would prove nothing"

    r = requests.delete(f"{server.url}/api/v1/projects/shop/persons/{person['email']}",
                        headers={"Authorization": f"Bearer {keys['api_key']}"})
    assert r.status_code == 200, r.text
    assert r.json()["erased_events"] == 3
    after = tmp_path / "after.tar"
    run_cli(throughline_bin, "backup", "--data", str(data_dir), "--out", str(after))
    raw = after.read_bytes()
    for n in needles:
        assert n not in raw, f"{n!r} is still in a backup taken after the erasure"
    server.stop()
    restored = tmp_path / "restored"
    run_cli(throughline_bin, "restore", "--from", str(after), "--data", str(restored))
    ids = {e["messageId"] for e in export_events(throughline_bin, restored, "shop", out=tmp_path / "x.jsonl")}
    assert ids == {f"o{i}" for i in range(600)}
    log = run_cli(throughline_bin, "audit-log", "--data", str(restored)).stdout
    assert "person.delete" in log and person["email"] not in log


def damage(path: Path, at: int | None = None):
    b = bytearray(path.read_bytes())
    i = len(b) // 2 if at is None else at
    b[i] ^= 0xFF
    path.write_bytes(bytes(b))


def test_check_names_damaged_files_and_repair_rebuilds_the_manifest(throughline_bin, data_dir, make_server,
                                                                    tmp_path):
    create_project(throughline_bin, data_dir, "shop")
    src = tmp_path / "events.jsonl"
    src.write_text("\n".join(json.dumps(m) for m in generated(throughline_bin, tmp_path, persons=60)) + "\n")
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "shop", str(src))
    expected = sorted(json.dumps(e, sort_keys=True) for e in export_events(throughline_bin, data_dir, "shop"))
    ok = json.loads(run_cli(throughline_bin, "check", "--data", str(data_dir)).stdout)
    assert ok["ok"] and ok["projects"][0]["events"] == len(expected)

    project = data_dir / "projects" / "shop"
    manifest = project / "MANIFEST"
    manifest.write_text(manifest.read_text().replace('"wal_start": ', '"wal_start": 1'))
    r = run_cli(throughline_bin, "export", "--data", str(data_dir), "--project", "shop", "--format", "jsonl",
                check=False)
    assert r.returncode != 0 and "MANIFEST is corrupt: checksum mismatch" in r.stderr, r.stderr
    r = run_cli(throughline_bin, "check", "--data", str(data_dir), check=False)
    assert r.returncode == 1 and str(manifest) in r.stdout and "--repair" in r.stderr, (r.stdout, r.stderr)
    r = run_cli(throughline_bin, "check", "--data", str(data_dir), "--repair")
    report = json.loads(r.stdout)["projects"][0]
    assert report["problems"] == [] and any("rebuilt" in s for s in report["repaired"]), report
    got = sorted(json.dumps(e, sort_keys=True) for e in export_events(throughline_bin, data_dir, "shop"))
    assert got == expected

    # A damaged segment whose events are nowhere else: named, kept, and reads keep failing.
    seg = sorted((project / "segments").glob("*.seg"))[0]
    damage(seg)
    r = run_cli(throughline_bin, "check", "--data", str(data_dir), "--project", "shop", "--repair", check=False)
    assert r.returncode == 1, r.stdout
    report = json.loads(r.stdout)["projects"][0]
    assert any(str(seg) in s and "restore from a backup" in s for s in report["not_repaired"]), report
    r = run_cli(throughline_bin, "export", "--data", str(data_dir), "--project", "shop", "--format", "jsonl",
                check=False)
    assert r.returncode != 0 and str(seg) in r.stderr and "checksum" in r.stderr, r.stderr

    # A running server holds the directory: check says so instead of reading under it.
    server = make_server(data_dir).start()
    r = run_cli(throughline_bin, "check", "--data", str(data_dir), check=False)
    server.kill9()
    assert r.returncode != 0 and "in use by process" in r.stderr, r.stderr


def test_a_newer_store_is_refused_and_the_previous_format_is_migrated(throughline_bin, data_dir):
    create_project(throughline_bin, data_dir, "shop")
    src = data_dir.parent / "e.jsonl"
    src.write_text("\n".join(json.dumps({"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"m{i}"})
                             for i in range(100)) + "\n")
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "shop", str(src))
    manifest = data_dir / "projects" / "shop" / "MANIFEST"
    m = json.loads(manifest.read_text())
    assert m["version"] == 2 and m["checksum"].startswith("crc32:")

    newer = dict(m, version=m["version"] + 1)
    manifest.write_text(json.dumps(newer))
    r = run_cli(throughline_bin, "stats", "--data", str(data_dir), "--project", "shop", check=False)
    assert r.returncode != 0
    assert "written by a newer Throughline (store format 3; this binary reads up to 2)" in r.stderr, r.stderr
    assert str(manifest) in r.stderr

    v1 = {k: v for k, v in m.items() if k != "checksum"}
    v1["version"] = 1
    manifest.write_text(json.dumps(v1))
    r = run_cli(throughline_bin, "stats", "--data", str(data_dir), "--project", "shop")
    assert json.loads(r.stdout)["events"] == 100
    assert "migrated 1 projects from store format 1 to 2" in r.stderr, r.stderr
    migrated = json.loads(manifest.read_text())
    assert migrated["version"] == 2 and migrated["checksum"].startswith("crc32:")


# --------------------------------------------------------------------------- disk full

TMPFS_BYTES = 48 << 20


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of TMPFS_BYTES mounted for the test (needs root, as CI and this machine run)."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root; this run is not root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_answers_503_harms_nothing_and_ingestion_resumes(throughline_bin, make_server, tmp_path,
                                                                     small_fs):
    data_dir = small_fs / "data"
    keys = create_project(throughline_bin, data_dir, "shop")
    server = make_server(data_dir, small_tables(tmp_path)).start()
    try:
        pad = "p" * 700

        def batch(n: int) -> list[dict]:
            return [{"type": "track", "userId": f"u{i % 97}", "event": "Filled", "messageId": f"b{n}-{i}",
                     "properties": {"pad": pad}} for i in range(50)]

        acked: set[str] = set()
        refused: list[list[dict]] = []
        n = 0
        for _ in range(20):
            r = server.post("/v1/batch", {"batch": batch(n)}, keys["write_key"])
            assert r.status_code == 200, r.text
            acked |= {m["messageId"] for m in batch(n)}
            n += 1
        # Leave about a megabyte free, then keep ingesting until the store runs out of it.
        filler = small_fs / "filler"
        free = shutil.disk_usage(small_fs).free
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - (1 << 20)))
        full_answers = 0
        deadline = time.monotonic() + 120
        while full_answers < 5 and time.monotonic() < deadline:
            b = batch(n)
            n += 1
            r = server.post("/v1/batch", {"batch": b}, keys["write_key"], timeout=60)
            if r.status_code == 200:
                acked |= {m["messageId"] for m in b}
                continue
            assert r.status_code == 503, r.text
            assert r.headers.get("Retry-After"), "503 without Retry-After"
            if not full_answers:
                print("first 503:", r.text)
            full_answers += 1
            refused.append(b)
        assert full_answers >= 5, "the disk never filled up"
        assert server.running(), "the server died of a full disk"
        assert requests_ok(server), "health fails while the disk is full"
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
        wal_failures = metric(metrics, "throughline_wal_failures_total")
        assert wal_failures >= full_answers, metrics[-2000:]

        # Space returns: ingestion resumes by itself, and the refused batches (as an SDK
        # retries them) are stored.
        filler.unlink()
        resumed_after = None
        started = time.monotonic()
        for b in refused + [batch(n), batch(n + 1)]:
            while True:
                r = server.post("/v1/batch", {"batch": b}, keys["write_key"], timeout=60)
                if r.status_code == 200:
                    acked |= {m["messageId"] for m in b}
                    resumed_after = resumed_after or time.monotonic() - started
                    break
                assert r.status_code == 503, r.text
                assert time.monotonic() - started < 90, "ingestion did not resume after space returned"
                time.sleep(float(r.headers.get("Retry-After", "1")))
        flush_failures = metric(requests.get(f"{server.url}/metrics", timeout=10).text,
                                "throughline_flush_failures_total")
        print(f"full-disk 503s: {full_answers}; log write failures {wal_failures:.0f}, flush failures "
              f"{flush_failures:.0f}; resumed {resumed_after:.1f}s after space returned")
        server.stop()
    finally:
        server.kill9()
    events = export_events(throughline_bin, data_dir, "shop", out=tmp_path / "export.jsonl")
    ids = [e["messageId"] for e in events]
    assert len(ids) == len(set(ids)), "an event stored twice"
    assert acked == set(ids), f"{len(acked - set(ids))} acknowledged events missing"
    run_cli(throughline_bin, "check", "--data", str(data_dir))


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def requests_ok(server) -> bool:
    return requests.get(f"{server.url}/health", timeout=10).status_code == 200
