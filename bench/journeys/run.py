"""The journeys benchmark: PERSONS persons enter a journey (wait 1d, webhook, wait 1d,
webhook) on a test clock; measures entry rate, webhook sends per second to a local
receiver, and the server's memory. The reference, measured in the same run: the same
receiver driven by `throughline bench http` (plain POSTs from a Rust client, 16
connections), i.e. what the receiver and the machine can take without the orchestrator.

    python bench/journeys/run.py --bin target/release/throughline --persons 1000000 --out bench-out/journeys.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
T0 = datetime(2027, 6, 1, 12, 0, tzinfo=timezone.utc)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwZZZZZZZZZZZZ"


def iso(dt):
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) // 1024
    return out


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/throughline")
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--out", default="bench-out/journeys.md")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tl-bench-journeys-"))
    procs = []
    try:
        data = work / "data"
        info = json.loads(subprocess.check_output([a.bin, "projects", "create", "shop", "--data", str(data)]))
        rport, sport = free_port(), free_port()
        receiver = subprocess.Popen([sys.executable, str(HERE / "receiver.py"), str(rport)])
        procs.append(receiver)
        cfg = work / "t.toml"
        cfg.write_text(f'[orchestrate]\npublic_url = "http://127.0.0.1:{sport}"\ntest_clock = true\ntick_ms = 100\n'
                       f'workers = 16\ninflight_max = 4000\nwebhook_secret = "{SECRET}"\n')
        log = open(work / "serve.log", "wb")
        server = subprocess.Popen([a.bin, "serve", "--data", str(data), "--listen", f"127.0.0.1:{sport}", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        procs.append(server)
        url = f"http://127.0.0.1:{sport}"
        def healthy():
            if server.poll() is not None:
                raise SystemExit("the server exited: " + (work / "serve.log").read_text()[-2000:])
            try:
                return requests.get(url + "/health", timeout=2).ok
            except requests.RequestException:
                return False

        wait(healthy, 60, "the server")
        auth = {"Authorization": f"Bearer {info['api_key']}"}
        api = f"{url}/api/v1/projects/shop"
        requests.post(url + "/api/v1/admin/clock", json={"now": iso(T0)}, timeout=10).raise_for_status()
        journey = (f'name = "onboard"\ntrigger = {{ event = "Signed Up" }}\n'
                   f'[[steps]]\nid = "wait1"\ntype = "wait"\nduration = "1d"\n'
                   f'[[steps]]\nid = "hook1"\ntype = "webhook"\nurl = "http://127.0.0.1:{rport}/hook1"\n'
                   f'[[steps]]\nid = "wait2"\ntype = "wait"\nduration = "1d"\n'
                   f'[[steps]]\nid = "hook2"\ntype = "webhook"\nurl = "http://127.0.0.1:{rport}/hook2"\n')
        r = requests.post(api + "/journeys", data=journey, headers={**auth, "Content-Type": "application/toml"}, timeout=30)
        r.raise_for_status()
        events = work / "signups.jsonl"
        with open(events, "w") as f:
            ts = iso(T0)
            for n in range(a.persons):
                f.write(f'{{"type":"track","userId":"p{n}","event":"Signed Up","messageId":"su-{n}","timestamp":"{ts}","properties":{{"plan":"pro"}}}}\n')
        base_rss = rss(server.pid)
        t0 = time.monotonic()
        ingest = subprocess.run([a.bin, "bench", "http", "--url", url, "--write-key", info["write_key"], "--clients", "8", "--batch", "500",
                                 "--file", str(events)], capture_output=True, text=True)
        t_ingest = time.monotonic() - t0

        def journey_state():
            return requests.get(api + "/journeys/onboard", headers=auth, timeout=60).json()

        wait(lambda: journey_state()["entered"] >= a.persons, 3600, "every person to enter")
        t_enter = time.monotonic() - t0
        mem_entered = rss(server.pid)

        def hooks(path):
            return requests.get(f"http://127.0.0.1:{rport}/stats", timeout=10).json()["ids"].get(path, 0)

        results = []
        def delivered(step):
            return next(s for s in journey_state()["steps"] if s["id"] == step).get("delivered", 0)

        for day, path in [(1, "/hook1"), (3, "/hook2")]:
            # Day 3 for the second: waits began when the first webhooks were delivered.
            requests.post(url + "/api/v1/admin/clock", json={"now": iso(T0 + timedelta(days=day, minutes=1))}, timeout=10).raise_for_status()
            t = time.monotonic()
            wait(lambda: hooks(path) >= a.persons, 7200, f"every {path} webhook")
            # ... and their outcomes journaled, before the clock moves again.
            wait(lambda: delivered(path[1:]) >= a.persons, 600, f"every {path} outcome")
            dt = time.monotonic() - t
            results.append((path, dt, a.persons / dt))
        mem_end = rss(server.pid)
        st = journey_state()
        raw = requests.get(f"http://127.0.0.1:{rport}/stats", timeout=10).json()
        # Reference: the same receiver, plain POSTs from a Rust client.
        ref_n = min(a.persons, 200_000)
        ref = subprocess.run([a.bin, "bench", "http", "--url", f"http://127.0.0.1:{rport}", "--write-key", "x", "--clients", "16", "--batch", "1",
                              "--messages", str(ref_n), "--file", str(events)], capture_output=True, text=True)
        journal = sum(p.stat().st_size for p in (data / "projects" / "shop" / "orchestrate").glob("*"))
        lines = [
            f"# Journeys benchmark ({a.persons:,} persons)",
            "",
            f"Command: `python bench/journeys/run.py --persons {a.persons}` (2-core machine shared with other engineers' builds: figures are noisy).",
            "",
            f"- Ingest of the {a.persons:,} `Signed Up` events over HTTP (`bench http`, 8 clients, batches of 500): {t_ingest:.1f} s",
            f"- All persons entered the journey (journaled, waiting 1 day) after {t_enter:.1f} s from the first event",
            f"- Server memory: {base_rss.get('VmRSS')} MB before, {mem_entered.get('VmRSS')} MB with {a.persons:,} persons waiting, peak {mem_end.get('VmHWM')} MB",
        ]
        for path, dt, rate in results:
            lines.append(f"- Webhooks `{path}` after the clock moved a day: {a.persons:,} in {dt:.1f} s = {rate:,.0f} sends/s (Standard Webhooks signed, journaled before and after)")
        lines.append(f"- Receiver saw {raw['requests']:,} POSTs for {sum(raw['ids'].values()):,} distinct webhook-ids; journey stats: {st['sends']:,} sends, {sum(s.get('delivered', 0) for s in st['steps']):,} delivered")
        lines.append(f"- Orchestrator files after the run: {journal / 1e6:.0f} MB (journal and snapshot)")
        lines.append("")
        def field(out, k):
            try:
                return json.loads(out.stdout)[k]
            except (ValueError, KeyError):
                return None

        ref_rps = field(ref, "requests_per_second")
        lines.append(f"- Reference, same run: the receiver alone, plain POSTs from `throughline bench http --clients 16 --batch 1` ({ref_n:,} requests): {ref_rps or 0:,.0f} requests/s")
        if ref_rps:
            for path, _, rate in results:
                lines.append(f"- Ratio `{path}` sends/s to the reference: {rate / ref_rps:.2f}")
        lines.append(f"- Ingest reference: {field(ingest, 'events_per_second') or 0:,.0f} events/s acknowledged while the journey took them in")
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
