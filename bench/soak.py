#!/usr/bin/env python3
"""Soak test: a real `throughline serve` on loopback under steady mixed load.

For `--seconds` it runs, at fixed rates (each request scheduled on a clock, not as fast
as possible):

* ingestion: `--ingest-clients` keep-alive connections posting `/v1/batch` of
  `--batch` mixed track/page/identify messages, `--batches-per-second` in total;
* queries: one connection asking funnel, trends, retention, sessions and paths in turn
  over the same project through the Bearer query API, `--queries-per-second`;
* asked-for 429s: one connection posting to a second project whose write key is
  limited to `LIMITED_RPS` requests per second at twice that rate, so some of its
  requests must be refused with 429 and `Retry-After` (the only error allowed);

and samples the server's RSS (`/proc/PID/status`) every `--sample-seconds`, with the
bytes its query column cache holds and the events stored (from `/metrics`). It prints
(and with `--json` writes) p50/p99/max latency of ingestion and queries, every status
seen per stream, errors (anything but 200, and 429 on the limited key), and the memory
trend: the least-squares slope over the second half of the run of RSS, and of RSS less
the column cache (a cache with a budget, `[query] column_cache_bytes`, that holds the
columns of every segment queried until it is full, so it grows with the store by design).
`--column-cache-mb` sets that budget for the run.

    bench/soak                       # 30 minutes, the issue's soak
    bench/soak --seconds 90          # what tests/py/test_soak.py runs
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

LIMITED_RPS = 2
PERSONS = 5000
HEALTH_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def create_project(bin_path: str, data: Path, name: str) -> dict:
    out = subprocess.run([bin_path, "projects", "create", name, "--data", str(data)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def scrape(url: str) -> dict[str, float]:
    """The unlabelled gauges of `/metrics` and per-project sums of labelled ones."""
    out: dict[str, float] = {}
    try:
        text = requests.get(url + "/metrics", timeout=10).text
    except requests.RequestException:
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        try:
            out[base] = out.get(base, 0.0) + float(value)
        except ValueError:
            pass
    return out


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) in MB per minute."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(m for _, m in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples)
    if den == 0:
        return None
    return 60 * sum((t - mx) * (m - my) for t, m in samples) / den


class Stream:
    """Latencies and statuses of one kind of request, shared by its threads."""

    def __init__(self, name: str, allowed: set[int]):
        self.name = name
        self.allowed = allowed
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self.statuses: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.late = 0

    def record(self, status: str, latency_ms: float, detail: str = "") -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == "200":
                self.latencies_ms.append(latency_ms)
            elif not (status.isdigit() and int(status) in self.allowed) and len(self.error_samples) < 5:
                self.error_samples.append(f"{status}: {detail[:300]}")

    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items()
                   if s != "200" and not (s.isdigit() and int(s) in self.allowed))

    def summary(self) -> dict:
        with self.lock:
            lat = list(self.latencies_ms)
            return {
                "requests": sum(self.statuses.values()),
                "statuses": dict(sorted(self.statuses.items())),
                "errors": self.errors(),
                "error_samples": list(self.error_samples),
                "p50_ms": percentile(lat, 0.50),
                "p99_ms": percentile(lat, 0.99),
                "max_ms": max(lat) if lat else None,
                "late_starts": self.late,
            }


def paced(stop_at: float, interval_s: float, stream: Stream, send) -> None:
    """Calls `send()` every `interval_s` until `stop_at`, on a fixed schedule."""
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if next_at >= stop_at:
            return
        if next_at > now:
            time.sleep(next_at - now)
        elif now - next_at > interval_s:
            # The server (or this client) fell behind: count it, do not burst to catch up.
            with stream.lock:
                stream.late += 1
            next_at = now
        send()
        next_at += interval_s


def message(rng: random.Random, n: int, tag: str) -> dict:
    person = rng.randrange(PERSONS)
    base = {"messageId": f"{tag}-{n}", "anonymousId": f"anon-{person}"}
    kind = rng.random()
    if kind < 0.6:
        return {**base, "type": "track", "userId": f"user-{person}",
                "event": rng.choice(["Product Viewed", "Cart Viewed", "Order Completed"]),
                "properties": {"revenue": round(rng.random() * 100, 2), "sku": f"sku-{rng.randrange(200)}"}}
    if kind < 0.9:
        return {**base, "type": "page", "name": "Home",
                "context": {"page": {"url": f"https://shop.example/p/{rng.randrange(50)}?utm_source=google&utm_medium=cpc",
                                     "referrer": "https://www.google.com/"}}}
    return {**base, "type": "identify", "userId": f"user-{person}",
            "traits": {"email": f"p{person}@example.com", "plan": rng.choice(["free", "pro"])}}


QUERIES = [
    ("funnel", {"steps": ["Product Viewed", "Cart Viewed", "Order Completed"], "window": "1d"}),
    ("trends", {"events": ["Order Completed"]}),
    ("retention", {"start": "Product Viewed", "return": "Order Completed", "periods": 4}),
    ("sessions", {}),
    ("paths", {"end": "Order Completed", "depth": 3}),
]


def soak(bin_path: str, seconds: float, *, ingest_clients: int = 4, batches_per_second: float = 20,
         batch: int = 50, queries_per_second: float = 0.5, sample_seconds: float = 5,
         column_cache_mb: float | None = None, work: Path | None = None, log=print) -> dict:
    own_work = work is None
    work = Path(work or tempfile.mkdtemp(prefix="throughline-soak."))
    data = work / "data"
    shop = create_project(bin_path, data, "shop")
    limited = create_project(bin_path, data, "limited")
    config = work / "throughline.toml"
    cache = "" if column_cache_mb is None else f"[query]\ncolumn_cache_bytes = {int(column_cache_mb * 2**20)}\n"
    config.write_text(f"""{cache}
