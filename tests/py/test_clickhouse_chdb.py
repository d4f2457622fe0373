"""The statements Throughline sends to ClickHouse run the same on current ClickHouse.

Everything here goes to a real ClickHouse 18.16 server (one server, no cluster) with
THROUGHLINE_CLICKHOUSE_SQL_LOG set, which records every statement and every INSERT's
RowBinary rows: `clickhouse init`, the outbox's inserts (identity merges included), both
funnel engines (the compiled windowFunnel and the row source's scans), and a fold with its
deletions, and the query API's reads of every query kind and a profile. The log is then replayed, statement by statement, into chdb (ClickHouse 26), and
every query is asked of both servers: the answers must be equal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import requests
from chdb import session as chdb_session

from clickhouse_env import drop_database, new_database, wait_forwarded
from harness import create_project, run_cli

STEPS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]


def cli_env(log_dir):
    import os

    return {**os.environ, "THROUGHLINE_CLICKHOUSE_SQL_LOG": str(log_dir)}


def run_logged(bin_path, log_dir, *args):
    import subprocess

    proc = subprocess.run([bin_path, *args], capture_output=True, text=True, timeout=120, env=cli_env(log_dir))
    assert proc.returncode == 0, f"{args}: {proc.stderr[-2000:]}"
    return proc.stdout


def chdb_wait_mutations(s):
    for _ in range(600):
        if str(s.query("SELECT count() FROM system.mutations WHERE is_done = 0", "TSV")).strip() == "0":
            return
        time.sleep(0.05)
    raise AssertionError("chdb mutations did not finish")


def structure(s, table, columns):
    types = {}
    for line in str(s.query(f"DESCRIBE TABLE {table}", "TSV")).splitlines():
        name, typ = line.split("\t")[:2]
        types[name] = typ
    return ", ".join(f"{c} {types[c]}" for c in columns)


def as_tsv(sql: str) -> str:
    sql = re.sub(r"\s+FORMAT\s+\w+\s*$", "", sql.strip())
    return sql


def test_logged_statements_answer_the_same_on_clickhouse_26(
    throughline_bin, data_dir, make_server, tmp_path, clickhouse_cluster
):
    cluster = clickhouse_cluster
    url = cluster.urls[0]
    db = new_database()
    log = tmp_path / "sqllog"
    ch_args = ["--clickhouse-url", url, "--clickhouse-database", db]
    try:
        run_logged(throughline_bin, log, "clickhouse", "init", *ch_args)
        info = create_project(throughline_bin, data_dir, "shop")
        gen = tmp_path / "gen.jsonl"
        run_cli(throughline_bin, "generate", "--persons", "150", "--seed", "3", "--out", str(gen))
        messages = [json.loads(line) for line in gen.read_text().splitlines() if line.strip()]
        server = make_server(data_dir)
        server.extra_args = ["--backend", "clickhouse", *ch_args]
        os.environ["THROUGHLINE_CLICKHOUSE_SQL_LOG"] = str(log)
        try:
            server.start()
        finally:
            del os.environ["THROUGHLINE_CLICKHOUSE_SQL_LOG"]
        for i in range(0, len(messages), 250):
            r = server.post("/v1/batch", {"batch": messages[i : i + 250]}, info["write_key"])
            assert r.status_code == 200, r.text
        wait_forwarded(server.url, "shop")
        server.stop()
        answers = {}
        for engine in ("sql", "stream"):
            out = run_logged(
                throughline_bin, log, "clickhouse", "funnel", "--project", "shop", "--engine", engine,
                "--window", "1d", *sum((["--step", s] for s in STEPS), []), *ch_args,
            )
            answers[engine] = json.loads(out)["persons"]
        assert answers["sql"][0] > 0
        run_logged(throughline_bin, log, "clickhouse", "fold", "--project", "shop", *ch_args)
        for engine in ("sql", "stream"):
            out = run_logged(
                throughline_bin, log, "clickhouse", "funnel", "--project", "shop", "--engine", engine,
                "--window", "1d", *sum((["--step", s] for s in STEPS), []), *ch_args,
            )
            assert json.loads(out)["persons"] == answers[engine], "a fold changed a funnel"
        # The query API over ClickHouse: every kind's reads (rows, decoded events by name,
        # node and arrival number, the identity table).
        os.environ["THROUGHLINE_CLICKHOUSE_SQL_LOG"] = str(log)
        try:
            server.start()
        finally:
            del os.environ["THROUGHLINE_CLICKHOUSE_SQL_LOG"]
        auth = {"Authorization": f"Bearer {info['api_key']}"}
        drill = {"step": 1, "limit": 3}
        for kind, body in (
            ("funnel", {"steps": STEPS, "window": "1d", "persons": drill, "by": "property:plan"}),
            ("trends", {"events": ["*"], "interval": "day", "by": "person:plan"}),
            ("paths", {"start": STEPS[0], "depth": 3}),
            ("attribution", {"conversion": STEPS[-1], "model": "all"}),
            ("audit", {"conversion": STEPS[-1]}),
        ):
            r = requests.post(f"{server.url}/api/v1/projects/shop/query/{kind}", json=body, headers=auth, timeout=120)
            assert r.status_code == 200, f"{kind}: {r.text[:500]}"
            if kind == "funnel":
                person = r.json()["persons"]["person_ids"][0]
        r = requests.get(f"{server.url}/api/v1/projects/shop/persons/{person}", headers=auth, timeout=60)
        assert r.status_code == 200, r.text[:500]
        server.stop()

        # Replay into ClickHouse 26.
        entries = [json.loads(line) for line in (log / "statements.jsonl").read_text().splitlines()]
        chdir = tmp_path / "chdb"
        shutil.rmtree(chdir, ignore_errors=True)
        s = chdb_session.Session(str(chdir))
        queries = []
        kinds = {"ddl": 0, "insert": 0, "mutation": 0, "query": 0}
        for e in entries:
            sql = e["sql"].strip()
            if "system." in sql:
                continue  # server introspection (table checks, mutation waits)
            if "rows" in e:
                m = re.match(r"INSERT INTO (\S+) \((.*?)\) FORMAT RowBinary", sql)
                table, cols = m.group(1), [c.strip() for c in m.group(2).split(",")]
                path = log / e["rows"]
                s.query(
                    f"INSERT INTO {table} ({', '.join(cols)}) SELECT * FROM file('{path}', 'RowBinary', '{structure(s, table, cols)}')"
                )
                kinds["insert"] += 1
            elif sql.startswith("CREATE"):
                s.query(sql)
                kinds["ddl"] += 1
            elif sql.startswith("ALTER") or sql.startswith("INSERT"):
                s.query(sql)
                chdb_wait_mutations(s)
                kinds["mutation"] += 1
            elif sql.startswith("SELECT"):
                queries.append(as_tsv(sql))
                kinds["query"] += 1
        assert all(n > 0 for n in kinds.values()), kinds
        # Background merges may fold identical rows on one side and not yet on the other;
        # neither has replays here, so the answers must match exactly.
        # The replayed tables hold what 18.16 holds (compared as ReplacingMergeTree reads
        # them, whatever either server merged in the background meanwhile).
        for q in (
            f"SELECT count(), sum(h) FROM (SELECT seq, min(cityHash64(project, person, ts, node, kind, payload)) AS h "
            f"FROM {db}.events_local GROUP BY seq)",
            f"SELECT count(), sum(cityHash64(node, k, i, p, u)) FROM (SELECT node, argMax(kind, version) AS k, "
            f"argMax(id, version) AS i, argMax(person, version) AS p, argMax(is_user, version) AS u "
            f"FROM {db}.identities_local GROUP BY node)",
            f"SELECT count(), sum(cityHash64(old_person, np)) FROM (SELECT old_person, argMax(override_person, version) AS np "
            f"FROM {db}.person_overrides_local GROUP BY old_person)",
        ):
            old = cluster.query(q + " FORMAT TSV", url).strip()
            new = str(s.query(q, "TSV")).strip()
            assert old == new, f"{q}: {old} vs {new}"
        compared = 0
        for q in dict.fromkeys(queries):
            old = sorted(cluster.query(q + " FORMAT TSV", url).splitlines())
            new = sorted(str(s.query(q, "TSV")).splitlines())
            assert old == new, f"18.16 and 26 differ for {q}: {old} vs {new}; funnels {answers}"
            compared += 1
        assert compared >= 6
    finally:
        drop_database(cluster, db)
