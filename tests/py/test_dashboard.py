"""The web dashboard in a real headless Chromium (Debian's `chromium`, driven by
Playwright without a browser download), served by `throughline demo` on its own data.

What a marketer sees first: every view loads on the demo data without a console error
(CSP violations are console errors too), the charts show what the API answers, a bad api
key gets a clear sign-in error, the keyboard reaches every view, and the key never lands
in a URL or the server's log. Screenshots of every view go to target/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
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
VIEWS = ["overview", "funnel", "journeys", "attribution", "retention", "assets", "person"]


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
    page.page.wait_for_url(re.compile(r"#/headphones/assets"))
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
