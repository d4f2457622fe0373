"""Reference answers for Throughline's queries, computed without Throughline's code.

The input is what `throughline export` wrote (every stored event once, with the stitched
`person_id`), so a reference groups by the same persons the query engine sees. From there:

- funnels (ordered, strict): ClickHouse's own `windowFunnel`, run in-process by chdb;
- funnels (unordered) and trends and retention: DuckDB SQL written here;
- funnels with exclusions: a Python brute force over chains (and ClickHouse over the
  stretches between exclusions, as a second opinion).

Nothing here imports or mirrors Throughline's Rust: the step language (`A|B`,
`page:/path/*`) is implemented again from its documented meaning.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DAY_MS = 86_400_000
# Step language: page/screen names and paths carry no SQL LIKE metacharacters here, and
# the generator never produces them; refuse them rather than escape them wrongly.
LIKE_UNSAFE = re.compile(r"[%_\\]")


# --------------------------------------------------------------------------- events


def parse_ms(text: str) -> int:
    """ISO-8601 (as exported: `2026-09-01T06:15:52.545Z`) -> integer milliseconds, UTC."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def ms_to_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def date_to_ms(date: str) -> int:
    return parse_ms(date + "T00:00:00Z")


@dataclass(frozen=True)
class Event:
    person: str
    ts: int
    kind: str
    name: str  # the event of a track, the name of a page/screen; "" when none
    path: str  # page/screen path (properties.path, else context.page.path, else the URL's); "" when none


