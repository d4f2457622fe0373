"""Real ClickHouse servers for the ClickHouse backend's tests.

`scripts/clickhouse start` runs two Debian clickhouse-server (18.16) processes on loopback
ports as the cluster `throughline_two` (two shards); it is idempotent, so the CI script
and this module can both call it. Each test gets its own database, dropped afterwards.
A test that must stop ClickHouse (the fault test) starts a pair of its own on other ports.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "clickhouse"
START_TIMEOUT_S = 90


@dataclass
class Cluster:
    """Two shard servers and the cluster they form."""

    urls: list[str]
    name: str
    env: dict = field(default_factory=dict)

    def query(self, sql: str, url: str | None = None, timeout: float = 60) -> str:
        r = requests.post(url or self.urls[0], data=sql.encode(), timeout=timeout)
        if r.status_code != 200:
            raise AssertionError(f"ClickHouse error for {sql[:300]!r}: {r.text[:1000]}")
        return r.text

    def rows(self, sql: str, url: str | None = None) -> list[list[str]]:
        text = self.query(sql + " FORMAT TSV", url)
        return [line.split("\t") for line in text.splitlines() if line]

    def scalar(self, sql: str, url: str | None = None) -> str:
        return self.query(sql, url).strip()

    def args(self, database: str, cluster: bool = True) -> list[str]:
        """The CLI flags that point Throughline at `database` on this cluster."""
        a = ["--clickhouse-url", self.urls[0], "--clickhouse-database", database]
        if cluster:
            a += ["--clickhouse-cluster", self.name]
            for u in self.urls:
                a += ["--clickhouse-shard-url", u]
        return a

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=self.env, check=True, timeout=60)

    def start(self) -> None:
        start_cluster(self.env)


def start_cluster(env: dict | None = None) -> Cluster:
    env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/clickhouse start did not finish", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/clickhouse start failed (is clickhouse-server installed? see .ci/run):\n{proc.stderr[-3000:]}",
            pytrace=False,
        )
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Cluster(
        urls=found["THROUGHLINE_CLICKHOUSE_URLS"].split(","),
        name=found["THROUGHLINE_CLICKHOUSE_CLUSTER"],
        env=env,
    )


def cluster_running(env: dict | None = None) -> bool:
    env = {**os.environ, **(env or {})}
    proc = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and proc.stdout.count(": up") == 2


def new_database() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def drop_database(cluster: Cluster, db: str) -> None:
    for u in cluster.urls:
        try:
            cluster.query(f"DROP DATABASE IF EXISTS {db}", u)
        except Exception:
            pass


def wait_forwarded(server_url: str, project: str, timeout: float = 60) -> dict:
    """Polls /metrics until the forwarder's cursor reaches the outbox's end; returns both."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        text = requests.get(server_url + "/metrics", timeout=5).text
        values = {}
        for line in text.splitlines():
            for name in ("durable_events", "forwarded_events", "backlog_bytes", "failed_inserts_total"):
                prefix = f'throughline_clickhouse_{name}{{project="{project}"}} '
                if line.startswith(prefix):
                    values[name] = int(line[len(prefix):])
        last = values
        if values and values.get("durable_events") == values.get("forwarded_events"):
            return values
        time.sleep(0.1)
    pytest.fail(f"the forwarder did not catch up within {timeout}s: {last}", pytrace=False)
