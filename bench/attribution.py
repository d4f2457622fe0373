#!/usr/bin/env python3
"""Attribution benchmark: Throughline against ChannelAttribution, ClickHouse (chdb) and DuckDB.

`bench/attribution` drives it; two parts, each printing a markdown section:

* `paths`: Markov attribution (orders 1 and 2) on generated path tables of 100k and 1M
  distinct paths in ChannelAttribution's format. Throughline is the whole CLI process
  (`throughline attribution --paths FILE --model markov`: process start, reading the CSV,
  the exact solve); ChannelAttribution is `markov_model` alone on a DataFrame already in
  memory, at its default `nsim_start=1e5` and at `1e7`. Besides time, the table reports how
  far each simulated answer strays from the exact one (largest difference in a channel's
  credit, as a share of all conversions).
* `events`: the same attribution question asked of raw events: for each person's first
  `Order Completed`, linear and last-touch credit (conversions and revenue) over the
  landing pages of the person's sessions (visit events split by 30 minutes of
  inactivity) that started within 90 days before it. Throughline answers with `query
  attribution --by landing_page --model linear,last_touch` (CLI process, and over HTTP to `throughline serve`);
  DuckDB and chdb answer the SQL below over an in-memory table of the narrow columns the
  question reads, loaded before timing. The SQL is written from the documented meaning of
  the question, not from Throughline's Rust. Every answer is checked against the CLI's.

The machine is shared and noisy: report ratios of best times from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

THREADS = 2
LOOKBACK_MS = 90 * 86_400_000
TIMEOUT_MS = 30 * 60_000
CONVERSION = "Order Completed"


def sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# --------------------------------------------------------------------------- path tables


def generate_table(n: int, path: Path, seed: int = 1, channels: int = 12) -> None:
    """n distinct paths: lengths mostly 1-4 (up to 15), channels with different pull and
    closing rates, 1-40 persons per path."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = ["Direct"] + [f"Channel {i}" for i in range(channels - 1)]
    pull = rng.uniform(0.5, 2.0, channels)
    pull /= pull.sum()
    close = rng.uniform(0.05, 0.6, channels)
    seen: set[bytes] = set()
    lines = ["path;total_conversions;total_conversion_value;total_null"]
    while len(seen) < n:
        m = (n - len(seen)) * 2
        lens = np.minimum(rng.geometric(0.35, size=m), 15)
        flat = rng.choice(channels, size=int(lens.sum()), p=pull).astype(np.uint8)
        people = rng.integers(1, 40, size=m)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        for k in range(m):
            p = flat[starts[k]:starts[k] + lens[k]]
            key = p.tobytes()
            if key in seen:
                continue
            seen.add(key)
            conv = int(rng.binomial(people[k], close[p[-1]]))
            value = round(conv * float(rng.uniform(5, 200)), 2)
            lines.append(f"{' > '.join(names[c] for c in p)};{conv};{value};{int(people[k]) - conv}")
            if len(seen) >= n:
                break
    path.write_text("\n".join(lines) + "\n")


def timed_process(args: list[str]) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS in MB and stdout of a whole process. The RSS comes from GNU
    time, since wait4's counts the memory of the Python process the child forked from."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *args], capture_output=True)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{args} failed: {p.stderr.decode()}")
    return secs, int(p.stderr.decode().strip().splitlines()[-1]) // 1024, p.stdout


