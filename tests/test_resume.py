"""Resume, never redo: an attempt after a failure keeps every page stored before it.

Real gunicorn (gevent), real `rq worker`s and Redis. A work horse is SIGKILLed mid-conversion (as a
crash or the kernel's OOM killer would): RQ runs the job again, and the new attempt must keep the
pages the killed one stored whole (the same files: not rendered again), render only the rest, and
never let a viewer's `ready` or percent go back. Redis emptied (restarted without persistence) must
lose no document either: a queued one is queued again from the database by the web's sweep with
nobody watching, and a running chunked one ends complete with one terminal event.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from rq import Worker

from livedoc.redis_client import connect
from livedoc.storage import page_names
from tests.live import api
from tests.support import wait_for
from tests.support.procs import work_horses
from tests.support.streams import Viewer, slow_pdf, upload, wait_status

pytestmark = pytest.mark.live

PAGES = 60


def _whole_pages(attempt_dir: Path) -> dict[int, int]:
    """Page number -> inode of its image, for the pages whose four files are all stored."""
    out = {}
    for layer in attempt_dir.glob("layer-*.json"):
        n = int(layer.stem.split("-")[1])
        paths = [attempt_dir / name for name in page_names(n).values()]
        try:
            inode = paths[0].stat().st_ino
        except FileNotFoundError:
            continue
        if all(p.exists() for p in paths):
            out[n] = inode
    return out


def _assert_never_back(viewer: Viewer) -> None:
    readies = [p["ready"] for p in viewer.applied]
    percents = [p["percent"] for p in viewer.applied]
    assert readies == sorted(readies), f"ready went back: {readies}"
    assert percents == sorted(percents), f"percent went back: {percents}"
    terminal = [p for p in viewer.applied if p["state"] in ("complete", "failed")]
    assert len(terminal) == 1 and terminal[0]["state"] == "complete", terminal


@pytest.mark.timeout(300)
@pytest.mark.parametrize("chunk_pages", ["0", "20"], ids=["whole", "chunked"])
def test_a_killed_work_horse_costs_no_stored_page(make_stack, chunk_pages):
    stack = make_stack(
        CHUNK_PAGES=chunk_pages,
        RENDER_DPI="200",
        RENDER_PROCESSES="1",
        JOB_RETRY_INTERVALS="1",
        RATELIMIT_STREAM="6000 per minute",
    )
    workers = [stack.start_worker("--with-scheduler"), stack.start_worker()]
    token = stack.user("resumer")
    s = api(token)
    base = stack.base_url
    body = upload(s, base, slow_pdf(PAGES))
    viewer = Viewer("resume-viewer", token, base, body["events_url"], deadline=240)
    viewer.start()
    wait_status(s, base, body, lambda st: st["state"] == "running" and st["ready"] >= 8, timeout=120)
    conn = connect(stack.redis_url)
    try:
        job_id = f"doc-{body['id']}-1"

        def holder():
            for worker in Worker.all(connection=conn):
                if worker.get_current_job_id() == job_id:
                    return next((p for p in workers if p.popen.pid == worker.pid), None)
            return None

        proc = wait_for(holder, 30, 0.05, what="the worker running the document job")
        before = _whole_pages(stack.dir / "storage" / body["id"] / "a1")
        for horse in work_horses(proc.popen.pid):
            os.killpg(horse, signal.SIGKILL)
        killed = time.monotonic()
        assert len(before) >= 8
        final = wait_status(s, base, body, lambda st: st["state"] in ("complete", "failed"), timeout=240)
        assert final["state"] == "complete" and final["attempt"] >= 2, final
        viewer.join(30)
        _assert_never_back(viewer)
        assert any(p["attempt"] >= 2 for p in viewer.applied)

        out = stack.dir / "storage" / body["id"] / f"a{final['attempt']}"
        manifest = s.get(f"{base}/api/documents/{body['id']}", timeout=10).json()
        assert [p["n"] for p in manifest["pages"]] == list(range(1, PAGES + 1))
        after = _whole_pages(out)
        assert sorted(after) == list(range(1, PAGES + 1))
        # The pages stored whole before the kill are the very same files: none was rendered again.
        redone = sorted(n for n, inode in before.items() if after.get(n) != inode)
        assert not redone, f"pages rendered twice: {redone}"
        left = sorted(p.name for p in (stack.dir / "storage" / body["id"]).iterdir())
        assert left == sorted(["original", out.name]), left
        assert time.monotonic() - killed < 200
    finally:
        conn.connection_pool.disconnect()


@pytest.mark.timeout(240)
def test_a_queued_document_lost_with_redis_is_queued_again_with_nobody_watching(make_stack):
    stack = make_stack(JOB_VANISH_GRACE="3", RECOVERY_INTERVAL="1")
    s = api(stack.user("flushed"))
    base = stack.base_url
    body = upload(s, base, slow_pdf(5))
    conn = connect(stack.redis_url)
    try:
        assert conn.exists(f"rq:job:doc-{body['id']}-1")
        conn.flushdb()  # Redis restarted empty, before any worker took the job
        # Nobody asks about the document: the web's own sweep must find it and queue it again.
        wait_for(
            lambda: conn.exists(f"rq:job:doc-{body['id']}-2"),
            60,
            0.2,
            what="the document queued again from the database",
        )
    finally:
        conn.connection_pool.disconnect()
    stack.start_worker("--with-scheduler")
    final = wait_status(s, base, body, lambda st: st["state"] in ("complete", "failed"), timeout=120)
    assert final["state"] == "complete" and final["ready"] == 5, final


@pytest.mark.timeout(300)
def test_redis_emptied_mid_chunked_conversion_ends_complete_once(make_stack):
    stack = make_stack(
        CHUNK_PAGES="20",
        RENDER_DPI="250",
        JOB_RETRY_INTERVALS="1",
        JOB_VANISH_GRACE="5",
        RECOVERY_INTERVAL="1",
        RATELIMIT_STREAM="6000 per minute",
    )
    stack.start_worker("--with-scheduler")
    stack.start_worker()
    token = stack.user("emptied")
    s = api(token)
    base = stack.base_url
    body = upload(s, base, slow_pdf(120))
    viewer = Viewer("flush-viewer", token, base, body["events_url"], deadline=260)
    viewer.start()
    wait_status(s, base, body, lambda st: st["state"] == "running" and st["ready"] >= 10, timeout=120)
    conn = connect(stack.redis_url)
    try:
        conn.flushdb()
    finally:
        conn.connection_pool.disconnect()
    final = wait_status(s, base, body, lambda st: st["state"] in ("complete", "failed"), timeout=260)
    assert final["state"] == "complete", final
    viewer.join(30)
    _assert_never_back(viewer)
    time.sleep(2)  # nothing may follow: a complete document is never shown failed afterwards
    again = s.get(base + body["status_url"], timeout=10).json()
    assert again["state"] == "complete" and again["seq"] == final["seq"], again


@pytest.mark.timeout(300)
def test_a_document_whose_worker_and_redis_are_both_lost_resumes_from_the_database(make_stack):
    # The worker host dies mid-conversion and Redis restarts empty: nothing will write again, so
    # the web queues the document again from the database, keeping the pages stored whole.
    stack = make_stack(
        CHUNK_PAGES="0",
        RENDER_DPI="200",
        RENDER_PROCESSES="1",
        JOB_VANISH_GRACE="3",
        RECOVERY_INTERVAL="1",
        RATELIMIT_STREAM="6000 per minute",
    )
    worker = stack.start_worker("--with-scheduler")
    token = stack.user("host-lost")
    s = api(token)
    base = stack.base_url
    body = upload(s, base, slow_pdf(PAGES))
    viewer = Viewer("lost-viewer", token, base, body["events_url"], deadline=240)
    viewer.start()
    wait_status(s, base, body, lambda st: st["state"] == "running" and st["ready"] >= 8, timeout=120)
    for horse in work_horses(worker.popen.pid):
        os.killpg(horse, signal.SIGKILL)
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait(10)
    before = _whole_pages(stack.dir / "storage" / body["id"] / "a1")
    assert len(before) >= 8
    conn = connect(stack.redis_url)
    try:
        conn.flushdb()
        wait_for(lambda: conn.exists(f"rq:job:doc-{body['id']}-2"), 60, 0.2, what="queued again")
    finally:
        conn.connection_pool.disconnect()
    stack.start_worker("--with-scheduler")
    final = wait_status(s, base, body, lambda st: st["state"] in ("complete", "failed"), timeout=240)
    assert final["state"] == "complete" and final["attempt"] == 2, final
    viewer.join(30)
    _assert_never_back(viewer)
    after = _whole_pages(stack.dir / "storage" / body["id"] / "a2")
    assert sorted(after) == list(range(1, PAGES + 1))
    redone = sorted(n for n, inode in before.items() if after.get(n) != inode)
    assert not redone, f"pages rendered twice: {redone}"
