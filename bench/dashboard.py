"""Times the API requests behind each dashboard view against a running server.

Usage: python bench/dashboard.py URL PROJECT API_KEY [--rounds N] [--out FILE.md]

The requests are the ones the views send on first open for the demo's headphones brand
(ui/views/*.js with ui/lib/defaults.js): each view's requests are fired at once, as the
browser does, and the view's time is the wall time until the last answer. Each request is
also timed alone. Reported: the median over the rounds, and the largest. A benchmark, not
a test: it asserts nothing, it prints a markdown table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time

import requests

CONVERSION = "Order Completed"
FUNNEL = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
FILTER = {"channel": "Paid Search"}


def views(person: str) -> dict[str, list[tuple[str, str, dict | None]]]:
    """View -> its requests as (method, path under /api/v1/projects/P, body)."""
    q = lambda kind, body: ("POST", f"/query/{kind}", body)  # noqa: E731
    filtered = lambda body: {**body, "filter": FILTER}  # noqa: E731
    funnel = {"steps": FUNNEL, "window": "7d", "order": "ordered"}
    # The views sum revenue by default (ui/lib/defaults.js): it comes from number columns.
    return {
        "overview": [
            q("trends", {"events": ["*"], "interval": "day"}),
            q("sessions", {"by": "channel"}),
            q("funnel", {"steps": FUNNEL, "window": "7d"}),
            q("assets", {"conversion": CONVERSION, "window": "7d", "limit": 8, "value": "revenue"}),
            ("GET", "/events/recent?limit=12", None),
            ("GET", "/catalog", None),
        ],
        "overview, filtered by channel": [
            q("trends", filtered({"events": ["*"], "interval": "day"})),
            q("sessions", filtered({"by": "channel"})),
            q("funnel", filtered({"steps": FUNNEL, "window": "7d"})),
            q("assets", filtered({"conversion": CONVERSION, "window": "7d", "limit": 8, "value": "revenue"})),
        ],
        "funnel": [q("funnel", funnel)],
        "funnel by channel": [q("funnel", {**funnel, "by": "channel"})],
        "journeys": [q("paths", {"of": "channels", "conversion": CONVERSION, "depth": 4, "limit": 50})],
        "attribution": [
            q("attribution", {"conversion": CONVERSION, "model": "all", "lookback": "30d", "value": "revenue", "by": "channel", "paths": 15}),
            q("attribution", {"conversion": CONVERSION, "model": "all", "lookback": "30d", "value": "revenue", "by": "asset"}),
        ],
        "retention": [q("retention", {"start": "Product Viewed", "return": "Product Viewed", "period": "week", "periods": 8})],
        "assets": [q("assets", {"conversion": CONVERSION, "window": "7d", "limit": 50, "interval": "week", "value": "revenue"})],
        "assets without revenue": [q("assets", {"conversion": CONVERSION, "window": "7d", "limit": 50, "interval": "week"})],
        "person": [("GET", f"/persons/{person}", None)],
        "emotion": [
            q("emotion", {"min_responses": 30, "by": "week"}),
            q("emotion", {"min_responses": 30, "by": "channel"}),
        ],
        "emotion, filtered by channel": [
            q("emotion", filtered({"min_responses": 30, "by": "week"})),
            q("emotion", filtered({"min_responses": 30, "by": "channel"})),
        ],
        "fatigue": [q("fatigue", {"conversion": CONVERSION, "conversion_value": 1, "unsubscribe_cost": 10,
                                  "window": "7d", "min_windows": 100, "audience_limit": 1000})],
        "audit": [q("audit", {"conversion": CONVERSION, "window": "7d", "similarity_min": 0.1})],
        "follow-ups": [("GET", "/journeys", None)],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("project")
    ap.add_argument("key")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    base = f"{a.url}/api/v1/projects/{a.project}"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {a.key}"

    def send(req) -> float:
        method, path, body = req
        t = time.perf_counter()
        r = session.request(method, base + path, json=body, timeout=600)
        r.raise_for_status()
        return time.perf_counter() - t

    person = session.get(f"{base}/events/recent?limit=1", timeout=60).json()["events"][0]["person_id"]
    t = time.perf_counter()
    for _ in range(20):
        requests.get(f"{a.url}/health", timeout=10).raise_for_status()
    health = (time.perf_counter() - t) / 20
    plan = views(person)
    rows = []
    for view, reqs in plan.items():
        walls, alone = [], [[] for _ in reqs]
        for _ in range(a.rounds):
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(reqs)) as pool:
                list(pool.map(send, reqs))
            walls.append(time.perf_counter() - t)
            for i, r in enumerate(reqs):
                alone[i].append(send(r))
        slowest = max(range(len(reqs)), key=lambda i: statistics.median(alone[i]))
        m, p, b = reqs[slowest]
        what = f"{m} {p.split('?')[0]}" + (f" ({b.get('by') or b.get('of') or ''})" if b and (b.get("by") or b.get("of")) else "")
        rows.append((view, len(reqs), statistics.median(walls), max(walls), statistics.median(alone[slowest]), what))
        print(f"{view}: {statistics.median(walls):.3f}s", flush=True)

    lines = [
        "| view | requests | data ready, median (s) | worst round (s) | vs the 1 s budget | slowest request alone (s) | slowest request |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for view, n, med, worst, slow, what in rows:
        lines.append(f"| {view} | {n} | {med:.3f} | {worst:.3f} | {med:.2f}x | {slow:.3f} | `{what}` |")
    lines.append("")
    lines.append(f"Reference in the same run: `GET /health` round trip {health * 1000:.2f} ms (HTTP overhead).")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
