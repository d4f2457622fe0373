"""Bad input gets a clear JSON error and never takes good input down with it.

Every validation rule of the Segment HTTP API, on each single-message endpoint and inside
/v1/batch, with the status, the JSON error and its `field`; plus auth, gzip and size
limits. Each test has its own data dir and server.
"""

from __future__ import annotations

import json
import re

import pytest
import requests

from harness import by_message_id, create_project, export_events, json_error

ENDPOINTS = ["track", "identify", "page", "screen", "group", "alias"]


def good(kind: str, mid: str | None = None) -> dict:
    """A valid message of each type, as a single endpoint takes it (no `type` needed)."""
    base = {
        "track": {"userId": "u-1", "event": "Order Completed", "properties": {"total": 10}},
        "identify": {"userId": "u-1", "anonymousId": "a-1", "traits": {"email": "u1@example.com"}},
        "page": {"anonymousId": "a-1", "name": "Home", "properties": {"path": "/"}},
        "screen": {"userId": "u-1", "name": "Main"},
        "group": {"userId": "u-1", "groupId": "g-1", "traits": {"name": "Acme"}},
        "alias": {"userId": "u-1", "previousId": "a-1"},
    }[kind]
    msg = dict(base)
    if mid:
        msg["messageId"] = mid
    return msg


def typed(kind: str, mid: str, **changes) -> dict:
    """A batch entry: a good message with `type`, then `changes` (None deletes a key)."""
    msg = {"type": kind, **good(kind, mid)}
    for k, v in changes.items():
        if v is None:
            msg.pop(k, None)
        else:
            msg[k] = v
    return msg


def without(msg: dict, *keys: str) -> dict:
    return {k: v for k, v in msg.items() if k not in keys}


@pytest.fixture
def served(throughline_bin, data_dir, make_server):
    """(server, write_key) of a fresh project on a running server."""
    project = create_project(throughline_bin, data_dir, "p")
    return make_server(data_dir).start(), project["write_key"]


def assert_field_error(resp: requests.Response, status: int, field: str | None):
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    body = json_error(resp)
    if field is not None:
        assert body.get("field") == field, f"error names field {body['field']!r}, expected {field!r}: {body}"
    return body


# --------------------------------------------------------------------------- single endpoints


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_good_message_is_accepted(served, kind):
    server, key = served
    r = server.post(f"/v1/{kind}", good(kind, f"ok-{kind}"), key)
    assert r.status_code == 200, r.text
    assert r.json().get("success") is True, r.text


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_bad_json_is_400(served, kind):
    server, key = served
    r = server.post(f"/v1/{kind}", None, key, raw=b'{"userId": "u-1", "event": ')
    assert_field_error(r, 400, None)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"a string"', b"null", b"\xff\xfe not utf-8"], ids=["array", "string", "null", "invalid-utf8"])
def test_body_that_is_not_a_json_object_is_400(served, raw):
    server, key = served
    assert_field_error(server.post("/v1/track", None, key, raw=raw), 400, None)


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_no_user_id_and_no_anonymous_id_is_400_on_user_id(served, kind):
    server, key = served
    r = server.post(f"/v1/{kind}", without(good(kind), "userId", "anonymousId"), key)
    assert_field_error(r, 400, "userId")


def test_track_without_event_is_400_on_event(served):
    server, key = served
    assert_field_error(server.post("/v1/track", without(good("track"), "event"), key), 400, "event")
    assert_field_error(server.post("/v1/track", {**good("track"), "event": None}, key), 400, "event")


def test_alias_without_previous_id_is_400_on_previous_id(served):
    server, key = served
    assert_field_error(server.post("/v1/alias", without(good("alias"), "previousId"), key), 400, "previousId")


@pytest.mark.parametrize("kind", ENDPOINTS)
@pytest.mark.parametrize("field", ["timestamp", "originalTimestamp", "sentAt"])
def test_unparseable_timestamp_is_400_naming_the_field(served, kind, field):
    server, key = served
    for bad in ["yesterday", "2024-13-45T99:00:00Z"]:
        r = server.post(f"/v1/{kind}", {**good(kind), field: bad}, key)
        assert_field_error(r, 400, field)


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_message_over_32kb_is_413_stating_the_limit(served, kind):
    server, key = served
    big = {**good(kind), "context": {"blob": "x" * 40_000}}
    body = assert_field_error(server.post(f"/v1/{kind}", big, key), 413, None)
    assert re.search(r"32", body["error"]), f"413 error does not state the 32 KB limit: {body}"
    # Just under the limit is fine.
    ok = {**good(kind), "context": {"blob": "x" * 30_000}}
    r = server.post(f"/v1/{kind}", ok, key)
    assert r.status_code == 200, f"a 30 KB message must be accepted, got {r.status_code}: {r.text[:300]}"


