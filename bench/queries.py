#!/usr/bin/env python3
"""Query benchmark: Throughline against ClickHouse (chdb) and DuckDB on the same events.

`bench/run` prepares the data (generate -> import -> export Parquet) and then calls
`queries.py bench ...`, which

1. turns the export into one narrow Parquet file (`prepare`, in DuckDB): the columns the
   three queries read, the same ones Throughline keeps as columns in its segments
   (person, ts, type, name, page path) plus the arrival order, sorted by (person, ts,
   arrival) as Throughline's segments are;
2. starts one worker process per engine (`worker duckdb|chdb`), which loads that file into
   an in-memory table (2 threads) and then answers queries sent over a pipe, reporting the
   wall time and the process's peak RSS of each (VmHWM, reset before every query);
3. runs every query `--rounds` times per engine, rotating the engine order each round;
   Throughline is the real CLI (`throughline query ...`, timed as a whole process, peak
   RSS from wait4), and `throughline stats` once a round measures the part of that which
   is only opening the store; then, with `--project-json`, the same queries over HTTP to
   `throughline serve` (store opened once, as a deployment runs it);
4. checks every answer of every run against the CLI's first and prints a markdown table:
   best and median seconds, the ratio to the best reference engine, peak RSS.

The SQL is written here from the documented meaning of each query (see the module
constants), not from Throughline's Rust. Nothing is timed that the engines do not need to
answer the question: no JSON parsing, no string person ids (a dense integer id instead),
so the references are as fast as we know how to make them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# --------------------------------------------------------------------------- the queries

FUNNEL_STEPS = ["Product Viewed", "Product Added", "Checkout Started", "Payment Info Entered", "Order Completed"]
WINDOW_MS = 7 * 86_400_000
PATH_END = "Order Completed"
PATH_DEPTH = 5
PATH_LIMIT = 20
# The untimed check: Throughline's most paths, and its deepest, where ties matter most.
VERIFY_PATHS, VERIFY_DEPTH = 1000, 20
RET_START, RET_RETURN, RET_PERIODS = "Product Viewed", "Order Completed", 8
QUERIES = ["funnel", "paths", "retention"]
REFERENCES = ["chdb", "duckdb"]
THREADS = 2


def sql_string(s: str) -> str:
    if "\\" in s:
        raise ValueError(f"backslash in {s!r}")
    return "'" + s.replace("'", "''") + "'"


def throughline_args(query: str, limit: int = PATH_LIMIT, depth: int = PATH_DEPTH) -> list[str]:
    if query == "funnel":
        return ["funnel", *[a for s in FUNNEL_STEPS for a in ("--step", s)], "--window", "7d"]
    if query == "paths":
        return ["paths", "--end", PATH_END, "--depth", str(depth), "--limit", str(limit)]
    if query == "retention":
        return ["retention", "--start", RET_START, "--return", RET_RETURN, "--period", "week",
                "--periods", str(RET_PERIODS)]
    raise ValueError(query)


# Answers are normalized to plain JSON values so that every engine's can be compared:
# funnel: persons reaching each step; paths: [[labels], persons] of the top PATH_LIMIT
# (ranked by persons, then the path); retention: {cohort Monday: [size, returning 1..N]}.

def normalize_throughline(query: str, out: dict):
    if query == "funnel":
        return [s["persons"] for s in out["steps"]]
    if query == "paths":
        return [[p["path"], p["persons"]] for p in out["paths"]]
    if query == "retention":
        return {c["cohort"]: c["returning"] for c in out["cohorts"]}
    raise ValueError(query)


def funnel_levels_to_steps(rows) -> list[int]:
    levels = {int(lvl): int(n) for lvl, n in rows}
    return [sum(n for lvl, n in levels.items() if lvl >= k) for k in range(1, len(FUNNEL_STEPS) + 1)]


def retention_rows_to_table(rows) -> dict:
    out: dict[str, list[int]] = {}
    for cohort, p, n in rows:
        out.setdefault(str(cohort), [0] * (RET_PERIODS + 1))[int(p)] = int(n)
    return dict(sorted(out.items()))


# The label of an event in a path: page and screen views are `page:` + their path, else
# `page:` + their name (screens have no path); other events are their name, or their type
# (`identify`, `alias`) when they have none. `none` turns the dialect's "no value" into NULL.
def label_sql(none=lambda c: c) -> str:
    return (f"CASE WHEN kind IN ('page', 'screen') THEN concat('page:', coalesce({none('path')}, {none('name')}, "
            f"'(not set)')) ELSE coalesce({none('name')}, kind) END")


# -- DuckDB

def duck_funnel_sql() -> str:
    """ClickHouse's windowFunnel (default mode) in window functions.

    windowFunnel keeps, per step k, the start time of the latest chain reaching step k:
    a step-1 event starts a chain at its own time; a step-k event extends the chain held
    at step k-1 when it is within the window of that chain's start. Events are taken in
    (timestamp, step) order. The held start only ever grows, so "the chain held at step
    k-1 when e is seen" is the largest start of any valid step-(k-1) event before e: one
    window maximum per step over the step events in (person, ts, step) order. Each event
    matches one step here (the step names differ); repeated steps would need one row per
    (event, step) pair.
    """
    cases = " ".join(f"WHEN {sql_string(s)} THEN {i + 1}" for i, s in enumerate(FUNNEL_STEPS))
    names = ", ".join(sql_string(s) for s in FUNNEL_STEPS)
    # `start`: the chain start a step event holds (a step-1 event: its own time); NULL
    # until the pass of its step, and for a step-k event that extends no chain.
    ctes = [f"""
    s1 AS (
        SELECT person, ts, step, CASE WHEN step = 1 THEN ts END AS start
        FROM (SELECT person, ts, CASE name {cases} END AS step FROM events WHERE name IN ({names}))
    )"""]
    for k in range(2, len(FUNNEL_STEPS) + 1):
        ctes.append(f"""
    s{k} AS (
        SELECT person, ts, step,
               CASE WHEN step <> {k} THEN start WHEN ts - held <= {WINDOW_MS} THEN held END AS start
        FROM (SELECT person, ts, step, start,
                     max(CASE WHEN step = {k - 1} THEN start END) OVER (
                         PARTITION BY person ORDER BY ts, step
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS held
              FROM s{k - 1})
    )""")
    return f"""
    WITH {",".join(ctes)}
    SELECT level, count(*) FROM (
        SELECT person, max(CASE WHEN start IS NOT NULL THEN step ELSE 0 END) AS level
        FROM s{len(FUNNEL_STEPS)} GROUP BY person
    ) GROUP BY level ORDER BY level
    """


def duck_paths_sql(limit: int, depth: int) -> str:
    return f"""
    WITH ends AS (
        SELECT person, min({{'ts': ts, 'seq': seq}}) AS e FROM events WHERE name = {sql_string(PATH_END)}
        GROUP BY person
    ), upto AS (
        SELECT v.person, v.ts, v.seq, {label_sql()} AS label
        FROM events v JOIN ends USING (person)
        WHERE v.ts < ends.e.ts OR (v.ts = ends.e.ts AND v.seq <= ends.e.seq)
    ), steps AS (
        SELECT person, ts, seq, label FROM (
            SELECT *, lag(label) OVER (PARTITION BY person ORDER BY ts, seq) AS prev FROM upto
        ) WHERE prev IS NULL OR prev <> label
    ), tail AS (
        SELECT person, ts, seq, label,
               row_number() OVER (PARTITION BY person ORDER BY ts DESC, seq DESC) AS from_end
        FROM steps
    )
    SELECT path, count(*) AS persons FROM (
        SELECT person, list(label ORDER BY ts, seq) AS path FROM tail WHERE from_end <= {depth} GROUP BY person
    ) GROUP BY path ORDER BY persons DESC, path LIMIT {limit}
    """


def duck_retention_sql() -> str:
    return f"""
    WITH firsts AS (
        SELECT person, min(ts) AS first_ts FROM events WHERE name = {sql_string(RET_START)} GROUP BY person
    ), c AS (
        SELECT person, first_ts, date_trunc('week', epoch_ms(first_ts))::DATE AS cohort FROM firsts
    ), returns AS (
        SELECT DISTINCT c.person, c.cohort,
               date_diff('day', c.cohort, date_trunc('week', epoch_ms(e.ts))::DATE) // 7 AS p
        FROM c JOIN events e ON e.person = c.person
        WHERE e.name = {sql_string(RET_RETURN)} AND e.ts >= c.first_ts
    )
    SELECT strftime(cohort, '%Y-%m-%d'), 0, count(*) FROM c GROUP BY 1
    UNION ALL
    SELECT strftime(cohort, '%Y-%m-%d'), p, count(*) FROM returns WHERE p BETWEEN 1 AND {RET_PERIODS} GROUP BY 1, 2
    """


# -- ClickHouse

def ch_funnel_sql() -> str:
    conds = ", ".join(f"name = {sql_string(s)}" for s in FUNNEL_STEPS)
    names = ", ".join(sql_string(s) for s in FUNNEL_STEPS)
    return f"""
    SELECT level, count() FROM (
        SELECT person, windowFunnel({WINDOW_MS})(ts, {conds}) AS level
        FROM events WHERE name IN ({names}) GROUP BY person
    ) GROUP BY level ORDER BY level
    SETTINGS max_threads = {THREADS}
    """


def ch_paths_sql(limit: int, depth: int) -> str:
    return f"""
    WITH ends AS (
        SELECT person, min((ts, seq)) AS e FROM events WHERE name = {sql_string(PATH_END)} GROUP BY person
    )
    SELECT path, count() AS persons FROM (
        SELECT person,
               arrayMap(x -> x.3, arraySort(groupArray((ts, seq, label)))) AS labels,
               arrayFilter((l, i) -> i = 1 OR l != labels[i - 1], labels, arrayEnumerate(labels)) AS steps,
               arraySlice(steps, -{depth}) AS path
        FROM (
            SELECT v.person AS person, v.ts AS ts, v.seq AS seq, {label_sql(lambda c: f'nullIf({c}, {chr(39)}{chr(39)})')} AS label
            FROM events AS v INNER JOIN ends ON v.person = ends.person
            WHERE (v.ts, v.seq) <= ends.e
        )
        GROUP BY person
    ) GROUP BY path ORDER BY persons DESC, path LIMIT {limit}
    SETTINGS max_threads = {THREADS}
    """


def ch_retention_sql() -> str:
    return f"""
    WITH firsts AS (
        SELECT person, min(ts) AS first_ts, toMonday(toDateTime(intDiv(min(ts), 1000), 'UTC')) AS cohort
        FROM events WHERE name = {sql_string(RET_START)} GROUP BY person
    ), returns AS (
        SELECT DISTINCT f.person AS person, f.cohort AS cohort,
               intDiv(dateDiff('day', f.cohort, toMonday(toDateTime(intDiv(e.ts, 1000), 'UTC'))), 7) AS p
        FROM events AS e INNER JOIN firsts AS f ON e.person = f.person
        WHERE e.name = {sql_string(RET_RETURN)} AND e.ts >= f.first_ts
    )
    SELECT toString(cohort), 0, count() FROM firsts GROUP BY cohort
    UNION ALL
    SELECT toString(cohort), p, count() FROM returns WHERE p BETWEEN 1 AND {RET_PERIODS} GROUP BY cohort, p
    SETTINGS max_threads = {THREADS}
    """


# --------------------------------------------------------------------------- memory

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


# --------------------------------------------------------------------------- prepare

def prepare(export: Path, narrow: Path) -> dict:
    """The export (one row per stored event, JSON text columns) -> the narrow table.

    name: `event` of a track, `name` of a page/screen; path: a page/screen's
    properties.path, else context.page.path, else the path of its URL (properties.url,
    else context.page.url), cut at `?` or `#`; person: a dense integer per person_id;
    seq: the row number in the export, which lists events in Throughline's storage order
    (segments in order, then the log), the tie-break for events of one person at one
    millisecond.
    """
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {THREADS}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")

    def url_path(u: str) -> str:
        u0 = f"regexp_extract({u}, '^[^?#]*')"
        return (f"CASE WHEN {u} IS NULL THEN NULL WHEN contains({u0}, '://') "
                f"THEN coalesce(nullif(regexp_extract({u0}, '://[^/]*(/.*)$', 1), ''), '/') ELSE {u0} END")

    raw_path = ("coalesce(nullif(json_extract_string(properties, '$.path'), ''), "
                "nullif(json_extract_string(context, '$.page.path'), ''), "
                + url_path("coalesce(nullif(json_extract_string(properties, '$.url'), ''), "
                           "nullif(json_extract_string(context, '$.page.url'), ''))") + ")")
    con.execute(f"""
        COPY (
            WITH src AS (
                SELECT person_id, epoch_ms("timestamp") AS ts, file_row_number AS seq, "type" AS kind,
                       CASE WHEN "type" = 'track' THEN event WHEN "type" IN ('page', 'screen') THEN name END AS name,
                       CASE WHEN "type" IN ('page', 'screen') THEN regexp_extract({raw_path}, '^[^?#]*') END AS path
                FROM read_parquet({sql_string(str(export))}, file_row_number = true)
            ), ids AS (
                SELECT person_id, (row_number() OVER (ORDER BY person_id))::UINTEGER AS person
                FROM (SELECT DISTINCT person_id FROM src)
            )
            SELECT ids.person, src.ts, src.seq::UBIGINT AS seq, src.kind, src.name, src.path
            FROM src JOIN ids USING (person_id)
            ORDER BY ids.person, src.ts, src.seq
        ) TO {sql_string(str(narrow))} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000)
    """)
    rows, persons, empty = con.execute(
        "SELECT count(*), count(DISTINCT person), count(*) FILTER (WHERE name = '' OR path = '') "
        f"FROM read_parquet({sql_string(str(narrow))})").fetchone()
    if empty:
        # The ClickHouse table stores "none" as '' (see ChEngine): it must not be a value.
        raise SystemExit(f"{empty} events have an empty name or path")
    return {"seconds": time.perf_counter() - t0, "rows": int(rows), "persons": int(persons),
            "bytes": narrow.stat().st_size}


# --------------------------------------------------------------------------- workers

class DuckEngine:
    def __init__(self, narrow: Path):
        import duckdb

        self.con = duckdb.connect()
        self.con.execute(f"SET threads = {THREADS}")
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(
            "CREATE TABLE events AS SELECT person, ts::BIGINT AS ts, seq::BIGINT AS seq, kind, name, path "
            f"FROM read_parquet({sql_string(str(narrow))})")
        self.sql = {"funnel": duck_funnel_sql, "paths": duck_paths_sql, "retention": duck_retention_sql}
        self.version = duckdb.__version__

    def rows(self) -> int:
        return self.con.execute("SELECT count(*) FROM events").fetchone()[0]

    def run(self, query: str, limit: int, depth: int):
        rows = self.con.execute(self.sql[query](limit, depth) if query == "paths" else self.sql[query]()).fetchall()
        if query == "funnel":
            return funnel_levels_to_steps(rows)
        if query == "paths":
            return [[list(p), int(n)] for p, n in rows]
        return retention_rows_to_table(rows)


class ChEngine:
    def __init__(self, narrow: Path, tmp: Path):
        import chdb
        from chdb import session

        self.s = session.Session(str(tmp / "chdb-session"))
        self.q("DROP TABLE IF EXISTS events")
        # Plain String columns, '' for "none" (the data has no empty names or paths), as a
        # ClickHouse schema would; ts in ms as UInt64 for windowFunnel.
        self.q("CREATE TABLE events (person UInt32, ts UInt64, seq UInt64, kind String, "
               "name String, path String) ENGINE = Memory")
        self.q(f"INSERT INTO events SELECT person, ts, seq, kind, ifNull(name, ''), ifNull(path, '') "
               f"FROM file({sql_string(str(narrow))}, 'Parquet') SETTINGS max_threads = {THREADS}")
        self.sql = {"funnel": ch_funnel_sql, "paths": ch_paths_sql, "retention": ch_retention_sql}
        self.version = self.q("SELECT version()")[0][0]

    def q(self, sql: str):
        res = self.s.query(sql, "JSONCompact")
        text = res.bytes().decode() if hasattr(res, "bytes") else str(res)
        return json.loads(text)["data"] if text.strip() else []

    def rows(self) -> int:
        return int(self.q("SELECT count() FROM events")[0][0])

    def run(self, query: str, limit: int, depth: int):
        rows = self.q(self.sql[query](limit, depth) if query == "paths" else self.sql[query]())
        if query == "funnel":
            return funnel_levels_to_steps(rows)
        if query == "paths":
            return [[list(p), int(n)] for p, n in rows]
        return retention_rows_to_table(rows)


def worker(engine: str, narrow: Path, tmp: Path) -> None:
    """Loads the table, then answers one JSON request per stdin line on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # engines must not write into the protocol
    before = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    eng = DuckEngine(narrow) if engine == "duckdb" else ChEngine(narrow, tmp)
    load_s = time.perf_counter() - t0
    hello = {"engine": engine, "version": eng.version, "load_seconds": load_s, "rows": eng.rows(),
             "rss_before_load_mb": before, "rss_after_load_mb": rss_mb(), "peak_load_mb": peak_mb()}
    print(json.dumps(hello), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        query = req["query"]
        base = rss_mb()
        can_reset = reset_peak()
        t0 = time.perf_counter()
        try:
            answer, error = eng.run(query, req.get("limit", PATH_LIMIT), req.get("depth", PATH_DEPTH)), None
        except Exception as e:  # reported, never hidden: the table says which query failed
            answer, error = None, f"{type(e).__name__}: {e}"
        secs = time.perf_counter() - t0
        print(json.dumps({"seconds": secs, "rss_before_mb": base, "peak_mb": peak_mb() if can_reset else None,
                          "answer": answer, "error": error}), file=out, flush=True)


class Worker:
    def __init__(self, engine: str, narrow: Path, tmp: Path):
        self.engine = engine
        self.proc = subprocess.Popen([sys.executable, __file__, "worker", engine, str(narrow), str(tmp)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{engine} worker died while loading (exit {self.proc.wait()})")
        self.hello = json.loads(line)

    def run(self, query: str, limit: int = PATH_LIMIT, depth: int = PATH_DEPTH) -> dict:
        self.proc.stdin.write(json.dumps({"query": query, "limit": limit, "depth": depth}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.engine} worker died during {query} (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def run_process(args: list[str]) -> tuple[dict, bytes]:
    """Runs a command; wall seconds, its own peak RSS and CPU (wait4), and its stdout."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        error = None if code == 0 else f"exit {code}: {err.read().decode(errors='replace')[-500:]}"
    return {"seconds": secs, "peak_mb": usage.ru_maxrss / 1024, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "error": error}, stdout


def run_throughline(bin_path: str, data: Path, project: str, query: str, limit: int = PATH_LIMIT,
                    depth: int = PATH_DEPTH) -> dict:
    what, *rest = throughline_args(query, limit, depth)
    res, stdout = run_process([bin_path, "query", what, "--data", str(data), "--project", project, *rest])
    res["answer"] = None if res["error"] else normalize_throughline(query, json.loads(stdout))
    return res


def throughline_body(query: str) -> dict:
    """The HTTP request of a query: the same request type the CLI builds from its flags."""
    if query == "funnel":
        return {"steps": FUNNEL_STEPS, "window": "7d"}
    if query == "paths":
        return {"end": PATH_END, "depth": PATH_DEPTH, "limit": PATH_LIMIT}
    if query == "retention":
        return {"start": RET_START, "return": RET_RETURN, "period": "week", "periods": RET_PERIODS}
    raise ValueError(query)


class Server:
    """`throughline serve` over the benchmark's store: queries against an open store."""

    def __init__(self, bin_path: str, data: Path, project: str, api_key: str, log: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.project, self.api_key = project, api_key
        self.log = open(log, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([bin_path, "serve", "--data", str(data), "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"serve not healthy after 300 s; see {log}")
            time.sleep(0.1)
        self.start_seconds = time.perf_counter() - t0
        self.rss_after_open_mb = self._status_kb("VmRSS") / 1024

    def _status_kb(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def run(self, query: str) -> dict:
        base = self._status_kb("VmRSS") / 1024
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
            can_reset = True
        except OSError:
            can_reset = False
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/v1/projects/{self.project}/query/{query}",
            data=json.dumps(throughline_body(query)).encode(), method="POST",
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                body = r.read()
            secs = time.perf_counter() - t0
            answer, error = normalize_throughline(query, json.loads(body)), None
        except urllib.error.HTTPError as e:
            secs, answer, error = time.perf_counter() - t0, None, f"HTTP {e.code}: {e.read()[:300]!r}"
        except (OSError, ValueError, KeyError) as e:
            secs, answer, error = time.perf_counter() - t0, None, f"{type(e).__name__}: {e}"
        return {"seconds": secs, "rss_before_mb": base,
                "peak_mb": self._status_kb("VmHWM") / 1024 if can_reset else None,
                "answer": answer, "error": error}

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- the benchmark

def describe_difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = [f"{k}: {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(diffs[:5]) + (f" ... ({len(diffs)} cohorts differ)" if len(diffs) > 5 else "")
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"first difference at #{i + 1}: {x} vs {y}"
        return f"lengths {len(a)} vs {len(b)}"
    return f"{a} vs {b}"


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


# Row labels of the report, in order.
CLI, HTTP = "throughline", "throughline (HTTP)"


def bench(args) -> int:
    work = Path(args.work)
    data = Path(args.data)
    narrow = work / "events.narrow.parquet"
    meta = json.loads(Path(args.prep_json).read_text()) if args.prep_json else {}
    say(f"prepare: {args.export} -> {narrow}")
    prep = json.loads(subprocess.run([sys.executable, __file__, "prepare", args.export, str(narrow)],
                                     check=True, stdout=subprocess.PIPE, text=True).stdout)
    say(f"  {prep['rows']} rows, {prep['persons']} persons, {prep['seconds']:.1f}s")

    workers = {}
    for e in REFERENCES:
        say(f"load {e}")
        workers[e] = Worker(e, narrow, work)
        h = workers[e].hello
        say(f"  {h['rows']} rows in {h['load_seconds']:.1f}s, RSS {h['rss_after_load_mb']:.0f} MB")
        if h["rows"] != prep["rows"]:
            raise SystemExit(f"{e} loaded {h['rows']} rows, the file has {prep['rows']}")

    # Untimed: the top VERIFY_PATHS paths of depth VERIFY_DEPTH must be equal in all three:
    # long paths are many and diverse, so this tests the order of events at one millisecond.
    say(f"verify: top {VERIFY_PATHS} paths of depth {VERIFY_DEPTH} in every engine")
    full = {CLI: run_throughline(args.bin, data, args.project, "paths", VERIFY_PATHS, VERIFY_DEPTH)}
    for e, w in workers.items():
        full[e] = w.run("paths", VERIFY_PATHS, VERIFY_DEPTH)
    verify = []
    for e in REFERENCES:
        if full[e]["error"] or full[CLI]["error"]:
            verify.append(f"{e}: failed: {full[e]['error'] or full[CLI]['error']}")
        elif full[e]["answer"] != full[CLI]["answer"]:
            verify.append(f"{e} differs from throughline: " + describe_difference(full[e]["answer"], full[CLI]["answer"]))
    paths_listed = len(full[CLI]["answer"] or [])
    say(f"  {paths_listed} paths compared: " + ("equal" if not verify else "; ".join(verify)))

    load_start = loadavg()
    results: dict[tuple[str, str], list[dict]] = {}
    opens: list[dict] = []
    order = [CLI, "chdb", "duckdb"]
    for r in range(args.rounds):
        # The fixed cost of every CLI query: open the store and answer nothing.
        res, _ = run_process([args.bin, "stats", "--data", str(data), "--project", args.project])
        opens.append(res)
        say(f"round {r + 1} {'(open)':9} {'stats':18} {res['seconds']:8.3f}s")
        for q in QUERIES:
            for e in order:
                res = run_throughline(args.bin, data, args.project, q) if e == CLI else workers[e].run(q)
                results.setdefault((q, e), []).append(res)
                say(f"round {r + 1} {q:9} {e:18} {res['seconds']:8.3f}s"
                    + (f"  ERROR {res['error']}" if res["error"] else ""))
        order = order[1:] + order[:1]
    load_end = loadavg()
    for w in workers.values():
        w.close()

    # The same queries over HTTP: the server opens the store once, so this is the query
    # engine without the per-command open. The server takes the data directory's lock,
    # so this runs after the CLI rounds.
    server = None
    api_key = json.loads(Path(args.project_json).read_text())["api_key"] if args.project_json else None
    if api_key:
        say("serve")
        try:
            server = Server(args.bin, data, args.project, api_key, work / "serve.log")
            # Untimed: a first query, in case the server opens the project only on first use.
            first = server.run("retention")
            server.first_seconds = first["seconds"]
            server.rss_after_open_mb = server._status_kb("VmRSS") / 1024
            say(f"  healthy after {server.start_seconds:.1f}s, first query {first['seconds']:.1f}s, "
                f"RSS {server.rss_after_open_mb:.0f} MB")
            for r in range(args.rounds):
                for q in QUERIES:
                    res = server.run(q)
                    results.setdefault((q, HTTP), []).append(res)
                    say(f"round {r + 1} {q:9} {HTTP:18} {res['seconds']:8.3f}s"
                        + (f"  ERROR {res['error']}" if res["error"] else ""))
        except RuntimeError as e:
            say(f"  HTTP rounds skipped: {e}")
            for q in QUERIES:
                results[(q, HTTP)] = [{"seconds": 0, "answer": None, "error": str(e)}]
        finally:
            if server:
                server.close()

    # Correctness: every run of every engine gives the CLI's first answer.
    checks: dict[str, list[str]] = {q: [] for q in QUERIES}
    ok = True
    for q in QUERIES:
        want = results[(q, CLI)][0]["answer"]
        for e in [CLI, HTTP, *REFERENCES]:
            for i, res in enumerate(results.get((q, e), [])):
                if res["error"]:
                    checks[q].append(f"{e} run {i + 1} failed: {res['error']}")
                    ok = False
                elif res["answer"] != want:
                    checks[q].append(f"{e} run {i + 1} differs from throughline: "
                                     + describe_difference(res["answer"], want))
                    ok = False
    checks["paths"] += [f"top-{VERIFY_PATHS} depth-{VERIFY_DEPTH} check: {v}" for v in verify]
    ok = ok and not verify

    md = report(args, meta, prep, workers, server, results, opens, checks, load_start, load_end, paths_listed)
    print(md)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)
        say(f"wrote {args.out}")
    return 0 if ok else 1


def report(args, meta, prep, workers, server, results, opens, checks, load_start, load_end, paths_listed) -> str:
    def secs(q, e):
        return [r["seconds"] for r in results.get((q, e), []) if not r["error"]]

    lines = []
    lines.append(f"Events: {prep['rows']:,} ({prep['persons']:,} stitched persons)"
                 + (f"; {meta['generate']}" if meta.get("generate") else "") + ".")
    if meta.get("command"):
        lines.append(f"Command: `{meta['command']}`.")
    if meta.get("code"):
        lines.append(f"Code: {meta['code']}.")
    lines.append(f"Machine: {os.cpu_count()} cores ({platform.machine()}), "
                 f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM, shared; "
                 f"load average at the start / end of the timed rounds: {load_start} / {load_end}.")
    versions = ", ".join(f"{e} {w.hello['version']}" for e, w in workers.items())
    lines.append(f"References: {versions}, {THREADS} threads each, over in-memory tables.")
    prep_lines = [meta[k] for k in ("generate_import", "export") if meta.get(k)]
    prep_lines.append(f"narrow table for the references (DuckDB, from the export): {prep['seconds']:.1f}s, "
                      f"{prep['bytes'] / 2**20:.0f} MiB Parquet")
    for e, w in workers.items():
        h = w.hello
        prep_lines.append(f"{e} load into memory: {h['load_seconds']:.1f}s, RSS {h['rss_after_load_mb']:.0f} MB "
                          f"after loading (peak {h['peak_load_mb']:.0f} MB)")
    if server:
        prep_lines.append(f"`throughline serve` healthy after {server.start_seconds:.1f}s, a first (untimed) "
                          f"query {server.first_seconds:.1f}s, then RSS {server.rss_after_open_mb:.0f} MB")
    lines.append("Preparation (not timed below): " + "; ".join(prep_lines) + ".")
    lines.append("")
    lines.append("| query | engine | best s | median s | best / best reference | peak RSS MB | answers |")
    lines.append("|---|---|---|---|---|---|---|")
    for q in QUERIES:
        ref_best = min((min(secs(q, e)) for e in REFERENCES if secs(q, e)), default=None)
        for e in [CLI, HTTP, *REFERENCES]:
            runs = results.get((q, e))
            if not runs:
                continue
            s = secs(q, e)
            if not s:
                lines.append(f"| {q} | {e} | failed | | | | {str(runs[0]['error'])[:80]} |")
                continue
            best, med = min(s), statistics.median(s)
            ratio = f"{best / ref_best:.2f}" if ref_best else "n/a"
            if e in (CLI, HTTP) and ref_best:
                ratio += f" ({ref_best / best:.1f}x faster)" if best < ref_best else f" ({best / ref_best:.1f}x slower)"
            peaks = [(r["peak_mb"], r.get("rss_before_mb")) for r in runs if r.get("peak_mb") is not None]
            if not peaks:
                mem = "n/a"
            elif e == CLI:
                mem = f"{max(p for p, _ in peaks):.0f}"
            else:
                held = "over open store" if e == HTTP else "over table"
                mem = f"{max(p for p, _ in peaks):.0f} (+{max(p - b for p, b in peaks):.0f} {held})"
            bad = [c for c in checks[q] if c.startswith(e + " ")]
            lines.append(f"| {q} | {e} | {best:.3f} | {med:.3f} | {ratio} | {mem} | {'equal' if not bad else 'DIFFER'} |")
    ok_opens = [o for o in opens if not o["error"]]
    if ok_opens:
        o = [x["seconds"] for x in ok_opens]
        lines.append(f"| (none) | `throughline stats`: open the store, answer nothing | {min(o):.3f} | "
                     f"{statistics.median(o):.3f} | | {max(x['peak_mb'] for x in ok_opens):.0f} | |")
    lines.append("")
    lines.append(
        f"Each query ran {args.rounds} times per engine, the CLI and the references in rotating order each round, "
        "HTTP afterwards (the server holds the store's lock). throughline: the whole `throughline query` process "
        "(open the store, read the columns from the page cache, answer, print JSON); throughline (HTTP): a POST to "
        "`throughline serve`, store already open; references: the query alone, table already in memory. "
        "Ratio: best time / best time of chdb and DuckDB. Peak RSS: the CLI's whole process (wait4); for the server "
        "and the reference workers, the process's peak during the query (VmHWM reset before each) and in brackets "
        "how far above the RSS before it. \"answers\": every run equal to the CLI's first answer (funnel: persons "
        f"per step; paths: the top {PATH_LIMIT} paths and their persons, in rank order; retention: every cohort's "
        "size and returning persons in weeks 0-8).")
    lines.append(
        f"Before the timed rounds, the top {VERIFY_PATHS} paths of depth {VERIFY_DEPTH} (ranked by persons, then "
        f"path) were compared as well: {paths_listed} paths, "
        + ("equal in all three." if not any("top-" in c for c in checks["paths"]) else "NOT equal (below)."))
    for q in QUERIES:
        for c in checks[q]:
            lines.append(f"- {q}: {c}")
    ans = results[("funnel", CLI)][0]["answer"]
    if ans:
        lines.append(f"\nFunnel persons per step: {ans}.")
    tl_cpu = {q: min(r["cpu_seconds"] for r in results[(q, CLI)] if not r["error"]) for q in QUERIES if secs(q, CLI)}
    if tl_cpu:
        lines.append("`throughline query` CPU seconds (user + system, least of the runs): "
                     + ", ".join(f"{q} {v:.2f}" for q, v in tl_cpu.items())
                     + (f"; `stats` {min(o['cpu_seconds'] for o in ok_opens):.2f}" if ok_opens else "") + ".")
    return "\n".join(lines) + "\n"


def say(msg: str) -> None:
    print(f"[queries] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="the whole comparison over an imported project and its export")
    b.add_argument("--bin", required=True)
    b.add_argument("--data", required=True)
    b.add_argument("--project", required=True)
    b.add_argument("--export", required=True, help="`throughline export --format parquet` of the project")
    b.add_argument("--work", required=True, help="scratch directory")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--prep-json", help="facts about data preparation for the report (from bench/run)")
    b.add_argument("--project-json", help="`throughline projects create` output: its api key enables the HTTP rounds")
    b.add_argument("--out", help="also write the markdown here")
    pr = sub.add_parser("prepare")
    pr.add_argument("export")
    pr.add_argument("narrow")
    w = sub.add_parser("worker")
    w.add_argument("engine", choices=REFERENCES)
    w.add_argument("narrow")
    w.add_argument("tmp")
    args = p.parse_args()
    if args.cmd == "prepare":
        print(json.dumps(prepare(Path(args.export), Path(args.narrow))))
        return 0
    if args.cmd == "worker":
        worker(args.engine, Path(args.narrow), Path(args.tmp))
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
