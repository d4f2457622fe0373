"""The official Segment and RudderStack Python SDKs, pointed at throughline, just work.

Each SDK sends 1,000+ messages of all six types with nested and unicode properties and
deliberately retried duplicates; after a graceful stop the export must hold every
messageId exactly once with the properties that were sent (deep equality) and with
identify stitching applied (anonymous devices identified to a user share its person_id).
"""

from __future__ import annotations

import copy
import json
import random
import threading
import uuid

import pytest
import segment.analytics as analytics
import rudderstack.analytics as rudder_analytics
from segment.analytics.consumer import BATCH_SIZE_LIMIT, MAX_MSG_SIZE

from harness import by_message_id, create_project, export_events, first_difference

FLUSH_TIMEOUT_S = 90.0
SDK_RETRIES = 3

# Strings that break naive encoders: emoji (astral plane, ZWJ sequences, flags, skin tones),
# CJK, right-to-left scripts, combining marks, escapes and a NUL.
UNICODE_SAMPLES = [
    "héllo wörld",
    "🎧🛒💳✅",
    "👩🏽‍💻 and 🏳️‍🌈 and 🇯🇵",
    "ヘッドホンを購入",
    "耳机 · 订阅服务",
    "헤드폰 구매",
    "مرحبا بالعالم",
    "שלום עולם",
    "mixed עברית and English ١٢٣",
    "e\u0301 combining, Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034d",
    'quotes " and \\ backslash / slash',
    "tab\tnewline\ncr\r",
    "nul\u0000byte",
    "\u200b zero-width \ufeff bom",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
]

NUMBERS = [0, -1, 42, 2**53 + 1, -(2**63), 2**64 - 1, 0.1, 19.99, -2.5e300, 1e-7, 3.141592653589793, 1.0]


def rich_properties(rng: random.Random, i: int) -> dict:
    """Nested JSON with unicode keys and values; JSON-native types only."""

    def leaf():
        kind = rng.randrange(5)
        if kind == 0:
            return rng.choice(UNICODE_SAMPLES)
        if kind == 1:
            return rng.choice(NUMBERS)
        if kind == 2:
            return rng.choice([True, False, None])
        if kind == 3:
            return []
        return {}

    def tree(depth):
        if depth == 0:
            return leaf()
        if rng.random() < 0.5:
            return [tree(depth - 1) for _ in range(rng.randrange(1, 4))]
        return {rng.choice(["a", "ключ", "键", "مفتاح", "🔑", "k"]) + str(j): tree(depth - 1) for j in range(rng.randrange(1, 4))}

    return {
        "i": i,
        "price": 19.99,
        "currency": "EUR",
        "title": rng.choice(UNICODE_SAMPLES),
        "標題": "ヘッドホン",
        "😀": "emoji key",
        "": "empty key",
        "tags": ["a", "ب", "丙", "🎵"],
        "matrix": [[1, 2], [3, [4, [5, {"deep": "שלום"}]]]],
        "cart": {"items": [{"sku": f"sku-{i}", "qty": 1 + i % 3, "opts": {"color": "黒", "size": None}}], "total": 19.99 * (1 + i % 3)},
        "random": tree(rng.randrange(1, 6)),
        "flags": {"new": i % 2 == 0, "vip": False, "none": None},
        "numbers": rng.sample(NUMBERS, 4),
    }


class Ledger:
    """What was sent, keyed by messageId, to compare the export against."""

    def __init__(self):
        self.sent: dict[str, dict] = {}
        self.send_count = 0

    def record(self, message_id: str, **expected):
        self.send_count += 1
        if message_id in self.sent:
            assert self.sent[message_id] == expected, "a retried duplicate must carry the same payload"
        self.sent[message_id] = copy.deepcopy(expected)


