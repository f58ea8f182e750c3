"""A dead worker is noticed within 60 s, idle or busy, and a Redis that lost everything hears again
within 30 s which workers are alive and what they convert; with real workers (scripts/worker, its
default settings) on a real Redis.

A worker "dies" the way a lost host does: SIGKILL to the worker, its scheduler and its work horse
(with the horse's render processes), so nothing of it says goodbye.
"""

from __future__ import annotations

import os
import signal
import time

import devredis
import psutil
import pytest

from config import Settings
from livedoc import capabilities, fleet, progress
from livedoc.redis_client import connect
from tests.live import Proc, Stack, api
from tests.pdfgen import make_pdf
from tests.support import wait_for
from tests.support.streams import poll_until_terminal, upload

pytestmark = pytest.mark.live

NOTICE_BOUND = 60  # s: a dead worker's jobs are handed on, and it stops counting as alive
READVERTISE_BOUND = 30  # s: after Redis lost everything, Office is offered again
PAGES = 40  # at 300 dpi on one render process: the first worker is busy for many seconds


def _kill_host(worker: Proc) -> None:
    """SIGKILL a worker as if its host vanished: the worker and its scheduler (its process group),
    then each work horse (a horse leads a group of its own, with its render processes)."""
    pid = worker.popen.pid
    horses = []
    for child in psutil.Process(pid).children():
        try:
            if os.getpgid(child.pid) == child.pid:
                horses.append(child.pid)
        except ProcessLookupError:
            pass
    os.killpg(pid, signal.SIGKILL)
    for horse in horses:
        try:
            os.killpg(horse, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.popen.wait(10)


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own (it is flushed whole), as a URL."""
    port = devredis.free_port()
    proc = devredis.start(port, tmp_path / "redis")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_conversion_hands_its_job_to_another_within_60_s(make_stack):
    stack = make_stack(RENDER_DPI="300", RENDER_PROCESSES="1")
    conn = connect(stack.redis_url)
    s = api(stack.user("orphan"))
    pdf = make_pdf([f"Page {i} of a long document\n" + "text " * 40 for i in range(1, PAGES + 1)])
    doc = upload(s, stack.base_url, pdf, "long.pdf")
    job_id = f"doc-{doc['id']}-1"
    first = stack.start_worker()

    def rendering() -> bool:
        prog = progress.read(conn, job_id)
        return bool(prog) and prog["stage"] == "rendering" and prog["page"] >= 3

    wait_for(rendering, 60, what="the first worker renders page 3")
    doomed = conn.hget(progress.job_key(job_id), "worker_name")
    second = stack.start_worker()
    wait_for(lambda: fleet.workers_alive(conn, "livedoc") == 2, 30, what="the second worker registered")

    killed = time.monotonic()
    _kill_host(first)

    def handed_on() -> bool:
        status, worker = conn.hmget(progress.job_key(job_id), "status", "worker_name")
        return status != b"started" or worker != doomed

    wait_for(handed_on, NOTICE_BOUND + 30, 0.1, what="the dead worker's job handed on")
    noticed = time.monotonic() - killed
    final = poll_until_terminal(s, stack.base_url, doc, timeout=120)
    print(f"busy worker SIGKILLed: its job handed on after {noticed:.1f} s")
    assert noticed <= NOTICE_BOUND, f"the dead worker's job was handed on after {noticed:.1f} s"
    assert final["state"] == "complete" and final["pages"] == PAGES, final
    assert job_id in second.log()
    second.stop()
    conn.connection_pool.disconnect()


@pytest.mark.timeout(180)
def test_an_idle_worker_killed_stops_counting_within_60_s(own_redis, tmp_path):
    stack = Stack(own_redis, tmp_path / "stack")
    conn = connect(own_redis)
    try:
        worker = stack.start_worker()
        wait_for(lambda: fleet.workers_alive(conn, "livedoc") == 1, 30, what="the worker registered")
        time.sleep(2)  # idle: blocked on the queue, between two heartbeats
        killed = time.monotonic()
        _kill_host(worker)
        wait_for(
            lambda: fleet.workers_alive(conn, "livedoc") == 0,
            NOTICE_BOUND + 30,
            0.2,
            what="the dead worker gone",
        )
        gone = time.monotonic() - killed
        print(f"idle worker SIGKILLed: gone from the live-worker count after {gone:.1f} s")
        assert gone <= NOTICE_BOUND, f"the dead worker still counted as alive for {gone:.1f} s"
    finally:
        stack.stop()
        conn.connection_pool.disconnect()


@pytest.mark.timeout(180)
def test_after_redis_loses_everything_workers_and_office_are_back_within_30_s(own_redis, tmp_path):
    from workers import office

    if "office" not in office.local_kinds(Settings.from_env()):
        pytest.skip(f"Office is off on this machine: {office.unavailable(Settings.from_env())}")
    stack = Stack(own_redis, tmp_path / "stack")
    conn = connect(own_redis)
    try:
        stack.start_worker()
        wait_for(
            lambda: fleet.workers_alive(conn, "livedoc") == 1 and capabilities.can_convert(conn, "office"),
            30,
            what="the worker registered and offering Office",
        )
        time.sleep(2)  # idle: blocked on the queue, between two heartbeats
        conn.flushall()
        flushed = time.monotonic()
        assert not capabilities.can_convert(conn, "office")
        wait_for(
            lambda: capabilities.can_convert(conn, "office"),
            READVERTISE_BOUND + 30,
            0.2,
            what="Office offered again",
        )
        office_back = time.monotonic() - flushed
        wait_for(
            lambda: fleet.workers_alive(conn, "livedoc") == 1,
            READVERTISE_BOUND + 30,
            0.2,
            what="the worker counted again",
        )
        counted = time.monotonic() - flushed
        print(
            f"FLUSHALL: Office offered again after {office_back:.1f} s, "
            f"the worker counted again after {counted:.1f} s"
        )
        assert office_back <= READVERTISE_BOUND, f"Office offered again only after {office_back:.1f} s"
        assert counted <= READVERTISE_BOUND, f"the live worker counted again only after {counted:.1f} s"
    finally:
        stack.stop()
        conn.connection_pool.disconnect()
