"""Streaming end to end: a real gunicorn gevent server, a real `rq worker`, a real Redis."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from livedoc import flags
from livedoc.redis_client import connect
from tests.live import api, sse_events
from tests.pdfgen import make_pdf
from tests.support.streams import open_stream, poll_until_terminal, upload

pytestmark = pytest.mark.live

BIG_PDF = make_pdf([f"Page {i} of the long test document" for i in range(1, 41)])


def test_sse_streams_ordered_progress_ending_in_complete(live):
    s = api(live.user("sse-reader"))
    body = upload(s, live.base_url, BIG_PDF)
    resp = open_stream(s, live.base_url, body)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Accel-Buffering"] == "no"
    messages = list(sse_events(resp))
    assert messages[0] == {"retry": "500"}
    events = [m for m in messages if "event" in m]
    ids = [int(m["id"]) for m in events]
    assert ids == sorted(set(ids)), "ids strictly increase"
    assert [m["event"] for m in events[:-1]] == ["progress"] * (len(events) - 1)
    assert events[-1]["event"] == "complete"
    datas = [json.loads(m["data"]) for m in events]
    assert [d["seq"] for d in datas] == ids
    percents = [d["percent"] for d in datas]
    assert percents == sorted(percents)
    assert datas[-1]["pages"] == 40 and datas[-1]["percent"] == 100
    rendering = [d for d in datas if d["stage"] == "rendering"]
    assert len(rendering) >= 3, "page-by-page progress reaches the stream"
    assert all(d["pages"] == 40 for d in rendering)
    # The stream ends after the terminal event: the server closed it.
    assert resp.raw.read() == b""


def test_reconnect_with_last_event_id_gets_only_newer_state(paused_stack):
    s = api(paused_stack.user("resumer"))
    base = paused_stack.base_url
    body = upload(s, base)
    resp = open_stream(s, base, body)
    first = [m for m in sse_events(resp, until_terminal=False, limit=2) if "event" in m]
    resp.close()
    assert first[0]["event"] == "progress" and first[0]["id"] == "1"

    paused_stack.start_worker()
    final = poll_until_terminal(s, base, body)
    assert final["state"] == "complete"

    resp = open_stream(s, base, body, last_event_id=1)
    events = [m for m in sse_events(resp) if "event" in m]
    assert [(m["event"], int(m["id"])) for m in events] == [("complete", final["seq"])]

    resp = open_stream(s, base, body, last_event_id=final["seq"])
    assert [m for m in sse_events(resp) if "event" in m] == []  # nothing newer: just retry, then end


def test_pings_then_mode_switch_then_204_and_polling_completes(paused_stack):
    s = api(paused_stack.user("switcher"))
    base = paused_stack.base_url
    body = upload(s, base)
    resp = open_stream(s, base, body)
    seen = []
    conn = connect(paused_stack.redis_url)
    try:
        for m in sse_events(resp, until_terminal=False):
            seen.append(m)
            if m.get("comment") == "ping" and not any(x.get("event") == "mode" for x in seen):
                flags.set_override(conn, mode="poll")  # the operator's rollback, mid-stream
            if m.get("event") == "mode":
                break
        assert seen[0] == {"retry": "500"}
        assert seen[1]["event"] == "progress" and seen[1]["id"] == "1"
        assert {"comment": "ping"} in seen
        assert json.loads(seen[-1]["data"]) == {"mode": "poll"}
        assert resp.raw.read() == b""  # and the stream ended

        off = open_stream(s, base, body)
        assert off.status_code == 204 and off.headers["X-Livedoc-Mode"] == "poll"
        status = s.get(base + body["status_url"] + "?after=1&wait=20", timeout=5)
        assert status.headers["X-Livedoc-Mode"] == "poll"  # wait ignored: answered at once
        paused_stack.start_worker()
        assert poll_until_terminal(s, base, body)["state"] == "complete"
    finally:
        flags.clear_override(conn)
        conn.connection_pool.disconnect()


def test_longpoll_returns_early_on_change_and_after_wait_otherwise(paused_stack):
    s = api(paused_stack.user("longpoller"))
    base = paused_stack.base_url
    body = upload(s, base)

    started = time.monotonic()
    idle = s.get(base + body["status_url"] + "?after=1&wait=1", timeout=10)
    assert 0.9 <= time.monotonic() - started < 5
    assert idle.json()["seq"] == 1 and idle.headers["X-Livedoc-Mode"] == "sse"

    result = {}

    def longpoll():
        t0 = time.monotonic()
        result["body"] = s.get(base + body["status_url"] + "?after=1&wait=25", timeout=40).json()
        result["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=longpoll)
    thread.start()
    time.sleep(1.0)  # a window in which the long-poll must not answer, so a fixed wait
    assert thread.is_alive(), "the long-poll waits while nothing changes"
    paused_stack.start_worker()
    thread.join(30)
    assert result["body"]["seq"] > 1 and result["body"]["document_id"] == body["id"]
    assert result["elapsed"] < 20, "returned on the change, not at the end of the wait"


def test_realtime_off_answers_204_and_polling_still_completes(live, live_conn):
    s = api(live.user("poller"))
    flags.set_override(live_conn, mode="off")
    body = upload(s, live.base_url)
    resp = open_stream(s, live.base_url, body)
    assert resp.status_code == 204
    assert poll_until_terminal(s, live.base_url, body)["state"] == "complete"


def test_streams_check_access(live):
    alice, bob = api(live.user("alice-live")), api(live.user("bob-live"))
    body = upload(alice, live.base_url)
    assert open_stream(bob, live.base_url, body).status_code == 404
    absent = dict(body, events_url=body["events_url"].replace(body["id"], "f" * 32))
    assert open_stream(bob, live.base_url, absent).status_code == 404
    anon = requests.get(live.base_url + body["events_url"], timeout=5)
    assert anon.status_code == 401 and anon.json()["error"]["code"] == "unauthorized"


def test_real_worker_fails_corrupt_pdf_once_without_retry(live, live_conn):
    s = api(live.user("corrupt-live"))
    body = upload(s, live.base_url, b"%PDF-1.7\n garbage that pdfium cannot parse")
    final = poll_until_terminal(s, live.base_url, body)
    assert final["state"] == "failed" and final["attempt"] == 1
    assert final["error"] == {"code": "corrupt", "retryable": False, "message": final["error"]["message"]}
    assert live_conn.hget(f"rq:job:doc-{body['id']}-1", "status") == b"failed"
