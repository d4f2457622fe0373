"""An acknowledged event survives `kill -9`, and a retried messageId is stored once.

Client threads post /v1/batch with unique messageIds and, like the SDKs, retry a failed
batch with the SAME messageIds until it is acknowledged. Meanwhile the server is killed
with SIGKILL at random moments and restarted on the same data dir. At the end every
acknowledged messageId must be in the export exactly once and none twice. The second test
runs the same load with tiny in-memory tables, so the server flushes and compacts on its
background threads all the time and the kills land in the middle of both.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid

import requests

from harness import basic_auth, by_message_id, create_project, export_events, first_difference

THREADS = 4
KILLS = 5
KILL_MODES = ["while-serving", "while-recovering", "while-serving", "while-stopping", "while-serving"]
RUN_BEFORE_KILL_S = (0.8, 2.5)
CLIENT_DRAIN_S = 25.0  # after the last restart, how long clients may take to land their in-flight batch
REQUEST_TIMEOUT_S = 10.0


class Client(threading.Thread):
    """Posts batches of 50-100 tracks; retries each until 200; records what was acknowledged."""

    def __init__(self, n: int, url: str, write_key: str, seed: int, stop: threading.Event, hard_deadline: float):
        super().__init__(daemon=True, name=f"crash-client-{n}")
        self.n = n
        self.url = url + "/v1/batch"
        self.auth = basic_auth(write_key)
        self.rng = random.Random(seed)
        self.stop = stop
        self.hard_deadline = hard_deadline
        self.sent: dict[str, dict] = {}  # every messageId ever sent -> properties
        self.acked: list[str] = []
        self.acked_batches: list[list[dict]] = []
        self.failures: list[str] = []  # answers that are wrong whatever the crash timing
        self.attempts = 0
        self.connection_errors = 0
        self.gave_up: list[str] = []

    def make_batch(self) -> list[dict]:
        batch = []
        for _ in range(self.rng.randint(50, 100)):
            mid = f"t{self.n}-{uuid.uuid4()}"
            props = {"thread": self.n, "seq": len(self.sent), "pad": "ж" * self.rng.randint(0, 200), "nested": {"k": [1, "二", None]}}
            self.sent[mid] = props
            batch.append({"type": "track", "messageId": mid, "userId": f"crash-user-{self.n}-{self.rng.randrange(20)}",
                          "event": "Crash Test", "properties": props, "timestamp": "2024-05-01T12:00:00.000Z"})
        return batch

    def post_until_acked(self, batch: list[dict]) -> bool:
        body = {"batch": batch, "sentAt": "2024-05-01T12:00:01.000Z"}
        headers = {"Authorization": self.auth, "Content-Type": "application/json"}
        while time.monotonic() < self.hard_deadline:
            self.attempts += 1
            try:
                r = requests.post(self.url, json=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
            except requests.RequestException:
                self.connection_errors += 1
                time.sleep(0.05)  # the server is down or restarting: retry the same messageIds
                continue
            if r.status_code == 200:
                try:
                    reply = r.json()
                except ValueError:
                    self.failures.append(f"200 with non-JSON body {r.text[:200]!r}")
                    return False
                if reply.get("success") is not True:
                    self.failures.append(f"200 without success: true: {reply}")
                if reply.get("rejected"):
                    self.failures.append(f"valid messages rejected: {reply['rejected'][:3]}")
                got = (reply.get("accepted") or 0) + (reply.get("duplicates") or 0)
                if got != len(batch):
                    self.failures.append(f"accepted+duplicates = {got} for a batch of {len(batch)}: {reply}")
                return True
            if r.status_code >= 500 or r.status_code in (408, 429):
                time.sleep(0.05)  # retryable, as the SDKs treat it
                continue
            self.failures.append(f"valid batch answered {r.status_code}: {r.text[:300]}")
            return False
        return False

    def run(self):
        while not self.stop.is_set():
            batch = self.make_batch()
            if self.post_until_acked(batch):
                self.acked.extend(m["messageId"] for m in batch)
                self.acked_batches.append(batch)
            else:
                self.gave_up.extend(m["messageId"] for m in batch)
                if self.failures:
                    return


# Flush after every batch or two and merge segments as soon as two exist.
SMALL_TABLES_CONFIG = """
[store]
flush_bytes = 65536
frozen_tables_max = 2
compact_segments_min = 2
compact_rows_max = 20000
"""


def test_acknowledged_events_survive_kill9_and_retries_are_stored_once(throughline_bin, data_dir, make_server):
    crash_under_load(throughline_bin, data_dir, make_server, ())


def test_kill9_during_background_flushes_and_compactions_loses_and_duplicates_nothing(
    throughline_bin, data_dir, make_server, tmp_path
):
    config = tmp_path / "small-tables.toml"
    config.write_text(SMALL_TABLES_CONFIG)
    crash_under_load(throughline_bin, data_dir, make_server, ("--config", str(config)), background=True)


def metric_total(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def crash_under_load(throughline_bin, data_dir, make_server, extra_args, background=False):
    seed = int(os.environ.get("THROUGHLINE_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"crash test seed: {seed} (rerun with THROUGHLINE_CRASH_SEED={seed})")
    rng = random.Random(seed)
    project = create_project(throughline_bin, data_dir, "crashy")
    server = make_server(data_dir, extra_args).start()
    background_work = []  # (flushes, compactions) each life did before its kill

    stop = threading.Event()
    hard_deadline = time.monotonic() + 45 + CLIENT_DRAIN_S
    clients = [Client(n, server.url, project["write_key"], seed + n, stop, hard_deadline) for n in range(THREADS)]
    for c in clients:
        c.start()

    acked_per_life, kill9s = [], 0
    try:
        for k in range(KILLS):
            before = sum(len(c.acked) for c in clients)
            time.sleep(rng.uniform(*RUN_BEFORE_KILL_S))  # a random moment to crash at, not an assertion
            mode = KILL_MODES[k % len(KILL_MODES)]
            if background:
                metrics = requests.get(server.url + "/metrics", timeout=REQUEST_TIMEOUT_S).text
                background_work.append((metric_total(metrics, "throughline_flushes_total"),
                                        metric_total(metrics, "throughline_compactions_total")))
            if mode == "while-stopping":  # SIGTERM, then SIGKILL before the graceful stop completes
                server.proc.send_signal(signal.SIGTERM)
                time.sleep(rng.uniform(0, 0.05))
            server.kill9()
            kill9s += 1
            acked_per_life.append(sum(len(c.acked) for c in clients) - before)
            if mode == "while-recovering":  # a second kill while the restart replays its log
                server.spawn()
                time.sleep(rng.uniform(0, 0.3))
                server.kill9()
                kill9s += 1
            server.start()  # same data dir, same port: the clients' retries land here
        time.sleep(1.0)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=max(1.0, hard_deadline - time.monotonic()))

    assert all(not c.is_alive() for c in clients), "client threads did not finish their in-flight batch in time"
    failures = [f"client {c.n}: {f}" for c in clients for f in c.failures]
    assert not failures, "server gave wrong answers to valid batches:\n" + "\n".join(failures[:10])
    gave_up = sum(len(c.gave_up) for c in clients)
    assert gave_up == 0, f"{gave_up} messages were never acknowledged within {CLIENT_DRAIN_S}s after the last restart\n{server.log_tail()}"

    acked = [m for c in clients for m in c.acked]
    sent = {m: p for c in clients for m, p in c.sent.items()}
    print(f"kill9s={kill9s} modes={KILL_MODES} acked={len(acked)} acked_per_life={acked_per_life} attempts={sum(c.attempts for c in clients)} "
          f"connection_errors={sum(c.connection_errors for c in clients)}")
    assert kill9s >= 3
    assert len(acked) >= THREADS * 50, "test did not get traffic through"
    if background:
        print(f"(flushes, compactions) per life before its kill: {background_work}")
        assert sum(1 for f, c in background_work if f > 0 and c > 0) >= 3, (
            f"the kills should land among background flushes and compactions: {background_work}"
        )

    # Retrying batches that were acknowledged before the crashes: all duplicates now.
    replay = [b for c in clients for b in c.acked_batches[:1]]
    for batch in replay:
        r = server.post("/v1/batch", {"batch": batch}, project["write_key"])
        assert r.status_code == 200, f"replayed batch answered {r.status_code}: {r.text[:300]}"
        reply = r.json()
        assert reply.get("duplicates") == len(batch) and reply.get("accepted") == 0, (
            f"a batch acknowledged before {kill9s} kill -9s, replayed after, must count all {len(batch)} as duplicates: {reply}"
        )

    assert server.stop() == 0, f"server did not exit 0 on SIGTERM\n{server.log_tail()}"
    grouped = by_message_id(export_events(throughline_bin, data_dir, "crashy"))

    lost = [m for m in acked if m not in grouped]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages lost across kill -9 (seed {seed}), e.g. {lost[:3]}"
    twice = {m: len(v) for m, v in grouped.items() if len(v) > 1}
    assert not twice, f"{len(twice)} messageIds stored more than once (seed {seed}), e.g. {list(twice.items())[:3]}"
    phantom = [m for m in grouped if m not in sent]
    assert not phantom, f"export holds messageIds never sent: {phantom[:3]}"
    for m, evs in grouped.items():
        diff = first_difference(evs[0].get("properties"), sent[m])
        assert diff is None, f"{m}: properties after crash recovery differ from sent: {diff}"


def test_export_right_after_kill9_sees_acknowledged_events(throughline_bin, data_dir, make_server):
    """The lock of a SIGKILLed server is not left behind, and what it acknowledged is on disk."""
    project = create_project(throughline_bin, data_dir, "k9")
    server = make_server(data_dir).start()
    ids = []
    for n in range(5):
        batch = [{"type": "track", "messageId": f"k9-{n}-{i}", "anonymousId": f"dev-{i}", "event": "E", "properties": {"n": n, "i": i}}
                 for i in range(60)]
        r = server.post("/v1/batch", {"batch": batch}, project["write_key"])
        assert r.status_code == 200, r.text
        ids += [m["messageId"] for m in batch]
    r = server.post("/v1/track", {"messageId": "k9-single", "userId": "u", "event": "Single"}, project["write_key"])
    assert r.status_code == 200, r.text
    ids.append("k9-single")
    server.kill9()

    grouped = by_message_id(export_events(throughline_bin, data_dir, "k9"))
    lost = [m for m in ids if m not in grouped]
    assert not lost, f"{len(lost)} acknowledged messages missing after kill -9: {lost[:5]}"
    assert all(len(grouped[m]) == 1 for m in ids)
