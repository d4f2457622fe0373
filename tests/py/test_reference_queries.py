"""Funnels, trends and retention of the real binary against independent references.

Data is the demo generator's (both brands, several seeds and sizes, with duplicate
deliveries, several devices per person, out-of-order arrival and timestamp ties), loaded
with `throughline import`. The references read what `throughline export` wrote, so they
group by the same stitched `person_id`, and compute the answer on their own
(reference.py): ClickHouse's `windowFunnel` through chdb for ordered and strict funnels,
DuckDB SQL for unordered funnels, trends and retention, a Python search over chains for
exclusions. Per-step persons, trend counts and cohort tables must be exactly equal.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import reference as ref
from harness import create_project, run_cli

# --------------------------------------------------------------------------- data


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


SPECS = [
    Spec("headphones", 300, 11),
    Spec("headphones", 300, 12),
    Spec("headphones", 300, 15),
    Spec("headphones", 2000, 13),
    Spec("subscription", 300, 21),
    Spec("subscription", 300, 22),
    Spec("subscription", 300, 25),
    Spec("subscription", 2000, 23),
]

# Ranged queries cover [first day + 10, first day + 31) of each data set: they cut through
# people's journeys at both ends.
RANGE_START_DAYS, RANGE_END_DAYS = 10, 31


@dataclass
class Dataset:
    spec: Spec
    bin: str
    data_dir: Path
    project: str
    generated: Path
    table: Path
    events: list[ref.Event]
    export_rows: list[dict]
    import_summary: dict
    _duck: object = field(default=None, repr=False)

    @property
    def duck(self):
        if self._duck is None:
            self._duck = ref.duck(self.table)
        return self._duck

    @property
    def first_day(self) -> str:
        return ref.ms_to_date(min(e.ts for e in self.events))

    def range_dates(self) -> tuple[str, str]:
        start = ref.date_to_ms(self.first_day)
        return (ref.ms_to_date(start + RANGE_START_DAYS * ref.DAY_MS), ref.ms_to_date(start + RANGE_END_DAYS * ref.DAY_MS))

    def query_args(self, what: str, args: list[str]) -> list[str]:
        return ["query", what, "--data", str(self.data_dir), "--project", self.project, *args]

    def query(self, what: str, args: list[str]) -> dict:
        proc = run_cli(self.bin, *self.query_args(what, args))
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"`query {what}` stdout is not JSON: {proc.stdout[:500]!r}", pytrace=False)

    def repro(self, what: str, args: list[str]) -> str:
        quoted = " ".join(_quote(a) for a in args)
        return (f"throughline {' '.join(self.spec.generate_args())} --out ev.jsonl && "
                f"throughline projects create p --data d && throughline import --data d --project p ev.jsonl --quiet && "
                f"throughline query {what} --data d --project p {quoted}")


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_./:" for c in a) else "'" + a.replace("'", "'\\''") + "'"


class Datasets:
    """Builds each data set once per module (generate, import, export), on first use."""

    def __init__(self, bin_path: str, root: Path):
        self.bin = bin_path
        self.root = root
        self.cache: dict[Spec, Dataset] = {}

    def get(self, spec: Spec) -> Dataset:
        if spec not in self.cache:
            self.cache[spec] = self._build(spec)
        return self.cache[spec]

    def _build(self, spec: Spec) -> Dataset:
        work = self.root / spec.id
        work.mkdir()
        generated = work / "generated.jsonl"
        run_cli(self.bin, *spec.generate_args(), "--out", str(generated), timeout=120)
        data_dir = work / "data"
        data_dir.mkdir()
        project = spec.brand
        create_project(self.bin, data_dir, project)
        summary = json.loads(run_cli(self.bin, "import", "--data", str(data_dir), "--project", project,
                                     str(generated), "--quiet", timeout=120).stdout)
        exported = work / "export.jsonl"
        run_cli(self.bin, "export", "--data", str(data_dir), "--project", project, "--format", "jsonl",
                "--out", str(exported), timeout=120)
        export_rows = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines() if line.strip()]
        events = [ref.event_from_export(r) for r in export_rows]
        table = ref.write_table(events, work / "events.table.jsonl")
        return Dataset(spec, self.bin, data_dir, project, generated, table, events, export_rows, summary)


@pytest.fixture(scope="module")
def datasets(throughline_bin, tmp_path_factory) -> Datasets:
    return Datasets(throughline_bin, tmp_path_factory.mktemp("reference"))


# --------------------------------------------------------------------------- cases

WINDOW_MS = {"1h": 3_600_000, "1d": 86_400_000, "7d": 7 * 86_400_000}


@dataclass(frozen=True)
class Funnel:
    id: str
    steps: tuple[str, ...]
    window: str
    order: str = "ordered"
    exclude: tuple[str, ...] = ()
    ranged: bool = False

    def args(self, ds: Dataset) -> list[str]:
        a = []
        for s in self.steps:
            a += ["--step", s]
        a += ["--window", self.window, "--order", self.order]
        for x in self.exclude:
            a += ["--exclude", x]
        if self.ranged:
            f, t = ds.range_dates()
            a += ["--from", f, "--to", t]
        return a


PV, PA, CS, OC = "Product Viewed", "Product Added", "Checkout Started", "Order Completed"
PLV = "Product List Viewed"
HEADPHONES_FUNNELS = [
    Funnel("purchase-7d", (PV, PA, CS, OC), "7d"),
    Funnel("purchase-1h", (PV, PA, CS, OC), "1h"),
    Funnel("purchase-1d-ranged", (PV, PA, OC), "1d", ranged=True),
    Funnel("repeated-list-product-list-1d", (PLV, PV, PLV), "1d"),
    Funnel("repeated-product-added-product-7d", (PV, PA, PV, OC), "7d"),
    Funnel("one-step", (OC,), "7d"),
    Funnel("one-step-either-ranged", (f"{CS}|Cart Viewed",), "1d", ranged=True),
    Funnel("pages-1d", ("page:/products/*", "page:/cart*", f"{CS}|Cart Viewed", "page:/checkout*"), "1d"),
    Funnel("page-and-name-either-7d", ("page:/collections/*|Products Searched", PV, f"{OC}|page:/checkout/thank-you*"), "7d"),
    Funnel("strict-page-then-track-1d", ("Product", PV), "1d", order="strict"),
    Funnel("strict-cart-1h", (PA, "page:/cart*", "Cart Viewed"), "1h", order="strict"),
    Funnel("strict-click-to-video-1d", ("Product Clicked", "Product", PV, "Video Playback Started"), "1d", order="strict"),
    Funnel("strict-repeated-1d", (PLV, PV, PLV), "1d", order="strict"),
    Funnel("strict-one-step-ranged", (PV,), "7d", order="strict", ranged=True),
    Funnel("unordered-1d", (OC, CS, PA), "1d", order="unordered"),
    Funnel("unordered-repeated-1h", (PV, PA, PV), "1h", order="unordered"),
    Funnel("unordered-pages-7d-ranged", ("page:/cart*", "page:/products/*", "Email Opened"), "7d", order="unordered", ranged=True),
    Funnel("exclude-list-7d", (PV, PA, OC), "7d", exclude=(PLV,)),
    Funnel("exclude-support-pages-1d", (PV, PA, CS), "1d", exclude=("page:/support*", "Checkout Error")),
]

SUBSCRIPTION_FUNNELS = [
    Funnel("signup-7d", ("page:/pricing", "Signup Started", "Signed Up", "Trial Started", "Subscription Started"), "7d"),
    Funnel("signup-1h", ("page:/pricing", "Signup Started", "Signed Up", "Trial Started"), "1h"),
    Funnel("signup-1d-ranged", ("Signup Started", "Signed Up", "Trial Started"), "1d", ranged=True),
    Funnel("repeated-note-1d", ("Note Created", "Note Edited", "Note Created"), "1d"),
    Funnel("one-step", ("Signed Up",), "7d"),
    Funnel("templates-1d", ("page:/templates/*", "Template Previewed|Template Used", "Note Created"), "1d"),
    Funnel("strict-signup-1d", ("CTA Clicked", "page:/signup", "Signup Started", "Signed Up", "Trial Started"), "1d", order="strict"),
    Funnel("strict-video-1h", ("Features", "Video Playback Started", "Video Playback Completed"), "1h", order="strict"),
    Funnel("strict-repeated-1d", ("Note Created", "Note Edited", "Note Created"), "1d", order="strict"),
    Funnel("strict-app-pages-1h", ("page:/app/*", "Note Created"), "1h", order="strict"),
    Funnel("unordered-1d", ("Trial Started", "Signed Up", "Onboarding Step Completed"), "1d", order="unordered"),
    Funnel("unordered-repeated-7d-ranged", ("Note Created", "Search Performed", "Note Created"), "7d", order="unordered", ranged=True),
    Funnel("exclude-blog-7d", ("page:/pricing", "Signup Started", "Signed Up"), "7d", exclude=("page:/blog/*",)),
    Funnel("exclude-toggle-1d-ranged", ("Pricing", "Signup Started", "Trial Started"), "1d", exclude=("Pricing Toggled",), ranged=True),
]

FUNNELS = {"headphones": HEADPHONES_FUNNELS, "subscription": SUBSCRIPTION_FUNNELS}


def funnel_reference(ds: Dataset, f: Funnel) -> Counter:
    from_ms, to_ms = _range_ms(ds, f.ranged)
    window = WINDOW_MS[f.window]
    steps = list(f.steps)
    if f.exclude:
        return ref.brute_ordered_levels(ds.events, steps, window, list(f.exclude), from_ms, to_ms)
    if f.order == "unordered":
        return ref.duck_unordered_levels(ds.duck, steps, window, from_ms, to_ms)
    return ref.ch_funnel_levels(ds.table, steps, window, strict=f.order == "strict", from_ms=from_ms, to_ms=to_ms)


def _range_ms(ds: Dataset, ranged: bool) -> tuple[int | None, int | None]:
    if not ranged:
        return None, None
    f, t = ds.range_dates()
    return ref.date_to_ms(f), ref.date_to_ms(t)


def _cases(table: dict[str, list]) -> list:
    return [pytest.param(s, c, id=f"{s.id}-{c.id}") for s in SPECS for c in table[s.brand]]


# --------------------------------------------------------------------------- the data has the hard parts


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_data_sets_have_devices_ties_disorder_and_duplicates(datasets, spec):
    ds = datasets.get(spec)
    assert ds.import_summary.get("duplicates", 0) > 0, f"no duplicate deliveries were dropped: {ds.import_summary}"
    anon_per_person: dict[str, set] = {}
    for r in ds.export_rows:
        if r.get("anonymousId"):
            anon_per_person.setdefault(r["person_id"], set()).add(r["anonymousId"])
    multi_device = sum(1 for ids in anon_per_person.values() if len(ids) >= 2)
    assert multi_device >= 5, f"only {multi_device} persons stitched from several devices"
    ties = Counter((e.person, e.ts) for e in ds.events)
    assert sum(1 for n in ties.values() if n > 1) > 0, "no two events of one person share a millisecond"
    # Arrival order: the generated file is not sorted by time within a person.
    last: dict[str, str] = {}
    backwards = 0
    for line in ds.generated.read_text(encoding="utf-8").splitlines():
        m = json.loads(line)
        who = m.get("userId") or m.get("anonymousId")
        if who in last and m["timestamp"] < last[who]:
            backwards += 1
        last[who] = m["timestamp"]
    assert backwards > 0, "messages arrive in timestamp order: --out-of-order had no effect"
    span_days = (max(e.ts for e in ds.events) - min(e.ts for e in ds.events)) / ref.DAY_MS
    assert span_days > 14, f"imported history spans {span_days:.2f} days: import must keep historical timestamps"


# --------------------------------------------------------------------------- funnels


@pytest.mark.parametrize("spec,funnel", _cases(FUNNELS))
def test_funnel_persons_equal_reference(datasets, spec, funnel):
    ds = datasets.get(spec)
    args = funnel.args(ds)
    out = ds.query("funnel", args)
    n = len(funnel.steps)
    assert [s["name"] for s in out["steps"]] == list(funnel.steps)
    assert out["order"] == funnel.order
    assert out["window_seconds"] == WINDOW_MS[funnel.window] / 1000

    levels = funnel_reference(ds, funnel)
    expected = ref.persons_per_step(levels, n)
    got = [s["persons"] for s in out["steps"]]
    assert got == expected, (
        f"persons per step: throughline {got}, reference {expected} "
        f"(reference persons by deepest level: {dict(sorted(levels.items()))})\n"
        f"reproduce: {ds.repro('funnel', args)}"
    )

    for k, s in enumerate(out["steps"]):
        first = got[0]
        assert s["conversion_from_first"] == (got[k] / first if first else None)
        if k == 0:
            assert s["conversion_from_previous"] is None
        else:
            prev = got[k - 1]
            assert s["conversion_from_previous"] == (got[k] / prev if prev else None)
            if funnel.order != "unordered":
                in_histogram = sum(b["persons"] for b in s["time_to_convert_histogram"])
                assert in_histogram == got[k], f"step {k + 1}: histogram holds {in_histogram} persons, step has {got[k]}"


ORDERED_PLAIN = {b: [f for f in fs if f.order == "ordered" and not f.exclude] for b, fs in FUNNELS.items()}
WITH_EXCLUSIONS = {b: [f for f in fs if f.exclude] for b, fs in FUNNELS.items()}


@pytest.mark.parametrize("spec,funnel", _cases(ORDERED_PLAIN))
def test_reference_brute_force_agrees_with_clickhouse(datasets, spec, funnel):
    """The chain search that answers exclusion funnels is itself checked against ClickHouse."""
    ds = datasets.get(spec)
    from_ms, to_ms = _range_ms(ds, funnel.ranged)
    window = WINDOW_MS[funnel.window]
    brute = ref.brute_ordered_levels(ds.events, list(funnel.steps), window, (), from_ms, to_ms)
    clickhouse = ref.ch_funnel_levels(ds.table, list(funnel.steps), window, False, from_ms, to_ms)
    brute.pop(0, None)
    clickhouse.pop(0, None)
    assert brute == clickhouse


@pytest.mark.parametrize("spec,funnel", _cases(WITH_EXCLUSIONS))
def test_exclusion_references_agree(datasets, spec, funnel):
    """Two formulations of "an exclusion abandons every chain in progress" agree."""
    ds = datasets.get(spec)
    from_ms, to_ms = _range_ms(ds, funnel.ranged)
    window = WINDOW_MS[funnel.window]
    brute = ref.brute_ordered_levels(ds.events, list(funnel.steps), window, list(funnel.exclude), from_ms, to_ms)
    stretches = ref.ch_funnel_levels_with_exclusions(ds.table, list(funnel.steps), window, list(funnel.exclude), from_ms, to_ms)
    brute.pop(0, None)
    stretches.pop(0, None)
    assert brute == stretches


# --------------------------------------------------------------------------- trends


TREND_EVENTS = {
    "headphones": [OC, PV, "page:/products/*", f"{CS}|Cart Viewed", "Home"],
    "subscription": ["Signed Up", "Note Created", "page:/pricing", "Trial Started|Subscription Started", "Notes"],
}
TREND_CASES = [("day", False), ("week", False), ("month", False), ("day", True), ("week", True)]


@pytest.mark.parametrize("spec,case", [
    pytest.param(s, c, id=f"{s.id}-{c[0]}{'-ranged' if c[1] else ''}") for s in SPECS for c in TREND_CASES
])
def test_trends_equal_duckdb(datasets, spec, case):
    interval, ranged = case
    ds = datasets.get(spec)
    events = TREND_EVENTS[spec.brand]
    args = [a for e in events for a in ("--event", e)] + ["--interval", interval]
    if ranged:
        args += ["--from", ds.range_dates()[0], "--to", ds.range_dates()[1]]
    out = ds.query("trends", args)
    assert out["interval"] == interval
    got_rows = {(r["date"], r["event"]): (r["events"], r["persons"]) for r in out["rows"]}
    assert len(got_rows) == len(out["rows"]), "a (date, event) pair appears twice"
    got_totals = {t["event"]: (t["events"], t["persons"]) for t in out["totals"] if t["events"]}
    want_rows, want_totals = ref.duck_trends(ds.duck, events, interval, *_range_ms(ds, ranged))

    problems = []
    for key in sorted(set(got_rows) | set(want_rows)):
        if got_rows.get(key) != want_rows.get(key):
            problems.append(f"{key}: throughline (events, persons) {got_rows.get(key)}, DuckDB {want_rows.get(key)}")
    for e in events:
        if got_totals.get(e) != want_totals.get(e):
            problems.append(f"total {e!r}: throughline {got_totals.get(e)}, DuckDB {want_totals.get(e)}")
    more = [f"... {len(problems)} differences in all"] if len(problems) > 15 else []
    assert not problems, "\n".join(problems[:15] + more + [f"reproduce: {ds.repro('trends', args)}"])


# --------------------------------------------------------------------------- retention


RETENTION_CASES = {
    "headphones": [
        (PV, PV, "week", 6, False),
        ("Newsletter Subscribed", "page:/products/*", "day", 14, False),
        (PV, f"{OC}|{PA}", "month", 2, False),
        (PLV, PV, "day", 7, True),
    ],
    "subscription": [
        ("Signed Up", "Note Created", "week", 6, False),
        ("page:/pricing", "Signed Up|Trial Started", "day", 10, False),
        ("Note Created", "Note Created", "month", 2, False),
        ("Home", "page:/app/*", "week", 3, True),
    ],
}


@pytest.mark.parametrize("spec,case", [
    pytest.param(s, c, id=f"{s.id}-{c[0]}>{c[1]}-{c[2]}{'-ranged' if c[4] else ''}".replace(" ", "_"))
    for s in SPECS for c in RETENTION_CASES[s.brand]
])
def test_retention_equals_duckdb(datasets, spec, case):
    start, ret, period, periods, ranged = case
    ds = datasets.get(spec)
    args = ["--start", start, "--return", ret, "--period", period, "--periods", str(periods)]
    if ranged:
        args += ["--from", ds.range_dates()[0], "--to", ds.range_dates()[1]]
    out = ds.query("retention", args)
    assert out["period"] == period
    got = {}
    for c in out["cohorts"]:
        assert len(c["returning"]) == periods + 1, c
        assert c["returning"][0] == c["size"], c
        assert c["share"] == [r / c["size"] if c["size"] else 0.0 for r in c["returning"]], c
        got[c["cohort"]] = c["returning"]
    want = ref.duck_retention(ds.duck, start, ret, period, periods, *_range_ms(ds, ranged))
    problems = [f"cohort {k}: throughline {got.get(k)}, DuckDB {want.get(k)}"
                for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]
    assert not problems, "\n".join(problems[:15] + [f"reproduce: {ds.repro('retention', args)}"])


# --------------------------------------------------------------------------- funnels agree with trends


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_one_step_funnel_persons_equal_trend_persons(datasets, spec):
    """Who did E in a range is one number, whichever query asks."""
    ds = datasets.get(spec)
    frm, to = ds.range_dates()
    problems = []
    for e in TREND_EVENTS[spec.brand]:
        funnel = ds.query("funnel", ["--step", e, "--window", "1d", "--from", frm, "--to", to])["steps"][0]["persons"]
        totals = ds.query("trends", ["--event", e, "--interval", "week", "--from", frm, "--to", to])["totals"]
        trend = totals[0]["persons"] if totals else 0
        if funnel != trend:
            problems.append(f"{e!r} in [{frm}, {to}): funnel step 1 has {funnel} persons, trends totals {trend}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- small cases

T0 = "2026-09-01T10:00:00"


def _msg(n: int, user: str, kind: str, name: str, second: int, page_path: str | None = None) -> dict:
    m = {"type": kind, "userId": user, "messageId": f"m-{n}", "timestamp": f"{T0[:-2]}{second:02d}.000Z"}
    m["event" if kind == "track" else "name"] = name
    if page_path is not None:
        m["context"] = {"page": {"path": page_path}}
        if kind == "page":
            m["properties"] = {"path": page_path}
    return m


# Each case: messages (user, type, name, second, page path), funnels (steps, order, window)
# (one-step funnels also ask trends), and retention tables (start, return, period, periods).
SMALL_CASES = {
    # A step-1 event at the same millisecond as an event matching no step, before any chain
    # started: ClickHouse sorts the interruption first, skips it, then starts at A.
    "strict-start-tied-with-interruption": (
        [("u1", "track", "Other", 0, None), ("u1", "track", "A", 0, None), ("u1", "track", "B", 1, None)],
        [(("A", "B"), "strict", "1h")],
        [],
    ),
    # Ties between steps: ClickHouse orders (timestamp, step), not arrival.
    "ordered-steps-tied-arrive-reversed": (
        [("u1", "track", "B", 0, None), ("u1", "track", "A", 0, None),
         ("u2", "track", "A", 0, None), ("u2", "track", "B", 0, None), ("u2", "track", "A", 5, None)],
        [(("A", "B"), "ordered", "1h"), (("A", "B", "A"), "ordered", "1h"), (("A", "B", "A"), "strict", "1h"),
         (("A", "B"), "unordered", "1h")],
        [],
    ),
    # One event serves two consecutive steps with the same name.
    "repeated-step-one-event": (
        [("u1", "track", "A", 0, None), ("u1", "track", "B", 3, None)],
        [(("A", "B", "B"), "ordered", "1h"), (("A", "B", "B"), "strict", "1h"), (("A", "B", "B"), "unordered", "1h")],
        [],
    ),
    # `page:` matches page views: a track event sent from a product page is not a page view.
    "page-step-is-page-views-only": (
        [("u1", "track", "Product Viewed", 0, "/products/a"), ("u2", "page", "Product", 0, "/products/a"),
         ("u2", "track", "Product Viewed", 1, "/products/a")],
        [(("page:/products/*",), "ordered", "1h"), (("page:/products/*", "Product Viewed"), "ordered", "1h")],
        [("page:/products/*", "Product Viewed", "day", 1)],
    ),
}


@pytest.mark.parametrize("case", list(SMALL_CASES))
def test_small_cases_equal_reference(throughline_bin, tmp_path, case):
    rows, funnels, retentions = SMALL_CASES[case]
    messages = [_msg(i, *r) for i, r in enumerate(rows)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(m) + "\n" for m in messages), encoding="utf-8")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    create_project(throughline_bin, data_dir, "p")
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "p", str(src), "--quiet")
    exported = tmp_path / "export.jsonl"
    run_cli(throughline_bin, "export", "--data", str(data_dir), "--project", "p", "--format", "jsonl", "--out", str(exported))
    events = ref.load_export(exported)
    table = ref.write_table(events, tmp_path / "table.jsonl")
    problems = []

    def query(what: str, args: list[str]) -> dict:
        return json.loads(run_cli(throughline_bin, "query", what, "--data", str(data_dir), "--project", "p", *args).stdout)

    for steps, order, window in funnels:
        args = [a for s in steps for a in ("--step", s)] + ["--order", order, "--window", window]
        got = [s["persons"] for s in query("funnel", args)["steps"]]
        if order == "unordered":
            levels = ref.duck_unordered_levels(ref.duck(table), list(steps), WINDOW_MS[window])
        else:
            levels = ref.ch_funnel_levels(table, list(steps), WINDOW_MS[window], strict=order == "strict")
        want = ref.persons_per_step(levels, len(steps))
        if got != want:
            problems.append(f"funnel {' '.join(_quote(a) for a in args)}: throughline {got}, reference {want}")
        if len(steps) == 1:
            totals = query("trends", ["--event", steps[0], "--interval", "day"])["totals"]
            _, want_totals = ref.duck_trends(ref.duck(table), [steps[0]], "day")
            got_totals = {t["event"]: (t["events"], t["persons"]) for t in totals if t["events"]}
            if got_totals != want_totals:
                problems.append(f"trends --event {_quote(steps[0])}: throughline (events, persons) {got_totals}, "
                                f"reference {want_totals}")
    for start, ret, period, periods in retentions:
        args = ["--start", start, "--return", ret, "--period", period, "--periods", str(periods)]
        got = {c["cohort"]: c["returning"] for c in query("retention", args)["cohorts"]}
        want = ref.duck_retention(ref.duck(table), start, ret, period, periods)
        if got != want:
            problems.append(f"retention {' '.join(_quote(a) for a in args)}: throughline {got}, reference {want}")
    assert not problems, "\n".join(problems + ["events: " + json.dumps(messages)])
