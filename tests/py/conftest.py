"""Fixtures of the black-box acceptance suite (helpers are in harness.py).

Each test gets its own data dir (pytest's tmp_path), and every server a test starts is
killed in fixture teardown, whatever happened. The binary is `$THROUGHLINE_BIN`, else
`<repo>/target/release/throughline`; when it is missing every test errors naming that
path rather than being skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import Server, require_binary


@pytest.fixture(scope="session")
def throughline_bin() -> str:
    return require_binary()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def make_server(throughline_bin, tmp_path):
    """Factory: make_server(data_dir, extra_args=(), config=FILE.toml) -> Server (not started).
    All are killed at teardown."""
    servers: list[Server] = []

    def factory(data_dir: Path, extra_args: tuple[str, ...] = (), config: Path | None = None) -> Server:
        s = Server(throughline_bin, data_dir, tmp_path, extra_args, config)
        servers.append(s)
        return s

    yield factory
    for s in servers:
        try:
            s.kill9()
        except Exception:
            pass


@pytest.fixture(scope="session")
def clickhouse_cluster():
    """Two real ClickHouse servers forming a two-shard cluster (scripts/clickhouse). Servers
    this session started are stopped at its end; ones already running (CI starts them in
    .ci/run) are left running."""
    from clickhouse_env import cluster_running, start_cluster

    was_running = cluster_running()
    cluster = start_cluster()
    yield cluster
    if not was_running:
        cluster.stop()


@pytest.fixture
def clickhouse_db(clickhouse_cluster, throughline_bin):
    """A fresh database on the cluster with Throughline's tables (`clickhouse init`)."""
    from clickhouse_env import drop_database, new_database
    from harness import run_cli

    db = new_database()
    run_cli(throughline_bin, "clickhouse", "init", *clickhouse_cluster.args(db))
    yield db
    drop_database(clickhouse_cluster, db)
