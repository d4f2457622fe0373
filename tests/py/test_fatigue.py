"""`query fatigue` on generated data whose true curves are known.

Each person gets a random e-mail cadence x of 1..10 sends per week (a randomized
frequency test, so the curves are causal). In every week of exposure they unsubscribe with
probability u(x) = 0.004 x^2 and convert with probability c(x) = 0.02 + 0.25 (1 - e^(-0.45 x)).
With a conversion worth 20 and an unsubscribe costing 12, the true optimum is
argmax_x 20 c(x) - 12 u(x); the recommended cap must land within one touch of it. The
fatigued audience must come out as CSV and JSON lines and agree with the JSON answer.
"""

from __future__ import annotations

import csv
import json
import math
import random
from datetime import datetime, timedelta, timezone

from harness import create_project, run_cli

START = datetime(2026, 1, 5, tzinfo=timezone.utc)
WEEKS = 8
PERSONS_PER_CADENCE = 1200
CADENCES = range(1, 11)
VALUE, COST = 20.0, 12.0


def conv(x: int) -> float:
    return 0.02 + 0.25 * (1 - math.exp(-0.45 * x))


def unsub(x: int) -> float:
    return 0.004 * x * x


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def generate(path, seed: int = 8) -> None:
    rng = random.Random(seed)
    n = 0
    with open(path, "w") as f:
        for x in CADENCES:
            for p in range(PERSONS_PER_CADENCE):
                uid = f"u{x}-{p}"
                gap = timedelta(days=7) / x
                t0 = START + gap / 2
                for w in range(WEEKS):
                    base = t0 + timedelta(days=7 * w)
                    for k in range(x):
                        n += 1
                        f.write(json.dumps({"type": "track", "event": "Email Sent", "userId": uid,
                                            "messageId": f"m{n}", "timestamp": iso(base + gap * k)}) + "\n")
                    if rng.random() < conv(x):
                        n += 1
                        f.write(json.dumps({"type": "track", "event": "Order Completed", "userId": uid,
                                            "messageId": f"m{n}", "timestamp": iso(base + timedelta(days=3.5))}) + "\n")
                    if rng.random() < unsub(x):
                        n += 1
                        f.write(json.dumps({"type": "track", "event": "Unsubscribed", "userId": uid,
                                            "messageId": f"m{n}", "timestamp": iso(base + timedelta(days=6.99))}) + "\n")
                        break


def test_the_recommended_cap_is_within_one_touch_of_the_true_optimum(throughline_bin, data_dir, tmp_path):
    create_project(throughline_bin, data_dir, "mail")
    events = tmp_path / "fatigue.jsonl"
    generate(events)
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "mail", str(events), timeout=300)
    truth = max(CADENCES, key=lambda x: VALUE * conv(x) - COST * unsub(x))
    assert truth == 4  # the design: an interior optimum, not an end of the range
    args = ["query", "fatigue", "--data", str(data_dir), "--project", "mail", "--conversion", "Order Completed",
            "--conversion-value", str(VALUE), "--unsubscribe-cost", str(COST), "--min-windows", "200",
            "--configured-cap", "Email=7", "--to", iso(START + timedelta(days=60))]
    r = json.loads(run_cli(throughline_bin, *args).stdout)
    [email] = r["channels"]
    assert email["channel"] == "Email" and email["status"] == "ok"
    assert abs(email["recommended_cap"] - truth) <= 1, (email["recommended_cap"], truth)
    assert email["configured_cap"] == 7 and "lower it" in email["cap_advice"]
    # The curve's points are the true rates within their intervals, mostly (95% intervals
    # over 10 points each: allow one miss per curve).
    points = {p["touches"]: p for p in email["curve"]}
    assert set(CADENCES) <= set(points)
    for key, f in [("opt_out", unsub), ("conversion", conv)]:
        misses = [x for x in CADENCES if not points[x][key]["ci_low"] <= f(x) <= points[x][key]["ci_high"]]
        assert len(misses) <= 1, (key, misses)
    for x in CADENCES:
        assert points[x]["windows"] >= 200 and points[x]["used"]
    # Unsubscribes and conversions are counted once each.
    assert email["unsubscribes"] == sum(round(points[x]["opt_out"]["rate"] * points[x]["windows"]) for x in CADENCES)
    assert email["complaints"] == 0


def test_the_fatigue_audience_exports_as_a_suppression_list(throughline_bin, data_dir, tmp_path):
    """Persons over the cap whose engagement fell are listed, in CSV and JSON lines."""
    create_project(throughline_bin, data_dir, "mail")
    now = START + timedelta(days=70)
    lines = []
    n = 0

    def ev(uid, name, t, **kw):
        nonlocal n
        n += 1
        m = {"type": "track", "event": name, "userId": uid, "messageId": f"a{n}", "timestamp": iso(t)}
        m.update(kw)
        lines.append(json.dumps(m))

    # 300 persons on one send a week who engage: they make the curve (cap 1 is enough).
    rng = random.Random(3)
    for p in range(300):
        for w in range(10):
            t = START + timedelta(days=7 * w + 1)
            ev(f"calm{p}", "Email Sent", t)
            if rng.random() < 0.5:
                ev(f"calm{p}", "Email Opened", t + timedelta(hours=2))
    # 5 persons sent daily lately, who used to open and stopped: fatigued now.
    for p in range(5):
        for d in range(42):
            t = now - timedelta(days=42 - d) + timedelta(hours=9)
            ev(f"tired{p}", "Email Sent", t, context={"traits": {"email": f"tired{p}@mail.example"}})
            if d < 28:
                ev(f"tired{p}", "Email Opened", t + timedelta(hours=1))
    # 5 persons sent daily who still open everything: over the cap but not fatigued.
    for p in range(5):
        for d in range(42):
            t = now - timedelta(days=42 - d) + timedelta(hours=9)
            ev(f"keen{p}", "Email Sent", t)
            ev(f"keen{p}", "Email Opened", t + timedelta(hours=1))
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(lines) + "\n")
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "mail", str(f))
    base = ["query", "fatigue", "--data", str(data_dir), "--project", "mail", "--conversion", "Order Completed",
            "--configured-cap", "Email=2", "--min-windows", "50000", "--now", iso(now)]
    r = json.loads(run_cli(throughline_bin, *base).stdout)
    [email] = r["channels"]
    assert email["recommended_cap"] is None  # too little data: the configured cap applies
    assert email["persons_over_cap_now"] == 10
    assert r["audience"]["persons"] == 5
    assert sorted(row["person_id"] for row in r["audience"]["rows"]) == [f"tired{p}" for p in range(5)]
    out_csv = tmp_path / "suppress.csv"
    run_cli(throughline_bin, *base, "--audience-out", str(out_csv))
    rows = list(csv.DictReader(out_csv.open()))
    assert sorted(r["person_id"] for r in rows) == [f"tired{p}" for p in range(5)]
    assert all(r["emails"] == f"{r['person_id']}@mail.example" and r["channel"] == "Email" for r in rows)
    out_json = tmp_path / "suppress.jsonl"
    run_cli(throughline_bin, *base, "--audience-out", str(out_json))
    rows = [json.loads(l) for l in out_json.read_text().splitlines()]
    assert sorted(r["person_id"] for r in rows) == [f"tired{p}" for p in range(5)]
    assert all(r["engagement_recent"] < r["engagement_before"] for r in rows)
