"""Asset registry and scorecards, end to end: `assets import/list`, `query assets` from the CLI
and over HTTP, on a small hand-built data set whose every number is worked out below."""

from __future__ import annotations

import json

import pytest
import requests

from harness import create_project, run_cli

SHOP = "https://shop.example"

REGISTRY_CSV = """id,kind,name,destination_url,campaign,funnel
banner-a,ad,Spring banner A,https://shop.example/sale?utm_source=facebook&utm_medium=paid_social&utm_campaign=spring&utm_content=banner-a,spring,Product Viewed > Order Completed
spring-email,email,Spring newsletter,https://shop.example/?utm_source=newsletter&utm_medium=email&utm_campaign=spring-email,spring,
pricing-page,landing_page,Pricing,https://shop.example/pricing,,
dead-ad,ad,Never clicked,https://shop.example/x?utm_content=dead-ad,spring,
"""


def page(anon, ts, url, path, mid):
    return {"type": "page", "anonymousId": anon, "messageId": mid, "timestamp": ts,
            "context": {"page": {"url": url, "path": path}}}


def events():
    """Six persons, eight sessions (30 minutes of inactivity ends one):

    a1  banner-a  10:00:00 view, 10:00:30 Product Viewed (sent from the page)  -> engaged (30 s)
        Order Completed 10:05 (server side, revenue 100): converts, last touch banner-a
    a2  banner-a  09-01 12:00 one view -> bounce; identifies as u2
        spring-email 09-03 09:00:00 + 09:00:20 two views -> engaged (20 s)
        u2 Order Completed 09-03 09:10 (revenue "50.5"): within 7 days of both sessions,
        last touch spring-email
    a3  pricing-page (by destination path) 08:00 one view -> bounce; 08:45 + 08:45:15 -> engaged
    a4  campaign "brand" (unregistered) one view -> bounce; Order Completed 10 days later:
        outside the window, unattributed
    a5  banner-b (unregistered content) 10:00 view, 10:00:05 Product Viewed, 10:20 Order Completed
        sent from /checkout (revenue 20): one engaged session of 20 minutes, converted in it
    a6  a screen without a path -> (not set), bounce
    """
    sale = f"{SHOP}/sale?utm_source=facebook&utm_medium=paid_social&utm_campaign=spring"
    return [
        page("a1", "2026-09-01T10:00:00Z", sale + "&utm_content=banner-a", "/sale", "m1"),
        {"type": "track", "anonymousId": "a1", "event": "Product Viewed", "messageId": "m2",
         "timestamp": "2026-09-01T10:00:30Z", "context": {"page": {"path": "/sale"}}},
        {"type": "track", "anonymousId": "a1", "event": "Order Completed", "messageId": "m3",
         "timestamp": "2026-09-01T10:05:00Z", "properties": {"revenue": 100}},

        page("a2", "2026-09-01T12:00:00Z", sale + "&utm_content=banner-a", "/sale", "m4"),
        {"type": "identify", "anonymousId": "a2", "userId": "u2", "messageId": "m5",
         "timestamp": "2026-09-01T12:00:10Z"},
        page("a2", "2026-09-03T09:00:00Z",
             f"{SHOP}/?utm_source=newsletter&utm_medium=email&utm_campaign=spring-email", "/", "m6"),
        page("a2", "2026-09-03T09:00:20Z", f"{SHOP}/products/x", "/products/x", "m7"),
        {"type": "track", "userId": "u2", "event": "Order Completed", "messageId": "m8",
         "timestamp": "2026-09-03T09:10:00Z", "properties": {"revenue": "50.5"}},

        page("a3", "2026-09-02T08:00:00Z", f"{SHOP}/pricing", "/pricing", "m9"),
        page("a3", "2026-09-02T08:45:00Z", f"{SHOP}/pricing", "/pricing", "m10"),
        page("a3", "2026-09-02T08:45:15Z", f"{SHOP}/blog", "/blog", "m11"),

        page("a4", "2026-09-02T15:00:00Z", f"{SHOP}/?utm_source=google&utm_medium=cpc&utm_campaign=brand", "/", "m12"),
        {"type": "track", "anonymousId": "a4", "event": "Order Completed", "messageId": "m13",
         "timestamp": "2026-09-12T15:00:00Z", "properties": {"revenue": 70}},

        page("a5", "2026-09-04T10:00:00Z", sale + "&utm_content=banner-b", "/sale", "m14"),
        {"type": "track", "anonymousId": "a5", "event": "Product Viewed", "messageId": "m15",
         "timestamp": "2026-09-04T10:00:05Z", "context": {"page": {"path": "/sale"}}},
        {"type": "track", "anonymousId": "a5", "event": "Order Completed", "messageId": "m16",
         "timestamp": "2026-09-04T10:20:00Z", "properties": {"revenue": 20},
         "context": {"page": {"path": "/checkout"}}},

        {"type": "screen", "anonymousId": "a6", "name": "Home", "messageId": "m17",
         "timestamp": "2026-09-05T10:00:00Z"},
    ]


