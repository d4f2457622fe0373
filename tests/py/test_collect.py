"""What the collector stores, seen through `export`: fields, dedup counts, clock-skew.

Plain `requests` against the Segment HTTP API, so each field the spec names can be set
exactly; the SDK tests cover the same path with real client libraries.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from harness import by_message_id, create_project, export_events, parse_ts


def test_each_type_is_exported_as_a_segment_message(throughline_bin, data_dir, make_server):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    ctx = {"ip": "203.0.113.9", "locale": "he-IL", "campaign": {"source": "newsletter", "name": "קיץ"}}
    sent = {
        "t1": ("track", {"userId": "u-1", "anonymousId": "a-1", "event": "Order Completed 🎧", "properties": {"total": 99.5, "items": [{"sku": "h-1"}]}, "context": ctx}),
        "i1": ("identify", {"userId": "u-1", "anonymousId": "a-1", "traits": {"email": "u1@example.com", "name": "Ада"}, "context": ctx}),
        "p1": ("page", {"anonymousId": "a-1", "name": "Pricing", "properties": {"path": "/pricing", "title": "価格"}, "context": ctx}),
        "s1": ("screen", {"userId": "u-1", "name": "Checkout", "properties": {"step": 2}}),
        "g1": ("group", {"userId": "u-1", "groupId": "org-7", "traits": {"name": "Acme", "employees": 40}}),
        "al1": ("alias", {"userId": "u-1", "previousId": "legacy-9"}),
    }
    for mid, (kind, msg) in sent.items():
        r = server.post(f"/v1/{kind}", {**msg, "messageId": mid}, key)
        assert r.status_code == 200, f"{kind}: {r.status_code} {r.text[:300]}"
        assert r.json().get("success") is True
    server.stop()

    got = by_message_id(export_events(throughline_bin, data_dir, "p"))
    assert set(got) == set(sent), f"export ids {sorted(got)} != sent {sorted(sent)}"
    for mid, (kind, msg) in sent.items():
        ev = got[mid][0]
        assert ev["type"] == kind, ev
        for f in ("userId", "anonymousId", "previousId", "groupId", "event", "name"):
            if f in msg:
                assert ev.get(f) == msg[f], f"{kind} {mid}: {f} {ev.get(f)!r} != {msg[f]!r}"
        for f in ("properties", "traits"):
            if f in msg:
                assert ev.get(f) == msg[f], f"{kind} {mid}: {f} {ev.get(f)!r} != {msg[f]!r}"
        for k, v in msg.get("context", {}).items():
            assert ev["context"].get(k) == v, f"{kind} {mid}: context.{k} {ev['context'].get(k)!r} != {v!r}"
        for f in ("messageId", "type", "timestamp", "receivedAt", "properties", "context", "traits", "person_id"):
            assert f in ev, f"export line lacks {f!r}: {ev}"


def test_duplicates_are_counted_and_stored_once(throughline_bin, data_dir, make_server):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    batch = [{"type": "track", "messageId": f"d-{i}", "userId": "u", "event": "E", "properties": {"i": i}} for i in range(40)]

    first = server.post("/v1/batch", {"batch": batch}, key).json()
    assert first.get("accepted") == 40 and first.get("duplicates") == 0, first
    again = server.post("/v1/batch", {"batch": batch}, key).json()
    assert again.get("success") is True and again.get("accepted") == 0 and again.get("duplicates") == 40, (
        f"a retried batch must be acknowledged as 40 duplicates: {again}"
    )
    within = [{"type": "page", "messageId": "same", "anonymousId": "a", "name": "P"}] * 3
    reply = server.post("/v1/batch", {"batch": within}, key).json()
    assert reply.get("accepted") == 1 and reply.get("duplicates") == 2, f"one messageId three times in a batch: {reply}"
    for _ in range(3):
        r = server.post("/v1/track", {"messageId": "single-retry", "userId": "u", "event": "Once"}, key)
        assert r.status_code == 200 and r.json().get("success") is True, r.text
    server.stop()

    got = by_message_id(export_events(throughline_bin, data_dir, "p"))
    assert sorted(got) == sorted([f"d-{i}" for i in range(40)] + ["same", "single-retry"])
    twice = {m: len(v) for m, v in got.items() if len(v) != 1}
    assert not twice, f"stored more than once: {twice}"


def test_missing_message_id_is_assigned(throughline_bin, data_dir, make_server):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    assert server.post("/v1/track", {"userId": "u", "event": "No Id 1"}, key).status_code == 200
    assert server.post("/v1/track", {"userId": "u", "event": "No Id 2"}, key).status_code == 200
    server.stop()
    events = export_events(throughline_bin, data_dir, "p")
    assert sorted(e.get("event") for e in events) == ["No Id 1", "No Id 2"], events
    ids = [e.get("messageId") for e in events]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == 2, f"server must assign distinct messageIds: {ids}"


def _ms(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_timestamp_is_corrected_for_client_clock_skew(throughline_bin, data_dir, make_server):
    """timestamp = receivedAt - (sentAt - originalTimestamp) when sentAt is given."""
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    device_clock = datetime(2021, 6, 1, 8, 0, 0, tzinfo=timezone.utc)  # a phone whose clock is years off
    original = device_clock
    sent_at = device_clock + timedelta(seconds=42, milliseconds=250)
    given = datetime(2024, 2, 29, 23, 59, 58, 123000, tzinfo=timezone.utc)

    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    msgs = [
        ("/v1/track", {"messageId": "skew-single", "userId": "u", "event": "E", "originalTimestamp": _ms(original), "sentAt": _ms(sent_at)}),
        ("/v1/batch", {"batch": [{"type": "track", "messageId": "skew-batch", "userId": "u", "event": "E", "originalTimestamp": _ms(original)}],
                       "sentAt": _ms(sent_at)}),
        ("/v1/track", {"messageId": "no-sent-at", "userId": "u", "event": "E", "timestamp": _ms(given)}),
    ]
    for path, body in msgs:
        r = server.post(path, body, key)
        assert r.status_code == 200, r.text
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    server.stop()

    got = by_message_id(export_events(throughline_bin, data_dir, "p"))
    skew = sent_at - original
    for mid in ("skew-single", "skew-batch"):
        ev = got[mid][0]
        received = parse_ts(ev["receivedAt"])
        assert before <= received <= after, f"{mid}: receivedAt {ev['receivedAt']} is not the server's clock at receipt"
        assert parse_ts(ev["timestamp"]) == received - skew, (
            f"{mid}: timestamp {ev['timestamp']} != receivedAt {ev['receivedAt']} - (sentAt - originalTimestamp = {skew})"
        )
        assert parse_ts(ev["originalTimestamp"]) == original, f"{mid}: originalTimestamp not kept as sent: {ev.get('originalTimestamp')}"
        assert parse_ts(ev["sentAt"]) == sent_at, f"{mid}: sentAt not kept as sent: {ev.get('sentAt')}"
    ev = got["no-sent-at"][0]
    assert parse_ts(ev["timestamp"]) == given, f"without sentAt the message's timestamp is kept: {ev['timestamp']} != {_ms(given)}"
    assert before <= parse_ts(ev["receivedAt"]) <= after


def test_assigned_message_ids_stay_unique_across_restarts(throughline_bin, data_dir, make_server):
    """Messages without a messageId are never mistaken for duplicates of earlier ones."""
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    events = []
    for life, stop in enumerate(["sigterm", "kill9", "sigterm"]):
        for i in range(3):
            name = f"life-{life}-{i}"
            r = server.post("/v1/track", {"userId": "u", "event": name}, key)
            assert r.status_code == 200 and r.json().get("duplicates", 0) == 0, f"{name}: {r.text}"
            events.append(name)
        batch = [{"type": "track", "userId": "u", "event": f"life-{life}-batch-{i}"} for i in range(3)]
        reply = server.post("/v1/batch", {"batch": batch}, key).json()
        assert reply.get("accepted") == 3, f"life {life}: messages without messageId counted as duplicates: {reply}"
        events += [m["event"] for m in batch]
        if stop == "sigterm":
            server.stop()
        else:
            server.kill9()
        if life < 2:
            server.start()
    exported = export_events(throughline_bin, data_dir, "p")
    assert sorted(e.get("event") for e in exported) == sorted(events)
    ids = [e["messageId"] for e in exported]
    assert len(set(ids)) == len(ids), f"assigned messageIds repeat across restarts: {sorted(ids)}"


def test_stitching_survives_restarts_both_ways(throughline_bin, data_dir, make_server):
    """Touches before identify (retroactive) and after it join the person, across restarts."""
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()

    def send(path, body):
        r = server.post(path, body, key)
        assert r.status_code == 200, r.text

    for i in range(3):
        send("/v1/page", {"anonymousId": "phone-1", "name": f"Landing {i}", "messageId": f"pre-{i}"})
        send("/v1/page", {"anonymousId": "never-identified", "name": "Landing", "messageId": f"lone-{i}"})
    send("/v1/identify", {"userId": "ann", "anonymousId": "laptop-1", "traits": {"email": "ann@example.com"}, "messageId": "id-laptop"})
    server.stop()
    server.start()
    send("/v1/identify", {"userId": "ann", "anonymousId": "phone-1", "messageId": "id-phone"})
    server.kill9()
    server.start()
    for i in range(3):
        send("/v1/track", {"anonymousId": "laptop-1", "event": "Product Viewed", "messageId": f"post-{i}"})
        send("/v1/track", {"userId": "ann", "event": "Order Completed", "messageId": f"ann-{i}"})
        send("/v1/track", {"userId": "bob", "event": "Order Completed", "messageId": f"bob-{i}"})
    server.stop()

    got = {e["messageId"]: e for e in export_events(throughline_bin, data_dir, "p")}
    ann = {m: got[m]["person_id"] for m in got if m.startswith(("pre-", "id-", "post-", "ann-"))}
    assert len(ann) == 11, sorted(got)
    assert len(set(ann.values())) == 1, f"ann's devices and user id span several persons: {ann}"
    ann_person = next(iter(ann.values()))
    lone = {got[f"lone-{i}"]["person_id"] for i in range(3)}
    bob = {got[f"bob-{i}"]["person_id"] for i in range(3)}
    assert len(lone) == 1 and len(bob) == 1, (lone, bob)
    assert len({ann_person, *lone, *bob}) == 3, f"distinct people were merged: ann={ann_person} lone={lone} bob={bob}"
