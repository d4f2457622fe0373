"""The HTTP edge under abuse: per write key rate limits (429 + Retry-After, and the
official Segment SDK still delivering everything through them), slow clients (a request
head or body trickled byte by byte is cut off after its timeout while others are served),
the bound on open connections, and CORS on the collection API only (preflights in a real
Chromium from another origin, set with `projects set-cors` on a running server).

Every server here runs with small limits from its own TOML config, so each test takes
seconds."""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from harness import basic_auth, create_project, export_events, json_error, run_cli

# Upper bounds on waiting for something the server must do after a configured timeout.
# They only bound a hang; the assertions are about what happens, not how fast.
SLACK_S = 10.0


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "throughline.toml"
    path.write_text(text)
    return path


def metric(server, name: str, labels: str = "") -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def track(i: int, user: str = "ann") -> dict:
    return {"type": "track", "userId": user, "event": "Order Completed", "messageId": f"m-{user}-{i}"}


def connect(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=SLACK_S)
    return s


def read_until_closed(s: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection; (data, closed)."""
    s.settimeout(timeout_s)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except ConnectionResetError:
        return data, True
    except socket.timeout:
        return data, False


# --------------------------------------------------------------------------- rate limits


def test_a_write_key_over_its_request_rate_gets_429_with_retry_after_then_succeeds(
        throughline_bin, data_dir, make_server, tmp_path):
    keys = create_project(throughline_bin, data_dir, "shop")
    other = create_project(throughline_bin, data_dir, "other")
    config = write_config(tmp_path, """
[rate_limit]
requests_per_second = 0.5
requests_burst = 3
""")
    server = make_server(data_dir, config=config).start()
    for i in range(3):
        r = server.post("/v1/track", track(i), keys["write_key"])
        assert r.status_code == 200, r.text
    r = server.post("/v1/track", track(3), keys["write_key"])
    assert r.status_code == 429, r.text
    body = json_error(r)
    assert body["limit"] == "requests_per_second" and body["rate_per_second"] == 0.5 and body["burst"] == 3
    assert "shop" in body["error"]
    retry_after = int(r.headers["Retry-After"])
    assert retry_after == 2, "one request comes back in 2 s at 0.5 per second"
    # Another project's write key has its own bucket.
    assert server.post("/v1/track", track(0, "bob"), other["write_key"]).status_code == 200
    # The key sent in the body (analytics.js's way) counts the same.
    r = server.post("/v1/track", {**track(4), "writeKey": keys["write_key"]})
    assert r.status_code == 429, r.text
    assert metric(server, "throughline_events_rejected_total", '{reason="rate_limit_requests"}') == 2

    time.sleep(retry_after)
    r = server.post("/v1/track", track(3), keys["write_key"])
    assert r.status_code == 200, f"after Retry-After the request passes: {r.text}"
    server.stop()
    ids = sorted(e["messageId"] for e in export_events(throughline_bin, data_dir, "shop"))
    assert ids == ["m-ann-0", "m-ann-1", "m-ann-2", "m-ann-3"], "refused requests stored nothing"


def test_the_message_rate_is_limited_too_and_projects_can_have_their_own_limits(
        throughline_bin, data_dir, make_server, tmp_path):
    keys = create_project(throughline_bin, data_dir, "shop")
    big = create_project(throughline_bin, data_dir, "big")
    config = write_config(tmp_path, """
[rate_limit]
events_per_second = 5
events_burst = 20

[rate_limit.projects.big]
events_per_second = 1000
events_burst = 1000
""")
    server = make_server(data_dir, config=config).start()
    r = server.post("/v1/batch", {"batch": [track(i) for i in range(20)]}, keys["write_key"])
    assert r.status_code == 200 and r.json()["accepted"] == 20, r.text
    r = server.post("/v1/batch", {"batch": [track(i) for i in range(20, 25)]}, keys["write_key"])
    assert r.status_code == 429, r.text
    assert json_error(r)["limit"] == "events_per_second"
    assert int(r.headers["Retry-After"]) == 1, "5 messages at 5 per second"
    for n in range(3):
        batch = [track(i, f"big{n}") for i in range(100)]
        r = server.post("/v1/batch", {"batch": batch}, big["write_key"])
        assert r.status_code == 200, f"the per-project override applies: {r.text}"
    assert metric(server, "throughline_events_rejected_total", '{reason="rate_limit_events"}') == 1


def test_the_segment_sdk_delivers_everything_through_429s(throughline_bin, data_dir, make_server, tmp_path):
    """analytics-python retries 429 with backoff: a tight limit slows it, loses nothing."""
    import segment.analytics as sa

    keys = create_project(throughline_bin, data_dir, "shop")
    config = write_config(tmp_path, """
[rate_limit]
requests_per_second = 2
requests_burst = 1
""")
    server = make_server(data_dir, config=config).start()
    client = sa.Client(keys["write_key"], host=server.url, upload_size=5, upload_interval=0.05,
                       max_retries=20, sync_mode=False, gzip=True)
    for i in range(30):
        client.track(f"user-{i % 3}", "Order Completed", {"n": i, "name": "Ünïcode ✓"}, message_id=f"sdk-{i}")
    client.flush()
    client.join()
    rejected = metric(server, "throughline_events_rejected_total", '{reason="rate_limit_requests"}')
    server.stop()
    events = export_events(throughline_bin, data_dir, "shop")
    assert sorted(e["messageId"] for e in events) == sorted(f"sdk-{i}" for i in range(30))
    assert rejected >= 1, "the limit was hit (else this test proves nothing)"


# --------------------------------------------------------------------------- slow clients


def test_a_slow_request_head_is_cut_off_while_a_normal_client_is_served(
        throughline_bin, data_dir, make_server, tmp_path):
    keys = create_project(throughline_bin, data_dir, "shop")
    config = write_config(tmp_path, """
[http]
header_read_timeout_ms = 1500
""")
    server = make_server(data_dir, config=config).start()
    slow = connect(server)
    idle = connect(server)  # never sends a byte
    slow.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    served = 0
    closed = False
    # Slowloris: one more header line every 200 ms, never the blank line that ends the head.
    while time.monotonic() - started < SLACK_S:
        try:
            slow.sendall(b"X-Slow: %d\r\n" % served)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        r = server.post("/v1/track", track(served), keys["write_key"], timeout=SLACK_S)
        assert r.status_code == 200, "other clients are served meanwhile"
        served += 1
        ready, _, _ = select.select([slow], [], [], 0.2)
        if ready:
            data, closed = read_until_closed(slow, SLACK_S)
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
            break
    elapsed = time.monotonic() - started
    assert closed, f"the trickling client still held its connection after {elapsed:.1f}s"
    assert elapsed >= 1.0, f"cut off after {elapsed:.2f}s, before the 1.5 s header timeout"
    assert served >= 2
    _, idle_closed = read_until_closed(idle, SLACK_S)
    assert idle_closed, "a connection that sends nothing is closed as well"
    assert metric(server, "throughline_http_header_timeouts_total") >= 2
    assert requests.get(server.url + "/health", timeout=SLACK_S).status_code == 200


def test_a_trickled_body_gets_408(throughline_bin, data_dir, make_server, tmp_path):
    keys = create_project(throughline_bin, data_dir, "shop")
    config = write_config(tmp_path, """
[http]
body_read_timeout_ms = 1000
""")
    server = make_server(data_dir, config=config).start()
    body = json.dumps(track(0)).encode()
    s = connect(server)
    s.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: " + basic_auth(keys["write_key"]).encode() + b"\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body))
    started = time.monotonic()
    response = b""
    for byte in body:
        ready, _, _ = select.select([s], [], [], 0.25)
        if ready:
            break
        try:
            s.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
    response, closed = read_until_closed(s, SLACK_S)
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), response[:300]
    assert b"connection: close" in head.lower()
    assert "did not arrive within 1000 ms" in json.loads(payload)["error"]
    assert closed, "the server closes the connection after the 408"
    assert time.monotonic() - started >= 0.9
    assert metric(server, "throughline_events_rejected_total", '{reason="body_timeout"}') == 1
    # The same body sent at once is stored.
    assert server.post("/v1/track", track(0), keys["write_key"]).status_code == 200


def test_open_connections_are_bounded_and_the_server_recovers(throughline_bin, data_dir, make_server, tmp_path):
    create_project(throughline_bin, data_dir, "shop")
    config = write_config(tmp_path, """
[http]
connections_max = 4
header_read_timeout_ms = 3000
""")
    server = make_server(data_dir, config=config).start()

    def hold_every_slot() -> list[socket.socket]:
        # From no other connection (a client's kept-alive one is closed by the header
        # timeout), four new ones, accepted in order, take every slot.
        deadline = time.monotonic() + SLACK_S
        while open_connections(server) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        return [connect(server) for _ in range(4)]

    def ask_health() -> socket.socket:
        s = connect(server)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s

    held = hold_every_slot()
    waiting = ask_health()
    ready, _, _ = select.select([waiting], [], [], 1.0)
    assert not ready, "a connection past the bound was served"
    # One held connection goes away: the waiting one is accepted and answered.
    held.pop().close()
    data, _ = read_until_closed(waiting, SLACK_S)
    assert data.startswith(b"HTTP/1.1 200"), (data[:200], server.log_tail())
    for s in held:
        s.close()

    # Clients that hold their connections and send nothing lose them after the header
    # timeout, so a waiting client is served without anyone letting go.
    held = hold_every_slot()
    waiting = ask_health()
    data, _ = read_until_closed(waiting, SLACK_S)
    assert data.startswith(b"HTTP/1.1 200"), (data[:200], server.log_tail())
    for s in held:
        assert read_until_closed(s, SLACK_S)[1], "the idle connection was closed by the server"
        s.close()
    assert metric(server, "throughline_http_header_timeouts_total") >= 4
    assert server.running()


def open_connections(server) -> float:
    """The server's count of open connections, this request's own included."""
    s = connect(server)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data, _ = read_until_closed(s, SLACK_S)
    s.close()
    m = re.search(rb"^throughline_http_connections_open (\S+)\r?$", data, re.M)
    assert m, data[:500]
    return float(m.group(1))


# --------------------------------------------------------------------------- CORS


def preflight(server, path: str, origin: str) -> requests.Response:
    return requests.options(server.url + path, headers={
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }, timeout=SLACK_S)


def test_cors_is_set_per_project_on_a_running_server_and_never_on_the_query_api(
        throughline_bin, data_dir, make_server):
    keys = create_project(throughline_bin, data_dir, "shop")
    other = create_project(throughline_bin, data_dir, "other")
    server = make_server(data_dir).start()
    allowed, foreign = "https://shop.example", "https://evil.example"
    assert "access-control-allow-origin" not in preflight(server, "/v1/track", allowed).headers, "off by default"

    out = run_cli(throughline_bin, "projects", "set-cors", "shop", "--data", str(data_dir),
                  "--origin", "https://Shop.example/", "--origin", "https://www.shop.example").stdout
    assert json.loads(out) == {"name": "shop", "cors_origins": [allowed, "https://www.shop.example"]}
    r = preflight(server, "/v1/track", allowed)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == allowed
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert "Origin" in r.headers["Vary"]
    denied = preflight(server, "/v1/batch", foreign)
    assert not [h for h in denied.headers if h.lower().startswith("access-control-")], denied.headers

    # Actual requests: the project's own list decides.
    r = server.post("/v1/track", track(0), keys["write_key"], headers={"Origin": allowed})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == allowed
    r = server.post("/v1/track", track(1), keys["write_key"], headers={"Origin": foreign})
    assert r.status_code == 403 and json_error(r)["field"] == "Origin"
    assert "access-control-allow-origin" not in r.headers
    r = server.post("/v1/track", track(2), other["write_key"], headers={"Origin": allowed})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers, \
        "a project without a list neither answers CORS nor checks Origin"
    r = server.post("/v1/track", track(3), keys["write_key"])
    assert r.status_code == 200, "server SDKs send no Origin and are not affected"

    # The query API never answers CORS, not even for an allowed origin.
    api = "/api/v1/projects/shop/query/funnel"
    r = preflight(server, api, allowed)
    assert "access-control-allow-origin" not in r.headers
    r = requests.post(server.url + api, json={"steps": ["Order Completed"], "window": "7d"}, timeout=SLACK_S,
                      headers={"Authorization": f"Bearer {keys['api_key']}", "Origin": allowed})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers, r.text

    # Clearing the list takes effect at once too.
    out = run_cli(throughline_bin, "projects", "set-cors", "shop", "--data", str(data_dir)).stdout
    assert json.loads(out)["cors_origins"] == []
    assert "access-control-allow-origin" not in preflight(server, "/v1/track", allowed).headers
    bad = run_cli(throughline_bin, "projects", "set-cors", "shop", "--data", str(data_dir),
                  "--origin", "shop.example/path", check=False)
    assert bad.returncode != 0 and "scheme://host" in bad.stderr
    log = run_cli(throughline_bin, "audit-log", "--data", str(data_dir)).stdout
    assert log.count("project.set_cors") == 2, log


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><title>shop</title><p>a page on another origin</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_browser_page_on_an_allowed_origin_can_post_events_and_others_cannot(
        throughline_bin, data_dir, make_server):
    """Chromium enforces the preflight: fetch with Basic auth and a JSON body, as the browser
    SDKs do, succeeds from the allowed origin and is blocked from another."""
    from test_dashboard import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)", pytrace=False)
    from playwright.sync_api import sync_playwright

    keys = create_project(throughline_bin, data_dir, "shop")
    server = make_server(data_dir).start()
    pages = [ThreadingHTTPServer(("127.0.0.1", 0), _Page) for _ in range(2)]
    for p in pages:
        threading.Thread(target=p.serve_forever, daemon=True).start()
    good, evil = (f"http://127.0.0.1:{p.server_address[1]}" for p in pages)
    run_cli(throughline_bin, "projects", "set-cors", "shop", "--data", str(data_dir), "--origin", good)
    script = """async ([url, auth, id]) => {
        try {
            const r = await fetch(url + '/v1/track', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'Authorization': auth},
                body: JSON.stringify({userId: 'ann', event: 'Order Completed', messageId: id})});
            return {status: r.status, body: await r.json()};
        } catch (e) { return {blocked: String(e)}; }
    }"""
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                results = {}
                for origin, msg_id in ((good, "from-good"), (evil, "from-evil")):
                    page = browser.new_context().new_page()
                    page.goto(origin + "/")
                    results[origin] = page.evaluate(script, [server.url, basic_auth(keys["write_key"]), msg_id])
            finally:
                browser.close()
    finally:
        for p in pages:
            p.shutdown()
    assert results[good] == {"status": 200, "body": {"success": True, "accepted": 1, "duplicates": 0}}, results
    assert "blocked" in results[evil], results
    server.stop()
    assert [e["messageId"] for e in export_events(throughline_bin, data_dir, "shop")] == ["from-good"], \
        "the blocked preflight kept the foreign page's POST from being sent"
