"""The ClickHouse backend's ingestion against two real ClickHouse 18.16 servers (a cluster
of two shards): every acknowledged message reaches ClickHouse once, duplicates are stored
once, each stored person's rows sit on the shard its sharding key names, and folding the
identity overrides puts each person's rows on one shard without changing any count.
"""

from __future__ import annotations

import json

import requests

from clickhouse_env import wait_forwarded
from harness import create_project, run_cli

BATCH = 200


def generated(bin_path, tmp_path, persons=250, seed=5, brand="headphones") -> list[dict]:
    out = tmp_path / f"gen-{brand}-{seed}.jsonl"
    run_cli(bin_path, "generate", "--brand", brand, "--persons", str(persons), "--seed", str(seed), "--out", str(out))
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def start_backend(make_server, data_dir, cluster, db):
    s = make_server(data_dir)
    s.extra_args = ["--backend", "clickhouse", *cluster.args(db)]
    return s.start()


def post_all(server, key, messages, batch=BATCH):
    accepted = duplicates = 0
    for i in range(0, len(messages), batch):
        r = server.post("/v1/batch", {"batch": messages[i : i + batch]}, key)
        assert r.status_code == 200, r.text
        body = r.json()
        accepted += body["accepted"]
        duplicates += body["duplicates"]
    return accepted, duplicates


def resolved_persons_per_shard(cluster, db, project):
    """For each person of today, the set of shards holding their rows (read per shard)."""
    overrides = dict(
        (int(a), int(b))
        for a, b in cluster.rows(
            f"SELECT old_person, argMax(override_person, version) FROM {db}.person_overrides "
            f"WHERE project = '{project}' GROUP BY old_person"
        )
    )
    shards: dict[int, set[int]] = {}
    for i, url in enumerate(cluster.urls):
        for (person,) in cluster.rows(
            f"SELECT DISTINCT person FROM {db}.events_local WHERE project = '{project}'", url
        ):
            p = overrides.get(int(person), int(person))
            shards.setdefault(p, set()).add(i)
    return shards


def test_acknowledged_events_reach_the_cluster_once_and_folds_colocate_persons(
    throughline_bin, data_dir, make_server, tmp_path, clickhouse_cluster, clickhouse_db
):
    cluster, db = clickhouse_cluster, clickhouse_db
    info = create_project(throughline_bin, data_dir, "shop")
    messages = generated(throughline_bin, tmp_path)
    server = start_backend(make_server, data_dir, cluster, db)
    accepted, duplicates = post_all(server, info["write_key"], messages)
    # SDK retries: the same batches again are acknowledged and not stored twice.
    again, dup_again = post_all(server, info["write_key"], messages[:1000])
    distinct_ids = {m["messageId"] for m in messages}
    assert accepted == len(distinct_ids) and again == 0 and dup_again == 1000
    status = wait_forwarded(server.url, "shop")
    assert status["forwarded_events"] == accepted

    events = f"{db}.events"
    rows = cluster.rows(
        f"SELECT count(), uniqExact(seq), uniqExact(message_hash), min(seq), max(seq) FROM {events} WHERE project = 'shop'"
    )[0]
    assert [int(x) for x in rows] == [accepted, accepted, accepted, 0, accepted - 1]
    stored_ids = {
        r[0]
        for r in cluster.rows(f"SELECT visitParamExtractString(payload, 'message_id') FROM {events} WHERE project = 'shop'")
    }
    assert stored_ids == distinct_ids

    # The Distributed table put every stored person on the shard its key names.
    for i, url in enumerate(cluster.urls):
        wrong = cluster.scalar(
            f"SELECT count() FROM {db}.events_local WHERE project = 'shop' "
            f"AND cityHash64(project, person) % 2 != {i}",
            url,
        )
        assert wrong == "0", f"shard {i + 1} holds {wrong} rows of the other shard"

    # Stitching merged persons after their first events: overrides exist, and some person
    # of today has rows on both shards until the fold.
    overrides = int(cluster.scalar(f"SELECT uniqExact(old_person) FROM {db}.person_overrides WHERE project = 'shop'"))
    assert overrides > 0
    before = resolved_persons_per_shard(cluster, db, "shop")
    assert any(len(s) > 1 for s in before.values()), "no person spans two shards: the fold test proves nothing"
    persons_before = len(before)

    report = json.loads(
        run_cli(throughline_bin, "clickhouse", "fold", "--project", "shop", "--data", str(data_dir), *cluster.args(db)).stdout
    )
    assert report["persons"] >= 1
    after = resolved_persons_per_shard(cluster, db, "shop")
    assert all(len(s) == 1 for s in after.values()), {p: s for p, s in after.items() if len(s) > 1}
    assert len(after) == persons_before
    assert cluster.scalar(f"SELECT count() FROM {db}.person_overrides WHERE project = 'shop'") == "0"
    rows = cluster.rows(f"SELECT uniqExact(seq), uniqExact(message_hash) FROM {events} WHERE project = 'shop'")[0]
    assert [int(x) for x in rows] == [accepted, accepted]

    # Events after the fold keep going to the person's one shard, and a second fold of
    # nothing is a no-op.
    more = generated(throughline_bin, tmp_path, persons=40, seed=6)
    more_accepted, _ = post_all(server, info["write_key"], more)
    wait_forwarded(server.url, "shop")
    total = accepted + more_accepted
    assert cluster.scalar(f"SELECT uniqExact(seq) FROM {events} WHERE project = 'shop'") == str(total)
    server.stop()


