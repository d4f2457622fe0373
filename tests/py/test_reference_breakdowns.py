"""Breakdowns by event property and by person trait, against chdb and DuckDB.

`--by property:NAME` and `--by person:NAME` split funnels and trends by values that live in
the events' JSON, not in columns. The references take them from `throughline export`
(Python reads the JSON), then count in SQL:

- funnel, `property:NAME`: each person counts under the value on their first step-1 event
  in range (by time, ties by arrival: the export's line order), as Amplitude segments a
  funnel at its first step; `person:NAME`: under the latest value of that trait in the
  person's identify calls (by time, then arrival; unset values skipped). Per value,
  ClickHouse's `windowFunnel` (chdb) over that value's persons.
- trends, `property:NAME`: each event under its own value; `person:NAME`: as above.
  DuckDB counts events and distinct persons per (period, event, value).
- the values listed: the `--by-limit` with the most persons (entered step 1 / did any of
  the events), ties by value, then `(other)` for the rest, whose persons are counted once
  however many values they hold; `(none)` stands for no value.

Data: the demo generator, both brands, two seeds and sizes, with duplicate deliveries,
out-of-order arrival and timestamp ties.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

import reference as ref
from harness import create_project, run_cli

NONE, OTHER = "(none)", "(other)"


@dataclass(frozen=True)
class Spec:
    brand: str
    persons: int
    seed: int

    @property
    def id(self) -> str:
        return f"{self.brand}-{self.persons}p-s{self.seed}"

    def generate_args(self) -> list[str]:
        return ["generate", "--brand", self.brand, "--persons", str(self.persons), "--seed", str(self.seed),
                "--duplicates", "0.02", "--out-of-order"]


SPECS = [Spec("headphones", 400, 81), Spec("headphones", 2000, 82),
         Spec("subscription", 400, 91), Spec("subscription", 2000, 92)]


def label(v) -> str:
    """A JSON value as a breakdown value: strings as they are, others as compact JSON."""
    if v is None:
        return NONE
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def value_at(root, path: list[str]):
    v = root
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def property_path(name: str) -> list[str]:
    """`property:NAME`: `properties.NAME`, or an explicit `context.`/`traits.`/`properties.`."""
    parts = name.split(".")
    return parts if parts[0] in ("properties", "context", "traits") and len(parts) > 1 else ["properties", *parts]


@dataclass
class Dataset:
    spec: Spec
    bin: str
    data_dir: Path
    work: Path
    raw: list[dict]  # export rows, in arrival order
    events: list[ref.Event]

    def query(self, what: str, args: list[str]) -> dict:
        proc = run_cli(self.bin, "query", what, "--data", str(self.data_dir), "--project", self.spec.brand, *args)
        return json.loads(proc.stdout)

    def range_ms(self) -> tuple[int, int]:
        first = ref.date_to_ms(ref.ms_to_date(min(e.ts for e in self.events)))
        return first + 10 * ref.DAY_MS, first + 31 * ref.DAY_MS

    def traits(self, path: list[str]) -> dict[str, str]:
        """person_id -> latest non-null value of the trait in their identify calls."""
        latest: dict[str, tuple[int, int, str]] = {}
        for seq, (r, e) in enumerate(zip(self.raw, self.events)):
            if r.get("type") != "identify":
                continue
            v = value_at(r.get("traits") or {}, path)
            if v is None:
                continue
            if e.person not in latest or latest[e.person][:2] <= (e.ts, seq):
                latest[e.person] = (e.ts, seq, label(v))
        return {p: v for p, (_, _, v) in latest.items()}

    def table(self, name: str, rows: list[dict]) -> Path:
        path = self.work / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return path


@pytest.fixture(scope="module")
def datasets(throughline_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("breakdowns")
    cache: dict[Spec, Dataset] = {}

    def get(spec: Spec) -> Dataset:
        if spec not in cache:
            work = root / spec.id
            work.mkdir()
            generated = work / "generated.jsonl"
            run_cli(throughline_bin, *spec.generate_args(), "--out", str(generated), timeout=120)
            data_dir = work / "data"
            data_dir.mkdir()
            create_project(throughline_bin, data_dir, spec.brand)
            run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", spec.brand, str(generated),
                    "--quiet", timeout=120)
            exported = work / "export.jsonl"
            run_cli(throughline_bin, "export", "--data", str(data_dir), "--project", spec.brand, "--format", "jsonl",
                    "--out", str(exported), timeout=120)
            raw = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines() if line.strip()]
            cache[spec] = Dataset(spec, throughline_bin, data_dir, work, raw, [ref.event_from_export(r) for r in raw])
        return cache[spec]

    return get


def listed(weights: dict[str, int], limit: int) -> tuple[list[str], dict[str, str]]:
    """The listed values (most weight first, ties by value, then `(other)`), and where each
    value counts."""
    order = sorted((v for v, w in weights.items() if w > 0), key=lambda v: (-weights[v], v))
    names = order[:limit] + ([OTHER] if len(order) > limit else [])
    slot = {v: (v if i < limit else OTHER) for i, v in enumerate(order)}
    return names, slot


# --------------------------------------------------------------------------- funnels


@dataclass(frozen=True)
class FunnelCase:
    steps: tuple[str, ...]
    by: str
    limit: int | None = None
    order: str = "ordered"
    window: str = "7d"
    ranged: bool = False

    @property
    def id(self) -> str:
        return (f"{self.by}-{self.order}-{len(self.steps)}steps" + (f"-limit{self.limit}" if self.limit else "")
                + ("-ranged" if self.ranged else "")).replace(":", "=")


FUNNELS = {
    "headphones": [
        FunnelCase(("Product Viewed", "Product Added", "Order Completed"), "property:category"),
        FunnelCase(("Product Viewed", "Product Added", "Order Completed"), "property:price", limit=3),
        FunnelCase(("Product Viewed", "Checkout Started", "Order Completed"), "property:context.locale", limit=4,
                   ranged=True),
        FunnelCase(("Product Viewed", "Product Added", "Order Completed"), "person:locale", limit=4),
        FunnelCase(("Product List Viewed", "Product Viewed", "Product Added"), "person:first_name", window="1d"),
        FunnelCase(("Product Viewed", "Order Completed"), "person:newsletter", ranged=True),
    ],
    "subscription": [
        FunnelCase(("CTA Clicked", "Signup Started", "Signed Up"), "property:location"),
        FunnelCase(("CTA Clicked", "page:/signup", "Signup Started"), "property:location", order="strict", window="1d"),
        FunnelCase(("page:/pricing", "Signup Started", "Signed Up"), "property:search", limit=2),
        FunnelCase(("Signup Started", "Signed Up", "Trial Started"), "person:trial_plan"),
        FunnelCase(("page:/pricing", "Signed Up", "Subscription Started"), "person:locale", limit=3, ranged=True),
    ],
}


def funnel_reference(ds: Dataset, case: FunnelCase) -> list[tuple[str, list[int]]]:
    from_ms, to_ms = ds.range_ms() if case.ranged else (None, None)
    in_range = [(seq, e) for seq, e in enumerate(ds.events)
                if (from_ms is None or e.ts >= from_ms) and (to_ms is None or e.ts < to_ms)]
    kind, name = case.by.split(":", 1)
    if kind == "property":
        step1 = ref.Step.parse(case.steps[0])
        path = property_path(name)
        first: dict[str, tuple[int, int]] = {}
        for seq, e in in_range:
            if step1.matches(e) and (e.person not in first or first[e.person] > (e.ts, seq)):
                first[e.person] = (e.ts, seq)
        group = {p: label(value_at(ds.raw[seq], path)) for p, (_, seq) in first.items()}
    else:
        group = ds.traits(name.split("."))
    rows = [{"person_id": e.person, "grp": group.get(e.person, NONE), "ts": e.ts, "kind": e.kind, "name": e.name,
             "path": e.path} for _, e in in_range]
    table = ds.table(f"funnel-{case.id}", rows)
    conds = ", ".join(ref.Step.parse(s).sql() for s in case.steps)
    mode = ", 'strict_order'" if case.order == "strict" else ""
    window = {"1d": ref.DAY_MS, "7d": 7 * ref.DAY_MS}[case.window]
    source = (f"file({ref.sql_string(str(table))}, 'JSONEachRow', "
              "'person_id String, grp String, ts UInt64, kind String, name String, path String')")
    levels: dict[str, Counter] = {}
    for grp, level, n in ref._chdb_rows(f"""
        SELECT grp, level, count() FROM (
            SELECT grp, person_id, windowFunnel({window}{mode})(ts, {conds}) AS level
            FROM {source} GROUP BY grp, person_id
        ) GROUP BY grp, level
    """):
        levels.setdefault(grp, Counter())[int(level)] += int(n)
    per_value = {g: ref.persons_per_step(c, len(case.steps)) for g, c in levels.items()}
    names, slot = listed({g: s[0] for g, s in per_value.items()}, case.limit or 50)
    out = {n: [0] * len(case.steps) for n in names}
    for g, s in per_value.items():
        if g in slot:
            out[slot[g]] = [a + b for a, b in zip(out[slot[g]], s)]
    return [(n, out[n]) for n in names]


@pytest.mark.parametrize("spec,case", [pytest.param(s, c, id=f"{s.id}-{c.id}") for s in SPECS for c in FUNNELS[s.brand]])
def test_funnel_breakdowns_equal_reference(datasets, spec, case):
    ds = datasets(spec)
    args = [a for s in case.steps for a in ("--step", s)] + ["--window", case.window, "--order", case.order,
                                                              "--by", case.by]
    if case.limit:
        args += ["--by-limit", str(case.limit)]
    if case.ranged:
        f, t = ds.range_ms()
        args += ["--from", ref.ms_to_date(f), "--to", ref.ms_to_date(t)]
    out = ds.query("funnel", args)
    got = [(b["value"], [s["persons"] for s in b["steps"]]) for b in out["breakdown"]]
    want = funnel_reference(ds, case)
    assert len(want) >= 2, f"the case splits into {want}: it tests nothing"
    assert got == want, f"throughline {got}\nreference {want}\nreproduce: throughline query funnel {' '.join(args)}"
    # The values partition the persons: per step they add up to the whole funnel.
    total = [s["persons"] for s in out["steps"]]
    assert [sum(s[k] for _, s in got) for k in range(len(total))] == total


# --------------------------------------------------------------------------- trends


@dataclass(frozen=True)
class TrendCase:
    events: tuple[str, ...]
    by: str
    interval: str = "week"
    limit: int | None = None
    ranged: bool = False

    @property
    def id(self) -> str:
        return (f"{self.by}-{self.interval}-{len(self.events)}events" + (f"-limit{self.limit}" if self.limit else "")
                + ("-ranged" if self.ranged else "")).replace(":", "=")


TRENDS = {
    "headphones": [
        TrendCase(("Product Viewed", "Product Added"), "property:category"),
        TrendCase(("Order Completed",), "property:coupon", interval="day"),
        TrendCase(("Product Viewed", "page:/products/*"), "property:context.locale", limit=3, ranged=True),
        TrendCase(("Order Completed", "Product Added"), "person:locale", limit=4),
    ],
    "subscription": [
        TrendCase(("Signed Up",), "property:method", interval="day"),
        TrendCase(("Note Created", "Signed Up"), "property:plan", limit=2),
        TrendCase(("Signed Up", "Trial Started|Subscription Started"), "person:trial_plan", ranged=True),
    ],
}


def trends_reference(ds: Dataset, case: TrendCase):
    import duckdb

    from_ms, to_ms = ds.range_ms() if case.ranged else (None, None)
    kind, name = case.by.split(":", 1)
    traits = ds.traits(name.split(".")) if kind == "person" else {}
    path = property_path(name) if kind == "property" else None
    steps = [ref.Step.parse(e) for e in case.events]
    rows = []
    for seq, (r, e) in enumerate(zip(ds.raw, ds.events)):
        if (from_ms is not None and e.ts < from_ms) or (to_ms is not None and e.ts >= to_ms):
            continue
        hits = [s.label for s in steps if s.matches(e)]
        if not hits:
            continue
        value = label(value_at(r, path)) if path else traits.get(e.person, NONE)
        for h in hits:
            rows.append({"person_id": e.person, "ts": e.ts, "event": h, "value": value})
    table = ds.table(f"trends-{case.id}", rows)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_json({ref.sql_string(str(table))}, format = 'newline_delimited', "
                "columns = {'person_id': 'VARCHAR', 'ts': 'BIGINT', 'event': 'VARCHAR', 'value': 'VARCHAR'})")
    weights = dict(con.execute("SELECT value, count(DISTINCT person_id) FROM t GROUP BY value").fetchall())
    names, slot = listed({k: int(v) for k, v in weights.items()}, case.limit or 50)
    con.execute("CREATE TABLE slots (value VARCHAR, grp VARCHAR)")
    con.executemany("INSERT INTO slots VALUES (?, ?)", list(slot.items()))
    by_date = {(d, e, g): (int(n), int(p)) for d, e, g, n, p in con.execute(f"""
        SELECT strftime(date_trunc('{case.interval}', epoch_ms(ts)), '%Y-%m-%d'), event, grp, count(*), count(DISTINCT person_id)
        FROM t JOIN slots USING (value) GROUP BY ALL""").fetchall()}
    totals = {(e, g): (int(n), int(p)) for e, g, n, p in con.execute("""
        SELECT event, grp, count(*), count(DISTINCT person_id) FROM t JOIN slots USING (value) GROUP BY ALL""").fetchall()}
    return by_date, totals, names


@pytest.mark.parametrize("spec,case", [pytest.param(s, c, id=f"{s.id}-{c.id}") for s in SPECS for c in TRENDS[s.brand]])
def test_trend_breakdowns_equal_reference(datasets, spec, case):
    ds = datasets(spec)
    args = [a for e in case.events for a in ("--event", e)] + ["--interval", case.interval, "--by", case.by]
    if case.limit:
        args += ["--by-limit", str(case.limit)]
    if case.ranged:
        f, t = ds.range_ms()
        args += ["--from", ref.ms_to_date(f), "--to", ref.ms_to_date(t)]
    out = ds.query("trends", args)
    want_rows, want_totals, names = trends_reference(ds, case)
    assert len(names) >= 2, f"the case splits into {names}: it tests nothing"
    got_rows = {(r["date"], r["event"], r["group"]): (r["events"], r["persons"]) for r in out["rows"]}
    got_totals = {(r["event"], r["group"]): (r["events"], r["persons"]) for r in out["totals"]}
    assert len(got_rows) == len(out["rows"]), "a (date, event, group) appears twice"
    problems = [f"{k}: throughline {got_rows.get(k)}, reference {want_rows.get(k)}"
                for k in sorted(set(got_rows) | set(want_rows)) if got_rows.get(k) != want_rows.get(k)]
    problems += [f"total {k}: throughline {got_totals.get(k)}, reference {want_totals.get(k)}"
                 for k in sorted(set(got_totals) | set(want_totals)) if got_totals.get(k) != want_totals.get(k)]
    assert {g for _, g in got_totals} == set(names), f"groups {sorted({g for _, g in got_totals})}, listed {names}"
    more = [f"... {len(problems)} differences in all"] if len(problems) > 12 else []
    assert not problems, "\n".join(problems[:12] + more + [f"reproduce: throughline query trends {' '.join(args)}"])


def test_breakdown_input_errors(datasets):
    ds = datasets(SPECS[0])
    for what, args, needle in [
        ("funnel", ["--step", "Product Viewed", "--by", "property:"], "property name"),
        ("funnel", ["--step", "Product Viewed", "--by", "plan"], "unknown breakdown"),
        ("funnel", ["--step", "Product Viewed", "--by", "person:locale", "--by-limit", "0"], "by_limit"),
        ("trends", ["--event", "Product Viewed", "--by", "person:", "--by-limit", "5"], "property name"),
    ]:
        proc = run_cli(ds.bin, "query", what, "--data", str(ds.data_dir), "--project", ds.spec.brand, *args, check=False)
        assert proc.returncode != 0 and needle in proc.stderr, (args, proc.returncode, proc.stderr[-300:])