def test_batch_body_over_500kb_is_413_stating_the_limit(served):
    server, key = served
    batch = [typed("track", f"big-{i}", properties={"pad": "y" * 6_000}) for i in range(100)]  # ~620 KB
    body = assert_field_error(server.post("/v1/batch", {"batch": batch}, key), 413, None)
    assert re.search(r"500|512", body["error"]), f"413 error does not state the 500 KB limit: {body}"
    # ~400 KB of the same messages is accepted whole.
    r = server.post("/v1/batch", {"batch": batch[:65]}, key)
    assert r.status_code == 200, r.text[:300]
    assert r.json().get("accepted") == 65, r.text[:300]


def test_gzip_bomb_is_refused_not_inflated(served):
    """A small gzip body that inflates past the 500 KB limit is refused (413), and the server lives."""
    server, key = served
    inflated = b'{"batch": [], "pad": "' + b" " * 50_000_000 + b'"}'
    r = server.post("/v1/batch", None, key, raw=inflated, gz=True)
    assert_field_error(r, 413, None)
    assert requests.get(server.url + "/health", timeout=5).status_code == 200


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("kind", ENDPOINTS + ["batch"])
def test_no_write_key_is_401(served, kind):
    server, _ = served
    body = {"batch": [typed("track", "nokey")]} if kind == "batch" else good(kind)
    assert_field_error(server.post(f"/v1/{kind}", body, None), 401, None)


@pytest.mark.parametrize("where", ["basic", "body"])
@pytest.mark.parametrize("kind", ["track", "batch"])
def test_unknown_write_key_is_401(served, where, kind):
    server, _ = served
    body = {"batch": [typed("track", "badkey")]} if kind == "batch" else good("track")
    if where == "body":
        r = server.post(f"/v1/{kind}", {**body, "writeKey": "not-a-real-key"}, None)
    else:
        r = server.post(f"/v1/{kind}", body, "not-a-real-key")
    assert_field_error(r, 401, None)


def test_write_key_in_body_and_in_basic_auth_both_work(throughline_bin, data_dir, make_server):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    r = server.post("/v1/track", {**good("track", "via-basic")}, key)
    assert r.status_code == 200, r.text
    r = server.post("/v1/track", {**good("track", "via-body"), "writeKey": key}, None)
    assert r.status_code == 200, r.text
    r = server.post("/v1/batch", {"batch": [typed("page", "via-batch-body")], "writeKey": key}, None)
    assert r.status_code == 200, r.text
    server.stop()
    got = by_message_id(export_events(throughline_bin, data_dir, "p"))
    assert {"via-basic", "via-body", "via-batch-body"} <= set(got), sorted(got)


# --------------------------------------------------------------------------- gzip


def test_gzip_bodies_are_accepted_and_stored(throughline_bin, data_dir, make_server):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    r = server.post("/v1/track", {**good("track", "gz-single"), "properties": {"w": "ヘッドホン 🎧"}}, key, gz=True)
    assert r.status_code == 200, r.text
    batch = [typed("track", f"gz-batch-{i}", properties={"i": i, "w": "שלום"}) for i in range(20)]
    r = server.post("/v1/batch", {"batch": batch}, key, gz=True)
    assert r.status_code == 200, r.text
    assert r.json().get("accepted") == 20, r.text
    server.stop()
    got = by_message_id(export_events(throughline_bin, data_dir, "p"))
    assert got["gz-single"][0]["properties"] == {"w": "ヘッドホン 🎧"}
    for i in range(20):
        assert got[f"gz-batch-{i}"][0]["properties"] == {"i": i, "w": "שלום"}


def test_corrupt_gzip_is_400(served):
    server, key = served
    r = server.post("/v1/track", None, key, raw=b"\x1f\x8b\x08\x00garbage-not-deflate", headers={"Content-Encoding": "gzip"})
    assert_field_error(r, 400, None)


# --------------------------------------------------------------------------- batches