def test_a_restarted_server_resumes_forwarding_from_its_cursor(
    throughline_bin, data_dir, make_server, tmp_path, clickhouse_cluster, clickhouse_db
):
    cluster, db = clickhouse_cluster, clickhouse_db
    info = create_project(throughline_bin, data_dir, "shop")
    messages = generated(throughline_bin, tmp_path, persons=120, seed=9)
    half = len(messages) // 2
    server = start_backend(make_server, data_dir, cluster, db)
    first, _ = post_all(server, info["write_key"], messages[:half])
    wait_forwarded(server.url, "shop")
    server.kill9()
    server.start()
    second, dups = post_all(server, info["write_key"], messages[: half + (len(messages) - half)])
    assert second == len(messages) - half and dups == half
    wait_forwarded(server.url, "shop")
    got = cluster.rows(f"SELECT uniqExact(seq), max(seq) + 1, uniqExact(message_hash) FROM {db}.events WHERE project = 'shop'")[0]
    assert [int(x) for x in got] == [len(messages)] * 3
    server.stop()


def test_journeys_are_refused_on_clickhouse_rather_than_never_triggering(
    throughline_bin, data_dir, make_server, clickhouse_cluster, clickhouse_db
):
    """Events of a ClickHouse-backed server never reach the embedded store the orchestrator
    reads: a journey created there would wait forever and a backtest would replay nothing.
    The server says so (501) instead; checking a journey file needs no events and works."""
    info = create_project(throughline_bin, data_dir, "shop")
    server = start_backend(make_server, data_dir, clickhouse_cluster, clickhouse_db)
    journey = 'name = "welcome"\ntrigger = { event = "Signed Up" }\n[[steps]]\nid = "hello"\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\n'
    auth = {"Authorization": f"Bearer {info['api_key']}"}
    base = f"{server.url}/api/v1/projects/shop"
    checks = [
        ("get", "/journeys", None, "application/json"),
        ("post", "/journeys", journey, "application/toml"),
        ("post", "/journeys/backtest", json.dumps({"journey": journey, "from": "2025-01-01", "to": "2025-02-01"}), "application/json"),
        ("get", "/suppressions", None, "application/json"),
    ]
    for method, path, body, ctype in checks:
        r = requests.request(method, base + path, data=body, headers={**auth, "Content-Type": ctype}, timeout=30)
        assert r.status_code == 501, (path, r.status_code, r.text)
        assert "embedded store" in r.json()["error"] and "clickhouse" in r.json()["error"], r.text
    ok = requests.post(base + "/journeys/validate", data=journey, headers={**auth, "Content-Type": "application/toml"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["valid"] is True, ok.text
    # A bad key is still told first that it is a bad key.
    bad = requests.get(base + "/journeys", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert bad.status_code == 401
    server.stop()
