"""`query audit` and `audit links`: on the demo's clean data nothing is flagged; with
hygiene problems injected (mixed-case sources and mediums, an unknown medium, a campaign
without a registered asset, a registered asset without traffic, an ad whose landing page
says something else, a tracked link landing on an error) every one is found; broken
destinations served by a local HTTP server (404, 500, a timeout) are found and healthy ones
are not."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from harness import create_project, run_cli
from journeys_kit import Api, SmtpSink, wait_for, write_config

ORIGIN = "https://www.sonora-audio.example"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, throughline_bin):
    d = tmp_path_factory.mktemp("audit") / "demo"
    # The demo's default size: every registered creative gets traffic (at 1500 persons the rarest
    # cross-sell e-mail may get none, a true "asset without traffic").
    run_cli(throughline_bin, "demo", "--data", str(d), "--no-serve", "--persons", "3000", timeout=300)
    return d


def audit(bin_path, data_dir, project, *extra):
    out = run_cli(bin_path, "query", "audit", "--data", str(data_dir), "--project", project,
                  "--conversion", "Order Completed", *extra).stdout
    return json.loads(out)


def test_clean_demo_data_raises_no_alarm(throughline_bin, demo_dir):
    for project in ["headphones", "subscription"]:
        r = audit(throughline_bin, demo_dir, project)
        assert r["sessions"] > 1000 and r["registered_assets"] > 10
        assert r["findings"] == [], (project, r["findings"][:5])
        mm = r["message_match"]
        assert mm["pairs"] and all(p["matched"] for p in mm["pairs"])
        assert mm["matched"]["sessions"] > 0 and mm["matched"]["conversion_rate"] is not None


def landing(path, title, query, day=10, then=None):
    """One session: a landing page view with UTM tags, optionally followed by a track."""
    anon = str(uuid.uuid4())
    t = f"2026-10-{day:02d}T10:00:00.000Z"
    url = f"{ORIGIN}{path}?{query}"
    page = {"path": path, "url": url, "title": title, "search": "?" + query}
    msgs = [{"type": "page", "name": "Landing Page", "anonymousId": anon, "messageId": str(uuid.uuid4()),
             "timestamp": t, "properties": page, "context": {"page": page}}]
    if then:
        msgs.append({"type": "track", "event": then, "anonymousId": anon, "messageId": str(uuid.uuid4()),
                     "timestamp": f"2026-10-{day:02d}T10:00:03.000Z", "context": {"page": page}})
    return msgs


def test_every_injected_problem_is_found(throughline_bin, demo_dir, tmp_path):
    msgs = []
    for i in range(5):
        # The same source in another case.
        msgs += landing("/lp/fall-launch", "Meet Studio Pro — the quiet is loud",
                        "utm_source=Facebook&utm_medium=paid_social&utm_campaign=hp_fall_launch&utm_content=fb_video_unboxing")
        # The same medium in another case.
        msgs += landing("/collections/headphones", "Headphones — Sonora",
                        "utm_source=newsletter&utm_medium=Email&utm_campaign=hp_newsletter_weekly&utm_content=nl_hero_cta")
        # A medium no channel rule knows.
        msgs += landing("/lp/fall-launch", "Meet Studio Pro — the quiet is loud",
                        "utm_source=partner_blog&utm_medium=sponsored-post&utm_campaign=hp_fall_launch")
        # A campaign nobody registered.
        msgs += landing("/lp/black-friday", "Black Friday — Sonora",
                        "utm_source=google&utm_medium=cpc&utm_campaign=hp_black_friday_teaser")
        # An ad whose landing page says something else.
        msgs += landing("/lp/quiet-commute", "Silence your commute — Sonora",
                        "utm_source=google&utm_medium=display&utm_campaign=hp_display_prospecting&utm_content=boots_ad")
        # A tracked link landing on a page that fails.
        msgs += landing("/lp/old-offer", "Page not found — Sonora",
                        "utm_source=google&utm_medium=cpc&utm_campaign=hp_search_brand&utm_content=rsa_brand_old",
                        then="Page Not Found")
    f = tmp_path / "inject.jsonl"
    f.write_text("".join(json.dumps(m) + "\n" for m in msgs))
    run_cli(throughline_bin, "import", "--data", str(demo_dir), "--project", "headphones", str(f))
    reg = tmp_path / "more-assets.csv"
    reg.write_text(
        "id,kind,name,destination_url,campaign,headline,copy\n"
        f"hp_winter_banner,display,Winter banner,{ORIGIN}/lp/winter?utm_content=hp_winter_banner,hp_winter,Warm winter sound,Cosy headphones for cold days\n"
        f"boots_ad,display,Boots ad,{ORIGIN}/lp/quiet-commute?utm_content=boots_ad,hp_display_prospecting,Winter boots sale,\"Waterproof leather boots, 50% off this weekend\"\n"
    )
    run_cli(throughline_bin, "assets", "import", "--data", str(demo_dir), "--project", "headphones", str(reg))
    r = audit(throughline_bin, demo_dir, "headphones")
    found = {(f["kind"], f["subject"]) for f in r["findings"]}
    want = {
        ("source_spelling", "facebook"),
        ("medium_spelling", "email"),
        ("unassigned_traffic", "partner_blog / sponsored-post"),
        ("campaign_without_asset", "hp_black_friday_teaser"),
        ("asset_without_traffic", "hp_winter_banner"),
        ("message_mismatch", "boots_ad -> /lp/quiet-commute"),
        ("error_landing", "rsa_brand_old -> /lp/old-offer"),
    }
    assert found == want, (found - want, want - found)
    by = {(f["kind"], f["subject"]): f for f in r["findings"]}
    assert by[("source_spelling", "facebook")]["affected_sessions"] == 5
    assert by[("medium_spelling", "email")]["affected_sessions"] == 5
    assert by[("unassigned_traffic", "partner_blog / sponsored-post")]["affected_sessions"] == 5
    assert by[("campaign_without_asset", "hp_black_friday_teaser")]["affected_persons"] == 5
    assert by[("error_landing", "rsa_brand_old -> /lp/old-offer")]["affected_sessions"] == 5
    assert by[("error_landing", "rsa_brand_old -> /lp/old-offer")]["severity"] == "error"
    mm = r["message_match"]
    [boots] = [p for p in mm["pairs"] if p["asset"] == "boots_ad"]
    assert boots["similarity"] < 0.1 and boots["sessions"] == 5 and boots["bounce_rate"] == 1.0
    assert mm["mismatched"]["pairs"] == 1 and mm["mismatched"]["sessions"] == 5
    assert mm["matched"]["bounce_rate"] < mm["mismatched"]["bounce_rate"]
    assert r["findings_by_kind"]["message_mismatch"] == 1
    table = run_cli(throughline_bin, "query", "audit", "--data", str(demo_dir), "--project", "headphones",
                    "--format", "table").stdout
    assert "hp_black_friday_teaser" in table and "error_landing" in table


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, body: bool):
        path = self.path.split("?")[0]
        if path == "/slow":
            time.sleep(3)
        status = {"/gone": 404, "/boom": 500}.get(path, 200)
        if path == "/nohead" and self.command == "HEAD":
            status = 405
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        if body:
            self.wfile.write(b"ok")

    def do_HEAD(self):
        self.answer(False)

    def do_GET(self):
        self.answer(True)

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_audit_links_finds_broken_destinations_only(throughline_bin, data_dir, tmp_path, web):
    create_project(throughline_bin, data_dir, "links")
    healthy = (
        "id,kind,destination_url\n"
        f"home,page,{web}/ok\n"
        f"spring,ad,{web}/ok?utm_content=spring\n"
        f"legacy,ad,{web}/nohead?utm_content=legacy\n"
        "print_ad,print,/print\n"
    )
    reg = tmp_path / "links.csv"
    reg.write_text(healthy)
    run_cli(throughline_bin, "assets", "import", "--data", str(data_dir), "--project", "links", str(reg))
    args = ["audit", "links", "--data", str(data_dir), "--project", "links", "--timeout", "1s", "--concurrency", "4"]
    r = json.loads(run_cli(throughline_bin, *args).stdout)
    assert (r["checked"], r["broken"], r["findings"]) == (3, 0, [])
    assert r["skipped"] == ["print_ad"]
    [legacy] = [l for l in r["links"] if l["assets"] == ["legacy"]]
    assert legacy["method"] == "GET" and legacy["status"] == 200  # HEAD refused, GET answered
    reg.write_text(
        "id,kind,destination_url\n"
        f"gone_lp,ad,{web}/gone?utm_content=gone_lp\n"
        f"boom_lp,ad,{web}/boom?utm_content=boom_lp\n"
        f"slow_lp,ad,{web}/slow?utm_content=slow_lp\n"
    )
    run_cli(throughline_bin, "assets", "import", "--data", str(data_dir), "--project", "links", str(reg))
    r = json.loads(run_cli(throughline_bin, *args).stdout)
    problems = {l["assets"][0]: (l["problem"], l["status"]) for l in r["links"] if not l["ok"]}
    assert problems == {
        "gone_lp": ("not_found", 404),
        "boom_lp": ("server_error", 500),
        "slow_lp": ("timeout", None),
    }, problems
    assert r["checked"] == 6 and r["broken"] == 3
    assert {f["kind"] for f in r["findings"]} == {"broken_destination"}


CLICK_JOURNEY = """
name = "welcome"
trigger = { event = "Signed Up" }

