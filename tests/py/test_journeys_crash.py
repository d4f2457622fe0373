"""Never twice, after `kill -9`: thousands of persons go through a journey with waits,
webhooks and emails while the server is killed several times. After the last restart
every due send has happened, no idempotency key was acted on twice by the receivers
(they dedupe by `webhook-id` and `Message-ID`, and every repeat carried the same body),
the raw re-deliveries of the crash window are counted and reported, and no person got
more emails than the caps allow.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import requests

from harness import basic_auth, create_project, export_events
from journeys_kit import Api, SmtpSink, WebhookSink, iso, wait_for, write_config

PERSONS = int(__import__('os').environ.get('CRASH_PERSONS', 2000))
KILLS = 4
T0 = datetime(2027, 2, 2, 10, 0, tzinfo=timezone.utc)

JOURNEY = """
name = "onboard"
trigger = {{ event = "Signed Up" }}
[[steps]]
id = "hook"
type = "webhook"
url = "{hook}/hook"
[[steps]]
id = "wait1"
type = "wait"
duration = "1d"
[[steps]]
id = "mail"
type = "email"
subject = "Day one"
text = "Hello {{{{ traits.name }}}} https://shop.example/a"
[[steps]]
id = "wait2"
type = "wait"
duration = "1d"
[[steps]]
id = "mail2"
type = "email"
subject = "Day two"
text = "Again"
[[steps]]
id = "hook2"
type = "webhook"
url = "{hook}/hook2"
"""


def test_kill9_while_persons_move_through_a_journey(make_server, data_dir, tmp_path, throughline_bin):
    rng = random.Random(20260202)
    smtp = SmtpSink()
    hooks = WebhookSink()
    try:
        project = create_project(throughline_bin, data_dir, "shop")
        (data_dir / "projects" / "shop").mkdir(parents=True, exist_ok=True)
        (data_dir / "projects" / "shop" / "links.toml").write_text('destinations = ["https://shop.example/"]\n')
        server = make_server(data_dir)
        caps = 'caps = [{ channel = "email", count = 1, per = "20h" }]\nworkers = 16'
        server.config = write_config(tmp_path / "t.toml", f"http://127.0.0.1:{server.port}", smtp.port, caps)
        server.start()
        api = Api(server, project)
        clock = {"now": T0}
        api.set_clock(T0)
        api.create(JOURNEY.format(hook=hooks.url))

        # Persons sign up in batches from a client thread that retries like an SDK.
        stop = threading.Event()
        sent = {"n": 0}

        def client():
            auth = basic_auth(project["write_key"])
            n = 0
            while n < PERSONS and not stop.is_set():
                batch = []
                for k in range(n, min(n + 100, PERSONS)):
                    batch.append({"type": "identify", "userId": f"p{k}", "traits": {"email": f"p{k}@example.com", "name": f"P{k}"},
                                  "messageId": f"id-{k}", "timestamp": iso(T0)})
                    batch.append({"type": "track", "userId": f"p{k}", "event": "Signed Up", "messageId": f"su-{k}", "timestamp": iso(T0)})
                try:
                    r = requests.post(server.url + "/v1/batch", json={"batch": batch}, headers={"Authorization": auth}, timeout=10)
                    if r.status_code == 200:
                        n += 100
                        sent["n"] = n
                        continue
                except requests.RequestException:
                    pass
                time.sleep(0.1)

        t = threading.Thread(target=client, daemon=True)
        t.start()

        def advance(hours: float):
            clock["now"] += timedelta(hours=hours)
            try:
                api.set_clock(clock["now"])
            except (requests.RequestException, AssertionError):
                pass

        for k in range(KILLS):
            # Let work happen (signups, sends, clock moving through the waits), then kill.
            for _ in range(rng.randint(2, 5)):
                time.sleep(rng.uniform(0.2, 0.6))
                advance(rng.choice([0, 6, 12, 25]))
            server.kill9()
            time.sleep(0.1)
            server.start(timeout=60)
            api.set_clock(clock["now"])
        t.join(timeout=120)
        assert sent["n"] == PERSONS, f"only {sent['n']} signups acknowledged"
        # Past every wait: everything due must happen.
        advance(24 * 3)
        expected_hooks = 2 * PERSONS
        expected_mails = 2 * PERSONS

        def done():
            # Waits started after the last jump need the clock to go on moving.
            advance(6)
            j = api.journey("onboard")
            st = {s["id"]: s for s in j["steps"]}
            decided = all(st[s]["delivered"] + st[s]["failed"] + st[s]["capped"] + st[s]["suppressed"] == PERSONS for s in ["hook", "mail", "mail2", "hook2"])
            return decided and j["active"] == 0 and j
        try:
            j = wait_for(done, timeout=180, what="every due send", interval=0.5)
        except AssertionError:
            raise AssertionError(f"not every due send happened: {json.dumps(api.journey('onboard')['steps'])}\n{server.log_tail(3000)}")
        st = {s["id"]: s for s in j["steps"]}
        for s in ["hook", "mail", "mail2", "hook2"]:
            assert st[s]["failed"] == 0 and st[s]["suppressed"] == 0, st[s]
        server.stop()

        # Receivers: every key acted on once; repeats carried the same body.
        assert hooks.bad_signatures == 0 and hooks.changed_bodies == 0
        assert len(hooks.acted) == expected_hooks, f"{len(hooks.acted)} webhooks acted on, {expected_hooks} due"
        keys = [b["idempotency_key"] for b in hooks.acted.values()]
        assert len(set(keys)) == len(keys)
        mails = smtp.by_id()
        capped = st["mail"]["capped"] + st["mail2"]["capped"]
        assert len(mails) + capped == expected_mails, (len(mails), capped)
        raw_hook_repeats = hooks.repeats()
        raw_mail_repeats = sum(n - 1 for n in smtp.raw.values())
        print(f"\ncrash test: {KILLS} kills, {len(hooks.acted)} webhooks and {len(mails)} emails acted on once each; "
              f"raw re-deliveries in the crash window: {raw_hook_repeats} webhooks, {raw_mail_repeats} emails; {capped} emails capped")

        # Caps: at most one email per person in any 20 hours, by the recorded send times.
        events = export_events(throughline_bin, data_dir, "shop")
        by_person = defaultdict(list)
        seen = set()
        for e in events:
            if e.get("event") == "Email Sent":
                k = e["properties"]["idempotency_key"]
                assert k not in seen, f"{k} recorded twice"
                seen.add(k)
                by_person[e["userId"]].append(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")))
        assert len(seen) == len(mails)
        for p, times in by_person.items():
            times.sort()
            for a, b in zip(times, times[1:]):
                assert b - a >= timedelta(hours=20), f"{p} got emails {a} and {b}"
    finally:
        smtp.stop()
        hooks.stop()
