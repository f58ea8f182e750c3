"""Stopping: a worker told to stop (SIGTERM, Ctrl-C) hands its job back and exits at once; another
worker converts the document; the viewer's stream ends `complete`."""
from __future__ import annotations

import json
import signal
import time

import pytest

from livedoc import fleet, progress
from livedoc.redis_client import connect
from tests.live import api, sse_events
from tests.pdfgen import make_pdf

pytestmark = pytest.mark.live

SLOW_PDF = make_pdf([f"Page {i} of a long document\n" + "text " * 40 for i in range(1, 61)])


def _rendering(conn, job_id: str, page: int) -> bool:
    prog = progress.read(conn, job_id)
    return bool(prog) and prog["stage"] == "rendering" and prog["page"] >= page


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_stopped_worker_hands_its_job_to_another_which_finishes_it(make_stack, sig):
    stack = make_stack(RENDER_DPI="300")
    conn = connect(stack.redis_url)
    s = api(stack.user("stopper"))
    doc = s.post(f"{stack.base_url}/api/documents", files={"file": ("slow.pdf", SLOW_PDF, "application/pdf")},
                 timeout=10).json()
    job_id = f"doc-{doc['id']}-1"
    stream = s.get(stack.base_url + doc["events_url"], headers={"Accept": "text/event-stream"}, stream=True,
                   timeout=120)
    first = stack.start_worker()
    deadline = time.monotonic() + 60
    while not _rendering(conn, job_id, 3):
        assert time.monotonic() < deadline, "the first worker never reached page 3"
        time.sleep(0.1)
    second = stack.start_worker()
    deadline = time.monotonic() + 20
    while fleet.workers_alive(conn, "livedoc") != 2:
        assert time.monotonic() < deadline, "the second worker never registered"
        time.sleep(0.1)

    stopped_at = time.monotonic()
    first.send(sig)
    first.popen.wait(10)
    took = time.monotonic() - stopped_at
    assert first.popen.returncode == 0
    assert took < 5, f"the worker took {took:.1f} s to stop"

    events = [json.loads(m["data"]) for m in sse_events(stream) if "data" in m]
    assert events[-1]["state"] == "complete" and events[-1]["pages"] == 60
    requeued = [e for e in events if e["stage"] == "requeued"]
    assert [e["state"] for e in requeued] == ["queued"]
    assert requeued[0]["attempt"] == 1 and events[-1]["attempt"] == 2
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    # Handed back, not failed: no retry was used up, and the second worker did the conversion.
    deadline = time.monotonic() + 10
    while conn.hget(progress.job_key(job_id), "status") != b"finished":  # RQ records it after the job
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert conn.hmget(progress.job_key(job_id), "status", "retries_left") == [
        b"finished", b"3"]
    assert f"handing job {job_id} back to the queue" in first.log()
    assert job_id in second.log()
    second.stop()
    conn.connection_pool.disconnect()