[[steps]]
id = "hello"
type = "email"
subject = "Welcome"
html = '<p><a href="https://shop.example/start">Start</a></p>'
"""


def test_error_landings_count_sessions_that_start_with_a_tracked_link_click(make_server, data_dir, tmp_path, throughline_bin):
    """A click on an e-mail's tracked link (`GET /r/{token}`) is recorded by the server
    before the browser's page view of the destination, so the session starts with the
    click: an error after that page view is still an error landing of the link's asset.
    Regression: only sessions whose first event was the tagged page view counted."""
    smtp = SmtpSink()
    try:
        project = create_project(throughline_bin, data_dir, "shop")
        (data_dir / "projects" / "shop").mkdir(parents=True, exist_ok=True)
        (data_dir / "projects" / "shop" / "links.toml").write_text('destinations = ["https://shop.example/"]\n')
        server = make_server(data_dir)
        server.config = write_config(tmp_path / "throughline.toml", f"http://127.0.0.1:{server.port}", smtp.port)
        server.start()
        api = Api(server, project)
        api.create(CLICK_JOURNEY)
        now = datetime.now(timezone.utc)
        users = ["ann", "cy"]
        for u in users:
            api.identify(u, {"email": f"{u}@example.com"}, now)
            api.track(u, "Signed Up", now)
        msgs = wait_for(lambda: len(smtp.by_id()) == 2 and smtp.by_id(), what="two welcome emails")
        links = {}
        for m in msgs.values():
            html = m.get_body(("html",)).get_content()
            links[m["To"].split("@")[0]] = re.search(r'href="(' + re.escape(server.url) + r'/r/[^"]+)"', html).group(1)
        for u in users:
            r = requests.get(links[u], allow_redirects=False, timeout=10)
            assert r.status_code == 302, r.text
            dest = r.headers["Location"]
            # The browser lands on the destination (signed in: the same person), and for
            # ann the page then fails.
            t = datetime.now(timezone.utc) + timedelta(seconds=1)
            page = {"path": "/start", "url": dest, "title": "Start — Shop"}
            msgs = [{"type": "page", "name": "Start", "userId": u, "timestamp": t.isoformat(), "properties": page, "context": {"page": page}}]
            if u == "ann":
                msgs.append({"type": "track", "event": "Page Not Found", "userId": u,
                             "timestamp": (t + timedelta(seconds=2)).isoformat(), "context": {"page": page}})
            r = server.post("/v1/batch", {"batch": msgs}, project["write_key"])
            assert r.status_code == 200, r.text
        server.stop()
    finally:
        smtp.stop()
    r = audit(throughline_bin, data_dir, "shop")
    [landing] = r["error_landings"]
    assert landing["asset"] == "welcome/hello/default" and landing["landing_page"] == "/start"
    assert (landing["sessions"], landing["error_sessions"], landing["persons"]) == (2, 1, 2)
    [finding] = [f for f in r["findings"] if f["kind"] == "error_landing"]
    assert finding["subject"] == "welcome/hello/default -> /start" and finding["affected_sessions"] == 1
    assert "/r/{token}" in r["methods"]["error_landing"]