def scores(persons, sessions, engaged, engaged_s, conv_persons, conv_sessions, conversions, revenue):
    return {
        "persons": persons,
        "sessions": sessions,
        "engaged_sessions": engaged,
        "bounce_rate": None if sessions == 0 else 1 - engaged / sessions,
        "engaged_seconds": engaged_s,
        "avg_engaged_seconds": None if sessions == 0 else engaged_s / sessions,
        "converted_persons": conv_persons,
        "converted_sessions": conv_sessions,
        "conversion_rate": None if persons == 0 else conv_persons / persons,
        "conversions": conversions,
        "revenue": revenue,
    }


EXPECTED = {
    # asset: (registered, keyed_by, scores...)
    "banner-a": (True, "registry", scores(2, 2, 1, 30.0, 2, 2, 1, 100.0)),
    "pricing-page": (True, "registry", scores(1, 2, 1, 15.0, 0, 0, 0, 0.0)),
    "banner-b": (False, "utm_content", scores(1, 1, 1, 1200.0, 1, 1, 1, 20.0)),
    "spring-email": (True, "registry", scores(1, 1, 1, 20.0, 1, 1, 1, 50.5)),
    "(not set)": (False, "none", scores(1, 1, 0, 0.0, 0, 0, 0, 0.0)),
    "brand": (False, "utm_campaign", scores(1, 1, 0, 0.0, 0, 0, 0, 0.0)),
    "dead-ad": (True, "registry", scores(0, 0, 0, 0.0, 0, 0, 0, 0.0)),
}


@pytest.fixture
def loaded(throughline_bin, data_dir, make_server, tmp_path):
    """A project with the events stored and the registry imported while the server runs."""
    info = create_project(throughline_bin, data_dir, "shop")
    server = make_server(data_dir).start()
    resp = server.post("/v1/batch", {"batch": events()}, info["write_key"])
    assert resp.status_code == 200 and resp.json()["accepted"] == len(events()), resp.text
    reg = tmp_path / "assets.csv"
    reg.write_text(REGISTRY_CSV)
    # The registry is a file beside the store: importing needs no lock, so a server may run.
    out = json.loads(run_cli(throughline_bin, "assets", "import", "--data", str(data_dir),
                             "--project", "shop", str(reg)).stdout)
    assert out["added"] == 4 and out["assets"] == 4, out
    return info, server


def query_cli(bin_path, data_dir, *extra, conversion="Order Completed"):
    return json.loads(run_cli(bin_path, "query", "assets", "--data", str(data_dir), "--project", "shop",
                              "--conversion", conversion, "--value", "revenue", *extra).stdout)