def drive_sdk(sdk_call, rng: random.Random, ledger: Ledger, prefix: str, users: int = 50, traits_in_context: bool = False):
    """Sends a realistic stream through one SDK's call surface; returns the stitching plan.

    sdk_call(method, **kwargs) forwards to the SDK. Every user has one or two anonymous
    devices that browse before and/or after identify; some devices are never identified.
    Some messages are sent twice with the same message_id (an SDK-style retry).
    """
    plan = {"user_devices": {}, "lone_devices": []}
    to_retry: list[tuple[str, dict, dict]] = []

    def send(method, expected, **kwargs):
        mid = f"{prefix}-{uuid.uuid4()}"
        kwargs["message_id"] = mid
        sdk_call(method, **copy.deepcopy(kwargs))
        ledger.record(mid, **expected)
        if rng.random() < 0.08:
            to_retry.append((method, expected, kwargs))
            if rng.random() < 0.5:  # immediately: likely the same upload batch
                sdk_call(method, **copy.deepcopy(kwargs))
                ledger.record(mid, **expected)
        return mid

    def browse(uid, aid, n):
        for k in range(n):
            props = rich_properties(rng, k)
            ctx = {"page": {"path": f"/p/{k}", "title": rng.choice(UNICODE_SAMPLES)}, "locale": "ar-EG", "custom": {"ΔΘ": [1, {"x": "中"}]}}
            kind = k % 3
            ids = {"user_id": uid, "anonymous_id": aid}
            exp_ids = {"userId": uid, "anonymousId": aid}
            if kind == 0:
                event = rng.choice(["Order Completed", "ヘッドホンを購入 🎧", "تمت الإضافة إلى السلة", "Product Viewed"])
                send("track", dict(type="track", event=event, properties=props, context=ctx, **exp_ids), event=event, properties=props, context=ctx, **ids)
            elif kind == 1:
                name = rng.choice(["Home", "الصفحة الرئيسية", "結帳 Checkout", "Pricing 💸"])
                send("page", dict(type="page", name=name, properties=props, context=ctx, **exp_ids), name=name, properties=props, context=ctx, **ids)
            else:
                name = rng.choice(["Main", "מסך ראשי", "設定"])
                send("screen", dict(type="screen", name=name, properties=props, context=ctx, **exp_ids), name=name, properties=props, context=ctx, **ids)

    for u in range(users):
        uid = f"{prefix}-user-{u}" if u % 4 else f"{prefix}-usér-用户-{u}-🙂"
        devices = [f"{prefix}-anon-{u}-{d}" for d in range(1 + u % 2)]
        plan["user_devices"][uid] = devices
        for d, aid in enumerate(devices):
            identify_first = (u + d) % 3 == 0
            if not identify_first:
                browse(None, aid, 8)  # pre-signup touches, stitched retroactively
            traits = {"email": f"{uid}@example.com", "name": rng.choice(UNICODE_SAMPLES), "plan": {"tier": "pro", "seats": [1, 2, 3]}}
            exp = dict(type="identify", userId=uid, anonymousId=aid)
            exp["context_traits" if traits_in_context else "traits"] = traits
            send("identify", exp, user_id=uid, anonymous_id=aid, traits=traits)
            browse(None, aid, 3)  # the device after identify, still anonymous-only calls
        browse(uid, None, 8)  # server-side calls by userId only
        gtraits = {"name": f"Acme {u} 株式会社", "employees": 10 * u, "industry": {"code": "ب-1"}}
        send("group", dict(type="group", userId=uid, anonymousId=None, groupId=f"{prefix}-org-{u % 5}", traits=gtraits), user_id=uid, group_id=f"{prefix}-org-{u % 5}", traits=gtraits)

    for n in range(10):
        aid = f"{prefix}-lone-{n}"
        plan["lone_devices"].append(aid)
        browse(None, aid, 4)

    for n in range(10):
        send("alias", dict(type="alias", userId=f"{prefix}-aliased-{n}", anonymousId=None, previousId=f"{prefix}-legacy-{n}"), previous_id=f"{prefix}-legacy-{n}", user_id=f"{prefix}-aliased-{n}")

    # Later retries of earlier messages: almost surely in a different upload batch.
    for method, expected, kwargs in to_retry:
        sdk_call(method, **copy.deepcopy(kwargs))
        ledger.record(kwargs["message_id"], **expected)
    return plan


def bounded_flush(flush, what: str):
    """SDK flush() blocks on queue.join() with no timeout; bound it."""
    done = threading.Event()
    errors = []

    def run():
        try:
            flush()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(FLUSH_TIMEOUT_S), f"{what}.flush() did not finish within {FLUSH_TIMEOUT_S}s: the server is not acknowledging batches"
    assert not errors, f"{what}.flush() raised {errors[0]!r}"


