"""Helpers for the black-box acceptance suite: run the real `throughline` binary.

Everything here talks to the binary the way a user does: the CLI as a subprocess and the
collector over real HTTP on 127.0.0.1. The fixtures that use these live in conftest.py.
"""


from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "throughline"

HEALTH_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- binary


def _binary_path() -> Path:
    return Path(os.environ.get("THROUGHLINE_BIN") or DEFAULT_BIN)


def require_binary() -> str:
    path = _binary_path()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"throughline binary not found or not executable at {path}: "
            "run `cargo build --release` from the repo root, or set THROUGHLINE_BIN",
            pytrace=False,
        )
    return str(path)


def run_cli(bin_path: str, *args: str, timeout: float = CLI_TIMEOUT_S, check: bool = True, input: str | None = None):
    """Runs `throughline ARGS`, returns the CompletedProcess (text mode).

    With check=True a non-zero exit fails the test with the command, stdout and stderr.
    """
    cmd = [bin_path, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`{' '.join(cmd)}` did not finish within {timeout}s; stderr: {e.stderr!r}", pytrace=False)
    if check and proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` exited {proc.returncode}\nstdout: {proc.stdout[-4000:]}\nstderr: {proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


def create_project(bin_path: str, data_dir: Path, name: str) -> dict:
    """`throughline projects create NAME --data DIR`, parsed."""
    proc = run_cli(bin_path, "projects", "create", name, "--data", str(data_dir))
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"`projects create` stdout is not JSON: {proc.stdout!r}", pytrace=False)
    for key in ("name", "write_key", "api_key"):
        assert isinstance(info.get(key), str) and info[key], f"`projects create` output lacks {key!r}: {info}"
    return info


def export_events(bin_path: str, data_dir: Path, project: str, out: Path | None = None) -> list[dict]:
    """`throughline export --format jsonl --out FILE`, parsed line by line (server must be stopped)."""
    out = out or data_dir.parent / f"export-{project}-{time.monotonic_ns()}.jsonl"
    run_cli(bin_path, "export", "--data", str(data_dir), "--project", project, "--format", "jsonl", "--out", str(out))
    return parse_jsonl(out.read_text(encoding="utf-8"))


def parse_jsonl(text: str) -> list[dict]:
    events = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as e:
            pytest.fail(f"export line {n} is not JSON ({e}): {line[:300]!r}", pytrace=False)
    return events


def by_message_id(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for ev in events:
        out.setdefault(ev.get("messageId"), []).append(ev)
    return out


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `throughline serve` process on a data dir; restartable on the same port."""

    def __init__(
        self,
        bin_path: str,
        data_dir: Path,
        log_dir: Path,
        extra_args: tuple[str, ...] = (),
        config: Path | None = None,
    ):
        self.bin = bin_path
        self.data_dir = data_dir
        self.config = config
        self.log_dir = log_dir
        # More `serve` flags (e.g. the ClickHouse backend's); tests may replace them
        # between starts.
        self.extra_args = tuple(extra_args)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def start(self, timeout: float = HEALTH_TIMEOUT_S) -> "Server":
        """Spawns `throughline serve` and waits until /health answers 200."""
        self.spawn()
        self.wait_healthy(timeout)
        return self

    def spawn(self) -> None:
        """Spawns `throughline serve` without waiting for it (e.g. to kill it mid-recovery)."""
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self.starts += 1
        self.log_path = self.log_dir / f"serve-{self.port}-{self.starts}.log"
        log = open(self.log_path, "wb")
        args = [self.bin, "serve", "--data", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}", *self.extra_args]
        if self.config is not None:
            args += ["--config", str(self.config)]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"`throughline serve` exited {self.proc.returncode} before answering /health\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                r = requests.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    return
                last = f"status {r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.05)
        pytest.fail(f"/health did not answer 200 within {timeout}s (last: {last})\n{self.log_tail()}", pytrace=False)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.running():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit code. Fails (after kill -9) if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                pytest.fail(f"server did not exit within {timeout}s of SIGTERM\n{self.log_tail()}", pytrace=False)
        return self.proc.returncode

    # -- HTTP helpers ------------------------------------------------------------

    def post(self, path: str, body, write_key: str | None = None, *, gz: bool = False, raw: bytes | None = None,
             headers: dict | None = None, timeout: float = 30) -> requests.Response:
        """POSTs JSON (or raw bytes) to the collector, Basic auth with write_key when given."""
        data = raw if raw is not None else json.dumps(body).encode("utf-8")
        hdrs = {"Content-Type": "application/json"}
        if write_key is not None:
            hdrs["Authorization"] = basic_auth(write_key)
        if gz:
            data = gzip.compress(data)
            hdrs["Content-Encoding"] = "gzip"
        hdrs.update(headers or {})
        return requests.post(self.url + path, data=data, headers=hdrs, timeout=timeout)


def basic_auth(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


# --------------------------------------------------------------------------- misc


def parse_ts(text: str) -> datetime:
    """ISO-8601 / RFC 3339 -> aware datetime (naive taken as UTC)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def json_error(resp: requests.Response) -> dict:
    """The JSON error body of a failed request, failing clearly when it is not JSON."""
    try:
        body = resp.json()
    except ValueError:
        pytest.fail(f"error response {resp.status_code} is not JSON: {resp.text[:500]!r}", pytrace=False)
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    assert isinstance(body.get("error"), str) and body["error"].strip(), f"error body lacks an 'error' message: {body}"
    return body


def first_difference(a, b, path="$"):
    """Path and values of the first place two JSON values differ, or None when equal.

    JSON has one number type, so 1 and 1.0 are equal; true is not 1.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                return f"{path}.{k}: missing on the left, right has {b[k]!r}"
            if k not in b:
                return f"{path}.{k}: missing on the right, left has {a[k]!r}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: list length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, bool) or isinstance(b, bool):
        return None if (type(a) is type(b) and a == b) else f"{path}: {a!r} != {b!r}"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return None if a == b else f"{path}: {a!r} != {b!r}"
    return None if (type(a) is type(b) and a == b) else f"{path}: {a!r} != {b!r}"
