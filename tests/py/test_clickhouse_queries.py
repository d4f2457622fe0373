"""Differential test of the ClickHouse backend's query answers: the demo's projects in the
embedded store, then migrated into the two-shard cluster and served by
`serve --backend clickhouse` on the same data directory. Every query kind of the HTTP API
(funnel modes, trends, retention, sessions, paths, assets, attribution models, emotion,
fatigue, audit), the dashboard's catalog and live feed, and the person profile, with a few parameter variations each, must give
byte-for-byte the same JSON on both.
"""

from __future__ import annotations

import json

import pytest
import requests

from clickhouse_env import drop_database, new_database, wait_forwarded
from harness import Server, run_cli

PERSONS = 400
CONVERSION = "Order Completed"
FUNNEL = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
PAID = {"channel": "Paid Search"}

# (name, project, kind, body): `kind` is a query kind, or `person` for a profile.
QUERIES: list[tuple[str, str, str, dict | None]] = [
    ("funnel-ordered", "headphones", "funnel", {"steps": FUNNEL, "window": "7d"}),
    ("funnel-strict", "headphones", "funnel", {"steps": FUNNEL[:3], "window": "1d", "order": "strict"}),
    ("funnel-unordered", "headphones", "funnel", {"steps": FUNNEL, "window": "30d", "order": "unordered"}),
    (
        "funnel-exclude-by-channel",
        "headphones",
        "funnel",
        {"steps": FUNNEL, "window": "7d", "exclude": ["Product Removed"], "by": "channel"},
    ),
    ("funnel-by-trait", "subscription", "funnel", {"steps": ["Signed Up", "Subscription Started"], "window": "14d", "by": "person:plan"}),
    ("funnel-by-property", "headphones", "funnel", {"steps": FUNNEL[:2], "window": "7d", "by": "property:category"}),
    ("funnel-filtered", "headphones", "funnel", {"steps": FUNNEL, "window": "7d", "filter": PAID}),
    (
        "funnel-drill",
        "headphones",
        "funnel",
        {"steps": FUNNEL, "window": "7d", "persons": {"step": 2, "status": "dropped", "limit": 20}},
    ),
    ("funnel-subscription", "subscription", "funnel", {"steps": ["Signed Up", "Subscription Started"], "window": "14d"}),
    ("trends-all-day", "headphones", "trends", {"events": ["*"], "interval": "day"}),
    ("trends-by-source", "headphones", "trends", {"events": FUNNEL[:2], "interval": "week", "by": "source"}),
    ("trends-by-property", "headphones", "trends", {"events": [CONVERSION], "interval": "month", "by": "property:category"}),
    ("trends-filtered", "headphones", "trends", {"events": ["*"], "interval": "week", "filter": PAID}),
    ("retention-week", "headphones", "retention", {"start": "Product Viewed", "return": "Product Viewed", "period": "week", "periods": 8}),
    ("retention-day", "subscription", "retention", {"start": "Signed Up", "return": "*", "period": "day", "periods": 14}),
    ("sessions-channel", "headphones", "sessions", {"by": "channel"}),
    ("sessions-campaign", "headphones", "sessions", {"by": "campaign", "timeout": "10m"}),
    ("sessions-landing-filtered", "headphones", "sessions", {"by": "landing_page", "filter": PAID}),
    ("paths-events", "headphones", "paths", {"depth": 5, "limit": 30}),
    ("paths-from-start", "headphones", "paths", {"start": "Product Viewed", "depth": 4}),
    ("paths-to-end", "headphones", "paths", {"end": CONVERSION, "depth": 4}),
    ("paths-channels", "headphones", "paths", {"of": "channels", "conversion": CONVERSION, "depth": 4, "limit": 50}),
    ("assets", "headphones", "assets", {"conversion": CONVERSION, "window": "7d", "limit": 50, "interval": "week"}),
    ("assets-revenue", "headphones", "assets", {"conversion": CONVERSION, "window": "7d", "limit": 8, "value": "revenue"}),
    (
        "attribution-all-channel",
        "headphones",
        "attribution",
        {"conversion": CONVERSION, "model": "all", "lookback": "30d", "by": "channel", "paths": 15},
    ),
    ("attribution-all-asset", "headphones", "attribution", {"conversion": CONVERSION, "model": "all", "lookback": "30d", "by": "asset"}),
    ("attribution-markov-campaign", "headphones", "attribution", {"conversion": CONVERSION, "model": "markov", "by": "campaign"}),
    ("attribution-shapley-source", "headphones", "attribution", {"conversion": CONVERSION, "model": "shapley", "by": "source"}),
    ("emotion-stage", "headphones", "emotion", {"by": "stage"}),
    ("emotion-channel", "headphones", "emotion", {"by": "channel", "min_responses": 5}),
    ("emotion-week", "subscription", "emotion", {"by": "week", "min_responses": 5}),
    ("fatigue", "headphones", "fatigue", {"conversion": CONVERSION}),
    ("fatigue-subscription", "subscription", "fatigue", {"conversion": "Subscription Started", "window": "14d"}),
    ("audit", "headphones", "audit", {"conversion": CONVERSION}),
    ("emotion-filtered", "headphones", "emotion", {"by": "stage", "min_responses": 5, "filter": PAID}),
    ("fatigue-filtered", "headphones", "fatigue", {"conversion": CONVERSION, "filter": PAID}),
    ("audit-filtered", "headphones", "audit", {"conversion": CONVERSION, "filter": PAID}),
]

