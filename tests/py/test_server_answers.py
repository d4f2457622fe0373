"""The server answers exactly as the command line does.

`throughline serve` keeps verified columns in memory (with derived ones such as the
type+code column) and reuses scan memory between queries; the command line streams
columns from the files a piece at a time. Both must give the same JSON for every query. The
store here is what makes the two paths differ: two imported segments, persons stitched
after their events were written (devices identified later), and events still in the log
(sent over HTTP to the running server). Each query is asked twice over HTTP (columns read,
then from the cache) and once from the command line after the server stopped (which
replays the same log).
"""

from __future__ import annotations

import json

import pytest
import requests

from harness import create_project, first_difference, run_cli

QUERIES = {
    "headphones": [
        ("funnel", {"steps": ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"], "window": "7d"}),
        ("funnel", {"steps": ["page:/products/*", "Checkout Started|Cart Viewed"], "order": "strict",
                    "exclude": ["Support Ticket Opened"], "window": "1d"}),
        ("funnel", {"steps": ["Product Viewed", "Order Completed where revenue > 50"], "by": "channel"}),
        ("funnel", {"steps": ["Product Viewed", "Product Added", "Order Completed"], "order": "unordered",
                    "window": "1d", "by": "property:category", "by_limit": 3}),
        ("funnel", {"steps": ["Product Viewed", "Order Completed"], "persons": {"step": 2, "status": "dropped",
                                                                               "offset": 3, "limit": 7}}),
        ("funnel", {"steps": ["Product Viewed", "Product Added", "Order Completed"], "window": "7d",
                    "filter": {"channel": "Organic Search"}}),
        ("paths", {"end": "Order Completed", "depth": 5}),
        ("paths", {"end": "Order Completed", "depth": 3, "filter": {"channel": "Paid Search"}}),
        ("paths", {"start": "page:/cart*", "depth": 4}),
        ("paths", {"of": "channels", "conversion": "Order Completed"}),
        ("retention", {"start": "Product Viewed", "return": "Order Completed", "period": "week", "periods": 6}),
        ("retention", {"start": "Product Viewed", "return": "Order Completed", "period": "week", "periods": 6,
                       "filter": {"channel": "Email"}}),
        ("trends", {"events": ["Order Completed", "page:/products/*"], "interval": "day", "by": "person:locale"}),
        ("sessions", {"by": "channel"}),
        ("assets", {"conversion": "Order Completed", "value": "revenue"}),
    ],
    "subscription": [
        ("funnel", {"steps": ["page:/pricing", "Signup Started", "Signed Up", "Trial Started"], "window": "7d",
                    "from": "2026-09-10"}),
        ("paths", {"end": "Signed Up", "depth": 6}),
        ("retention", {"start": "Signed Up", "return": "Note Created", "period": "day", "periods": 10}),
        ("trends", {"events": ["Note Created"], "interval": "week", "by": "property:words", "by_limit": 5}),
    ],
}


def cli_args(kind: str, body: dict) -> list[str]:
    """The command-line flags of an HTTP body."""
    flag = {"steps": "--step", "events": "--event", "exclude": "--exclude"}
    args: list[str] = []
    for k, v in body.items():
        if k in flag:
            for x in v:
                args += [flag[k], x]
        elif k == "filter":
            for f, x in v.items():
                args += ["--" + f, x]
        elif k == "persons":
            args += ["--persons-at", str(v["step"]), "--persons-status", v["status"],
                     "--persons-offset", str(v["offset"]), "--persons-limit", str(v["limit"])]
        else:
            args += ["--" + k.replace("_", "-"), str(v)]
    return args


@pytest.mark.parametrize("brand,seed", [("headphones", 31), ("subscription", 32)])
def test_server_answers_equal_the_command_line(throughline_bin, make_server, tmp_path, brand, seed):
    generated = tmp_path / "generated.jsonl"
    run_cli(throughline_bin, "generate", "--brand", brand, "--persons", "1500", "--seed", str(seed),
            "--duplicates", "0.02", "--out-of-order", "--out", str(generated), timeout=120)
    lines = [line for line in generated.read_text(encoding="utf-8").splitlines() if line.strip()]
    # Two imported segments, then the rest over HTTP into the log.
    cut1, cut2 = len(lines) * 2 // 5, len(lines) * 4 // 5
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    info = create_project(throughline_bin, data_dir, brand)
    for n, part in enumerate([lines[:cut1], lines[cut1:cut2]]):
        f = tmp_path / f"part{n}.jsonl"
        f.write_text("\n".join(part) + "\n", encoding="utf-8")
        run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", brand, str(f), "--quiet", timeout=120)
    server = make_server(data_dir).start()
    rest = [json.loads(line) for line in lines[cut2:]]
    for i in range(0, len(rest), 100):
        r = server.post("/v1/batch", {"batch": rest[i:i + 100]}, info["write_key"])
        assert r.status_code == 200, r.text[:300]
    stats = requests.get(server.url + "/metrics", timeout=10).text
    assert "throughline_query_cache_bytes_max" in stats

    served = {}
    for i, (kind, body) in enumerate(QUERIES[brand]):
        answers = []
        for _ in range(2):
            r = requests.post(f"{server.url}/api/v1/projects/{brand}/query/{kind}", json=body,
                              headers={"Authorization": f"Bearer {info['api_key']}"}, timeout=120)
            assert r.status_code == 200, (kind, body, r.text[:300])
            answers.append(r.json())
        assert answers[0] == answers[1], f"{kind} {body}: second answer differs: {first_difference(*answers)}"
        served[i] = answers[0]
    hits = [line for line in requests.get(server.url + "/metrics", timeout=10).text.splitlines()
            if line.startswith("throughline_query_cache_hits_total")]
    assert hits and int(hits[0].split()[-1]) > 0, hits
    server.stop()

    problems = []
    for i, (kind, body) in enumerate(QUERIES[brand]):
        args = cli_args(kind, body)
        proc = run_cli(throughline_bin, "query", kind, "--data", str(data_dir), "--project", brand, *args)
        diff = first_difference(served[i], json.loads(proc.stdout))
        if diff:
            problems.append(f"{kind} {' '.join(args)}: {diff}")
    assert not problems, "\n".join(problems)
