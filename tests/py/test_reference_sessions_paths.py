"""Sessions and event paths of the real binary against DuckDB SQL written here.

Data: the demo generator (both brands, two seeds each, one of them with duplicate
deliveries and out-of-order arrival), loaded with `throughline import`, read back with
`throughline export`. The references start from the export (stitched `person_id`,
`timestamp`, `type`, `event`/`name`, `properties`, `context`) and compute the answers in
DuckDB from the documented meaning, not from Throughline's code:

- sessions: a person's visit events (page and screen events, and any event whose export
  has a page path: `context.page.path`, for page/screen `properties.path`, or the path of
  `properties.url` (page/screen) / `context.page.url`) sorted by time; a gap strictly longer
  than 30 minutes starts a new session. Engaged: last - first > 10 s, or >= 2 page/screen
  events. `--by day` groups by the UTC date of the session's first event.
- paths: per person, the events from the first start event on (or up to and including the
  first end event), labelled `page:<path>` (page/screen; `page:<name>` without a path), the
  event name (track) or the type (identify/alias/group); consecutive equal labels collapse;
  the first (start) or last (end) N labels count; persons per path.

Timestamp ties. Throughline orders a person's events with equal timestamps by arrival in
its store, which the export does not show, so a path is only well defined from the export
for persons without ties. Sessions do not depend on the order of tied events (a tie is a
gap of 0, never a session boundary), so sessions are compared on the full data. For
paths we chose: (1) an exact comparison on a second project that holds only the persons
without any two events at one millisecond (their whole stitched identity, all messages,
re-imported from the generated file, so Throughline sees exactly the same persons), and
(2) on the full data, bounds: each listed path's count must lie between the persons whose
path is certain and those who could produce it under some order of their tied events.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest

import reference as ref
from harness import create_project, run_cli

SESSION_TIMEOUT_MS = 30 * 60 * 1000
ENGAGED_MS = 10_000


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Spec:
    brand: str
    seed: int
    messy: bool  # duplicates and out-of-order arrival
    persons: int = 800

    @property
    def id(self) -> str:
        return f"{self.brand}-s{self.seed}{'-dup-ooo' if self.messy else ''}"

    def generate_args(self) -> list[str]:
        a = ["generate", "--brand", self.brand, "--persons", str(self.persons), "--seed", str(self.seed)]
        if self.messy:
            a += ["--duplicates", "0.02", "--out-of-order"]
        return a


SPECS = [
    Spec("headphones", 41, False),
    Spec("headphones", 42, True),
    Spec("subscription", 51, False),
    Spec("subscription", 52, True),
]


def _str(v) -> str:
    return v if isinstance(v, str) else ""


def export_row(row: dict) -> dict:
    """One export line -> the columns the references need (path for every event type)."""
    kind = row.get("type") or ""
    is_page = kind in ("page", "screen")
    props = row.get("properties") or {}
    page = (row.get("context") or {}).get("page") or {}
    if not isinstance(page, dict):
        page = {}
    if kind == "track":
        name = _str(row.get("event"))
    elif is_page:
        name = _str(row.get("name"))
    else:
        name = ""
    path = (_str(props.get("path")) if is_page else "") or _str(page.get("path"))
    if not path:
        url = (_str(props.get("url")) if is_page else "") or _str(page.get("url"))
        path = ref._url_path(url) if url else ""
    for sep in "?#":
        path = path.split(sep, 1)[0]
    return {"person_id": row["person_id"], "ts": ref.parse_ms(row["timestamp"]), "kind": kind, "name": name,
            "path": path, "message_id": row.get("messageId") or ""}


def load_table(export: Path, out: Path, arrival: dict[str, int] | None = None) -> tuple[Path, list[dict]]:
    """Writes the reference table. `arrival`: messageId -> line of its first delivery in the
    imported file (the order Throughline keeps for equal timestamps); else the export line."""
    rows = [export_row(json.loads(line)) for line in export.read_text(encoding="utf-8").splitlines() if line.strip()]
    for n, r in enumerate(rows):
        r["arrival"] = arrival[r["message_id"]] if arrival is not None else n
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return out, rows


def duck(table: Path):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"CREATE TABLE events AS SELECT * FROM read_json({ref.sql_string(str(table))}, format = 'newline_delimited', "
        "columns = {'person_id': 'VARCHAR', 'ts': 'BIGINT', 'kind': 'VARCHAR', 'name': 'VARCHAR', 'path': 'VARCHAR', "
        "'message_id': 'VARCHAR', 'arrival': 'BIGINT'})"
    )
    return con


@dataclass
class Project:
    data_dir: Path
    name: str
    rows: list[dict]
    table: Path
    _duck: object = field(default=None, repr=False)

    @property
    def duck(self):
        if self._duck is None:
            self._duck = duck(self.table)
        return self._duck


@dataclass
class Dataset:
    spec: Spec
    bin: str
    full: Project
    untied: Project  # only persons without timestamp ties
    tied_persons: int

    def query(self, p: Project, what: str, args: list[str]) -> dict:
        proc = run_cli(self.bin, "query", what, "--data", str(p.data_dir), "--project", p.name, *args)
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"`query {what}` stdout is not JSON: {proc.stdout[:500]!r}", pytrace=False)

    def repro(self, what: str, args: list[str], untied: bool = False) -> str:
        q = " ".join(a if a and all(c.isalnum() or c in "-_./:" for c in a) else "'" + a.replace("'", "'\\''") + "'"
                     for a in args)
        note = " (on the persons without timestamp ties: see the test)" if untied else ""
        return (f"throughline {' '.join(self.spec.generate_args())} --out ev.jsonl && "
                f"throughline projects create {self.spec.brand} --data d && "
                f"throughline import --data d --project {self.spec.brand} ev.jsonl --quiet && "
                f"throughline query {what} --data d --project {self.spec.brand} {q}{note}")


class Datasets:
    def __init__(self, bin_path: str, root: Path):
        self.bin, self.root, self.cache = bin_path, root, {}

    def get(self, spec: Spec) -> Dataset:
        if spec not in self.cache:
            self.cache[spec] = self._build(spec)
        return self.cache[spec]

    def _project(self, work: Path, name: str, source: Path) -> Project:
        arrival: dict[str, int] = {}
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                arrival.setdefault(json.loads(line).get("messageId"), n)
        data_dir = work / f"data-{name}"
        data_dir.mkdir()
        create_project(self.bin, data_dir, name)
        run_cli(self.bin, "import", "--data", str(data_dir), "--project", name, str(source), "--quiet", timeout=120)
        exported = work / f"export-{name}.jsonl"
        run_cli(self.bin, "export", "--data", str(data_dir), "--project", name, "--format", "jsonl",
                "--out", str(exported), timeout=120)
        table, rows = load_table(exported, work / f"table-{name}.jsonl", arrival)
        return Project(data_dir, name, rows, table)

    def _build(self, spec: Spec) -> Dataset:
        work = self.root / spec.id
        work.mkdir()
        generated = work / "generated.jsonl"
        run_cli(self.bin, *spec.generate_args(), "--out", str(generated), timeout=120)
        full = self._project(work, spec.brand, generated)
        # Persons with two events at one millisecond; drop all their messages.
        ties = Counter((r["person_id"], r["ts"]) for r in full.rows)
        tied = {p for (p, _), n in ties.items() if n > 1}
        owner = {r["message_id"]: r["person_id"] for r in full.rows}
        kept = work / "generated-untied.jsonl"
        with open(kept, "w", encoding="utf-8") as out:
            for line in generated.read_text(encoding="utf-8").splitlines():
                if line.strip() and owner.get(json.loads(line).get("messageId")) not in tied:
                    out.write(line + "\n")
        untied = self._project(work, spec.brand + "-untied", kept)
        return Dataset(spec, self.bin, full, untied, len(tied))


@pytest.fixture(scope="module")
def datasets(throughline_bin, tmp_path_factory) -> Datasets:
    return Datasets(throughline_bin, tmp_path_factory.mktemp("sessions-paths"))


# --------------------------------------------------------------------------- DuckDB references


SESSIONS_SQL = f"""
    WITH visits AS (
        SELECT person_id, ts, CAST(kind IN ('page', 'screen') AS INTEGER) AS is_page
        FROM events
        WHERE kind IN ('page', 'screen') OR path <> ''
    ), gaps AS (
        SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY person_id ORDER BY ts) <= {SESSION_TIMEOUT_MS}
                       THEN 0 ELSE 1 END AS starts
        FROM visits
    ), numbered AS (
        -- RANGE frame: events at one millisecond get one session number whatever their order.
        SELECT *, sum(starts) OVER (PARTITION BY person_id ORDER BY ts
                                    RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session
        FROM gaps
    ), sessions AS (
        SELECT person_id, session, min(ts) AS first_ts, max(ts) - min(ts) AS duration_ms,
               count(*) AS events, sum(is_page) AS pages
        FROM numbered GROUP BY person_id, session
    ), keyed AS (
        SELECT *, {{key}} AS key,
               CAST(duration_ms > {ENGAGED_MS} OR pages >= 2 AS INTEGER) AS engaged
        FROM sessions
    )
    SELECT key, count(*), sum(engaged), avg(duration_ms / 1000.0), sum(events), count(DISTINCT person_id)
    FROM keyed GROUP BY key ORDER BY key
"""


def duck_sessions(con, by: str) -> dict[str, tuple]:
    key = {"day": "strftime(epoch_ms(first_ts), '%Y-%m-%d')", "none": "'all'"}[by]
    return {k: (int(s), int(e), float(d), int(n), int(p))
            for k, s, e, d, n, p in con.execute(SESSIONS_SQL.replace("{key}", key)).fetchall()}


LABEL_SQL = """
    CASE WHEN kind IN ('page', 'screen') THEN 'page:' || CASE WHEN path <> '' THEN path
                                                              WHEN name <> '' THEN name ELSE '(not set)' END
         WHEN name <> '' THEN name
         ELSE kind END
"""


def duck_paths(con, step: str, anchor: str, depth: int) -> tuple[int, list[tuple[tuple[str, ...], int]]]:
    """(persons, [(path, persons)] ranked by persons desc, then path) for --start/--end STEP."""
    assert anchor in ("start", "end")
    match = ref.Step.parse(step).sql()
    # Events are ordered by (ts, arrival): on data without ties that is just time.
    keep = ("(e.ts > a.anchor_ts OR (e.ts = a.anchor_ts AND e.arrival >= a.anchor_arrival))" if anchor == "start"
            else "(e.ts < a.anchor_ts OR (e.ts = a.anchor_ts AND e.arrival <= a.anchor_arrival))")
    pick = f"pos <= {depth}" if anchor == "start" else f"pos > n - {depth}"
    sql = f"""
        WITH anchors AS (
            SELECT person_id, ts AS anchor_ts, arrival AS anchor_arrival FROM (
                SELECT *, row_number() OVER (PARTITION BY person_id ORDER BY ts, arrival) AS k
                FROM events WHERE {match}
            ) WHERE k = 1
        ), window_ AS (
            SELECT e.person_id, e.ts, e.arrival, {LABEL_SQL} AS label
            FROM events e JOIN anchors a USING (person_id) WHERE {keep}
        ), changes AS (
            SELECT *, label IS DISTINCT FROM lag(label) OVER (PARTITION BY person_id ORDER BY ts, arrival) AS new_step
            FROM window_
        ), steps AS (
            SELECT person_id, ts, label,
                   row_number() OVER (PARTITION BY person_id ORDER BY ts, arrival) AS pos,
                   count(*) OVER (PARTITION BY person_id) AS n
            FROM changes WHERE new_step
        ), per_person AS (
            SELECT person_id, list(label ORDER BY pos) AS path FROM steps WHERE {pick} GROUP BY person_id
        )
        SELECT path, count(*) FROM per_person GROUP BY path
    """
    counts = [(tuple(p), int(n)) for p, n in con.execute(sql).fetchall()]
    counts.sort(key=lambda x: (-x[1], list(x[0])))
    persons = con.execute(f"SELECT count(DISTINCT person_id) FROM events WHERE {match}").fetchone()[0]
    return int(persons), counts


# --------------------------------------------------------------------------- Python for the tie bounds


def _label(r: dict) -> str:
    if r["kind"] in ("page", "screen"):
        return "page:" + (r["path"] or r["name"] or "(not set)")
    return r["name"] or r["kind"]


def _path_of(ordered: list[dict], step: ref.Step, anchor: str, depth: int) -> tuple[str, ...] | None:
    ev = [ref.Event(r["person_id"], r["ts"], r["kind"], r["name"], r["path"] if r["kind"] in ("page", "screen") else "")
          for r in ordered]
    hit = next((i for i, e in enumerate(ev) if step.matches(e)), None)
    if hit is None:
        return None
    part = ordered[hit:] if anchor == "start" else ordered[:hit + 1]
    labels: list[str] = []
    for r in part:
        lab = _label(r)
        if not labels or labels[-1] != lab:
            labels.append(lab)
    return tuple(labels[:depth] if anchor == "start" else labels[-depth:])


def tie_bounds(rows: list[dict], step_text: str, anchor: str, depth: int, max_orders: int = 5040):
    """({path: persons sure}, {path: persons possible}, persons unbounded) over all tie orders."""
    step = ref.Step.parse(step_text)
    per: dict[str, list[dict]] = {}
    for r in rows:
        per.setdefault(r["person_id"], []).append(r)
    sure, possible, unbounded = Counter(), Counter(), 0
    for evs in per.values():
        evs.sort(key=lambda r: r["ts"])
        groups = [list(g) for _, g in itertools.groupby(evs, key=lambda r: r["ts"])]
        orders = math.prod(math.factorial(len(g)) for g in groups)
        if orders > max_orders:
            unbounded += 1
            continue
        paths = set()
        for combo in itertools.product(*(itertools.permutations(g) for g in groups)):
            paths.add(_path_of([r for g in combo for r in g], step, anchor, depth))
        paths.discard(None)
        if len(paths) == 1:
            sure[next(iter(paths))] += 1
        for p in paths:
            possible[p] += 1
    return sure, possible, unbounded


# --------------------------------------------------------------------------- the data has ties


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_data_sets_have_ties_and_untied_projects_have_none(datasets, spec):
    ds = datasets.get(spec)
    assert ds.tied_persons > 10, f"only {ds.tied_persons} persons have two events at one millisecond"
    ties = Counter((r["person_id"], r["ts"]) for r in ds.untied.rows)
    assert max(ties.values()) == 1, "the project without tied persons still has ties"
    full_persons = {r["person_id"] for r in ds.full.rows}
    untied_persons = {r["person_id"] for r in ds.untied.rows}
    assert untied_persons <= full_persons
    assert len(full_persons) - len(untied_persons) == ds.tied_persons, "dropping tied persons changed stitching"
    # Track and identify events carrying a page path are visits: the data must have some.
    assert any(r["kind"] not in ("page", "screen") and r["path"] for r in ds.full.rows)


# --------------------------------------------------------------------------- sessions


def _check_session_row(row: dict, want: tuple, where: str, problems: list[str]) -> None:
    sessions, engaged, avg_s, events, persons = want
    got = (row["sessions"], row["engaged_sessions"], row["events"], row["persons"])
    if got != (sessions, engaged, events, persons):
        problems.append(f"{where}: throughline (sessions, engaged, events, persons) {got}, "
                        f"DuckDB {(sessions, engaged, events, persons)}")
    if abs(row["avg_duration_seconds"] - avg_s) > 1e-6:
        problems.append(f"{where}: avg_duration_seconds throughline {row['avg_duration_seconds']}, DuckDB {avg_s}")
    n = row["sessions"]
    if n and (abs(row["engagement_rate"] - row["engaged_sessions"] / n) > 1e-12
              or abs(row["bounce_rate"] - (1 - row["engaged_sessions"] / n)) > 1e-12):
        problems.append(f"{where}: rates {row['engagement_rate']}, {row['bounce_rate']} "
                        f"for {row['engaged_sessions']}/{n} engaged")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
@pytest.mark.parametrize("by", ["day", "none"])
def test_sessions_equal_duckdb(datasets, spec, by):
    ds = datasets.get(spec)
    args = ["--by", by]
    out = ds.query(ds.full, "sessions", args)
    assert out["by"] == by and out["timeout_seconds"] == 1800
    want = duck_sessions(ds.full.duck, by)
    got = {r["key"]: r for r in out["rows"]}
    assert len(got) == len(out["rows"]), "a key appears twice"
    problems = []
    for k in sorted(set(got) - set(want)):
        problems.append(f"{k}: throughline has a row, DuckDB none: {got[k]}")
    for k in sorted(set(want) - set(got)):
        problems.append(f"{k}: DuckDB has {want[k]}, throughline no row")
    for k in sorted(set(got) & set(want)):
        _check_session_row(got[k], want[k], k, problems)
    total = duck_sessions(ds.full.duck, "none")["all"]
    _check_session_row(out["total"], total, "total", problems)
    more = [f"... {len(problems)} differences in all"] if len(problems) > 15 else []
    assert not problems, "\n".join(problems[:15] + more + [f"reproduce: {ds.repro('sessions', args)}"])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_session_channels_sum_to_total(datasets, spec):
    """Channel rules are GA4's and not re-implemented: each session has exactly one channel."""
    ds = datasets.get(spec)
    out = ds.query(ds.full, "sessions", ["--by", "channel"])
    total = ds.query(ds.full, "sessions", ["--by", "none"])["total"]
    assert out["total"] == total
    for k in ("sessions", "engaged_sessions", "events"):
        assert sum(r[k] for r in out["rows"]) == total[k], f"{k} of the channel rows do not sum to the total"
    assert len({r["key"] for r in out["rows"]}) == len(out["rows"])
    assert sum(r["sessions"] for r in out["rows"]) == duck_sessions(ds.full.duck, "none")["all"][0]


# --------------------------------------------------------------------------- paths


PATH_CASES = {
    "headphones": [
        ("end", "Order Completed", 5),
        ("end", "Product Added", 3),
        ("start", "Product Viewed", 4),
        ("start", "page:/cart*", 6),
        ("end", "Cart|Checkout Started", 2),
    ],
    "subscription": [
        ("end", "Signed Up", 5),
        ("start", "Signed Up", 4),
        ("end", "Trial Ended|Subscription Started", 6),
        ("start", "Note Created", 5),
        ("start", "page:/pricing", 3),
    ],
}


def _path_cases() -> list:
    return [pytest.param(s, c, id=f"{s.id}-{c[0]}-{c[1]}-d{c[2]}".replace(" ", "_").replace("|", "+"))
            for s in SPECS for c in PATH_CASES[s.brand]]


@pytest.mark.parametrize("spec,case", _path_cases())
def test_paths_equal_duckdb_on_persons_without_ties(datasets, spec, case):
    anchor, step, depth = case
    ds = datasets.get(spec)
    args = [f"--{anchor}", step, "--depth", str(depth)]
    out = ds.query(ds.untied, "paths", args)
    persons, want = duck_paths(ds.untied.duck, step, anchor, depth)
    assert persons > 0, f"no person did {step!r}: the case tests nothing"
    got = [(tuple(p["path"]), p["persons"]) for p in out["paths"]]
    want = want[:20]
    problems = []
    if out.get("persons") != persons:
        problems.append(f"persons: throughline {out.get('persons')}, DuckDB {persons}")
    if got != want:
        for i in range(max(len(got), len(want))):
            g = got[i] if i < len(got) else None
            w = want[i] if i < len(want) else None
            if g != w:
                problems.append(f"rank {i + 1}: throughline {g}, DuckDB {w}")
    assert not problems, "\n".join(problems[:15] + [f"reproduce: {ds.repro('paths', args, untied=True)}"])


@pytest.mark.parametrize("spec,case", _path_cases())
def test_paths_within_tie_bounds_on_all_persons(datasets, spec, case):
    anchor, step, depth = case
    ds = datasets.get(spec)
    args = [f"--{anchor}", step, "--depth", str(depth)]
    out = ds.query(ds.full, "paths", args)
    persons = ds.full.duck.execute(
        f"SELECT count(DISTINCT person_id) FROM events WHERE {ref.Step.parse(step).sql()}").fetchone()[0]
    sure, possible, unbounded = tie_bounds(ds.full.rows, step, anchor, depth)
    problems = []
    if out.get("persons") != persons:
        problems.append(f"persons: throughline {out.get('persons')}, DuckDB {persons}")
    for p in out["paths"]:
        path, n = tuple(p["path"]), p["persons"]
        if not sure[path] <= n <= possible[path] + unbounded:
            problems.append(f"{list(path)}: throughline {n} persons, reference between {sure[path]} and "
                            f"{possible[path] + unbounded}")
    # Ranking: persons desc, then path.
    keys = [(-p["persons"], p["path"]) for p in out["paths"]]
    if keys != sorted(keys):
        problems.append("paths are not ranked by persons desc, then path")
    assert not problems, "\n".join(problems[:15] + [f"reproduce: {ds.repro('paths', args)}"])


@pytest.mark.parametrize("spec,case", _path_cases())
def test_paths_equal_duckdb_with_ties_in_arrival_order(datasets, spec, case):
    """All persons, equal timestamps ordered by arrival: the line of a message's first
    delivery in the imported file (import reads it in order and drops later duplicates).
    This checks Throughline's stated tie order, which the export does not carry."""
    anchor, step, depth = case
    ds = datasets.get(spec)
    args = [f"--{anchor}", step, "--depth", str(depth)]
    out = ds.query(ds.full, "paths", args)
    persons, want = duck_paths(ds.full.duck, step, anchor, depth)
    got = [(tuple(p["path"]), p["persons"]) for p in out["paths"]]
    problems = [] if out.get("persons") == persons else [f"persons: throughline {out.get('persons')}, DuckDB {persons}"]
    problems += [f"rank {i + 1}: throughline {g}, DuckDB {w}"
                 for i, (g, w) in enumerate(itertools.zip_longest(got, want[:20])) if g != w]
    assert not problems, "\n".join(problems[:15] + [f"reproduce: {ds.repro('paths', args)}"])


# --------------------------------------------------------------------------- small cases


def _at(minute: int, second: float) -> str:
    ms = ref.parse_ms("2026-09-01T10:00:00Z") + minute * 60_000 + round(second * 1000)
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


SMALL = [
    # (type, user, name, minute, second, extra) -- extra: context / properties
    ("page", "u1", "Home", 0, 0, {"properties": {"path": "/"}}),
    ("track", "u1", "Clicked", 0, 5, {}),  # no page path: not a visit
    ("track", "u1", "Viewed", 0, 9, {"context": {"page": {"url": "https://x.example/p/a?q=1"}}}),  # visit by URL
    ("page", "u1", "Product", 30, 9, {"properties": {"path": "/p/a"}}),  # exactly 30 min later: same session
    ("page", "u1", "Product", 30, 9.001, {"properties": {"url": "https://x.example/p/a#top"}}),
    ("page", "u1", "Cart", 60, 9.002, {}),  # 30 min + 1 ms later: a new session; no path -> page:Cart
    ("identify", "u1", "", 60, 12, {"context": {"page": {"path": "/cart"}}}),  # a visit
    ("track", "u2", "Viewed", 0, 0, {"context": {"page": {"path": "/p/b"}}}),
    ("track", "u2", "Viewed", 0, 10, {"context": {"page": {"path": "/p/b"}}}),  # 10 s exactly: not engaged
    ("screen", "u3", "Settings", 0, 0, {}),
    ("screen", "u3", "Settings", 0, 1, {}),  # two screens: engaged
    ("track", "u3", "Order Completed", 0, 2, {}),
]


def test_small_sessions_and_paths(throughline_bin, tmp_path):
    messages = []
    for n, (kind, user, name, minute, second, extra) in enumerate(SMALL):
        m = {"type": kind, "userId": user, "messageId": f"m-{n}", "timestamp": _at(minute, second), **extra}
        if kind == "track":
            m["event"] = name
        elif name:
            m["name"] = name
        messages.append(m)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(m) + "\n" for m in messages), encoding="utf-8")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    create_project(throughline_bin, data_dir, "p")
    summary = json.loads(run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "p", str(src),
                                 "--quiet").stdout)
    assert summary["imported"] == len(messages), summary
    exported = tmp_path / "export.jsonl"
    run_cli(throughline_bin, "export", "--data", str(data_dir), "--project", "p", "--format", "jsonl", "--out", str(exported))
    table, _ = load_table(exported, tmp_path / "table.jsonl")
    con = duck(table)

    def query(what, args):
        return json.loads(run_cli(throughline_bin, "query", what, "--data", str(data_dir), "--project", "p", *args).stdout)

    # Hand-computed: u1 sessions [0:00, 0:09, 30:09, 30:09.001] (30 min gap allowed) and
    # [60:09.002, 60:12] (one page, 2.998 s: not engaged); u2 one session of 10 s exactly
    # (not engaged); u3 two screens (engaged; the track event without a path is no visit).
    want = {"all": (4, 2, (30 * 60 + 9.001 + 2.998 + 10 + 1) / 4, 4 + 2 + 2 + 2, 3)}
    assert duck_sessions(con, "none").keys() == want.keys()
    d = duck_sessions(con, "none")["all"]
    assert d[:2] == want["all"][:2] and d[3:] == want["all"][3:] and abs(d[2] - want["all"][2]) < 1e-9, d
    problems = []
    _check_session_row(query("sessions", ["--by", "none"])["total"], want["all"], "total", problems)
    got_day = {r["key"]: r for r in query("sessions", ["--by", "day"])["rows"]}
    if set(got_day) != {"2026-09-01"}:
        problems.append(f"--by day keys {sorted(got_day)}")
    else:
        _check_session_row(got_day["2026-09-01"], want["all"], "2026-09-01", problems)

    for args, expected in [
        (["--start", "Home", "--depth", "10"],
         [(("page:/", "Clicked", "Viewed", "page:/p/a", "page:Cart", "identify"), 1)]),
        (["--end", "Order Completed", "--depth", "2"], [(("page:Settings", "Order Completed"), 1)]),
        (["--end", "Viewed", "--depth", "3"], [(("Viewed",), 1), (("page:/", "Clicked", "Viewed"), 1)]),
    ]:
        anchor, step, depth = args[0][2:], args[1], int(args[3])
        got = [(tuple(p["path"]), p["persons"]) for p in query("paths", args)["paths"]]
        _, duck_want = duck_paths(con, step, anchor, depth)
        assert duck_want == expected, f"DuckDB reference {duck_want} != hand-computed {expected}"
        if got != expected:
            problems.append(f"paths {args}: throughline {got}, expected {expected}")
    assert not problems, "\n".join(problems + ["messages: " + json.dumps(messages)])
