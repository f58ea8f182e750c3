"""A job whose record vanished from Redis: one rule (livedoc/progress.vanished_endings), one clock in
Redis that the stream hubs and the status readers of every host share, on a real Redis."""

from __future__ import annotations

import io
import json
import time

from livedoc import documents, keys, progress
from livedoc.flags import RealtimeFlags
from livedoc.hub import Connection, StreamHub
from tests.pdfgen import make_pdf


def _missing_since(conn, job_id: str, ago: float) -> None:
    """As if a reader had found the job's record missing `ago` seconds ago (the key's TTL is the clock)."""
    conn.set(keys.MISSING_JOB + job_id, 1, px=int((progress.MISSING_TTL - ago) * 1000))


def _missing_for(conn, job_id: str) -> float:
    return progress.MISSING_TTL - conn.pttl(keys.MISSING_JOB + job_id) / 1000


def _running(seq: int = 7) -> progress.Progress:
    prog = progress.initial(seq, 1)
    prog.update(state="running", stage="rendering", percent=40)
    return prog


def test_no_ending_within_the_grace_and_the_clock_starts_once(redis_conn):
    assert progress.vanished_endings(redis_conn, {"j1": _running()}, grace=45) == {}
    assert 0 <= _missing_for(redis_conn, "j1") < 1
    _missing_since(redis_conn, "j1", 30)
    assert progress.vanished_endings(redis_conn, {"j1": _running()}, grace=45) == {}
    # A second reader (another host) does not restart the clock.
    assert 30 <= _missing_for(redis_conn, "j1") < 31


def test_after_the_grace_the_ending_is_lost_with_a_seq_above_any_write(redis_conn):
    _missing_since(redis_conn, "j1", 50)
    before_ms = int(time.time() * 1000)
    endings = progress.vanished_endings(redis_conn, {"j1": _running(), "j2": _running()}, grace=45)
    assert list(endings) == ["j1"]  # j2's clock starts now
    ending = endings["j1"]
    assert ending["state"] == "failed" and ending["stage"] == "failed"
    assert ending["error"] == {
        "code": "worker_lost",
        "message": "The conversion stopped unexpectedly.",
        "retryable": True,
    }
    assert ending["seq"] >= before_ms and ending["percent"] == 40 and ending["attempt"] == 1


def test_found_again_starts_a_new_grace(redis_conn):
    _missing_since(redis_conn, "j1", 50)
    progress.found_again(redis_conn, "j1")
    assert redis_conn.exists(keys.MISSING_JOB + "j1") == 0
    assert progress.vanished_endings(redis_conn, {"j1": _running()}, grace=45) == {}


def _hub(redis_conn) -> StreamHub:
    flags = RealtimeFlags(enabled=True, mode="sse", push=False, websocket=False)
    return StreamHub(redis_conn, flags, poll_interval=1.0, vanish_grace=45, host_id="test-host")


def test_the_hub_ends_a_vanished_job_on_the_clock_another_host_started(redis_conn):
    hub = _hub(redis_conn)
    conn = Connection(hub, 1, "sse")
    sub = conn.watch("doc-x-1", "x", _running(seq=5))
    hub.tick()
    assert sub.progress["state"] == "running"  # missing, but within the grace
    assert redis_conn.exists(keys.MISSING_JOB + "doc-x-1") == 1
    # Another host found it missing 50 s ago: this hub ends it now, not 45 s after its own sighting.
    # It ends the connection, not the document: the reconnect finds the document queued again.
    _missing_since(redis_conn, "doc-x-1", 50)
    hub.tick()
    assert conn.closed == "vanished"
    assert sub.progress["state"] == "running"


def test_the_hub_forgets_the_clock_when_the_record_is_back(redis_conn):
    hub = _hub(redis_conn)
    conn = Connection(hub, 1, "sse")
    sub = conn.watch("doc-y-1", "y", _running(seq=5))
    hub.tick()
    assert redis_conn.exists(keys.MISSING_JOB + "doc-y-1") == 1
    back = _running(seq=6)
    redis_conn.hset(progress.job_key("doc-y-1"), progress.FIELD, json.dumps(back))
    hub.tick()
    assert sub.progress["seq"] == 6
    assert redis_conn.exists(keys.MISSING_JOB + "doc-y-1") == 0


def test_a_vanished_job_waits_out_the_grace_then_is_queued_again_then_lost(client, users, redis_conn):
    token = users.create()
    auth = {"Authorization": f"Bearer {token}"}
    body = client.post(
        "/api/documents",
        headers=auth,
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(make_pdf(["one"])), "a.pdf")},
    ).get_json()
    job_id = f"doc-{body['id']}-1"
    redis_conn.delete(progress.job_key(job_id))
    status = client.get(body["status_url"], headers=auth).get_json()
    assert status["state"] == "queued" and status["seq"] == 1
    _missing_since(redis_conn, job_id, 46)  # JOB_VANISH_GRACE is 45
    status = client.get(body["status_url"], headers=auth).get_json()
    # Past the grace no worker holds it: queued again from the database as a new attempt, with a seq
    # above any the vanished job reached.
    assert status["state"] == "queued" and status["attempt"] == 2 and status["seq"] > 10**12
    assert redis_conn.exists(progress.job_key(f"doc-{body['id']}-2"))
    # A document whose job keeps vanishing is given up at last, as lost.
    for attempt in range(2, documents.RECOVER_ATTEMPTS + 1):
        job_id = f"doc-{body['id']}-{attempt}"
        redis_conn.delete(progress.job_key(job_id))
        client.get(body["status_url"], headers=auth)
        _missing_since(redis_conn, job_id, 46)
        status = client.get(body["status_url"], headers=auth).get_json()
    assert status["state"] == "failed" and status["error"]["code"] == "worker_lost", status
    assert status["seq"] > 10**12
    # The ending is stored: the next read comes from the database, with the same seq.
    again = client.get(body["status_url"], headers=auth).get_json()
    assert again["state"] == "failed" and again["seq"] == status["seq"]