BAD_IN_BATCH = [
    # (id, message, field the rejection must name)
    ("no-ids", lambda mid: typed("track", mid, userId=None, anonymousId=None), "userId"),
    ("no-ids-identify", lambda mid: typed("identify", mid, userId=None, anonymousId=None), "userId"),
    ("no-event", lambda mid: typed("track", mid, event=None), "event"),
    ("no-previous-id", lambda mid: typed("alias", mid, previousId=None), "previousId"),
    ("bad-timestamp", lambda mid: typed("page", mid, timestamp="not a time"), "timestamp"),
    ("bad-original-timestamp", lambda mid: typed("screen", mid, originalTimestamp="31/12/2024"), "originalTimestamp"),
    ("over-32kb", lambda mid: typed("track", mid, properties={"blob": "z" * 40_000}), None),
]


def test_batch_rejects_bad_messages_individually_and_stores_the_good(throughline_bin, data_dir, make_server):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()

    batch, bad_at, good_ids = [], {}, []
    kinds = ENDPOINTS
    for n, (name, make, field) in enumerate(BAD_IN_BATCH):
        for j in range(2):  # good messages around every bad one
            mid = f"good-{n}-{j}"
            batch.append(typed(kinds[(n + j) % len(kinds)], mid))
            good_ids.append(mid)
        mid = f"bad-{name}"
        bad_at[len(batch)] = (mid, field, name)
        batch.append(make(mid))
    batch.append(typed("track", "good-last"))
    good_ids.append("good-last")

    r = server.post("/v1/batch", {"batch": batch}, key)
    assert r.status_code == 200, f"a batch with some bad messages must answer 200, got {r.status_code}: {r.text[:500]}"
    reply = r.json()
    assert reply.get("success") is True, reply
    assert reply.get("accepted") == len(good_ids), f"accepted {reply.get('accepted')} of {len(good_ids)} good: {reply}"
    rejected = reply.get("rejected")
    assert isinstance(rejected, list), reply
    by_index = {rej.get("index"): rej for rej in rejected}
    assert set(by_index) == set(bad_at), f"rejected indexes {sorted(by_index, key=str)} != bad indexes {sorted(bad_at)}: {rejected}"
    for index, (mid, field, name) in bad_at.items():
        rej = by_index[index]
        assert rej.get("messageId") == mid, f"{name}: rejection names messageId {rej.get('messageId')!r}, expected {mid!r}"
        assert isinstance(rej.get("error"), str) and rej["error"].strip(), f"{name}: rejection without error text: {rej}"
        if field is not None:
            assert rej.get("field") == field, f"{name}: rejection names field {rej.get('field')!r}, expected {field!r}: {rej}"
        else:
            assert "32" in rej["error"], f"{name}: rejection does not state the 32 KB limit: {rej}"

    server.stop()
    got = by_message_id(export_events(throughline_bin, data_dir, "p"))
    missing = [m for m in good_ids if m not in got]
    assert not missing, f"good messages next to bad ones were not stored: {missing}"
    stored_bad = [mid for mid, _, _ in bad_at.values() if mid in got]
    assert not stored_bad, f"rejected messages were stored anyway: {stored_bad}"
    assert all(len(got[m]) == 1 for m in good_ids)


@pytest.mark.parametrize("body", [{"batch": "nope"}, {"batch": {"type": "track"}}, {"notbatch": []}], ids=["string", "object", "missing"])
def test_batch_without_a_list_is_400(served, body):
    server, key = served
    assert_field_error(server.post("/v1/batch", body, key), 400, None)


def test_batch_of_only_bad_messages_stores_nothing(throughline_bin, data_dir, make_server):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    batch = [make(f"only-bad-{n}") for n, (_, make, _) in enumerate(BAD_IN_BATCH)]
    r = server.post("/v1/batch", {"batch": batch}, key)
    assert r.status_code == 200, r.text[:500]
    reply = r.json()
    assert reply.get("accepted") == 0, reply
    assert sorted(rej["index"] for rej in reply.get("rejected", [])) == list(range(len(batch))), reply
    server.stop()
    assert export_events(throughline_bin, data_dir, "p") == []


def test_server_still_serves_after_bad_input(served):
    server, key = served
    for raw in [b"{", b"\x00" * 100, json.dumps({"batch": [None, 1, "x", []]}).encode()]:
        server.post("/v1/batch", None, key, raw=raw)
    r = server.post("/v1/batch", None, key, raw=json.dumps({"batch": [None, 1, "x", [], typed("track", "after-bad")]}).encode())
    assert r.status_code == 200, f"batch with non-object entries must reject them one by one: {r.status_code} {r.text[:300]}"
    reply = r.json()
    assert reply.get("accepted") == 1, reply
    assert sorted(rej["index"] for rej in reply.get("rejected", [])) == [0, 1, 2, 3], reply
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
