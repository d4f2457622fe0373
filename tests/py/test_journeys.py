"""Journeys against the real binary, a real SMTP server (aiosmtpd) and a webhook receiver
that verifies Standard Webhooks signatures with the reference `standardwebhooks` package.

The orchestrator runs on a test clock (`orchestrate.test_clock`) the tests move, so waits
of days take milliseconds; events carry timestamps on that clock. It only moves forward,
from the real time on, so the tests live in 2027.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from harness import create_project, export_events, run_cli
from journeys_kit import Api, SmtpSink, WebhookSink, iso, wait_for, write_config

T0 = datetime(2027, 1, 15, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def smtp():
    s = SmtpSink()
    yield s
    s.stop()


@pytest.fixture
def hooks():
    h = WebhookSink()
    yield h
    h.stop()


def start(make_server, data_dir, tmp_path, smtp_port=None, extra=""):
    s = make_server(data_dir)
    s.config = write_config(tmp_path / "throughline.toml", f"http://127.0.0.1:{s.port}", smtp_port, extra)
    return s.start()


WELCOME = """
name = "welcome"
trigger = {{ event = "Signed Up where plan = 'pro'" }}
goal = {{ event = "Order Completed" }}

[[steps]]
id = "hello"
type = "email"
subject = "Welcome {{{{ traits.first_name }}}}"
html = '''<html><body><p>Hi {{{{ traits.first_name }}}} ({{{{ event.plan }}}})</p>
<a href="https://shop.example/start?x=1">Start</a> <a href="https://elsewhere.example/">Other</a>
<a href="{{{{ unsubscribe_url }}}}">Unsubscribe</a></body></html>'''
text = "Hi {{{{ traits.first_name }}}}: https://shop.example/start"

[[steps]]
id = "rest"
type = "wait"
duration = "2d"

