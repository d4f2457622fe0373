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

import requests

from harness import create_project, run_cli
from journeys_kit import write_config

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


def test_configured_caps_come_from_the_orchestration_config_and_say_so(throughline_bin, data_dir, tmp_path, make_server):
    """Without `configured_caps` in the request, the server compares its recommendations
    with its own `[orchestrate] caps`, converted to touches per window, and says where each
    cap came from; the CLI with --data reads the caps the project's journeys last ran with
    (or those of --config). A request's own caps win and say `request`."""
    project = create_project(throughline_bin, data_dir, "mail")
    lines = []
    for p in range(40):
        for w in range(6):
            t = START + timedelta(days=7 * w + 1)
            lines.append({"type": "track", "event": "Email Sent", "userId": f"p{p}", "messageId": f"e{p}-{w}", "timestamp": iso(t)})
            lines.append({"type": "track", "event": "SMS Sent", "userId": f"p{p}", "messageId": f"s{p}-{w}", "timestamp": iso(t + timedelta(hours=1))})
    f = tmp_path / "sends.jsonl"
    f.write_text("".join(json.dumps(m) + "\n" for m in lines))
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "mail", str(f))
    caps = ('caps = [{ channel = "email", count = 3, per = "7d" }, { channel = "email", count = 1, per = "1d" },'
            ' { channel = "sms", count = 1, per = "2d" }, { channel = "webhook", count = 5, per = "1d" }]')
    server = make_server(data_dir)
    server.config = write_config(tmp_path / "throughline.toml", f"http://127.0.0.1:{server.port}", extra=caps)
    server.start()
    auth = {"Authorization": f"Bearer {project['api_key']}"}
    url = f"{server.url}/api/v1/projects/mail"

    def fatigue(body):
        r = requests.post(f"{url}/query/fatigue", json={"conversion": "Order Completed", **body}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        return {c["channel"]: c for c in r.json()["channels"]}

    ch = fatigue({})
    # Email: 3 in any 7 days and 1 a day: the tighter, 3 per 7-day window. SMS: 1 in any 2
    # days, 4 per week. Webhook caps have no fatigue channel and fill nothing.
    assert (ch["Email"]["configured_cap"], ch["SMS"]["configured_cap"]) == (3, 4)
    src = ch["Email"]["configured_cap_source"]
    assert src["from"] == "orchestration" and src["caps"] == ["3 per 7d", "1 per 1d"]
    assert "[orchestrate]" in src["detail"] and "3 touches per 7d" in src["detail"], src
    assert ch["SMS"]["configured_cap_source"]["caps"] == ["1 per 2d"]
    # A two-week window: 3 per 7d allows 6, 1 per 1d 14; the SMS cap 7.
    ch = fatigue({"window": "14d"})
    assert (ch["Email"]["configured_cap"], ch["SMS"]["configured_cap"]) == (6, 7)
    # The request's own caps win, for every channel.
    ch = fatigue({"configured_caps": {"Email": 5}})
    assert ch["Email"]["configured_cap"] == 5 and ch["Email"]["configured_cap_source"]["from"] == "request"
    assert ch["SMS"]["configured_cap"] is None and ch["SMS"]["configured_cap_source"] is None
    # A source is an answer, never an input.
    r = requests.post(f"{url}/query/fatigue", json={"conversion": "Order Completed", "configured_cap_sources": {}}, headers=auth, timeout=30)
    assert r.status_code == 400
    # Opening the project's journeys makes its orchestrator journal the policy it runs with.
    assert requests.get(f"{url}/journeys", headers=auth, timeout=30).status_code == 200
    server.stop()

    base = ["query", "fatigue", "--data", str(data_dir), "--project", "mail", "--conversion", "Order Completed"]
    ch = {c["channel"]: c for c in json.loads(run_cli(throughline_bin, *base).stdout)["channels"]}
    assert (ch["Email"]["configured_cap"], ch["SMS"]["configured_cap"]) == (3, 4)
    assert ch["Email"]["configured_cap_source"]["from"] == "orchestration"
    assert "journal" in ch["Email"]["configured_cap_source"]["detail"]
    other = tmp_path / "other.toml"
    other.write_text('[orchestrate]\ncaps = [{ channel = "email", count = 2, per = "7d" }]\n')
    ch = {c["channel"]: c for c in json.loads(run_cli(throughline_bin, *base, "--config", str(other)).stdout)["channels"]}
    assert ch["Email"]["configured_cap"] == 2 and str(other) in ch["Email"]["configured_cap_source"]["detail"]
    assert ch["SMS"]["configured_cap"] is None
    ch = {c["channel"]: c for c in json.loads(run_cli(throughline_bin, *base, "--configured-cap", "Email=4").stdout)["channels"]}
    assert ch["Email"]["configured_cap"] == 4 and ch["Email"]["configured_cap_source"]["from"] == "request"
    table = run_cli(throughline_bin, *base, "--format", "table").stdout
    assert "configured 3 (the caps the project's journeys last ran with" in table, table
    # A project whose journeys never ran has no orchestration caps.
    create_project(throughline_bin, data_dir, "fresh")
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "fresh", str(f))
    ch = {c["channel"]: c for c in json.loads(run_cli(throughline_bin, "query", "fatigue", "--data", str(data_dir), "--project", "fresh", "--conversion", "Order Completed").stdout)["channels"]}
    assert ch["Email"]["configured_cap"] is None and ch["Email"]["configured_cap_source"] is None
