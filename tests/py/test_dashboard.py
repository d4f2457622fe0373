"""The web dashboard in a real headless Chromium (Debian's `chromium`, driven by
Playwright without a browser download), served by `throughline demo` on its own data.

What a marketer sees first: every view loads on the demo data without a console error
(CSP violations are console errors too), the charts show what the API answers, a bad api
key gets a clear sign-in error, the keyboard reaches every view, and the key never lands
in a URL or the server's log. Screenshots of every view go to target/screenshots/.

The Emotion, Fatigue, Audit and Follow-ups views are checked the same way: their charts and
tables carry the numbers a direct API call answers, their address restores them, and each
card's actions work (the definition replays to the copied JSON, the CSV has the table).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from harness import REPO, free_port

CHROMIUM = os.environ.get("THROUGHLINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "target" / "screenshots"
DEMO_PERSONS = 600
DEMO_START_TIMEOUT_S = 180.0
VIEW_TIMEOUT_MS = 60_000
VIEWS = ["overview", "funnel", "journeys", "attribution", "retention", "assets", "emotion", "fatigue", "audit", "followups", "person"]


class Demo:
    """`throughline demo` serving on a free port; its printed keys and log."""

    def __init__(self, bin_path: str, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "demo.log"
        self.stdout_path = workdir / "demo.out"
        self.proc = subprocess.Popen(
            [bin_path, "demo", "--data", str(workdir / "data"), "--persons", str(DEMO_PERSONS),
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=open(self.stdout_path, "wb"),
            stderr=open(self.log_path, "wb"),
            env={**os.environ, "RUST_LOG": "debug"},
        )
        deadline = time.monotonic() + DEMO_START_TIMEOUT_S
        while True:
            log = self.log()
            if "Open signed in:" in log:
                try:
                    if requests.get(self.url + "/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
            if self.proc.poll() is not None:
                pytest.fail(f"`throughline demo` exited {self.proc.returncode}:\n{log[-4000:]}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"`throughline demo` did not serve within {DEMO_START_TIMEOUT_S}s:\n{log[-4000:]}", pytrace=False)
            time.sleep(0.3)
        self.keys = dict(re.findall(r"project (\S+)\s+api key (tl_\w+)", log))
        self.write_keys = dict(re.findall(r"project (\S+)\s+api key tl_\w+\s+write key (wk_\w+)", log))
        assert set(self.keys) == {"headphones", "subscription"}, log
        m = re.search(r"Dashboard: (http://\S+/)", log)
        assert m and m.group(1) == self.url + "/", log
        m = re.search(r"Open signed in: (\S+)", log)
        assert m and m.group(1) == f"{self.url}/#key={self.keys['headphones']}", log
        self.quick_url = m.group(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, project: str, kind: str, body: dict) -> dict:
        r = requests.post(
            f"{self.url}/api/v1/projects/{project}/query/{kind}",
            headers={"Authorization": f"Bearer {self.keys[project]}"},
            json=body,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return r.json()

    def get(self, project: str, path: str) -> dict:
        r = requests.get(f"{self.url}/api/v1/projects/{project}{path}",
                         headers={"Authorization": f"Bearer {self.keys[project]}"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def demo(throughline_bin):
    work = Path(tempfile.mkdtemp(prefix="tl-dashboard-"))
    d = Demo(throughline_bin, work)
    yield d
    d.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)", pytrace=False)
    from playwright.sync_api import sync_playwright

    # Playwright's launch gives Chromium a fresh temporary --user-data-dir of its own and
    # deletes it on close; each test gets a new context (no shared storage) on top.
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A fresh browser context and page that records console errors and page errors."""

    def __init__(self, browser, demo: Demo):
        self.context = browser.new_context(viewport={"width": 1440, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(VIEW_TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.demo = demo

    def sign_in(self, project: str = "headphones") -> None:
        self.page.goto(self.demo.url + "/")
        self.page.fill("#api-key", self.demo.keys[project])
        self.page.click("#signin-submit")
        self.page.wait_for_selector(f"nav a[data-view=overview][aria-current=page]")

    def open(self, route: str) -> None:
        self.page.goto(f"{self.demo.url}/#/{route}")
        self.settle()

    def settle(self) -> None:
        """Waits until no card is loading and every chart has drawn."""
        self.page.wait_for_function(
            """() => document.querySelector('main .card, main .signin') &&
                     !document.querySelector('main .placeholder') &&
                     [...document.querySelectorAll('main .chart')].every(c => c.dataset.ready === 'true')"""
        )
        self.page.wait_for_timeout(400)  # chart animation

    def series(self, card: str) -> list[dict]:
        """The series of a card's chart, as ECharts holds them."""
        return self.page.evaluate(
            """(card) => {
                const el = document.querySelector(`[data-card="${card}"] .chart`);
                return echarts.getInstanceByDom(el).getOption().series;
            }""",
            card,
        )

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, demo):
    p = Page(browser, demo)
    yield p
    p.close()


def test_every_view_loads_on_the_demo_data_without_console_errors(page, demo):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.sign_in()
    someone = requests.get(
        f"{demo.url}/api/v1/projects/headphones/events/recent?limit=1",
        headers={"Authorization": f"Bearer {demo.keys['headphones']}"},
        timeout=10,
    ).json()["events"][0]["person_id"]
    for view in VIEWS:
        route = f"headphones/{view}" + (f"?id={someone}" if view == "person" else "")
        page.open(route)
        assert page.page.locator("main h1").first.is_visible(), view
        assert not page.page.locator("main .error").count(), f"{view}: {page.page.locator('main .error').first.inner_text()}"
        assert page.page.locator("main .card").count() > 0, view
        page.page.screenshot(path=str(SCREENSHOTS / f"{view}.png"), full_page=True)
    # The other project, through the switcher: sign in to it, then switch back and forth.
    page.page.click("#add-project")
    page.page.fill("#api-key", demo.keys["subscription"])
    page.page.click("#signin-submit")
    page.settle()
    assert "#/subscription/overview" in page.page.url
    page.page.select_option("#project-switch", "headphones")
    page.page.wait_for_url(re.compile(r"#/headphones/overview"))
    page.settle()
    page.open("subscription/retention")
    page.page.screenshot(path=str(SCREENSHOTS / "subscription-retention.png"), full_page=True)
    assert page.errors == [], page.errors


def test_the_funnel_chart_shows_the_funnel_apis_numbers(page, demo):
    steps = ["Product Viewed", "Product Added", "Order Completed"]
    page.sign_in()
    query = "&".join(f"step={requests.utils.quote(s)}" for s in steps)
    page.open(f"headphones/funnel?{query}&window=7d&by=channel")
    answer = demo.api("headphones", "funnel", {"steps": steps, "window": "7d", "order": "ordered", "by": "channel"})
    persons = next(s for s in page.series("funnel") if s["name"] == "Persons")
    assert persons["data"] == [s["persons"] for s in answer["steps"]]
    assert answer["steps"][0]["persons"] > answer["steps"][-1]["persons"] > 0
    # The data table under the chart says the same, and so does the drop-off label.
    cells = page.page.locator("[data-card=funnel] details table tbody tr td:nth-child(2)").all_inner_texts()
    assert [int(c.replace(",", "")) for c in cells] == [s["persons"] for s in answer["steps"]]
    # The breakdown chart: the last step's conversion of each value, as answered.
    shown = page.series("conversion-by-breakdown")[0]["data"]
    want = [b["steps"][-1]["conversion_from_first"] for b in answer["breakdown"][:15]]
    assert shown == list(reversed(want))
    # The definition is the exact request: replayed, it gives the chart's numbers.
    page.page.click("[data-card=funnel] button[aria-controls$=-def]")
    body = json.loads(page.page.locator("[data-card=funnel] .definition code.body").inner_text())
    assert body["steps"] == steps
    assert demo.api("headphones", "funnel", body)["steps"] == answer["steps"]
    assert page.errors == [], page.errors


def test_the_sankey_and_attribution_charts_render_the_answers(page, demo):
    page.sign_in()
    page.open("headphones/journeys")
    paths = demo.api("headphones", "paths", {"of": "channels", "conversion": "Order Completed", "depth": 4, "limit": 50})
    sankey = page.series("journey-flow")[0]
    assert sankey["type"] == "sankey"
    assert len(sankey["data"]) == len(paths["nodes"]) > 3
    assert [l["value"] for l in sankey["links"]] == [l["persons"] for l in paths["links"]]
    # Rendered: the canvas has ink in it, not a blank box.
    assert page.page.evaluate("""() => {
        const c = document.querySelector('[data-card="journey-flow"] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) ink++;
        return ink > 1000;
    }""")

    page.open("headphones/attribution")
    answer = demo.api("headphones", "attribution", {"conversion": "Order Completed", "model": "all", "lookback": "30d", "value": "revenue", "by": "channel", "paths": 15})
    series = page.series("conversions-by-channel-every-model")
    assert [s["name"] for s in series] == ["First touch", "Last touch", "Last non-direct", "Linear", "Time decay", "Position based", "Markov", "Shapley"]
    keys = page.page.evaluate("""() => echarts.getInstanceByDom(document.querySelector('[data-card="conversions-by-channel-every-model"] .chart')).getOption().yAxis[0].data""")
    for s, m in zip(series, answer["models"]):
        credit = {r["key"]: r["conversions"] for r in m["rows"]}
        # Approximately: Markov's sums run in hash order, so two identical requests can
        # differ in the 14th digit.
        assert s["data"] == pytest.approx([credit.get(k, 0) for k in keys], rel=1e-9), m["model"]
    assert len(page.series("conversions-by-asset-every-model")) == 8
    rows = page.page.locator("[data-card=path-table] tbody tr").count()
    assert rows == len(answer["paths"]) > 0
    assert page.errors == [], page.errors


def test_a_bad_api_key_shows_a_clear_sign_in_error(page, demo):
    page.page.goto(demo.url + "/")
    page.page.fill("#api-key", "tl_not_a_real_key")
    page.page.click("#signin-submit")
    alert = page.page.locator("#signin-error")
    alert.wait_for(state="visible")
    assert "not accepted" in alert.inner_text()
    assert alert.get_attribute("role") == "alert"
    # The write key is no api key either, and the message says which key to use.
    write_key = re.search(r"write key (wk_\w+)", demo.log()).group(1)
    page.page.fill("#api-key", write_key)
    page.page.click("#signin-submit")
    page.page.wait_for_function("() => document.querySelector('#signin-error').textContent.includes('write key')")
    assert page.page.locator("nav#nav").is_hidden()
    # A bad key in the quick sign-in fragment: the same error, and the fragment is gone.
    page.page.goto(f"{demo.url}/#key=tl_wrong")
    page.page.locator("#signin-error").wait_for(state="visible")
    assert "tl_wrong" not in page.page.url
    # The error is a console-free, handled answer (the 401 itself is a network log line).
    assert [e for e in page.errors if "401" not in e] == [], page.errors


def test_keyboard_navigation_reaches_every_view(page, demo):
    page.sign_in()
    page.page.reload()  # focus at the start of the page, as on arrival
    page.settle()
    seen: list[str] = []
    page.page.keyboard.press("Tab")
    # The first stop is the skip link, which moves focus to the content.
    assert page.page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(40):
        page.page.keyboard.press("Tab")
        view = page.page.evaluate("document.activeElement.dataset.view || ''")
        if view and view not in seen:
            seen.append(view)
        if len(seen) == len(VIEWS):
            break
    assert seen == VIEWS
    # Enter on a focused link opens the view, and focus lands on its heading.
    page.page.keyboard.press("Shift+Tab")
    page.page.keyboard.press("Enter")
    page.page.wait_for_url(re.compile(rf"#/headphones/{VIEWS[-2]}"))
    page.settle()
    assert page.page.evaluate("document.activeElement.tagName") == "H1"
    # Every form control has a label.
    unlabelled = page.page.evaluate("""() => [...document.querySelectorAll('main input, main select')]
        .filter(el => el.type !== 'hidden' && !el.labels?.length && !el.getAttribute('aria-label'))
        .map(el => el.outerHTML)""")
    assert unlabelled == []


def test_the_api_key_stays_out_of_urls_logs_and_lasting_storage(page, demo):
    key = demo.keys["headphones"]
    page.page.goto(demo.quick_url)
    page.page.wait_for_url(re.compile(r"#/headphones/overview"))
    page.settle()
    assert key not in page.page.url
    assert key in page.page.evaluate("sessionStorage.getItem('throughline.projects')")
    assert page.page.evaluate("JSON.stringify(localStorage)").find(key) == -1
    # A filtered view: the URL restores it, without the key.
    page.page.select_option("#overview-channel", "Paid Search")
    page.page.click("#overview-run")
    page.page.wait_for_url(re.compile(r"channel=Paid\+Search"))
    page.settle()
    assert key not in page.page.url
    page.page.click("[data-card=sessions-by-channel] button[aria-controls$=-def]")
    body = json.loads(page.page.locator("[data-card=sessions-by-channel] .definition code.body").inner_text())
    assert body["filter"] == {"channel": "Paid Search"}
    rows = demo.api("headphones", "sessions", body)["rows"]
    bars = page.series("sessions-by-channel")[0]["data"]
    assert bars == [r["sessions"] for r in reversed(rows)]
    # Reloading the URL restores the same view and answer.
    page.page.reload()
    page.settle()
    assert page.page.locator("#overview-channel").input_value() == "Paid Search"
    assert page.series("sessions-by-channel")[0]["data"] == bars
    # The address with the key was replaced, not kept: going back never shows it.
    page.page.go_back()
    assert key not in page.page.url
    page.page.go_forward()
    # Sign out forgets the key.
    page.page.click("#sign-out")
    page.page.locator("#api-key").wait_for()
    assert key not in (page.page.evaluate("sessionStorage.getItem('throughline.projects')") or "")
    assert key not in demo.log().split("Open signed in:")[1].split("\n", 1)[1], "the key in the server log"
    assert page.errors == [], page.errors


# --------------------------------------------------------------------------- the CX views


def close(a, b, rel: float = 1e-9) -> bool:
    """Deep equality, floats within `rel` (sums over hash maps may differ in the last digits)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and a == pytest.approx(b, rel=rel, abs=1e-12)
    return a == b


def card_actions(page, card: str) -> tuple[dict | None, object, list[list[str]]]:
    """Uses a card's three actions: its definition's body, the JSON it copies, its CSV rows."""
    sel = f"[data-card={card}]"
    page.page.click(f"{sel} button[aria-controls$=-def]")
    assert page.page.locator(f"{sel} .definition").is_visible()
    body_el = page.page.locator(f"{sel} .definition code.body")
    body = json.loads(body_el.first.inner_text()) if body_el.count() else None
    assert "curl" in page.page.locator(f"{sel} .definition code.curl").first.inner_text()
    page.page.click(f"{sel} button:has-text('Copy JSON')")
    page.page.wait_for_function("() => document.getElementById('toast').textContent.startsWith('Copied')")
    copied = json.loads(page.page.evaluate("navigator.clipboard.readText()"))
    with page.page.expect_download() as dl:
        page.page.click(f"{sel} button:has-text('CSV')")
    with open(dl.value.path(), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return body, copied, rows


def cells(page, card: str, column: int, table: str = "table") -> list[str]:
    return page.page.locator(f"[data-card={card}] {table} tbody tr td:nth-child({column})").all_inner_texts()


def ints(texts: list[str]) -> list[int]:
    return [int(t.replace(",", "")) for t in texts]


@pytest.fixture
def cx_page(browser, demo):
    p = Page(browser, demo)
    p.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=demo.url)
    p.sign_in()
    yield p
    p.close()


def test_the_emotion_view_shows_the_emotion_apis_answers(cx_page, demo):
    page = cx_page
    page.open("headphones/emotion?by=channel&interval=week&min_responses=20")
    answer = demo.api("headphones", "emotion", {"min_responses": 20, "by": "week"})
    stages = answer["stages"]
    assert [s["stage"] for s in stages][:3] == ["awareness", "consideration", "purchase"]
    persons = next(s for s in page.series("emotion-map") if s["name"] == "Persons")
    assert [d["value"] for d in persons["data"]] == [s["persons"] for s in stages]
    drop = next(s for s in page.series("emotion-map") if s["name"] == "Drop-off")
    assert close(drop["data"], [s["drop_off"] for s in stages])
    # The stage table under the map says the same, "not enough data" included.
    assert ints(cells(page, "emotion-map", 2)) == [s["persons"] for s in stages]
    # Columns: stage, persons, drop-off, NPS, CSAT, CES, then the answer counts.
    for col, key in [(4, "nps"), (5, "csat"), (6, "ces")]:
        for s, text in zip(stages, cells(page, "emotion-map", col)):
            c = s[key]
            if c["status"] == "ok":
                assert "[" in text and text.endswith(f"({c['responses']:,})"), (key, s["stage"], text)
            elif c["status"] == "no data":
                assert text == "no data", (key, s["stage"], text)
            else:
                assert text == f"{c['status']} ({c['responses']:,})", (key, s["stage"], text)
    assert ints(cells(page, "emotion-map", 8)) == [s["csat"]["responses"] for s in stages]
    assert any(s["csat"]["status"] == "ok" for s in stages), "the demo's CSAT answers give a score somewhere"
    assert any(s[k]["status"] == "not enough data" for s in stages for k in ("nps", "csat", "ces")), "too few answers say so"
    # The scores by stage: the API's scores where it gives one, nothing where it does not.
    series = {s["name"]: s for s in page.series("scores-by-stage")}
    for key, name in [("nps", "NPS"), ("csat", "CSAT"), ("ces", "CES")]:
        want = [s[key]["score"] if s[key]["status"] == "ok" else None for s in stages]
        assert close(series[name]["data"], want), name
        bars = [[k, s[key]["ci_low"], s[key]["ci_high"]] for k, s in enumerate(stages) if s[key]["status"] == "ok"]
        assert close(series[f"{name} interval"]["data"], bars), name
    # Sentiment, negative terms and example comments per stage.
    sent = next(s for s in page.series("sentiment-by-stage") if s["name"] == "Mean compound")
    rows = stages + [{"stage": "(no stage)", **answer["unstaged"]}]
    assert close(sent["data"], [s["sentiment"]["mean_compound"] if s["sentiment"]["status"] == "ok" else None for s in rows])
    negative = [s["sentiment"]["most_negative"][0]["text"] for s in rows if s["sentiment"]["most_negative"]]
    assert negative and all(t in page.page.locator("[data-card=sentiment-by-stage]").inner_text() for t in negative)
    # Over time: one point per week, as answered.
    weeks = page.page.evaluate("""() => echarts.getInstanceByDom(document.querySelector('[data-card="scores-over-time"] .chart')).getOption().xAxis[0].data""")
    assert weeks == [g["key"] for g in answer["groups"]]
    csat = next(s for s in page.series("scores-over-time") if s["name"] == "CSAT")
    assert close(csat["data"], [g["csat"]["score"] if g["csat"]["status"] == "ok" else None for g in answer["groups"]])
    # By channel of the touch before.
    by = demo.api("headphones", "emotion", {"min_responses": 20, "by": "channel"})
    keys = page.page.evaluate("""() => echarts.getInstanceByDom(document.querySelector('[data-card="scores-by-channel"] .chart')).getOption().xAxis[0].data""")
    assert keys == [g["key"] for g in by["groups"][:12]] and len(keys) > 1
    # The card actions: the definition replays to the JSON copied; the CSV has the table.
    body, copied, csv_rows = card_actions(page, "emotion-map")
    assert body == {"min_responses": 20, "by": "week"}
    assert close(copied["stages"], demo.api("headphones", "emotion", body)["stages"])
    assert csv_rows[0][:3] == ["Stage", "Persons", "Drop-off"] and len(csv_rows) == len(stages) + 1
    # The address restores the view: a new breakdown, then a reload.
    page.page.select_option("#emotion-by", "asset")
    page.page.click("#emotion-run")
    page.page.wait_for_url(re.compile(r"by=asset"))
    page.settle()
    assert "min_responses=20" in page.page.url
    page.page.reload()
    page.settle()
    assert page.page.locator("#emotion-by").input_value() == "asset"
    assert page.page.locator("#emotion-min").input_value() == "20"
    assets = demo.api("headphones", "emotion", {"min_responses": 20, "by": "asset"})
    keys = page.page.evaluate("""() => echarts.getInstanceByDom(document.querySelector('[data-card="scores-by-asset"] .chart')).getOption().xAxis[0].data""")
    assert keys == [g["key"] for g in assets["groups"][:12]]
    # The first-touch filter applies here as in every view: the form sets it, the
    # definition carries it, and the map shows the filtered answer.
    page.page.select_option("#emotion-channel", "Email")
    page.page.click("#emotion-run")
    page.page.wait_for_url(re.compile(r"channel=Email"))
    page.settle()
    body, copied, _ = card_actions(page, "emotion-map")
    assert body["filter"] == {"channel": "Email"}, body
    filtered = demo.api("headphones", "emotion", body)
    assert close(copied["stages"], filtered["stages"])
    assert filtered["stages"] != demo.api("headphones", "emotion", {"min_responses": 20, "by": "asset"})["stages"]
    assert page.errors == [], page.errors


def test_the_fatigue_view_shows_curves_and_caps_beside_the_orchestration_caps(cx_page, demo):
    page = cx_page
    page.open("headphones/fatigue")
    body, copied, csv_rows = card_actions(page, "recommended-and-configured-caps")
    assert body["conversion"] == "Order Completed" and "configured_caps" not in body
    answer = demo.api("headphones", "fatigue", body)
    channels = answer["channels"]
    assert close(copied, [{k: v for k, v in c.items() if k != "curve"} for c in channels])
    assert [r[0] for r in csv_rows[1:]] == [c["channel"] for c in channels]
    # The demo's server caps e-mail at 3 in any 7 days and 1 a day: 3 per 7-day window,
    # filled in by the server, which says where it came from.
    email = next(c for c in channels if c["channel"] == "Email")
    assert email["configured_cap"] == 3 and email["configured_cap_source"]["from"] == "orchestration"
    assert email["configured_cap_source"]["caps"] == ["3 per 7d", "1 per 1d"]
    assert email["recommended_cap"] is not None, "the demo's e-mail sends make a recommendation"
    series = {s["name"]: s for s in page.series("recommended-and-configured-caps")}
    assert series["Recommended cap"]["data"] == [c["recommended_cap"] for c in channels]
    assert series["Configured cap"]["data"] == [c["configured_cap"] for c in channels]
    row = page.page.locator("[data-card=recommended-and-configured-caps] tbody tr", has_text="Email")
    assert "orchestration: 3 per 7d, 1 per 1d" in row.inner_text()
    # Each channel's response curve with its intervals and the two caps marked.
    curve = {s["name"]: s for s in page.series("response-curve-email")}
    assert close(curve["Opt-out rate"]["data"], [p["opt_out"]["rate"] for p in email["curve"]])
    assert close(curve["Conversion rate"]["data"], [p["conversion"]["rate"] for p in email["curve"]])
    # Interval bars where the API gives bounds (a touch count seen in no window has none).
    bounds = [[k, p["opt_out"]["ci_low"], p["opt_out"]["ci_high"]] for k, p in enumerate(email["curve"])]
    assert close(curve["Opt-out interval"]["data"], [b for b in bounds if None not in b])
    marks = [m["name"] for m in curve["Opt-out rate"]["markLine"]["data"]]
    assert marks == ["recommended", "configured"]
    # The fatigued audience: its count, its table and the export a journey can load.
    aud = answer["audience"]
    assert f"{aud['persons']:,} persons" in page.page.locator("#fatigue-audience-count").inner_text()
    assert page.page.locator("[data-card=fatigued-now] tbody tr").count() == len(aud["rows"])
    with page.page.expect_download() as dl:
        page.page.click("#fatigue-export")
    with open(dl.value.path(), newline="", encoding="utf-8") as f:
        exported = list(csv.reader(f))
    assert exported[0] == ["person_id", "user_ids", "emails", "anonymous_ids", "channel", "touches_last_window", "cap", "engagement_recent", "engagement_before"]
    assert [r[0] for r in exported[1:]] == [r["person_id"] for r in aud["rows"]] and len(exported) - 1 == aud["rows_total"]
    # The address restores the settings.
    page.page.fill("#fatigue-value", "40")
    page.page.fill("#fatigue-cost", "15")
    page.page.click("#fatigue-run")
    page.page.wait_for_url(re.compile(r"value=40"))
    page.settle()
    page.page.reload()
    page.settle()
    assert page.page.locator("#fatigue-value").input_value() == "40"
    page.page.click("[data-card=recommended-and-configured-caps] button[aria-controls$=-def]")
    body = json.loads(page.page.locator("[data-card=recommended-and-configured-caps] .definition code.body").inner_text())
    assert (body["conversion_value"], body["unsubscribe_cost"]) == (40, 15)
    again = demo.api("headphones", "fatigue", body)
    assert page.series("recommended-and-configured-caps")[0]["data"] == [c["recommended_cap"] for c in again["channels"]]
    assert page.errors == [], page.errors


def inject_hygiene_problems(demo) -> None:
    """Sessions with hygiene problems, into the subscription project (the other tests read
    the headphones one): a source in two spellings, an unknown medium, a campaign nobody
    registered, and a tracked link landing on an error."""
    origin = "https://fieldnote.example"
    msgs = []
    for i in range(4):
        for query, title, then in [
            ("utm_source=Facebook&utm_medium=paid_social&utm_campaign=fn_autumn_push", "Fieldnote", None),
            ("utm_source=partner_blog&utm_medium=sponsored-post&utm_campaign=fn_autumn_push", "Fieldnote", None),
            ("utm_source=google&utm_medium=cpc&utm_campaign=fn_unregistered_test", "Fieldnote", None),
            ("utm_source=google&utm_medium=cpc&utm_campaign=fn_search_brand&utm_content=fn_old_offer", "Not found", "Page Not Found"),
        ]:
            anon = str(uuid.uuid4())
            page = {"path": "/lp/offer", "url": f"{origin}/lp/offer?{query}", "title": title}
            t = f"2026-10-{10 + i:02d}T10:00:00.000Z"
            msgs.append({"type": "page", "name": "Landing", "anonymousId": anon, "timestamp": t, "properties": page, "context": {"page": page}})
            if then:
                msgs.append({"type": "track", "event": then, "anonymousId": anon, "timestamp": t.replace(":00.000Z", ":03.000Z"), "context": {"page": page}})
    r = requests.post(f"{demo.url}/v1/batch", json={"batch": msgs}, auth=(demo.write_keys["subscription"], ""), timeout=30)
    assert r.status_code == 200 and r.json()["accepted"] == len(msgs), r.text


def test_the_audit_view_lists_every_finding_sortable_with_the_apis_numbers(cx_page, demo):
    page = cx_page
    inject_hygiene_problems(demo)
    # A link to another project's view asks for its key, then opens the view.
    page.page.goto(f"{demo.url}/#/subscription/audit")
    page.page.fill("#api-key", demo.keys["subscription"])
    page.page.click("#signin-submit")
    page.page.wait_for_url(re.compile(r"#/subscription/audit"))
    page.settle()
    body, copied, csv_rows = card_actions(page, "findings")
    answer = demo.api("subscription", "audit", body)
    findings = answer["findings"]
    assert close(copied, findings)
    kinds = {f["kind"] for f in findings}
    assert {"source_spelling", "unassigned_traffic", "campaign_without_asset", "error_landing"} <= kinds, kinds
    assert len(csv_rows) == len(findings) + 1
    # Most affected first, by default; the numbers are the API's.
    want = sorted(findings, key=lambda f: -f["affected_sessions"])
    assert cells(page, "findings", 3) == [f["subject"] for f in want]
    assert ints(cells(page, "findings", 5)) == [f["affected_sessions"] for f in want]
    # Sorting by a column, kept in the address.
    page.page.click("#audit-findings-sort-subject")
    page.page.click("#audit-findings-sort-subject")
    assert "sort=subject" in page.page.url and "dir=asc" in page.page.url
    by_subject = sorted((f["subject"] for f in findings), key=lambda s: s)
    shown = cells(page, "findings", 3)
    assert sorted(shown) == sorted(by_subject) and shown == page.page.evaluate("(xs) => [...xs].sort((a, b) => a.localeCompare(b))", shown)
    page.page.reload()
    page.settle()
    assert cells(page, "findings", 3) == shown
    assert page.page.locator("#audit-findings-sort-subject").evaluate("b => b.parentElement.getAttribute('aria-sort')") == "ascending"
    # The kinds chart, the message match side by side, the error landings.
    kind_series = page.series("findings-by-kind")[0]["data"]
    labels = page.page.evaluate("""() => echarts.getInstanceByDom(document.querySelector('[data-card="findings-by-kind"] .chart')).getOption().yAxis[0].data""")
    assert len(labels) == 8 and sum(kind_series) == sum(answer["findings_by_kind"].values())
    mm = answer["message_match"]
    sides = {s["name"]: s["data"] for s in page.series("message-match")}
    assert close(sides["Matched"], [mm["matched"]["bounce_rate"], mm["matched"]["conversion_rate"]])
    assert close(sides["Mismatched"], [mm["mismatched"]["bounce_rate"], mm["mismatched"]["conversion_rate"]])
    assert page.page.locator("[data-card=asset-and-landing-page-pairs] tbody tr").count() == len(mm["pairs"]) > 0
    [landing] = [e for e in answer["error_landings"] if e["landing_page"] == "/lp/offer"]
    assert ints(cells(page, "error-landings", 4)) == [e["error_sessions"] for e in sorted(answer["error_landings"], key=lambda e: -e["sessions"])]
    assert landing["error_sessions"] == 4
    assert page.errors == [], page.errors


def settled_journeys(demo, project: str) -> dict:
    """The journeys once the demo's catch-up has run and no send is in flight."""
    deadline = time.monotonic() + 60
    last = None
    while time.monotonic() < deadline:
        now = demo.get(project, "/journeys")
        if now["sends_in_flight"] == 0 and now == last:
            return now
        last = now
        time.sleep(0.5)
    pytest.fail(f"the demo's journeys did not settle within 60s: {last}", pytrace=False)


def test_the_followups_view_lists_journeys_with_pause_and_resume(cx_page, demo):
    page = cx_page
    answer = settled_journeys(demo, "headphones")
    by_name = {j["name"]: j for j in answer["journeys"]}
    # The demo's journeys ran over its history: entries, sends, goal exits, and caps that
    # made the two journeys compete for one person.
    assert set(by_name) == {"cart-recovery", "post-purchase"}
    cart, post = by_name["cart-recovery"], by_name["post-purchase"]
    assert cart["entered"] > 0 and cart["sends"] > 0 and cart["converted"] > 0
    assert post["capped"] > 0 and cart["conversion"]["holdout"]["persons"] > 0
    page.open("headphones/followups")
    names = [t.split("\n")[0] for t in cells(page, "journeys", 1)]
    assert sorted(names) == sorted(by_name)
    for col, key in [(3, "entered"), (4, "active"), (6, "converted"), (7, "sends"), (8, "capped"), (9, "suppressed"), (10, "quiet_delayed")]:
        assert ints(cells(page, "journeys", col)) == [by_name[n][key] for n in names], key
    # Each journey's steps as a chart, the API's counts.
    for j in answer["journeys"]:
        series = {s["name"]: s["data"] for s in page.series(f"steps-of-{j['name']}")}
        assert series["At the step now"] == [s["persons_waiting"] for s in j["steps"]]
        assert series["Sends"] == [s.get("sends") for s in j["steps"]]
    body, copied, csv_rows = card_actions(page, "journeys")
    assert body is None and page.page.locator("[data-card=journeys] .definition code.req").inner_text() == "GET /api/v1/projects/headphones/journeys"
    assert [j["name"] for j in copied["journeys"]] == [j["name"] for j in answer["journeys"]]
    assert len(csv_rows) == len(answer["journeys"]) + 1
    # Pause and resume with the same api key.
    page.page.click("#followups-pause-cart-recovery")
    page.page.locator("#followups-resume-cart-recovery").wait_for()
    assert demo.get("headphones", "/journeys/cart-recovery")["status"] == "paused"
    page.page.click("#followups-resume-cart-recovery")
    page.page.locator("#followups-pause-cart-recovery").wait_for()
    assert demo.get("headphones", "/journeys/cart-recovery")["status"] == "active"
    # The address keeps the table's sort.
    page.page.click("#followups-journeys-sort-sends")
    assert "sort=sends" in page.page.url
    page.page.reload()
    page.settle()
    assert page.page.locator("#followups-journeys-sort-sends").evaluate("b => b.parentElement.getAttribute('aria-sort')") == "descending"
    assert page.errors == [], page.errors