def test_scorecard_numbers_are_exact_and_http_equals_cli(throughline_bin, data_dir, loaded):
    info, server = loaded
    resp = requests.post(f"{server.url}/api/v1/projects/shop/query/assets",
                         headers={"Authorization": f"Bearer {info['api_key']}"},
                         json={"conversion": "Order Completed", "value": "revenue", "window": "7d"}, timeout=30)
    assert resp.status_code == 200, resp.text
    over_http = resp.json()
    server.stop()
    r = query_cli(throughline_bin, data_dir)
    assert r == over_http, "the CLI and the HTTP API must give the same answer"

    assert [row["asset"] for row in r["rows"]] == list(EXPECTED), "rows: most sessions, then conversions, then name"
    for row in r["rows"]:
        registered, keyed_by, want = EXPECTED[row["asset"]]
        assert row["registered"] == registered and row["keyed_by"] == keyed_by, row
        got = {k: row[k] for k in want}
        assert got == pytest.approx(want), f"{row['asset']}: {got} != {want}"

    by = {row["asset"]: row for row in r["rows"]}
    assert by["banner-a"]["kind"] == "ad" and by["banner-a"]["campaign"] == "spring"
    assert by["banner-a"]["channel"] == "Paid Social"
    assert by["spring-email"]["channel"] == "Email"
    assert by["brand"]["campaign"] == "brand" and by["brand"]["channel"] == "Paid Search"
    # The banner's own funnel: of its 2 persons, 1 viewed a product after the click, and bought.
    assert by["banner-a"]["funnel"] == [
        {"name": "Product Viewed", "persons": 1, "conversion_from_previous": 0.5, "drop_off": 0.5},
        {"name": "Order Completed", "persons": 1, "conversion_from_previous": 1.0, "drop_off": 0.0},
    ]
    assert by["spring-email"]["funnel"] is None

    total = r["total"]
    assert total == pytest.approx({
        **scores(6, 8, 4, 1265.0, 3, 4, 3, 170.5),
        "conversion_events": 4,
        "unattributed_conversions": 1,
    })
    assert r["registered_assets"] == 4 and r["omitted_rows"] == 0 and r["omitted_sessions"] == 0
    # Every session is on exactly one asset, and the same sessions `query sessions` counts.
    assert sum(row["sessions"] for row in r["rows"]) == total["sessions"]
    assert sum(row["conversions"] for row in r["rows"]) + total["unattributed_conversions"] == total["conversion_events"]
    sessions = json.loads(run_cli(throughline_bin, "query", "sessions", "--data", str(data_dir), "--project", "shop",
                                  "--by", "none").stdout)
    assert sessions["total"]["sessions"] == total["sessions"] == 8


def test_ranges_windows_limits_and_conditions(throughline_bin, data_dir, loaded):
    _, server = loaded
    server.stop()
    # A 1-day window: a2's banner session (09-01) no longer leads to the 09-03 purchase.
    r = query_cli(throughline_bin, data_dir, "--window", "1d")
    by = {row["asset"]: row for row in r["rows"]}
    assert by["banner-a"]["converted_sessions"] == 1 and by["banner-a"]["converted_persons"] == 1
    # A range: only 09-02 .. 09-04 (exclusive); sessions still reconcile with `query sessions`.
    rng = ["--from", "2026-09-02", "--to", "2026-09-04"]
    r = query_cli(throughline_bin, data_dir, *rng)
    sessions = json.loads(run_cli(throughline_bin, "query", "sessions", "--data", str(data_dir), "--project", "shop",
                                  "--by", "none", *rng).stdout)
    assert r["total"]["sessions"] == sessions["total"]["sessions"] == 4
    assert sum(row["sessions"] for row in r["rows"]) == 4
    # A limit keeps the sums: omitted sessions make up the rest.
    r = query_cli(throughline_bin, data_dir, "--limit", "2")
    assert [row["asset"] for row in r["rows"]] == ["banner-a", "pricing-page"]
    assert r["omitted_rows"] == 5 and r["omitted_sessions"] == 4
    # A conversion condition decodes the purchases and keeps those over 60.
    r = query_cli(throughline_bin, data_dir, conversion="Order Completed where revenue > 60")
    assert r["total"]["conversion_events"] == 2 and r["total"]["revenue"] == 100.0
    # Without --value there is no revenue.
    r = json.loads(run_cli(throughline_bin, "query", "assets", "--data", str(data_dir), "--project", "shop",
                           "--conversion", "Order Completed").stdout)
    assert r["total"]["revenue"] is None and r["value"] is None


