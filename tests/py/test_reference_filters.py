"""Funnel steps with property conditions (`Order Completed where revenue > 300`) equal
ClickHouse's windowFunnel with the same condition on the exported properties, per stitched
person, on generated data with duplicates and out-of-order arrival."""

import json

import chdb
import pytest

import reference as ref
from harness import create_project, run_cli

WINDOW_MS = 7 * 86_400_000


@pytest.fixture(scope="module")
def orders(throughline_bin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("filters")
    data = tmp / "data"
    create_project(throughline_bin, data, "shop")
    src = tmp / "events.jsonl"
    run_cli(throughline_bin, "generate", "--brand", "headphones", "--persons", "1500", "--seed", "31",
            "--duplicates", "0.02", "--out-of-order", "--out", str(src))
    run_cli(throughline_bin, "import", "--data", str(data), "--project", "shop", str(src), "--quiet")
    export = tmp / "export.jsonl"
    run_cli(throughline_bin, "export", "--data", str(data), "--project", "shop", "--format", "jsonl", "--out", str(export))
    table = tmp / "table.jsonl"
    with open(export, encoding="utf-8") as f, open(table, "w", encoding="utf-8") as out:
        for line in f:
            row = json.loads(line)
            e = ref.event_from_export(row)
            revenue = (row.get("properties") or {}).get("revenue")
            out.write(json.dumps({"person_id": e.person, "ts": e.ts, "name": e.name,
                                  "revenue": float(revenue) if isinstance(revenue, (int, float)) else -1.0}) + "\n")
    return throughline_bin, data, table


def clickhouse_persons(table, conds: list[str]) -> list[int]:
    source = f"file('{table}', 'JSONEachRow', 'person_id String, ts UInt64, name String, revenue Float64')"
    sql = f"""SELECT level, count() FROM (
                SELECT person_id, windowFunnel({WINDOW_MS})(ts, {", ".join(conds)}) AS level
                FROM {source} GROUP BY person_id) GROUP BY level ORDER BY level FORMAT CSV"""
    levels = {}
    for line in chdb.query(sql).bytes().decode().splitlines():
        level, count = line.split(",")
        levels[int(level)] = int(count)
    return [sum(c for lvl, c in levels.items() if lvl >= k) for k in range(1, len(conds) + 1)]


@pytest.mark.parametrize("threshold", [0, 150, 300])
def test_where_conditions_equal_clickhouse(orders, threshold):
    bin_path, data, table = orders
    out = json.loads(run_cli(bin_path, "query", "funnel", "--data", str(data), "--project", "shop",
                             "--step", "Product Viewed", "--step", f"Order Completed where revenue > {threshold}",
                             "--window", "7d").stdout)
    got = [s["persons"] for s in out["steps"]]
    expected = clickhouse_persons(table, ["name = 'Product Viewed'", f"name = 'Order Completed' AND revenue > {threshold}"])
    assert got == expected
    assert got[1] > 0, "the data must hold orders above the threshold, or the test proves nothing"


def test_a_condition_narrows_the_step(orders):
    bin_path, data, _ = orders
    args = ["query", "funnel", "--data", str(data), "--project", "shop", "--window", "7d", "--step", "Product Viewed"]
    plain = json.loads(run_cli(bin_path, *args, "--step", "Order Completed").stdout)
    narrow = json.loads(run_cli(bin_path, *args, "--step", "Order Completed where revenue > 300").stdout)
    assert narrow["steps"][1]["persons"] < plain["steps"][1]["persons"]