def check_export(events: list[dict], ledger: Ledger, plan: dict, sdk: str):
    grouped = by_message_id(events)
    assert len(ledger.sent) >= 1000, f"test bug: only {len(ledger.sent)} distinct messages"
    assert ledger.send_count > len(ledger.sent), "test bug: no duplicates were sent"

    missing = [m for m in ledger.sent if m not in grouped]
    assert not missing, f"{len(missing)} of {len(ledger.sent)} acknowledged {sdk} messages missing from export, e.g. {missing[:3]}"
    twice = {m: len(v) for m, v in grouped.items() if len(v) > 1}
    assert not twice, f"{len(twice)} messageIds exported more than once (retried duplicates stored again), e.g. {list(twice.items())[:3]}"
    unknown = [m for m in grouped if m not in ledger.sent]
    assert not unknown, f"export holds messageIds that were never sent: {unknown[:3]}"

    for mid, exp in ledger.sent.items():
        ev = grouped[mid][0]
        assert ev.get("type") == exp["type"], f"{mid}: type {ev.get('type')!r} != {exp['type']!r}"
        assert ev.get("userId") == exp.get("userId"), f"{mid} ({exp['type']}): userId {ev.get('userId')!r} != {exp.get('userId')!r}"
        if "anonymousId" in exp and exp["anonymousId"] is not None:
            assert ev.get("anonymousId") == exp["anonymousId"], f"{mid}: anonymousId {ev.get('anonymousId')!r} != {exp['anonymousId']!r}"
        if exp["type"] == "track":
            assert ev.get("event") == exp["event"], f"{mid}: event {ev.get('event')!r} != {exp['event']!r}"
        if exp["type"] in ("page", "screen"):
            assert ev.get("name") == exp["name"], f"{mid}: name {ev.get('name')!r} != {exp['name']!r}"
        for key in ("previousId", "groupId"):
            if key in exp:
                assert ev.get(key) == exp[key], f"{mid} ({exp['type']}): {key} {ev.get(key)!r} != {exp[key]!r}"
        if "properties" in exp:
            diff = first_difference(ev.get("properties"), exp["properties"])
            assert diff is None, f"{mid} ({exp['type']}): exported properties differ from sent: {diff}"
        if "traits" in exp:
            diff = first_difference(ev.get("traits"), exp["traits"])
            assert diff is None, f"{mid} ({exp['type']}): exported traits differ from sent: {diff}"
        if "context_traits" in exp:
            diff = first_difference((ev.get("context") or {}).get("traits"), exp["context_traits"])
            assert diff is None, f"{mid} ({exp['type']}): exported context.traits differ from sent: {diff}"
        if "context" in exp:
            ctx = ev.get("context") or {}
            for key, value in exp["context"].items():
                diff = first_difference(ctx.get(key), value, f"$.context.{key}")
                assert diff is None, f"{mid}: exported context differs from sent: {diff}"
        for field in ("timestamp", "receivedAt"):
            assert isinstance(ev.get(field), str) and ev[field], f"{mid}: export lacks {field}: {ev}"
        assert isinstance(ev.get("person_id"), (str, int)) and str(ev["person_id"]), f"{mid}: export lacks person_id: {ev}"

    check_stitching(events, plan)


def check_stitching(events: list[dict], plan: dict):
    persons_of_id: dict[str, set] = {}
    for ev in events:
        for key in ("userId", "anonymousId"):
            if ev.get(key) and ev.get("type") != "alias":
                persons_of_id.setdefault(ev[key], set()).add(ev["person_id"])

    person_of_user = {}
    for uid, devices in plan["user_devices"].items():
        ids = [uid, *devices]
        persons = set().union(*(persons_of_id.get(i, set()) for i in ids))
        assert len(persons) == 1, (
            f"user {uid!r} and its identified devices {devices} span {len(persons)} person_ids {sorted(map(str, persons))}: "
            + "; ".join(f"{i}: {sorted(map(str, persons_of_id.get(i, set())))}" for i in ids)
        )
        person_of_user[uid] = persons.pop()

    users_of_person: dict = {}
    for uid, pid in person_of_user.items():
        users_of_person.setdefault(pid, []).append(uid)
    merged = {p: us for p, us in users_of_person.items() if len(us) > 1}
    assert not merged, f"distinct users share one person_id: {list(merged.items())[:3]}"

    for aid in plan["lone_devices"]:
        persons = persons_of_id.get(aid, set())
        assert len(persons) == 1, f"never-identified device {aid!r} has person_ids {persons}"
        assert persons.isdisjoint(person_of_user.values()), f"never-identified device {aid!r} was stitched to a user"


