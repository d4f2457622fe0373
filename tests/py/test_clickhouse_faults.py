"""ClickHouse goes away under ingest and comes back: nothing acknowledged is lost or
stored twice.

A pair of ClickHouse servers of this test's own (so stopping them disturbs no other test)
takes events from a ClickHouse-backed Throughline while a client sends batches the way an
SDK does (retrying the same batch, same messageIds, on 503 or a refused connection). The
test stops ClickHouse mid-stream, lets the outbox fill to its bound (503 + Retry-After),
kills Throughline with SIGKILL and restarts it while ClickHouse is still down, then
restarts ClickHouse. Every acknowledged messageId must then be in ClickHouse exactly once.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

from clickhouse_env import drop_database, new_database, start_cluster, wait_forwarded
from harness import create_project, run_cli

BATCH = 100
CLIENT_DEADLINE_S = 150


def free_port_block(n: int = 4) -> int:
    """A base port with `n` free ports from it."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no block of free ports")


class Client(threading.Thread):
    """Sends every batch until it is acknowledged, as Segment's SDKs retry."""

    def __init__(self, server, key, messages):
        super().__init__(daemon=True)
        self.server, self.key, self.messages = server, key, messages
        self.acked: set[str] = set()
        self.batches_done = 0
        self.saw_503 = 0
        self.saw_refused = 0
        self.error: str | None = None

    def run(self):
        deadline = time.monotonic() + CLIENT_DEADLINE_S
        for i in range(0, len(self.messages), BATCH):
            batch = self.messages[i : i + BATCH]
            while True:
                if time.monotonic() > deadline:
                    self.error = f"batch {i // BATCH} not acknowledged in time"
                    return
                try:
                    r = requests.post(
                        self.server.url + "/v1/batch",
                        data=json.dumps({"batch": batch}),
                        headers={"Content-Type": "application/json", "Authorization": _basic(self.key)},
                        timeout=10,
                    )
                except requests.RequestException:
                    self.saw_refused += 1
                    time.sleep(0.05)
                    continue
                if r.status_code == 503:
                    assert r.headers.get("Retry-After"), "503 without Retry-After"
                    self.saw_503 += 1
                    time.sleep(0.1)
                    continue
                if r.status_code != 200:
                    self.error = f"unexpected {r.status_code}: {r.text[:300]}"
                    return
                self.acked.update(m["messageId"] for m in batch)
                self.batches_done += 1
                break


def _basic(key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_clickhouse_outage_loses_and_duplicates_nothing(throughline_bin, data_dir, make_server, tmp_path):
    base = free_port_block()
    # Not under pytest's tmp_path: the servers run as the `clickhouse` user, who cannot
    # enter root's private temporary directories.
    ch_dir = Path(tempfile.gettempdir()) / f"throughline-ch-fault-{uuid.uuid4().hex[:8]}"
    cluster = start_cluster({"THROUGHLINE_CH_PORT": str(base), "THROUGHLINE_CH_DIR": str(ch_dir)})
    db = new_database()
    try:
        run_cli(throughline_bin, "clickhouse", "init", *cluster.args(db))
        info = create_project(throughline_bin, data_dir, "shop")
        gen = tmp_path / "gen.jsonl"
        run_cli(throughline_bin, "generate", "--persons", "300", "--seed", "11", "--duplicates", "0.02", "--out", str(gen))
        messages = [json.loads(line) for line in gen.read_text().splitlines() if line.strip()]
        config = tmp_path / "tl.toml"
        config.write_text("[clickhouse]\nbacklog_bytes_max = 400000\nretry_ms_max = 200\nbatch_events_max = 500\n")
        server = make_server(data_dir)
        server.extra_args = ["--config", str(config), "--backend", "clickhouse", *cluster.args(db)]
        server.start()

        client = Client(server, info["write_key"], messages)
        client.start()
        wait_until(lambda: client.batches_done >= 15, 60, "15 batches before the outage")
        cluster.stop()
        # The outbox takes batches (durable locally) until its backlog bound, then 503s.
        wait_until(lambda: client.saw_503 > 0, 60, "a 503 once the backlog is full")
        # Throughline dies hard while ClickHouse is away; its outbox must survive.
        server.kill9()
        server.start()
        time.sleep(0.5)
        cluster.start()
        client.join(CLIENT_DEADLINE_S)
        assert client.error is None, client.error
        assert not client.is_alive()
        status = wait_forwarded(server.url, "shop", timeout=90)

        distinct = {m["messageId"] for m in messages}
        assert client.acked == distinct
        assert status["forwarded_events"] == len(distinct)
        rows = cluster.rows(
            f"SELECT uniqExact(seq), uniqExact(message_hash), max(seq) + 1 FROM {db}.events WHERE project = 'shop'"
        )[0]
        assert [int(x) for x in rows] == [len(distinct)] * 3
        # No messageId under two arrival numbers (stored twice), none missing.
        twice = cluster.scalar(
            f"SELECT count() FROM (SELECT message_hash FROM {db}.events WHERE project = 'shop' "
            f"GROUP BY message_hash HAVING uniqExact(seq) > 1)"
        )
        assert twice == "0"
        stored = {
            r[0]
            for r in cluster.rows(
                f"SELECT DISTINCT visitParamExtractString(payload, 'message_id') FROM {db}.events WHERE project = 'shop'"
            )
        }
        assert stored == client.acked
        server.stop()
    finally:
        drop_database(cluster, db)
        cluster.stop()
        shutil.rmtree(ch_dir, ignore_errors=True)