def bench_paths(args) -> None:
    import pandas as pd
    from ChannelAttribution import markov_model

    work = Path(args.work)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        f = work / f"paths-{n}.csv"
        if not f.exists():
            t0 = time.perf_counter()
            generate_table(n, f)
            print(f"generated {n} paths in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        df = pd.read_csv(f, sep=";")
        total = float(df["total_conversions"].sum())
        for order in [1, 2]:
            times, rss, exact = [], 0, None
            for _ in range(args.rounds):
                s, r, out = timed_process([args.bin, "attribution", "--paths", str(f), "--model", "markov",
                                           "--order", str(order)])
                times.append(s)
                rss = max(rss, r)
                exact = {x["key"]: x["conversions"] for x in json.loads(out)["rows"]}
            row = {"paths": n, "order": order, "throughline": min(times), "throughline_rss": rss}
            for nsim, label, rounds in [(1e5, "ca_default", args.rounds), (1e7, "ca_1e7", 1)]:
                ca_times, stray = [], 0.0
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    res = markov_model(df, "path", "total_conversions", var_value="total_conversion_value",
                                       var_null="total_null", order=order, nsim_start=nsim, verbose=False,
                                       flg_pro=False)
                    ca_times.append(time.perf_counter() - t0)
                    got = {r.channel_name: r.total_conversions for r in res.itertuples()}
                    stray = max(stray, max(abs(got.get(k, 0.0) - v) for k, v in exact.items()) / total)
                row[label] = min(ca_times)
                row[label + "_stray"] = stray
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    lines = [
        "| distinct paths | order | Throughline (CLI process) | peak RSS | ChannelAttribution 1e5 sims | ratio | its largest error | ChannelAttribution 1e7 sims | ratio | its largest error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['paths']:,} | {r['order']} | {r['throughline']:.2f} s | {r['throughline_rss']} MB | "
            f"{r['ca_default']:.2f} s | {r['ca_default'] / r['throughline']:.1f}x faster | {r['ca_default_stray'] * 100:.2f}% | "
            f"{r['ca_1e7']:.2f} s | {r['ca_1e7'] / r['throughline']:.1f}x faster | {r['ca_1e7_stray'] * 100:.2f}% |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# --------------------------------------------------------------------------- events


def prepare(export: Path, narrow: Path) -> int:
    """The export -> the columns the question reads, sorted by (person, ts, arrival):
    person (dense integer), ts, seq (export row: Throughline's storage order, the tie
    break), visit (page or screen, or any event sent from a page), path (the page path
    as collected: properties.path of a page/screen, else context.page.path, else the
    path of the page URL), conversion (a track named CONVERSION) and its revenue."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {THREADS}")
    con.execute("SET TimeZone = 'UTC'")

    def url_path(u: str) -> str:
        u0 = f"regexp_extract({u}, '^[^?#]*')"
        return (f"CASE WHEN {u} IS NULL THEN NULL WHEN contains({u0}, '://') "
                f"THEN coalesce(nullif(regexp_extract({u0}, '://[^/]*(/.*)$', 1), ''), '/') ELSE {u0} END")

    own = "\"type\" IN ('page', 'screen')"
    path = (f"regexp_extract(coalesce("
            f"CASE WHEN {own} THEN nullif(json_extract_string(properties, '$.path'), '') END, "
            f"nullif(json_extract_string(context, '$.page.path'), ''), "
            + url_path(f"coalesce(CASE WHEN {own} THEN nullif(json_extract_string(properties, '$.url'), '') END, "
                       "nullif(json_extract_string(context, '$.page.url'), ''))") + "), '^[^?#]*')")
    con.execute(f"""
        COPY (
            WITH src AS (
                SELECT person_id, epoch_ms("timestamp") AS ts, file_row_number AS seq,
                       {own} AS own, {path} AS path,
                       ("type" = 'track' AND event = {sql_string(CONVERSION)}) AS conversion,
                       coalesce(TRY_CAST(json_extract_string(properties, '$.revenue') AS DOUBLE), 0) AS revenue
                FROM read_parquet({sql_string(str(export))}, file_row_number = true)
            ), ids AS (
                SELECT person_id, (row_number() OVER (ORDER BY person_id))::UINTEGER AS person
                FROM (SELECT DISTINCT person_id FROM src)
            )
            SELECT ids.person, src.ts, src.seq::UBIGINT AS seq, (src.own OR src.path IS NOT NULL) AS visit,
                   src.path, src.conversion, src.revenue
            FROM src JOIN ids USING (person_id)
            WHERE (src.own OR src.path IS NOT NULL) OR src.conversion
            ORDER BY ids.person, src.ts, src.seq
        ) TO {sql_string(str(narrow))} (FORMAT parquet, COMPRESSION zstd)
    """)
    return con.execute(f"SELECT count(*) FROM read_parquet({sql_string(str(narrow))})").fetchone()[0]


DUCK_SQL = f"""
WITH visits AS (
    SELECT person, ts, coalesce(path, '(not set)') AS label,
           ts - lag(ts) OVER (PARTITION BY person ORDER BY ts, seq) AS gap
    FROM events WHERE visit
), sessions AS (
    SELECT person, ts AS start, label FROM visits WHERE gap IS NULL OR gap > {TIMEOUT_MS}
), conv AS (
    SELECT person, arg_min(ts, (ts, seq)) AS ts, arg_min(revenue, (ts, seq)) AS revenue
    FROM events WHERE conversion GROUP BY person
), journey AS (
    SELECT s.person, s.label, c.revenue,
           count(*) OVER (PARTITION BY s.person) AS n,
           row_number() OVER (PARTITION BY s.person ORDER BY s.start DESC) AS back
    FROM sessions s JOIN conv c ON s.person = c.person
    WHERE s.start <= c.ts AND s.start >= c.ts - {LOOKBACK_MS}
)
SELECT label, sum(1.0 / n), sum(revenue / n), count(*) FILTER (WHERE back = 1),
       coalesce(sum(revenue) FILTER (WHERE back = 1), 0)
FROM journey GROUP BY label
"""

CH_SQL = f"""
WITH visits AS (
    SELECT person, ts, seq, if(path = '', '(not set)', path) AS label,
           ts - lagInFrame(ts, 1, toInt64(-1e15)) OVER (PARTITION BY person ORDER BY ts, seq
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS gap
    FROM events WHERE visit
), sessions AS (
    SELECT person, ts AS start, label FROM visits WHERE gap > {TIMEOUT_MS}
), conv AS (
    SELECT person, argMin(ts, (ts, seq)) AS cts, argMin(revenue, (ts, seq)) AS revenue
    FROM events WHERE conversion GROUP BY person
), journey AS (
    SELECT s.person AS person, s.label AS label, c.revenue AS revenue,
           count() OVER (PARTITION BY s.person) AS n,
           row_number() OVER (PARTITION BY s.person ORDER BY s.start DESC) AS back
    FROM sessions AS s INNER JOIN conv AS c ON s.person = c.person
    WHERE s.start <= c.cts AND s.start >= c.cts - {LOOKBACK_MS}
)
SELECT label, sum(1.0 / n), sum(revenue / n), countIf(back = 1), sumIf(revenue, back = 1)
FROM journey GROUP BY label
SETTINGS max_threads = {THREADS}
"""


def engine_worker(engine: str, narrow: str, tmp: str, rounds: int) -> None:
    """Loads the table in memory, then times the query `rounds` times; prints JSON."""
    out = sys.stdout
    sys.stdout = sys.stderr
    if engine == "duckdb":
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET threads = {THREADS}")
        con.execute(f"CREATE TABLE events AS SELECT person, ts::BIGINT AS ts, seq::BIGINT AS seq, visit, path, "
                    f"conversion, revenue FROM read_parquet({sql_string(narrow)})")
        run = lambda: con.execute(DUCK_SQL).fetchall()
        version = duckdb.__version__
    else:
        from chdb import session

        s = session.Session(os.path.join(tmp, "chdb-attribution"))

        def q(sql: str):
            res = s.query(sql, "JSONCompact")
            text = res.bytes().decode() if hasattr(res, "bytes") else str(res)
            return json.loads(text)["data"] if text.strip() else []

        q("DROP TABLE IF EXISTS events")
        q("CREATE TABLE events (person UInt32, ts Int64, seq UInt64, visit Bool, path String, conversion Bool, "
          "revenue Float64) ENGINE = Memory")
        q(f"INSERT INTO events SELECT person, ts, seq, visit, ifNull(path, ''), conversion, revenue "
          f"FROM file({sql_string(narrow)}, 'Parquet') SETTINGS max_threads = {THREADS}")
        run = lambda: q(CH_SQL)
        version = q("SELECT version()")[0][0]
    times, answer = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        rows = run()
        times.append(time.perf_counter() - t0)
        answer = {r[0]: [float(r[1]), float(r[2]), float(r[3]), float(r[4])] for r in rows}
    print(json.dumps({"engine": engine, "version": version, "times": times, "answer": answer}), file=out)


def normalize(resp: dict) -> dict:
    """{label: [linear conversions, linear value, last-touch conversions, last-touch value]}"""
    models = {m["model"]: {r["key"]: r for r in m["rows"]} for m in resp["models"]}
    out = {}
    for key in models["linear"]:
        lin, last = models["linear"][key], models["last_touch"].get(key)
        out[key] = [lin["conversions"], lin["value"], last["conversions"] if last else 0.0,
                    last["value"] if last else 0.0]
    return {k: v for k, v in out.items() if any(abs(x) > 1e-12 for x in v)}


def same(a: dict, b: dict) -> str | None:
    a = {k: v for k, v in a.items() if any(abs(x) > 1e-12 for x in v)}
    b = {k: v for k, v in b.items() if any(abs(x) > 1e-12 for x in v)}
    if set(a) != set(b):
        return f"labels differ: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        for x, y in zip(a[k], b[k]):
            if abs(x - y) > 1e-6 * max(1.0, abs(y)):
                return f"{k}: {a[k]} vs {b[k]}"
    return None


def bench_events(args) -> None:
    work = Path(args.work)
    narrow = work / "attribution-narrow.parquet"
    t0 = time.perf_counter()
    rows = prepare(Path(args.export), narrow)
    print(f"narrow table: {rows} rows in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    query = ["query", "attribution", "--data", args.data, "--project", args.project, "--conversion", CONVERSION,
             "--value", "revenue", "--by", "landing_page", "--model", "linear,last_touch", "--lookback", "90d"]
    body = {"conversion": CONVERSION, "value": "revenue", "by": "landing_page", "model": "linear,last_touch",
            "lookback": "90d"}
    results: dict[str, dict] = {}
    cli_times, cli_rss, reference = [], 0, None
    for _ in range(args.rounds):
        s, r, out = timed_process([args.bin, *query])
        cli_times.append(s)
        cli_rss = max(cli_rss, r)
        reference = normalize(json.loads(out))
    results["Throughline CLI (whole process)"] = {"times": cli_times, "rss": cli_rss}
    # HTTP: a server opened once, as a deployment runs it.
    project = json.loads(Path(args.project_json).read_text())
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([args.bin, "serve", "--data", args.data, "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        http_times = []
        for i in range(args.rounds + 1):
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/projects/{args.project}/query/attribution",
                data=json.dumps(body).encode(), method="POST",
                headers={"Authorization": f"Bearer {project['api_key']}", "Content-Type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=600) as resp:
                answer = json.loads(resp.read())
            if i > 0:  # the first request warms the page cache, as a running server has it
                http_times.append(time.perf_counter() - t0)
            err = same(normalize(answer), reference)
            if err:
                raise SystemExit(f"HTTP answer differs from the CLI's: {err}")
        results["Throughline HTTP"] = {"times": http_times}
    finally:
        server.terminate()
        server.wait(timeout=30)
    for engine in ["chdb", "duckdb"]:
        out = subprocess.run([sys.executable, __file__, "engine", engine, str(narrow), str(work), str(args.rounds)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{engine} failed: {out.stderr[-2000:]}")
        res = json.loads(out.stdout)
        err = same(res["answer"], reference)
        if err:
            raise SystemExit(f"{engine} answer differs from Throughline's: {err}")
        results[f"{engine} {res['version']}"] = {"times": res["times"]}
    best_ref = min(min(v["times"]) for k, v in results.items() if not k.startswith("Throughline"))
    lines = [f"{rows:,} narrow rows (visits and conversions) read by the SQL engines; every answer equal.", "",
             "| engine | best | median | vs best of chdb/DuckDB |", "|---|---|---|---|"]
    for k, v in results.items():
        b, m = min(v["times"]), statistics.median(v["times"])
        ratio = best_ref / b
        rel = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
        extra = f" (peak RSS {v['rss']} MB)" if "rss" in v else ""
        lines.append(f"| {k}{extra} | {b:.3f} s | {m:.3f} s | {rel} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        engine_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("paths")
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", required=True)
    e = sub.add_parser("events")
    for a in ["--bin", "--data", "--project", "--export", "--work", "--project-json", "--out"]:
        e.add_argument(a, required=True)
    e.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    bench_paths(args) if args.cmd == "paths" else bench_events(args)


if __name__ == "__main__":
    main()