def test_registry_import_list_and_errors(throughline_bin, data_dir, tmp_path):
    create_project(throughline_bin, data_dir, "shop")
    d = ["--data", str(data_dir), "--project", "shop"]
    good = tmp_path / "assets.toml"
    good.write_text('[[asset]]\nid = "banner-a"\nkind = "ad"\nfunnel = ["Product Viewed", "Order Completed"]\n'
                    '\n[[asset]]\nid = "/pricing"\nkind = "landing_page"\n')
    out = json.loads(run_cli(throughline_bin, "assets", "import", *d, str(good)).stdout)
    assert (out["added"], out["updated"], out["assets"]) == (2, 0, 2)
    # Re-importing an id replaces it in place.
    upd = tmp_path / "upd.csv"
    upd.write_text("id,kind,name\nbanner-a,creative,Banner A\nwelcome,email,Welcome\n")
    out = json.loads(run_cli(throughline_bin, "assets", "import", *d, str(upd)).stdout)
    assert (out["added"], out["updated"], out["assets"]) == (1, 1, 3)
    listed = json.loads(run_cli(throughline_bin, "assets", "list", *d).stdout)
    assert [(a["id"], a["kind"]) for a in listed] == [("banner-a", "creative"), ("/pricing", "landing_page"),
                                                      ("welcome", "email")]
    assert "funnel" not in listed[0], "a replaced entry takes the new row whole"
    table = run_cli(throughline_bin, "assets", "list", *d, "--format", "table").stdout
    assert "Banner A" in table and "/pricing" in table

    bad = tmp_path / "bad.csv"
    bad.write_text("id,kind,name\nok,ad,\n,ad,\nx,banana,\nok,email,\n")
    proc = run_cli(throughline_bin, "assets", "import", *d, str(bad), check=False)
    assert proc.returncode != 0
    for want in ["line 3: id is empty", 'line 4: kind "banana"', 'line 5: id "ok" is already used on line 2']:
        assert want in proc.stderr, f"{want!r} not in {proc.stderr!r}"
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('[[asset]]\nid = "a"\nkind = "ad"\ncolour = "red"\n')
    proc = run_cli(throughline_bin, "assets", "import", *d, str(bad_toml), check=False)
    assert proc.returncode != 0 and "line 4" in proc.stderr and "colour" in proc.stderr, proc.stderr
    # A refused file changes nothing.
    assert json.loads(run_cli(throughline_bin, "assets", "list", *d).stdout) == listed
    proc = run_cli(throughline_bin, "assets", "import", "--data", str(data_dir), "--project", "nope", str(good),
                   check=False)
    assert proc.returncode != 0 and "nope" in proc.stderr
    for cmd in (["assets", "import"], ["assets", "list"], ["query", "assets"]):
        help_text = run_cli(throughline_bin, *cmd, "--help").stdout
        assert "Example" in help_text, f"{cmd} --help has no example"


def test_segments_and_log_give_the_same_scorecard(throughline_bin, data_dir, loaded, make_server, tmp_path):
    """Revenue is read from the stored payloads by arrival number: half the events in a
    sorted segment (bulk import flushes) and half still in the log must read the same."""
    _, server = loaded
    server.stop()
    want = query_cli(throughline_bin, data_dir)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    info = create_project(throughline_bin, mixed, "shop")
    evs = events()
    jsonl = tmp_path / "first.jsonl"
    jsonl.write_text("".join(json.dumps(e) + "\n" for e in evs[::2]))
    run_cli(throughline_bin, "import", "--data", str(mixed), "--project", "shop", str(jsonl))
    server = make_server(mixed).start()
    assert server.post("/v1/batch", {"batch": evs[1::2]}, info["write_key"]).status_code == 200
    server.stop()
    reg = tmp_path / "assets.csv"
    reg.write_text(REGISTRY_CSV)
    run_cli(throughline_bin, "assets", "import", "--data", str(mixed), "--project", "shop", str(reg))
    assert query_cli(throughline_bin, mixed) == want