# --------------------------------------------------------------------------- tests


@pytest.fixture
def segment_module():
    """The module-level segment.analytics API, reset before and after the test."""
    analytics.default_client = None
    yield analytics
    if analytics.default_client is not None:
        try:
            analytics.default_client.join()
        except Exception:
            pass
    analytics.default_client = None
    analytics.on_error = None


@pytest.fixture
def rudder_module():
    rudder_analytics.default_client = None
    yield rudder_analytics
    if rudder_analytics.default_client is not None:
        try:
            rudder_analytics.default_client.join()
        except Exception:
            pass
    rudder_analytics.default_client = None
    rudder_analytics.on_error = None


def test_segment_sdk_all_types_unicode_duplicates_and_stitching(throughline_bin, data_dir, make_server, segment_module):
    project = create_project(throughline_bin, data_dir, "shop")
    server = make_server(data_dir).start()
    errors = []

    segment_module.write_key = project["write_key"]
    segment_module.host = server.url
    segment_module.on_error = lambda e, batch: errors.append((repr(e), len(batch)))
    segment_module.max_retries = SDK_RETRIES
    segment_module.timeout = 15
    segment_module.sync_mode = False
    segment_module.gzip = False

    rng = random.Random(20240601)
    ledger = Ledger()
    plan = drive_sdk(lambda m, **kw: getattr(segment_module, m)(**kw), rng, ledger, "seg")
    bounded_flush(segment_module.flush, "segment.analytics")
    assert not errors, f"analytics-python on_error was called {len(errors)} times, first: {errors[0]}"

    assert server.stop() == 0, f"server did not exit 0 on SIGTERM\n{server.log_tail()}"
    check_export(export_events(throughline_bin, data_dir, "shop"), ledger, plan, "analytics-python")


def test_rudder_sdk_all_types_unicode_duplicates_and_stitching(throughline_bin, data_dir, make_server, rudder_module):
    project = create_project(throughline_bin, data_dir, "shop")
    server = make_server(data_dir).start()
    errors = []

    rudder_module.write_key = project["write_key"]
    rudder_module.dataPlaneUrl = server.url
    rudder_module.on_error = lambda e, batch: errors.append((repr(e), len(batch)))
    rudder_module.max_retries = SDK_RETRIES
    rudder_module.sync_mode = False
    rudder_module.gzip = True  # the SDK's default: Content-Encoding: gzip

    rng = random.Random(20240602)
    ledger = Ledger()
    # rudder-sdk-python puts identify traits in context.traits, not at the top level.
    plan = drive_sdk(lambda m, **kw: getattr(rudder_module, m)(**kw), rng, ledger, "rud", traits_in_context=True)
    bounded_flush(rudder_module.flush, "rudderstack.analytics")
    assert not errors, f"rudder-sdk-python on_error was called {len(errors)} times, first: {errors[0]}"

    assert server.stop() == 0, f"server did not exit 0 on SIGTERM\n{server.log_tail()}"
    check_export(export_events(throughline_bin, data_dir, "shop"), ledger, plan, "rudder-sdk-python")