[rate_limit.projects.limited]
requests_per_second = {LIMITED_RPS}
requests_burst = {LIMITED_RPS}
""")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = open(work / "serve.log", "wb")
    proc = subprocess.Popen([bin_path, "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}",
                             "--config", str(config)], stdin=subprocess.DEVNULL, stdout=server_log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}: {(work / 'serve.log').read_text()[-2000:]}")
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not become healthy")
            time.sleep(0.05)

        ingest = Stream("ingest", set())
        queries = Stream("query", set())
        asked = Stream("limited ingest", {429})
        start = time.monotonic()
        stop_at = start + seconds
        accepted = [0]
        rss: list[tuple[float, float]] = [(0.0, rss_mb(proc.pid))]
        # (seconds, column cache MB, events stored)
        gauges: list[tuple[float, float, float]] = []

        def sample_gauges(at: float) -> None:
            g = scrape(url)
            gauges.append((at, g.get("throughline_query_cache_bytes", 0.0) / 2**20,
                           g.get("throughline_stored_events", 0.0)))
        sample_gauges(0.0)

        def ingest_client(i: int) -> None:
            session = requests.Session()
            rng = random.Random(i)
            headers = {"Authorization": basic(shop["write_key"]), "Content-Type": "application/json"}
            n = [0]

            def send():
                msgs = []
                for _ in range(batch):
                    n[0] += 1
                    msgs.append(message(rng, n[0], f"c{i}"))
                body = json.dumps({"batch": msgs})
                t0 = time.monotonic()
                try:
                    r = session.post(url + "/v1/batch", data=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
                    ms = (time.monotonic() - t0) * 1000
                    ingest.record(str(r.status_code), ms, r.text)
                    if r.status_code == 200:
                        with ingest.lock:
                            accepted[0] += r.json().get("accepted", 0)
                except requests.RequestException as e:
                    ingest.record(type(e).__name__, 0, str(e))

            paced(stop_at, ingest_clients / batches_per_second, ingest, send)

        def query_client() -> None:
            session = requests.Session()
            headers = {"Authorization": f"Bearer {shop['api_key']}", "Content-Type": "application/json"}
            turn = [0]

            def send():
                kind, body = QUERIES[turn[0] % len(QUERIES)]
                turn[0] += 1
                t0 = time.monotonic()
                try:
                    r = session.post(f"{url}/api/v1/projects/shop/query/{kind}", json=body, headers=headers,
                                     timeout=REQUEST_TIMEOUT_S)
                    queries.record(str(r.status_code), (time.monotonic() - t0) * 1000, r.text)
                except requests.RequestException as e:
                    queries.record(type(e).__name__, 0, str(e))

            paced(stop_at, 1 / queries_per_second, queries, send)

        def limited_client() -> None:
            session = requests.Session()
            headers = {"Authorization": basic(limited["write_key"]), "Content-Type": "application/json"}
            rng = random.Random(99)
            n = [0]

            def send():
                n[0] += 1
                t0 = time.monotonic()
                try:
                    r = session.post(url + "/v1/batch", data=json.dumps({"batch": [message(rng, n[0], "lim")]}),
                                     headers=headers, timeout=REQUEST_TIMEOUT_S)
                    if r.status_code == 429 and "Retry-After" not in r.headers:
                        asked.record("429 without Retry-After", 0, r.text)
                    else:
                        asked.record(str(r.status_code), (time.monotonic() - t0) * 1000, r.text)
                except requests.RequestException as e:
                    asked.record(type(e).__name__, 0, str(e))

            paced(stop_at, 1 / (2 * LIMITED_RPS), asked, send)

        threads = [threading.Thread(target=ingest_client, args=(i,), daemon=True) for i in range(ingest_clients)]
        # No query client at 0 per second: the ingest-only baseline of the memory trend.
        if queries_per_second > 0:
            threads.append(threading.Thread(target=query_client, daemon=True))
        threads.append(threading.Thread(target=limited_client, daemon=True))
        for t in threads:
            t.start()
        next_sample = start + sample_seconds
        while time.monotonic() < stop_at:
            time.sleep(max(0.0, min(next_sample, stop_at) - time.monotonic()))
            if proc.poll() is not None:
                raise RuntimeError(f"serve died (exit {proc.returncode}) during the soak")
            now = time.monotonic()
            if now >= next_sample:
                rss.append((now - start, rss_mb(proc.pid)))
                sample_gauges(now - start)
                next_sample += sample_seconds
                if len(rss) % max(1, int(60 / sample_seconds)) == 0:
                    s = ingest.summary()
                    log(f"soak: {now - start:.0f}s rss {rss[-1][1]:.1f} MB, {accepted[0]} events, "
                        f"ingest p99 {s['p99_ms']} ms, errors {s['errors']}", file=sys.stderr)
        for t in threads:
            t.join(timeout=REQUEST_TIMEOUT_S + 5)
        rss.append((time.monotonic() - start, rss_mb(proc.pid)))
        sample_gauges(time.monotonic() - start)
        elapsed = time.monotonic() - start
        second_half = [(t, m) for t, m in rss if t >= seconds / 2]
        slope = slope_mb_per_min(second_half)
        half_mb = [m for _, m in second_half]
        # RSS less the column cache, pairing each RSS sample with its gauge sample.
        less_cache = [(t, m - c) for (t, m), (_, c, _) in zip(rss, gauges)]
        less_cache_half = [(t, m) for t, m in less_cache if t >= seconds / 2]
        slope_less_cache = slope_mb_per_min(less_cache_half)
        result = {
            "seconds": round(elapsed, 1),
            "settings": {"ingest_clients": ingest_clients, "batches_per_second": batches_per_second,
                         "batch": batch, "queries_per_second": queries_per_second,
                         "limited_requests_per_second": LIMITED_RPS, "limited_sent_per_second": 2 * LIMITED_RPS,
                         "sample_seconds": sample_seconds},
            "events_accepted": accepted[0],
            "events_per_second": round(accepted[0] / elapsed, 1),
            "ingest": ingest.summary(),
            "query": queries.summary(),
            "limited": asked.summary(),
            "rss_mb": {
                "start": round(rss[0][1], 1),
                "max": round(max(m for _, m in rss), 1),
                "end": round(rss[-1][1], 1),
                "second_half_min": round(min(half_mb), 1) if half_mb else None,
                "second_half_max": round(max(half_mb), 1) if half_mb else None,
                "second_half_slope_mb_per_min": None if slope is None else round(slope, 3),
                "samples": [(round(t, 1), round(m, 1)) for t, m in rss],
            },
            "column_cache_mb": {
                "budget": column_cache_mb,
                "end": round(gauges[-1][1], 1),
                "samples": [(round(t, 1), round(c, 1), int(e)) for t, c, e in gauges],
            },
            "rss_less_cache_mb": {
                "second_half_min": round(min(m for _, m in less_cache_half), 1) if less_cache_half else None,
                "second_half_max": round(max(m for _, m in less_cache_half), 1) if less_cache_half else None,
                "second_half_slope_mb_per_min": None if slope_less_cache is None else round(slope_less_cache, 3),
            },
            "errors": ingest.errors() + queries.errors() + asked.errors(),
        }
        return result
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server_log.close()
        if own_work and not os.environ.get("SOAK_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict, command: str) -> str:
    def ms(s, k):
        v = s[k]
        return "-" if v is None else f"{v:.1f}"
    m = r["rss_mb"]
    lines = [
        f"Command: `{command}` ({r['seconds']} s)",
        "",
        "| stream | requests | p50 ms | p99 ms | max ms | statuses | errors |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name in ("ingest", "query", "limited"):
        s = r[name]
        statuses = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())
        lines.append(f"| {name} | {s['requests']} | {ms(s, 'p50_ms')} | {ms(s, 'p99_ms')} | {ms(s, 'max_ms')} "
                     f"| {statuses} | {s['errors']} |")
    lines += [
        "",
        f"Events accepted: {r['events_accepted']} ({r['events_per_second']}/s). "
        f"RSS: start {m['start']} MB, max {m['max']} MB, end {m['end']} MB; second half "
        f"{m['second_half_min']}-{m['second_half_max']} MB, slope {m['second_half_slope_mb_per_min']} MB/min. "
        f"Column cache at the end: {r['column_cache_mb']['end']} MB; RSS less the cache over the second half "
        f"{r['rss_less_cache_mb']['second_half_min']}-{r['rss_less_cache_mb']['second_half_max']} MB, slope "
        f"{r['rss_less_cache_mb']['second_half_slope_mb_per_min']} MB/min.",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.environ.get("THROUGHLINE_BIN", "target/release/throughline"))
    p.add_argument("--seconds", type=float, default=1800)
    p.add_argument("--ingest-clients", type=int, default=4)
    p.add_argument("--batches-per-second", type=float, default=20)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--queries-per-second", type=float, default=0.5)
    p.add_argument("--sample-seconds", type=float, default=5)
    p.add_argument("--column-cache-mb", type=float, help="[query] column_cache_bytes for the run, in MiB")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    a = p.parse_args()
    r = soak(a.bin, a.seconds, ingest_clients=a.ingest_clients, batches_per_second=a.batches_per_second,
             batch=a.batch, queries_per_second=a.queries_per_second, sample_seconds=a.sample_seconds,
             column_cache_mb=a.column_cache_mb)
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))
    print(markdown(r, " ".join(["bench/soak", *sys.argv[1:]])))
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