def _url_path(url: str) -> str:
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*([^?#]*)", url)
    return (m.group(1) or "/") if m else ""


def event_from_export(row: dict) -> Event:
    kind = row.get("type") or ""
    if kind == "track":
        name = row.get("event") or ""
    elif kind in ("page", "screen"):
        name = row.get("name") or ""
    else:
        name = ""
    path = ""
    if kind in ("page", "screen"):
        props = row.get("properties") or {}
        page = (row.get("context") or {}).get("page") or {}
        for candidate in (props.get("path"), page.get("path")):
            if isinstance(candidate, str) and candidate:
                path = candidate
                break
        else:
            for url in (props.get("url"), page.get("url")):
                if isinstance(url, str) and url:
                    path = _url_path(url)
                    break
        path = re.split(r"[?#]", path, maxsplit=1)[0]
    return Event(person=row["person_id"], ts=parse_ms(row["timestamp"]), kind=kind, name=name, path=path)


def load_export(path: Path) -> list[Event]:
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                events.append(event_from_export(json.loads(line)))
    return events


def write_table(events: list[Event], path: Path) -> Path:
    """The events as JSONEachRow / newline-delimited JSON, the one file both engines read."""
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps({"person_id": e.person, "ts": e.ts, "kind": e.kind, "name": e.name, "path": e.path}))
            f.write("\n")
    return path


# --------------------------------------------------------------------------- steps


def sql_string(s: str) -> str:
    """A string literal both ClickHouse and DuckDB read back as `s`."""
    if "\\" in s:
        raise ValueError(f"backslash in {s!r}: not needed by these tests")
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class Step:
    """One funnel step / trend event: `A`, `A|B`, `page:/path/*` or a mix."""

    label: str
    names: tuple[str, ...]
    globs: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> "Step":
        names, globs = [], []
        for alt in text.split("|"):
            alt = alt.strip()
            if alt.startswith("page:"):
                glob = alt[len("page:"):].strip()
                if LIKE_UNSAFE.search(glob):
                    raise ValueError(f"glob {glob!r} has LIKE metacharacters")
                globs.append(glob)
            else:
                if "*" in alt:
                    raise ValueError(f"name wildcards are not modelled here: {alt!r}")
                names.append(alt)
        return Step(text, tuple(names), tuple(globs))

    def matches(self, e: Event) -> bool:
        if e.name and e.name in self.names:
            return True
        if e.kind in ("page", "screen") and e.path:
            return any(re.fullmatch(".*".join(map(re.escape, g.split("*"))), e.path, re.S) for g in self.globs)
        return False

    def sql(self, alias: str = "") -> str:
        """The condition in SQL (same text for ClickHouse and DuckDB over `write_table`'s
        columns); `alias` prefixes the column names, e.g. `e.`."""
        parts = []
        if self.names:
            parts.append(f"{alias}name IN ({', '.join(sql_string(n) for n in self.names)})")
        for g in self.globs:
            parts.append(f"({alias}kind IN ('page', 'screen') AND {alias}path LIKE {sql_string(g.replace('*', '%'))})")
        return "(" + " OR ".join(parts) + ")"


def range_sql(from_ms: int | None, to_ms: int | None) -> str:
    conds = ["1 = 1"]
    if from_ms is not None:
        conds.append(f"ts >= {from_ms}")
    if to_ms is not None:
        conds.append(f"ts < {to_ms}")
    return " AND ".join(conds)


def persons_per_step(levels: Counter, n: int) -> list[int]:
    """`{level: persons}` -> persons reaching at least step k, for k = 1..n."""
    return [sum(c for lvl, c in levels.items() if lvl >= k) for k in range(1, n + 1)]


# --------------------------------------------------------------------------- ClickHouse (chdb)


def _chdb_rows(sql: str) -> list[list]:
    import chdb

    res = chdb.query(sql, "JSONCompact")
    text = res.bytes().decode() if hasattr(res, "bytes") else str(res)
    return json.loads(text)["data"] if text.strip() else []


def ch_table(path: Path) -> str:
    return f"file({sql_string(str(path))}, 'JSONEachRow', 'person_id String, ts UInt64, kind String, name String, path String')"


def ch_funnel_levels(table: Path, steps: list[str], window_ms: int, strict: bool = False,
                     from_ms: int | None = None, to_ms: int | None = None) -> Counter:
    """`{level: persons}` from ClickHouse's windowFunnel, one level per person_id.

    Strict mode sees every event of the person in the range: an event matching no step
    interrupts, as in ClickHouse.
    """
    conds = ", ".join(Step.parse(s).sql() for s in steps)
    mode = ", 'strict_order'" if strict else ""
    sql = f"""
        SELECT level, count() FROM (
            SELECT person_id, windowFunnel({window_ms}{mode})(ts, {conds}) AS level
            FROM {ch_table(table)}
            WHERE {range_sql(from_ms, to_ms)}
            GROUP BY person_id
        ) GROUP BY level ORDER BY level
    """
    return Counter({int(lvl): int(c) for lvl, c in _chdb_rows(sql)})


def ch_funnel_levels_with_exclusions(table: Path, steps: list[str], window_ms: int, exclude: list[str],
                                     from_ms: int | None = None, to_ms: int | None = None) -> Counter:
    """Ordered windowFunnel run separately over each stretch between exclusion events, the
    person keeping their best stretch. An exclusion at the same millisecond as a step
    event counts as before it (it opens the stretch the step belongs to)."""
    conds = ", ".join(Step.parse(s).sql() for s in steps)
    excl = " OR ".join(Step.parse(x).sql() for x in exclude)
    sql = f"""
        SELECT level, count() FROM (
            SELECT person_id, max(level) AS level FROM (
                SELECT person_id, stretch, windowFunnel({window_ms})(ts, {conds}) AS level FROM (
                    SELECT person_id, ts, kind, name, path,
                           sum(toUInt64({excl})) OVER (PARTITION BY person_id ORDER BY ts
                               RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS stretch
                    FROM {ch_table(table)}
                    WHERE {range_sql(from_ms, to_ms)}
                )
                GROUP BY person_id, stretch
            ) GROUP BY person_id
        ) GROUP BY level ORDER BY level
    """
    return Counter({int(lvl): int(c) for lvl, c in _chdb_rows(sql)})


# --------------------------------------------------------------------------- Python brute force


def brute_ordered_levels(events: list[Event], steps: list[str], window_ms: int, exclude: list[str] = (),
                         from_ms: int | None = None, to_ms: int | None = None) -> Counter:
    """`{level: persons}` of an ordered funnel by search over chains, per person.

    A chain reaches level k through events e1..ek with e_i matching step i, timestamps
    non-decreasing (one event may serve several consecutive steps at one instant, as in
    ClickHouse, which orders (timestamp, step) pairs), and ts(ek) - ts(e1) <= window. An
    exclusion abandons chains: no exclusion may fall in (ts(e1), ts(ek)].
    """
    matchers = [Step.parse(s) for s in steps]
    excluders = [Step.parse(x) for x in exclude]
    per_person: dict[str, list[Event]] = {}
    for e in events:
        if (from_ms is None or e.ts >= from_ms) and (to_ms is None or e.ts < to_ms):
            per_person.setdefault(e.person, []).append(e)
    levels: Counter = Counter()
    n = len(matchers)
    for evs in per_person.values():
        hits = [sorted(e.ts for e in evs if m.matches(e)) for m in matchers]
        excl_ts = sorted(e.ts for e in evs if any(x.matches(e) for x in excluders))
        best = 0
        for t1 in hits[0]:
            i = bisect.bisect_right(excl_ts, t1)
            cutoff = excl_ts[i] if i < len(excl_ts) else None
            limit = t1 + window_ms
            level, cur = 1, t1
            for k in range(1, n):
                j = bisect.bisect_left(hits[k], cur)
                if j == len(hits[k]):
                    break
                t = hits[k][j]
                if t > limit or (cutoff is not None and t >= cutoff):
                    break
                level, cur = level + 1, t
            best = max(best, level)
            if best == n:
                break
        levels[best] += 1
    return levels


# --------------------------------------------------------------------------- DuckDB


def duck(table: Path):
    """A DuckDB connection with the events as table `events` (UTC session)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"CREATE TABLE events AS SELECT * FROM read_json({sql_string(str(table))}, format = 'newline_delimited', "
        "columns = {'person_id': 'VARCHAR', 'ts': 'BIGINT', 'kind': 'VARCHAR', 'name': 'VARCHAR', 'path': 'VARCHAR'})"
    )
    return con


def duck_unordered_levels(con, steps: list[str], window_ms: int,
                          from_ms: int | None = None, to_ms: int | None = None) -> Counter:
    """`{level: persons}`: the largest k such that steps 1..k all occur within one window
    [t, t + window] (one event may stand for several steps)."""
    n = len(steps)
    mask = " | ".join(f"(CASE WHEN {Step.parse(s).sql()} THEN {1 << k} ELSE 0 END)" for k, s in enumerate(steps))
    prefix = "CASE " + " ".join(
        f"WHEN covered & {(1 << k) - 1} = {(1 << k) - 1} THEN {k}" for k in range(n, 0, -1)
    ) + " ELSE 0 END"
    sql = f"""
        WITH m AS (
            SELECT person_id, ts, ({mask}) AS mask FROM events WHERE {range_sql(from_ms, to_ms)}
        ), hits AS (SELECT * FROM m WHERE mask <> 0),
        windows AS (
            SELECT a.person_id, bit_or(b.mask) AS covered
            FROM hits a JOIN hits b ON a.person_id = b.person_id AND b.ts BETWEEN a.ts AND a.ts + {window_ms}
            GROUP BY a.person_id, a.ts
        ), per_person AS (
            SELECT person_id, max({prefix}) AS level FROM windows GROUP BY person_id
        )
        SELECT level, count(*) FROM per_person GROUP BY level ORDER BY level
    """
    return Counter({int(lvl): int(c) for lvl, c in con.execute(sql).fetchall()})


def duck_trends(con, events: list[str], interval: str,
                from_ms: int | None = None, to_ms: int | None = None) -> tuple[dict, dict]:
    """({(date, event): (events, persons)}, {event: (events, persons)}) for day/week/month."""
    assert interval in ("day", "week", "month")
    rows, totals = {}, {}
    for label in events:
        cond = f"{Step.parse(label).sql()} AND {range_sql(from_ms, to_ms)}"
        for date, n, p in con.execute(
            f"SELECT strftime(date_trunc('{interval}', epoch_ms(ts)), '%Y-%m-%d') AS d, count(*), count(DISTINCT person_id) "
            f"FROM events WHERE {cond} GROUP BY d ORDER BY d"
        ).fetchall():
            rows[(date, label)] = (int(n), int(p))
        n, p = con.execute(f"SELECT count(*), count(DISTINCT person_id) FROM events WHERE {cond}").fetchone()
        if n:
            totals[label] = (int(n), int(p))
    return rows, totals


def duck_retention(con, start: str, ret: str, period: str, periods: int,
                   from_ms: int | None = None, to_ms: int | None = None) -> dict[str, list[int]]:
    """{cohort date: [size, returning in period 1, ..., period N]}.

    Cohort: the period of a person's first start event. Period p >= 1 counts persons with a
    return event in period cohort + p at or after that first start event.
    """
    assert period in ("day", "week", "month")
    if period == "day":
        offset = "date_diff('day', c.cohort, date_trunc('day', epoch_ms(e.ts)))"
    elif period == "week":
        offset = "date_diff('day', c.cohort, date_trunc('week', epoch_ms(e.ts))) // 7"
    else:
        offset = ("(year(epoch_ms(e.ts)) * 12 + month(epoch_ms(e.ts))) "
                  "- (year(c.cohort) * 12 + month(c.cohort))")
    sql = f"""
        WITH ev AS (SELECT * FROM events WHERE {range_sql(from_ms, to_ms)}),
        firsts AS (
            SELECT person_id, min(ts) AS first_ts FROM ev WHERE {Step.parse(start).sql()} GROUP BY person_id
        ), c AS (
            SELECT person_id, first_ts, date_trunc('{period}', epoch_ms(first_ts)) AS cohort FROM firsts
        ), returns AS (
            SELECT DISTINCT c.person_id, c.cohort, {offset} AS p
            FROM c JOIN ev e ON e.person_id = c.person_id
            WHERE {Step.parse(ret).sql("e.")}
              AND e.ts >= c.first_ts
        )
        SELECT strftime(cohort, '%Y-%m-%d'), 0, count(*) FROM c GROUP BY 1
        UNION ALL
        SELECT strftime(cohort, '%Y-%m-%d'), p, count(*) FROM returns WHERE p BETWEEN 1 AND {periods} GROUP BY 1, 2
    """
    out: dict[str, list[int]] = {}
    for cohort, p, n in con.execute(sql).fetchall():
        out.setdefault(cohort, [0] * (periods + 1))[int(p)] = int(n)
    return out
