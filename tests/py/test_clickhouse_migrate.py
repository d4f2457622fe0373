"""`throughline migrate`: the demo's embedded projects into the two-shard cluster, resumed
after a SIGKILL, verified by counts, then handed over to `serve --backend clickhouse`
(new events continue the numbering, old messageIds stay duplicates).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from clickhouse_env import wait_forwarded
from harness import run_cli

PERSONS = 600


def stats(bin_path, data, project):
    return json.loads(run_cli(bin_path, "stats", "--data", str(data), "--project", project).stdout)


def ch_stats(bin_path, data, project, cluster, db):
    return json.loads(
        run_cli(bin_path, "stats", "--data", str(data), "--project", project, "--backend", "clickhouse", *cluster.args(db)).stdout
    )


def test_migrate_resumes_after_a_kill_and_hands_over_to_the_clickhouse_backend(
    throughline_bin, tmp_path, make_server, clickhouse_cluster, clickhouse_db
):
    cluster, db = clickhouse_cluster, clickhouse_db
    data = tmp_path / "demo"
    run_cli(throughline_bin, "demo", "--data", str(data), "--no-serve", "--persons", str(PERSONS))
    totals = {p: stats(throughline_bin, data, p)["events"] for p in ("headphones", "subscription")}
    args = ["migrate", "--data", str(data), "--to", cluster.urls[0], *cluster.args(db)[2:]]

    # Small INSERTs and a SIGKILL once some of them were acknowledged.
    proc = subprocess.Popen(
        [throughline_bin, *args, "--project", "headphones", "--batch-events", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    state_file = data / "projects" / "headphones" / "clickhouse" / "MIGRATE"
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(state_file.read_text()).get("events_done", 0)
        except (OSError, ValueError):
            done = 0
        if done >= 2000:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"migrate finished before it could be interrupted: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < done < totals["headphones"]

    # The second run resumes after the last acknowledged batch and verifies the counts.
    reports = [json.loads(line) for line in run_cli(throughline_bin, *args).stdout.splitlines() if line.strip()]
    by_project = {r["project"]: r for r in reports}
    assert by_project["headphones"]["resumed_at"] >= done
    assert by_project["subscription"]["resumed_at"] == 0
    for project, total in totals.items():
        assert by_project[project]["events"] == total and by_project[project]["verified"]
        got = cluster.rows(
            f"SELECT uniqExact(seq), max(seq) + 1, uniqExact(message_hash) FROM {db}.events WHERE project = '{project}'"
        )[0]
        assert [int(x) for x in got] == [total] * 3
        # Migrated persons are today's persons: nothing to override.
        assert cluster.scalar(f"SELECT count() FROM {db}.person_overrides WHERE project = '{project}'") == "0"
        ids = int(cluster.scalar(f"SELECT uniqExact(node) FROM {db}.identities WHERE project = '{project}'"))
        assert ids == stats(throughline_bin, data, project)["persons_ids"]
        # `stats` reads the same counts back from ClickHouse; nothing waits in an outbox.
        remote = ch_stats(throughline_bin, data, project, cluster, db)
        assert remote["backend"] == "clickhouse" and remote["database"] == db
        assert (remote["events"], remote["persons_ids"]) == (total, ids)
        assert 0 < remote["persons"] <= ids
        assert (remote["events_in_outbox"], remote["outbox_bytes"]) == (0, 0)

    # A finished migration run again changes nothing.
    again = [json.loads(line) for line in run_cli(throughline_bin, *args).stdout.splitlines() if line.strip()]
    assert all(r["verified"] for r in again)
    assert cluster.scalar(f"SELECT uniqExact(seq) FROM {db}.events WHERE project = 'headphones'") == str(
        totals["headphones"]
    )

    # The ClickHouse backend takes over: a migrated messageId is a duplicate, a new one
    # continues the numbering.
    catalog = json.loads((data / "catalog.json").read_text())
    key = next(p["write_key"] for p in catalog["projects"] if p["name"] == "headphones")
    old_id = cluster.scalar(
        f"SELECT visitParamExtractString(payload, 'message_id') FROM {db}.events WHERE project = 'headphones' AND seq = 7"
    )
    server = make_server(data)
    server.extra_args = ["--backend", "clickhouse", *cluster.args(db)]
    server.start()
    r = server.post(
        "/v1/batch",
        {
            "batch": [
                {"type": "track", "event": "Order Completed", "userId": "late-user", "messageId": old_id},
                {"type": "track", "event": "Order Completed", "userId": "late-user", "messageId": "after-migration-1"},
            ]
        },
        key,
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["duplicates"] == 1, r.text
    wait_forwarded(server.url, "headphones")
    seq = cluster.scalar(
        f"SELECT seq FROM {db}.events WHERE project = 'headphones' AND visitParamExtractString(payload, 'message_id') = 'after-migration-1'"
    )
    assert seq == str(totals["headphones"])
    # Beside the running server: the new event is in ClickHouse, the outbox holds it no more.
    remote = ch_stats(throughline_bin, data, "headphones", cluster, db)
    assert remote["events"] == totals["headphones"] + 1
    assert remote["events_forwarded"] >= 1 and remote["events_in_outbox"] == 0
    server.stop()