[[steps]]
id = "nudge"
type = "webhook"
url = "{hook}/nudge"
"""


def test_email_webhook_links_and_suppression_end_to_end(make_server, data_dir, tmp_path, throughline_bin, smtp, hooks):
    project = create_project(throughline_bin, data_dir, "shop")
    (data_dir / "projects" / "shop").mkdir(parents=True, exist_ok=True)
    (data_dir / "projects" / "shop" / "links.toml").write_text(
        'destinations = ["https://shop.example/"]\n[[vanity]]\nslug = "radio-spring"\ndestination = "https://shop.example/spring"\nutm_source = "radio"\n'
    )
    server = start(make_server, data_dir, tmp_path, smtp.port)
    api = Api(server, project)
    api.set_clock(T0)
    created = api.create(WELCOME.format(hook=hooks.url))
    assert [s["id"] for s in created["steps"]] == ["hello", "rest", "nudge"]

    api.identify("ann", {"email": "ann@example.com", "first_name": "<b>Ann</b>"}, T0)
    api.track("ann", "Signed Up", T0, {"plan": "pro"})
    api.track("bob", "Signed Up", T0, {"plan": "free"})  # the condition keeps him out

    msgs = wait_for(lambda: smtp.by_id() or None, what="the welcome email")
    assert len(msgs) == 1
    (mid, msg), = msgs.items()
    assert re.fullmatch(r"<msg_[0-9a-f]{32}@shop\.example>", mid), mid
    assert msg["Subject"] == "Welcome <b>Ann</b>"
    assert msg["To"] == "ann@example.com"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsub = msg["List-Unsubscribe"].strip("<>")
    assert unsub.startswith(server.url + "/u/")
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    # Traits are HTML-escaped in the HTML body; the trigger's properties are there too.
    assert "Hi &lt;b&gt;Ann&lt;&#x2f;b&gt; (pro)" in html
    tracked = re.findall(r'href="(' + re.escape(server.url) + r'/r/[^"]+)"', html)
    assert len(tracked) == 1, html
    assert 'href="https://elsewhere.example/"' in html, "an unregistered destination is left as written"
    assert re.search(re.escape(server.url) + r"/r/\S+", text), text
    pixel = re.search(r'src="(' + re.escape(server.url) + r'/o/[^"]+\.gif)"', html).group(1)

    # The click redirects to the registered destination with the send's UTM parameters.
    r = requests.get(tracked[0], allow_redirects=False, timeout=10)
    assert r.status_code == 302
    dest = urlparse(r.headers["Location"])
    q = parse_qs(dest.query)
    assert (dest.netloc, dest.path, q["x"]) == ("shop.example", "/start", ["1"])
    assert q["utm_medium"] == ["email"] and q["utm_campaign"] == ["welcome"]
    assert q["utm_content"] == ["welcome/hello/default"] and q["utm_source"] == ["throughline"]
    # Altered and forged tokens: 404, nothing recorded.
    token = tracked[0].rsplit("/", 1)[1]
    payload, mac = token.split(".")
    for bad in [payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac, payload + "." + mac[::-1], "nope.nope"]:
        assert requests.get(f"{server.url}/r/{bad}", allow_redirects=False, timeout=10).status_code == 404
    assert requests.get(pixel.replace("/o/", "/o/x"), timeout=10).status_code == 404
    r = requests.get(pixel, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/gif" and r.content.startswith(b"GIF89a")
    # A vanity URL for an offline ad.
    r = requests.get(server.url + "/r/radio-spring", allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "utm_source=radio" in r.headers["Location"]
    assert requests.get(server.url + "/r/no-such-slug", allow_redirects=False, timeout=10).status_code == 404

    # Two days later the webhook goes out, signed (the receiver verified it).
    api.set_clock(T0 + timedelta(days=2, minutes=1))
    wait_for(lambda: len(hooks.acted) == 1, what="the nudge webhook")
    (wid, body), = hooks.acted.items()
    assert hooks.bad_signatures == 0
    assert body["idempotency_key"] == "welcome/ann/nudge/1" and body["person"]["traits"]["email"] == "ann@example.com"
    assert wid.startswith("msg_")

    journey = wait_for(lambda: (j := api.journey("welcome"))["steps"][2].get("delivered") == 1 and j, what="stats")
    assert journey["entered"] == 1 and journey["sends"] == 2
    assert journey["steps"][0]["delivered"] == 1 and journey["watching_goal"] == 1

    # One-click unsubscribe (RFC 8058): a POST, answered without a redirect.
    r = requests.post(unsub, data="List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10, allow_redirects=False)
    assert r.status_code == 200
    assert requests.post(unsub[:-3] + "xyz", data="List-Unsubscribe=One-Click", timeout=10).status_code == 404
    wait_for(lambda: api.get("/suppressions").json()["suppressed"] >= 1, what="the suppression")
    # A second journey for her is now suppressed, and recorded as such.
    api.create(WELCOME.format(hook=hooks.url).replace('name = "welcome"', 'name = "again"'))
    api.track("ann", "Signed Up", T0 + timedelta(days=2, minutes=2), {"plan": "pro"})
    wait_for(lambda: api.journey("again")["steps"][0].get("suppressed") == 1, what="a suppressed send")
    assert len(smtp.by_id()) == 1

    server.stop()
    events = export_events(throughline_bin, data_dir, "shop")
    names = [e.get("event") for e in events]
    for n in ["Journey Entered", "Email Sent", "Webhook Delivered", "Email Link Clicked", "Email Opened", "Unsubscribed", "Message Suppressed", "Vanity Link Visited"]:
        assert n in names, f"{n} not recorded: {sorted(set(filter(None, names)))}"
    assert names.count("Email Link Clicked") == 1, "forged tokens recorded nothing"
    sent = next(e for e in events if e.get("event") == "Email Sent")
    assert sent["userId"] == "ann" and sent["properties"]["idempotency_key"] == "welcome/ann/hello/1"
    # Each send is an asset of the registry, named as its links' utm_content.
    assets = json.loads(run_cli(throughline_bin, "assets", "list", "--data", str(data_dir), "--project", "shop").stdout)
    ids = [a["id"] for a in (assets["assets"] if isinstance(assets, dict) else assets)]
    assert "welcome/hello/default" in ids and "welcome/nudge/default" in ids


def test_bad_journey_files_are_rejected_naming_step_and_field(make_server, data_dir, tmp_path, throughline_bin):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "bad"\ntrigger = { event = "Signed Up" }\n'
        '[[steps]]\nid = "rest"\ntype = "wait"\nduration = "two days"\n'
        '[[steps]]\nid = "mail"\ntype = "email"\nsubject = "x"\ntext = "{{ oops"\nnext = "nowhere"\n'
    )
    p = run_cli(throughline_bin, "journeys", "validate", str(bad), check=False)
    assert p.returncode != 0
    assert 'step "rest", field "duration"' in p.stderr, p.stderr
    assert 'step "mail", field "text"' in p.stderr and 'step "mail", field "next"' in p.stderr, p.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"name": "good", "trigger": {"event": "Signed Up"}, "steps": [{"id": "w", "type": "wait", "duration": "1d"}]}))
    assert json.loads(run_cli(throughline_bin, "journeys", "validate", str(good)).stdout)["valid"] is True

    project = create_project(throughline_bin, data_dir, "shop")
    server = start(make_server, data_dir, tmp_path)
    api = Api(server, project)
    r = api.post("/journeys", data=bad.read_text(), ctype="application/toml")
    assert r.status_code == 400
    problems = {(p.get("step"), p["field"]) for p in r.json()["problems"]}
    assert {("rest", "duration"), ("mail", "text"), ("mail", "next")} <= problems
    r = api.post("/journeys", body={"name": "j", "trigger": {"event": "x"}, "steps": [{"id": "a", "type": "wait", "duration": "1d", "colour": "red"}]})
    assert r.status_code == 400 and r.json()["problems"][0] == {"step": "a", "field": "colour", "error": r.json()["problems"][0]["error"]}
    assert api.get("/journeys").json()["journeys"] == []
    # Over HTTP and through the CLI the same journey is created once.
    out = run_cli(throughline_bin, "journeys", "create", str(good), "--server", server.url, "--api-key", project["api_key"], "--project", "shop")
    assert json.loads(out.stdout)["name"] == "good"
    assert api.post("/journeys", data=good.read_text()).status_code == 400
    for action, status in [("pause", "paused"), ("resume", "active"), ("archive", "archived")]:
        r = api.post(f"/journeys/good/{action}")
        assert r.status_code == 200 and r.json()["status"] == status
    assert api.post("/journeys/good/resume").status_code == 409


CAPPED = """
name = "{name}"
priority = {priority}
reentry = "always"
trigger = {{ event = "Browsed" }}
[[steps]]
id = "mail"
type = "email"
subject = "{name}"
text = "from {name}"
"""


def test_three_journeys_compete_for_one_person_under_the_caps(make_server, data_dir, tmp_path, throughline_bin, smtp):
    project = create_project(throughline_bin, data_dir, "shop")
    caps = 'caps = [{ channel = "email", count = 1, per = "1d" }, { channel = "email", count = 2, per = "7d" }]'
    server = start(make_server, data_dir, tmp_path, smtp.port, caps)
    api = Api(server, project)
    api.set_clock(T0)
    for name, prio in [("low", 1), ("high", 9), ("mid", 5)]:
        api.create(CAPPED.format(name=name, priority=prio))
    api.identify("cy", {"email": "cy@example.com"}, T0)
    subjects = []
    for day in range(4):
        when = T0 + timedelta(days=day, hours=1)
        api.set_clock(when)
        api.track("cy", "Browsed", when, mid=f"browse-{day}")
        wait_for(lambda: sum(api.journey(n)["steps"][0].get("capped", 0) + api.journey(n)["steps"][0].get("delivered", 0) for n in ["low", "mid", "high"]) == 3 * (day + 1), what=f"day {day} decided")
    subjects = [m["Subject"] for m in smtp.by_id().values()]
    # Day 0 and 1: the high-priority journey wins the daily cap; days 2-3: the weekly cap
    # of 2 stops everything.
    assert subjects == ["high", "high"], subjects
    capped = {n: api.journey(n)["steps"][0]["capped"] for n in ["low", "mid", "high"]}
    assert capped == {"low": 4, "mid": 4, "high": 2}
    server.stop()
    events = export_events(throughline_bin, data_dir, "shop")
    recorded = [e for e in events if e.get("event") == "Message Capped"]
    assert len(recorded) == 10 and all(e["properties"]["cap"] in ("1 per 1d", "2 per 7d") for e in recorded)


def test_quiet_hours_follow_each_timezone_across_the_dst_change(make_server, data_dir, tmp_path, throughline_bin, smtp):
    project = create_project(throughline_bin, data_dir, "shop")
    quiet = 'quiet_hours = { start = "21:00", end = "08:00", default_timezone = "Europe/London" }'
    server = start(make_server, data_dir, tmp_path, smtp.port, quiet)
    api = Api(server, project)
    # 04:00 UTC on 2027-03-14: 23:00 on the 13th in New York (EST), 13:00 in Tokyo, 04:00
    # in London. New York switches to EDT at 02:00 that night: 08:00 EDT is 12:00 UTC,
    # an hour earlier than 08:00 EST would be.
    night = datetime(2027, 3, 14, 4, 0, tzinfo=timezone.utc)
    api.set_clock(night)
    api.create('name = "q"\ntrigger = { event = "Signed Up" }\n[[steps]]\nid = "m"\ntype = "email"\nsubject = "hi {{ person.id }}"\ntext = "x"\n')
    people = {"ny": "America/New_York", "tokyo": "Asia/Tokyo", "london": None}
    for p, tz in people.items():
        traits = {"email": f"{p}@example.com"}
        if tz:
            traits["timezone"] = tz
        api.identify(p, traits, night)
        api.track(p, "Signed Up", night)

    def got():
        return sorted(m["Subject"] for m in smtp.by_id().values())

    wait_for(lambda: got() == ["hi tokyo"], what="Tokyo at once")
    for at, expect in [
        ((7, 59), ["hi tokyo"]),
        ((8, 0), ["hi london", "hi tokyo"]),
        ((11, 59), ["hi london", "hi tokyo"]),
        ((12, 0), ["hi london", "hi ny", "hi tokyo"]),
    ]:
        api.set_clock(night.replace(hour=at[0], minute=at[1]))
        if expect == got():
            # Give a wrong early send the chance to show up before moving on.
            import time

            time.sleep(0.4)
        wait_for(lambda: got() == expect, what=f"sends by {at}")
    # The receiver sees a mail before the server journals its outcome: wait for the counts.
    step = wait_for(lambda: (s := api.journey("q")["steps"][0])["delivered"] == 3 and s,
                    what="the third delivery journaled")
    assert step["quiet_delayed"] == 2 and step["delivered"] == 3


def test_backtest_and_suppression_list_import(make_server, data_dir, tmp_path, throughline_bin):
    project = create_project(throughline_bin, data_dir, "shop")
    day = timedelta(days=1)
    base = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
    lines = []
    for n in range(40):
        lines.append({"type": "identify", "userId": f"u{n}", "traits": {"email": f"u{n}@example.com"}, "timestamp": iso(base), "messageId": f"i{n}"})
        lines.append({"type": "track", "userId": f"u{n}", "event": "Signed Up", "timestamp": iso(base + n * timedelta(hours=1)), "messageId": f"s{n}"})
        if n % 4 == 0:
            lines.append({"type": "track", "userId": f"u{n}", "event": "Order Completed", "timestamp": iso(base + 3 * day), "messageId": f"o{n}"})
    hist = tmp_path / "history.jsonl"
    hist.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "shop", str(hist))
    # The fatigue audience export's CSV, as a suppression list.
    sup = tmp_path / "fatigued.csv"
    sup.write_text("person_id,user_ids,emails,anonymous_ids,channel,touches_last_window,cap,engagement_recent,engagement_before\n"
                   "u1,u1,u1@example.com,,email,9,3,0.1,0.5\nu2,u2;u2b,u2@example.com,,email,8,3,0.1,0.4\n")
    out = json.loads(run_cli(throughline_bin, "suppressions", "import", str(sup), "--data", str(data_dir), "--project", "shop").stdout)
    assert out == {"imported": 5, "suppressed": 5}
    jf = tmp_path / "j.toml"
    jf.write_text('name = "bt"\ntrigger = { event = "Signed Up" }\ngoal = { event = "Order Completed", within = "10d" }\n'
                  '[[steps]]\nid = "split"\ntype = "split"\nvariants = [{ name = "hold", weight = 1, holdout = true, next = "end" }, { name = "go", weight = 3 }]\n'
                  '[[steps]]\nid = "m"\ntype = "email"\nsubject = "x"\ntext = "y"\n')
    r = json.loads(run_cli(throughline_bin, "journeys", "backtest", str(jf), "--from", "2025-06-01", "--to", "2025-07-01", "--data", str(data_dir), "--project", "shop").stdout)
    assert r["entries"] == 40 and r["persons"] == 40
    assert r["holdout"]["persons"] + r["steps"][1]["reached"] == 40
    # u1 and u2 are suppressed unless the split held them out first.
    assert r["suppressed"] <= 2 and r["sends"] + r["suppressed"] == r["steps"][1]["reached"]
    assert r["touched"]["persons"] + r["not_touched"]["persons"] == 40
    assert r["touched"]["converted"] + r["not_touched"]["converted"] == 10
    assert r["sends"] == r["touched"]["persons"]
    # The same over HTTP.
    server = start(make_server, data_dir, tmp_path)
    api = Api(server, project)
    h = api.post("/journeys/backtest", body={"journey": jf.read_text(), "from": "2025-06-01", "to": "2025-07-01"})
    assert h.status_code == 200 and h.json() == r