# (name, project, path under the project): the dashboard's GET reads.
READS: list[tuple[str, str, str]] = [
    ("catalog", "headphones", "catalog"),
    ("catalog-subscription", "subscription", "catalog"),
    ("recent", "headphones", "events/recent?limit=50"),
    ("recent-subscription", "subscription", "events/recent?limit=200"),
]


def answers(server_url: str, keys: dict[str, str], person_ids: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """Every query of QUERIES and the profiles of `person_ids`: name -> (status, JSON text)."""
    out = {}
    for name, project, kind, body in QUERIES:
        r = requests.post(
            f"{server_url}/api/v1/projects/{project}/query/{kind}",
            json=body,
            headers={"Authorization": f"Bearer {keys[project]}"},
            timeout=300,
        )
        out[name] = (r.status_code, r.text)
    for name, project, path in READS:
        r = requests.get(
            f"{server_url}/api/v1/projects/{project}/{path}",
            headers={"Authorization": f"Bearer {keys[project]}"},
            timeout=60,
        )
        out[name] = (r.status_code, r.text)
    for project, ids in person_ids.items():
        for pid in ids:
            r = requests.get(
                f"{server_url}/api/v1/projects/{project}/persons/{pid}",
                headers={"Authorization": f"Bearer {keys[project]}"},
                timeout=60,
            )
            out[f"person-{project}-{pid}"] = (r.status_code, r.text)
    return out


@pytest.fixture(scope="module")
def both(throughline_bin, tmp_path_factory, clickhouse_cluster):
    """(embedded answers, ClickHouse answers) for the same demo data."""
    cluster = clickhouse_cluster
    work = tmp_path_factory.mktemp("chq")
    data = work / "demo"
    run_cli(throughline_bin, "demo", "--data", str(data), "--no-serve", "--persons", str(PERSONS), timeout=300)
    # Keys are stored hashed: issue fresh ones to read with.
    issued = {
        project: json.loads(run_cli(throughline_bin, "projects", "rotate-key", project, "--data", str(data)).stdout)
        for project in ("headphones", "subscription")
    }
    keys = {project: k["api_key"] for project, k in issued.items()}

    embedded = Server(throughline_bin, data, work)
    embedded.start()
    try:
        # Profiles of persons the funnel drill names: ids with several devices among them.
        person_ids = {}
        for project, steps in (("headphones", FUNNEL), ("subscription", ["Signed Up", "Subscription Started"])):
            r = requests.post(
                f"{embedded.url}/api/v1/projects/{project}/query/funnel",
                json={"steps": steps, "window": "30d", "persons": {"step": 1, "limit": 5}},
                headers={"Authorization": f"Bearer {keys[project]}"},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            person_ids[project] = r.json()["persons"]["person_ids"]
            assert person_ids[project], f"the demo's {project} funnel names nobody"
        first = answers(embedded.url, keys, person_ids)
    finally:
        embedded.stop()

    db = new_database()
    try:
        run_cli(throughline_bin, "clickhouse", "init", *cluster.args(db))
        reports = run_cli(
            throughline_bin, "migrate", "--data", str(data), "--to", cluster.urls[0], *cluster.args(db)[2:], timeout=300
        ).stdout
        assert all(json.loads(line)["verified"] for line in reports.splitlines() if line.strip()), reports
        remote = Server(throughline_bin, data, work)
        remote.extra_args = ["--backend", "clickhouse", *cluster.args(db)]
        remote.start()
        try:
            second = answers(remote.url, keys, person_ids)
            # The answers are ClickHouse's: an event sent to this server (into its outbox,
            # then ClickHouse; the embedded store never sees it) shows up in them.
            late = {"type": "track", "event": CONVERSION, "userId": "late-buyer", "timestamp": "2030-01-01T00:00:00Z"}
            r = remote.post("/v1/batch", {"batch": [late]}, issued["headphones"]["write_key"])
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            wait_forwarded(remote.url, "headphones")
            r = requests.post(
                f"{remote.url}/api/v1/projects/headphones/query/trends",
                json={"events": [CONVERSION], "interval": "month", "from": "2030-01-01"},
                headers={"Authorization": f"Bearer {keys['headphones']}"},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            late_rows = r.json()["rows"]
        finally:
            remote.stop()
    finally:
        drop_database(cluster, db)
    assert [(x["date"], x["events"], x["persons"]) for x in late_rows] == [("2030-01-01", 1, 1)], late_rows
    return first, second


def differences(a, b, path: str = "$", out: list | None = None, limit: int = 8) -> list[str]:
    """Where two JSON values differ, as `path: embedded != clickhouse` lines (the first few)."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'embedded' if k in a else 'clickhouse'}")
            else:
                differences(a[k], b[k], f"{path}.{k}", out, limit)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{path}[{i}]", out, limit)
    elif a != b:
        out.append(f"{path}: {json.dumps(a)[:300]} != {json.dumps(b)[:300]}")
    return out


@pytest.mark.parametrize("name", [q[0] for q in QUERIES] + [r[0] for r in READS] + ["persons"])
def test_clickhouse_answers_every_query_as_the_embedded_store(both, name):
    first, second = both
    names = [n for n in first if n.startswith("person-")] if name == "persons" else [name]
    for n in names:
        status, text = first[n]
        assert status == 200, f"embedded store: {n}: {status} {text[:500]}"
        assert json.loads(text), f"{n}: empty answer"
        got_status, got = second[n]
        assert got_status == 200, f"ClickHouse: {n}: {got_status} {got[:500]}"
        if got != text:
            a, b = json.loads(text), json.loads(got)
            assert b == a, f"{n}: ClickHouse differs from the embedded store:\n" + "\n".join(differences(a, b))
            pytest.fail(f"{n}: same values, different JSON text", pytrace=False)