def test_projects_are_isolated(throughline_bin, data_dir, make_server):
    """Events sent with project A's key never appear in project B's export, and vice versa.

    The same messageId sent to both projects is stored once in each: dedup is per project.
    """
    a = create_project(throughline_bin, data_dir, "brand-a")
    b = create_project(throughline_bin, data_dir, "brand-b")
    assert a["write_key"] != b["write_key"]
    server = make_server(data_dir).start()
    errors = []
    on_error = lambda e, batch: errors.append((repr(e), len(batch)))  # noqa: E731
    client_a = analytics.Client(a["write_key"], host=server.url, on_error=on_error, max_retries=SDK_RETRIES)
    client_b = rudder_analytics.Client(b["write_key"], host=server.url, on_error=on_error, max_retries=SDK_RETRIES)

    shared_ids = [f"shared-{uuid.uuid4()}" for _ in range(20)]
    ids_a, ids_b = set(shared_ids), set(shared_ids)
    for n in range(150):
        mid = f"a-{uuid.uuid4()}"
        ids_a.add(mid)
        client_a.track(user_id=f"a-user-{n % 7}", event="A Event", properties={"brand": "A", "n": n}, message_id=mid)
        mid = f"b-{uuid.uuid4()}"
        ids_b.add(mid)
        client_b.page(anonymous_id=f"b-anon-{n % 5}", name="B Page", properties={"brand": "B", "n": n}, message_id=mid)
    for mid in shared_ids:
        client_a.track(user_id="a-user-0", event="Shared", properties={"brand": "A"}, message_id=mid)
        client_b.track(user_id="b-user-0", event="Shared", properties={"brand": "B"}, message_id=mid)
    bounded_flush(client_a.flush, "segment Client(A)")
    bounded_flush(client_b.flush, "rudder Client(B)")
    client_a.join()
    client_b.join()
    assert not errors, f"SDK on_error was called: {errors[:3]}"

    assert server.stop() == 0
    exp_a = export_events(throughline_bin, data_dir, "brand-a")
    exp_b = export_events(throughline_bin, data_dir, "brand-b")
    got_a, got_b = by_message_id(exp_a), by_message_id(exp_b)

    leaked_into_b = [m for m in got_b if m.startswith("a-")]
    leaked_into_a = [m for m in got_a if m.startswith("b-")]
    assert not leaked_into_b, f"project B's export holds {len(leaked_into_b)} of project A's messages, e.g. {leaked_into_b[:3]}"
    assert not leaked_into_a, f"project A's export holds {len(leaked_into_a)} of project B's messages, e.g. {leaked_into_a[:3]}"
    assert set(got_a) == ids_a, f"project A export: missing {len(ids_a - set(got_a))}, extra {len(set(got_a) - ids_a)}"
    assert set(got_b) == ids_b, f"project B export: missing {len(ids_b - set(got_b))}, extra {len(set(got_b) - ids_b)}"
    for mid in shared_ids:
        assert len(got_a[mid]) == 1 and len(got_b[mid]) == 1, f"shared messageId {mid} not stored exactly once per project"
        assert got_a[mid][0]["properties"] == {"brand": "A"}, f"project A's copy of {mid} is {got_a[mid][0]['properties']}"
        assert got_b[mid][0]["properties"] == {"brand": "B"}, f"project B's copy of {mid} is {got_b[mid][0]['properties']}"
    assert all(ev["properties"].get("brand") == "A" for ev in exp_a)
    assert all(ev["properties"].get("brand") == "B" for ev in exp_b)


def test_segment_sdk_largest_batches_are_accepted(throughline_bin, data_dir, make_server):
    """analytics-python's fullest batches (~507 KB: 475,000 bytes plus one ~32 KB message) are accepted.

    The SDK's own limits (32 KB per message, 475,000 bytes per batch before the last
    message) must fit inside the server's (32 KB, 500 KB), or the SDK drops data on 413.
    """
    key = create_project(throughline_bin, data_dir, "big")["write_key"]
    server = make_server(data_dir).start()
    errors = []
    client = analytics.Client(key, host=server.url, on_error=lambda e, b: errors.append((repr(e), len(b))),
                              max_retries=SDK_RETRIES, upload_size=100, upload_interval=2.0)
    # The worst case: 15 messages just under the batch limit, then one just under 32 KB.
    small = (BATCH_SIZE_LIMIT - 100) // 15
    targets = ([small] * 15 + [MAX_MSG_SIZE - 50]) * 3
    dry = analytics.Client("measure-only", send=False)
    sent = {}
    for n, target in enumerate(targets):
        mid = f"big-{n:03d}"
        base = {"n": n, "w": "ヘッドホン 🎧", "pad": ""}
        size0 = len(json.dumps(dry.track(user_id=f"u-{n % 3}", event="Big", properties=base, message_id=mid)[1]).encode())
        props = {**base, "pad": "x" * (target - size0)}
        ok, msg = client.track(user_id=f"u-{n % 3}", event="Big", properties=props, message_id=mid)
        assert ok
        size = len(json.dumps(msg).encode())
        assert size == target, f"test bug: message is {size} bytes, meant {target}"
        sent[mid] = props
    bounded_flush(client.flush, "segment Client")
    client.join()
    assert not errors, f"analytics-python on_error was called for its own maximal batches: {errors[:3]}"
    assert server.stop() == 0
    got = by_message_id(export_events(throughline_bin, data_dir, "big"))
    assert set(got) == set(sent), f"missing {sorted(set(sent) - set(got))}"
    for mid, props in sent.items():
        assert got[mid][0]["properties"] == props, f"{mid}: properties differ"
