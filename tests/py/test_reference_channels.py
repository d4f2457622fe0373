"""Channel journeys (`query paths --of channels`) against an independent reference.

Throughline's channels are GA4's default channel group, which has no SQL counterpart, so
the reference is built in two halves that share nothing with Throughline's code:

- Python (ga4.py, written from GA4's documentation) classifies every exported event as a
  possible session start: its source / medium from UTM tags, ad click ids and the referrer,
  then its channel by GA4's rules in GA4's order;
- DuckDB SQL then builds the journeys from that table as the query defines them: a
  person's visits (page and screen views, and events sent from a page) up to and including
  their first conversion event in range, split into sessions by 30 minutes of inactivity;
  a session's channel is its first visit's; the journey is the list of session channels
  (at most 20); persons per journey, with conversions and nulls.

Data: the demo generator (both brands, several seeds and sizes, duplicate deliveries and
out-of-order arrival in some), loaded with `throughline import` and read back with
`throughline export`, whose line order is the store's arrival order (the tie-break for
events of one person at one millisecond).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import ga4
import reference as ref
from harness import create_project, run_cli

SESSION_TIMEOUT_MS = 30 * 60 * 1000
JOURNEY_MAX = 20
SITE_HOSTS = {"headphones": {"sonora-audio.example"}, "subscription": {"fieldnote.example"}}
CONVERSIONS = {"headphones": ["Order Completed", "Product Added|page:/cart*"],
               "subscription": ["Signed Up", "Subscription Started"]}


@dataclass(frozen=True)
class Spec:
    brand: str
    persons: int
    seed: int
    messy: bool

    @property
    def id(self) -> str:
        return f"{self.brand}-{self.persons}p-s{self.seed}{'-dup-ooo' if self.messy else ''}"

    def generate_args(self) -> list[str]:
        a = ["generate", "--brand", self.brand, "--persons", str(self.persons), "--seed", str(self.seed)]
        return a + (["--duplicates", "0.02", "--out-of-order"] if self.messy else [])


SPECS = [
    Spec("headphones", 800, 61, False),
    Spec("headphones", 2000, 62, True),
    Spec("subscription", 800, 71, False),
    Spec("subscription", 2000, 72, True),
]


@dataclass
class Dataset:
    spec: Spec
    bin: str
    data_dir: Path
    rows: list[dict]
    con: object

    def query(self, args: list[str]) -> dict:
        proc = run_cli(self.bin, "query", "paths", "--data", str(self.data_dir), "--project", self.spec.brand, *args)
        return json.loads(proc.stdout)


def _build(bin_path: str, root: Path, spec: Spec) -> Dataset:
    import duckdb

    work = root / spec.id
    work.mkdir()
    generated = work / "generated.jsonl"
    run_cli(bin_path, *spec.generate_args(), "--out", str(generated), timeout=120)
    data_dir = work / "data"
    data_dir.mkdir()
    create_project(bin_path, data_dir, spec.brand)
    run_cli(bin_path, "import", "--data", str(data_dir), "--project", spec.brand, str(generated), "--quiet", timeout=120)
    exported = work / "export.jsonl"
    run_cli(bin_path, "export", "--data", str(data_dir), "--project", spec.brand, "--format", "jsonl",
            "--out", str(exported), timeout=120)
    rows = []
    for seq, line in enumerate(exported.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        raw = json.loads(line)
        e = ref.event_from_export(raw)
        path = _any_path(raw)
        t = ga4.traffic_of(raw)
        source, medium = ga4.source_medium(t, SITE_HOSTS[spec.brand])
        rows.append({
            "person_id": e.person, "ts": e.ts, "seq": seq, "kind": e.kind, "name": e.name, "path": e.path,
            "is_visit": e.kind in ("page", "screen") or bool(path),
            "source": source, "medium": medium, "channel": ga4.channel(source, medium, t.utm_campaign),
        })
    table = work / "channels.jsonl"
    with open(table, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE events AS SELECT * FROM read_json({ref.sql_string(str(table))}, format = 'newline_delimited', "
        "columns = {'person_id': 'VARCHAR', 'ts': 'BIGINT', 'seq': 'BIGINT', 'kind': 'VARCHAR', 'name': 'VARCHAR', "
        "'path': 'VARCHAR', 'is_visit': 'BOOLEAN', 'source': 'VARCHAR', 'medium': 'VARCHAR', 'channel': 'VARCHAR'})")
    return Dataset(spec, bin_path, data_dir, rows, con)


def _any_path(row: dict) -> str:
    """The page path of any event (a track sent from a page has one in its context)."""
    kind = row.get("type")
    props = row.get("properties") or {}
    page = (row.get("context") or {}).get("page") or {}
    if not isinstance(page, dict):
        page = {}
    own = kind in ("page", "screen")
    for v in ((props.get("path") if own else None), page.get("path")):
        if isinstance(v, str) and v:
            return v
    for v in ((props.get("url") if own else None), page.get("url")):
        if isinstance(v, str) and v:
            return ref._url_path(v)
    return ""


@pytest.fixture(scope="module")
def datasets(throughline_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("channels")
    cache: dict[Spec, Dataset] = {}

    def get(spec: Spec) -> Dataset:
        if spec not in cache:
            cache[spec] = _build(throughline_bin, root, spec)
        return cache[spec]

    return get


def duck_journeys(con, conversion: str, from_ms: int | None, to_ms: int | None):
    """(persons with a journey, [(journey, persons, conversions, nulls)] ranked by persons
    desc, then journey)."""
    match = ref.Step.parse(conversion).sql()
    sql = f"""
        WITH ev AS (SELECT * FROM events WHERE {ref.range_sql(from_ms, to_ms)}),
        conv AS (
            SELECT person_id, min({{'ts': ts, 'seq': seq}}) AS c FROM ev WHERE {match} GROUP BY person_id
        ), visits AS (
            SELECT v.person_id, v.ts, v.seq, v.channel, conv.c IS NOT NULL AS converted
            FROM ev v LEFT JOIN conv USING (person_id)
            WHERE v.is_visit AND (conv.c IS NULL OR v.ts < conv.c.ts OR (v.ts = conv.c.ts AND v.seq <= conv.c.seq))
        ), gaps AS (
            SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY person_id ORDER BY ts, seq) <= {SESSION_TIMEOUT_MS}
                           THEN 0 ELSE 1 END AS starts
            FROM visits
        ), numbered AS (
            SELECT *, sum(starts) OVER (PARTITION BY person_id ORDER BY ts, seq
                                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session
            FROM gaps
        ), sessions AS (
            SELECT person_id, session, first(channel ORDER BY ts, seq) AS channel, bool_or(converted) AS converted
            FROM numbered GROUP BY person_id, session
        ), journeys AS (
            SELECT person_id, list(channel ORDER BY session)[1:{JOURNEY_MAX}] AS journey, bool_or(converted) AS converted
            FROM sessions GROUP BY person_id
        )
        SELECT journey, count(*), count(*) FILTER (WHERE converted), count(*) FILTER (WHERE NOT converted)
        FROM journeys GROUP BY journey
    """
    out = [(tuple(j), int(n), int(c), int(z)) for j, n, c, z in con.execute(sql).fetchall()]
    out.sort(key=lambda x: (-x[1], list(x[0])))
    return sum(x[1] for x in out), out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_demo_channels_are_all_classified_and_many(datasets, spec):
    """The reference knows every source the data sends (else ga4.py raised while loading),
    and the data exercises many channels, so the comparison below means something."""
    ds = datasets(spec)
    starts = {r["channel"] for r in ds.rows if r["is_visit"]}
    want = {"Direct", "Paid Search", "Paid Social", "Organic Search", "Organic Social", "Email", "Display",
            "Referral", "Affiliates", "Audio", "Unassigned"}
    assert want <= starts, f"channels missing from the data: {sorted(want - starts)}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
@pytest.mark.parametrize("case", ["first", "second", "ranged"])
def test_channel_journeys_equal_reference(datasets, spec, case):
    ds = datasets(spec)
    conversion = CONVERSIONS[spec.brand][0 if case != "second" else 1]
    args = ["--of", "channels", "--conversion", conversion, "--limit", "1000"]
    from_ms = to_ms = None
    if case == "ranged":
        first = ref.date_to_ms(ref.ms_to_date(min(r["ts"] for r in ds.rows)))
        from_ms, to_ms = first + 10 * ref.DAY_MS, first + 31 * ref.DAY_MS
        args += ["--from", ref.ms_to_date(from_ms), "--to", ref.ms_to_date(to_ms)]
    out = ds.query(args)
    persons, want = duck_journeys(ds.con, conversion, from_ms, to_ms)
    got = [(tuple(p["path"]), p["persons"], p["conversions"], p["nulls"]) for p in out["paths"]]
    want = want[:1000]
    problems = [] if out["persons"] == persons else [f"persons: throughline {out['persons']}, reference {persons}"]
    for i in range(max(len(got), len(want))):
        g = got[i] if i < len(got) else None
        w = want[i] if i < len(want) else None
        if g != w:
            problems.append(f"rank {i + 1}: throughline {g}, reference {w}")
    more = [f"... {len(problems)} differences in all"] if len(problems) > 12 else []
    assert not problems, "\n".join(problems[:12] + more + [
        f"reproduce: throughline {' '.join(spec.generate_args())} ... && throughline query paths {' '.join(args)}"])
