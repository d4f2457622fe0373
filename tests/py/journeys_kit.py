"""Real receivers for the journeys tests: an SMTP server (aiosmtpd) and a webhook receiver
that checks every Standard Webhooks signature with the `standardwebhooks` reference
package, dedupes by `webhook-id` like a careful receiver, and counts raw deliveries.
Plus the server config and the clock helpers the tests share.
"""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook

from harness import free_port

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwZZZZZZZZZZZZ"


class SmtpSink:
    """A local SMTP server keeping every message; `by_id` dedupes by Message-ID."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.raw: Counter = Counter()
        self.lock = threading.Lock()
        self.port = free_port()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                with sink.lock:
                    sink.messages.append(msg)
                    sink.raw[msg["Message-ID"]] += 1
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self):
        self.controller.stop()

    def by_id(self) -> dict[str, email.message.EmailMessage]:
        with self.lock:
            out = {}
            for m in self.messages:
                out.setdefault(m["Message-ID"], m)
            return out


class WebhookSink:
    """Receives webhooks; acts on each webhook-id once; can fail the first N requests."""

    def __init__(self, secret: str = WEBHOOK_SECRET, fail_first: int = 0):
        self.verifier = Webhook(secret)
        self.raw: Counter = Counter()
        self.acted: dict[str, dict] = {}
        self.bodies: dict[str, bytes] = {}
        self.bad_signatures = 0
        self.changed_bodies = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    sink.verifier.verify(body, headers)
                except Exception:
                    with sink.lock:
                        sink.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                wid = headers["webhook-id"]
                with sink.lock:
                    if sink.fail_first > 0:
                        sink.fail_first -= 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    sink.raw[wid] += 1
                    if wid in sink.bodies and sink.bodies[wid] != body:
                        sink.changed_bodies += 1
                    if wid not in sink.acted:
                        sink.acted[wid] = json.loads(body)
                        sink.bodies[wid] = body
                try:
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender died (kill -9) before reading the answer

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.shutdown()

    def repeats(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.raw.values())


def write_config(path: Path, public_url: str, smtp_port: int | None = None, extra: str = "") -> Path:
    smtp = (
        f'\n[orchestrate.smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\ntls = "none"\nfrom = "Shop <hello@shop.example>"\n'
        if smtp_port
        else ""
    )
    path.write_text(
        f"""[orchestrate]
public_url = "{public_url}"
test_clock = true
tick_ms = 50
webhook_secret = "{WEBHOOK_SECRET}"
retry = ["1s", "1s", "2s", "5s"]
{extra}
{smtp}""",
        encoding="utf-8",
    )
    return path


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class Api:
    """The project's HTTP API with its api key."""

    def __init__(self, server, project: dict):
        self.server = server
        self.project = project
        self.auth = {"Authorization": f"Bearer {project['api_key']}"}

    def url(self, path: str) -> str:
        return f"{self.server.url}/api/v1/projects/{self.project['name']}{path}"

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url(path), headers=self.auth, timeout=30)

    def post(self, path: str, body=None, data: bytes | str | None = None, ctype: str = "application/json") -> requests.Response:
        if data is None and body is not None:
            data = json.dumps(body)
        return requests.post(self.url(path), data=data, headers={**self.auth, "Content-Type": ctype}, timeout=60)

    def create(self, toml_text: str) -> dict:
        r = self.post("/journeys", data=toml_text, ctype="application/toml")
        assert r.status_code == 201, r.text
        return r.json()

    def journey(self, name: str) -> dict:
        r = self.get(f"/journeys/{name}")
        assert r.status_code == 200, r.text
        return r.json()

    def set_clock(self, when: datetime) -> None:
        r = requests.post(self.server.url + "/api/v1/admin/clock", json={"now": iso(when)}, timeout=10)
        assert r.status_code == 200, r.text

    def track(self, user: str, event: str, when: datetime, props: dict | None = None, mid: str | None = None) -> None:
        body = {"userId": user, "event": event, "timestamp": iso(when), "properties": props or {}}
        if mid:
            body["messageId"] = mid
        r = self.server.post("/v1/track", body, self.project["write_key"])
        assert r.status_code == 200, r.text

    def identify(self, user: str, traits: dict, when: datetime) -> None:
        r = self.server.post("/v1/identify", {"userId": user, "traits": traits, "timestamp": iso(when)}, self.project["write_key"])
        assert r.status_code == 200, r.text


def wait_for(pred, timeout: float = 30.0, what: str = "condition", interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
