"""One document over every worker: page-range jobs on two real `rq worker`s, merged progress, faults."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from redis import Redis
from rq import Worker
from rq.job import Job
from rq.registry import StartedJobRegistry

from livedoc import jobs, progress
from livedoc.redis_client import connect
from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import wait_for
from tests.support.procs import work_horses

pytestmark = pytest.mark.live

CHUNK = 20
PAGES = 3 * CHUNK
WORDS = [f"numbat{n}x" for n in range(1, PAGES + 1)]
PDF = make_pdf([f"Page {n} says {WORDS[n - 1]}" for n in range(1, PAGES + 1)])


class Events:
    """Every progress event published for one job, collected by a thread from before the upload."""

    def __init__(self, conn: Redis):
        self.pubsub = conn.pubsub()
        self.pubsub.psubscribe(progress.CHANNEL_PATTERN)
        assert self.pubsub.get_message(timeout=5)["type"] == "psubscribe"
        self.by_job: dict[str, list[dict]] = {}
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            message = self.pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                job_id = progress.job_id_from_channel(message["channel"])
                self.by_job.setdefault(job_id, []).append(json.loads(message["data"]))

    def until_terminal(self, job_id: str, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.by_job.get(job_id, [])
            if got and progress.is_terminal(got[-1]):
                # A window in which nothing may happen, so a fixed wait: anything published after
                # the end would be a defect.
                time.sleep(0.5)
                self.stop = True
                self.thread.join(5)
                return list(self.by_job[job_id])
            time.sleep(0.1)
        raise AssertionError(f"no terminal event for {job_id}: {self.by_job.get(job_id, [])[-3:]}")


def _assert_contract(events: list[dict], pages: int) -> None:
    assert [e["seq"] for e in events] == list(range(2, 2 + len(events))), "seq must go up by one"
    assert [e["percent"] for e in events] == sorted(e["percent"] for e in events)
    assert [e["ready"] for e in events] == sorted(e["ready"] for e in events)
    assert sum(progress.is_terminal(e) for e in events) == 1
    final = events[-1]
    assert final["state"] == "complete" and final["ready"] == final["pages"] == pages
    assert {e["attempt"] for e in events} == {1}
    for e in events:
        assert 0 <= e["ready"] <= e["pages"] or e["stage"] in ("validating", "queued")


def _start_workers(stack, count: int, conn: Redis) -> None:
    for _ in range(count):
        stack.start_worker()
    wait_for(lambda: len(Worker.all(connection=conn)) >= count, 30, what=f"{count} workers registered")
    assert len(Worker.all(connection=conn)) == count


def _upload(session, base: str) -> dict:
    resp = session.post(
        f"{base}/api/documents", files={"file": ("big.pdf", PDF, "application/pdf")}, timeout=10
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


def _doc_job(conn: Redis, doc_id: str) -> str:
    return jobs.job_id(doc_id, 1)


def _assert_every_page_in_order(session, base: str, doc_id: str) -> None:
    body = session.get(f"{base}/api/documents/{doc_id}", timeout=10).json()
    assert [p["n"] for p in body["pages"]] == list(range(1, PAGES + 1))
    for n in (1, CHUNK, CHUNK + 1, 2 * CHUNK + 1, PAGES):
        page = body["pages"][n - 1]
        text = session.get(base + page["text"], timeout=10)
        other = WORDS[n - 2] if n > 1 else WORDS[1]
        assert text.status_code == 200 and WORDS[n - 1] in text.text and other not in text.text


@pytest.fixture
def stack_conn(make_stack):
    def make(**settings: str):
        stack = make_stack(**{"CHUNK_PAGES": str(CHUNK), "RENDER_PROCESSES": "1", **settings})
        conn = connect(stack.redis_url)
        return stack, conn

    return make


def test_a_plan_removed_at_the_end_takes_no_more_claims(redis_conn):
    from workers.chunks import Plan

    plan = Plan(redis_conn, "doc-claims-1", 1)
    redis_conn.hset(plan.table, mapping={"pages": 600, "chunk": 200})
    assert plan.claim(1, "worker-a", 30) and not plan.claim(1, "worker-b", 30)
    plan.done(1)
    assert not plan.claim(1, "worker-b", 30)  # done
    redis_conn.delete(*plan.all_keys(3))  # the document job ended: its plan is gone
    # A chunk job that read the plan a moment before now claims a chunk: nothing, and no lease left.
    assert not plan.claim(2, "worker-b", 30)
    assert redis_conn.keys("livedoc:chunks:doc-claims-1*") == []


def test_a_long_document_is_shared_by_two_workers(stack_conn):
    stack, conn = stack_conn()
    _start_workers(stack, 2, conn)
    session = api(stack.user("chunky"))
    events = Events(conn)
    body = _upload(session, stack.base_url)
    job_id = _doc_job(conn, body["id"])
    published = events.until_terminal(job_id, timeout=120)
    _assert_contract(published, PAGES)
    # Every stored page was merged once: no chunk was rendered twice.
    assert len([e for e in published if e["message"].startswith("Rendering:")]) == PAGES - 1
    _assert_every_page_in_order(session, stack.base_url, body["id"])
    doc_worker = Job.fetch(job_id, connection=conn, serializer=jobs.SERIALIZER).worker_name
    chunk_workers = {
        Job.fetch(f"{job_id}-a1-c{i}", connection=conn, serializer=jobs.SERIALIZER).worker_name
        for i in (1, 2)
    }
    assert chunk_workers - {doc_worker}, "the second worker took no chunk"
    assert not conn.keys("livedoc:chunks:*"), "the chunk plan outlived the conversion"


def test_pages_from_a_pool_are_announced_at_most_every_progress_interval(stack_conn):
    # Render processes on a host finish pages faster than anyone watches: with an interval longer
    # than the whole conversion, each chunk announces its first page and what it held back at its
    # end, and the pages themselves are all recorded.
    stack, conn = stack_conn(RENDER_PROCESSES="2", PROGRESS_INTERVAL="100000")
    _start_workers(stack, 1, conn)
    session = api(stack.user("quiet"))
    events = Events(conn)
    body = _upload(session, stack.base_url)
    published = events.until_terminal(_doc_job(conn, body["id"]), timeout=120)
    _assert_contract(published, PAGES)
    rendering = [e for e in published if e["message"].startswith("Rendering:")]
    assert 3 <= len(rendering) <= 6, [e["ready"] for e in rendering]  # 3 chunks, 1-2 events each
    _assert_every_page_in_order(session, stack.base_url, body["id"])


def _worker_running_a_chunk(stack, conn: Redis, job_id: str, timeout: float = 60):
    def running():
        for worker in Worker.all(connection=conn):
            current = worker.get_current_job_id()
            if current and current.startswith(f"{job_id}-a1-c"):
                return next(p for p in stack.workers if p.popen.pid == worker.pid), current
        return None

    return wait_for(running, timeout, 0.05, what="a worker running a chunk")


@pytest.mark.timeout(300)  # the killed chunk is taken over only after its lease runs out
def test_a_chunk_whose_worker_is_killed_is_taken_over(stack_conn):
    stack, conn = stack_conn(RENDER_DPI="250", CHUNK_LEASE="3")
    _start_workers(stack, 2, conn)
    session = api(stack.user("killer"))
    events = Events(conn)
    body = _upload(session, stack.base_url)
    job_id = _doc_job(conn, body["id"])
    proc, chunk_job = _worker_running_a_chunk(stack, conn, job_id)
    # Mid-chunk: some pages of its range are stored (chunk c<i> renders pages i*CHUNK+1 to (i+1)*CHUNK).
    index = int(chunk_job.rsplit("-c", 1)[1])
    stored = stack.dir / "storage" / body["id"] / "a1"
    wait_for(
        lambda: any(
            (stored / f"page-{n:04d}.jpg").exists() for n in range(index * CHUNK + 1, (index + 1) * CHUNK + 1)
        ),
        60,
        0.05,
        what=f"a page of chunk {index} stored",
    )
    for horse in work_horses(proc.popen.pid):
        os.killpg(horse, signal.SIGKILL)
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(5)
    published = events.until_terminal(job_id, timeout=180)
    _assert_contract(published, PAGES)
    merged = len([e for e in published if e["message"].startswith("Rendering:")]) + 1
    # Only the killed chunk's pages can have been stored twice; finished chunks were not redone.
    assert PAGES <= merged <= PAGES + CHUNK, merged
    _assert_every_page_in_order(session, stack.base_url, body["id"])


def test_deleting_a_long_document_stops_every_chunk(stack_conn):
    stack, conn = stack_conn(RENDER_DPI="250")
    _start_workers(stack, 2, conn)
    session = api(stack.user("deleter"))
    body = _upload(session, stack.base_url)
    job_id = _doc_job(conn, body["id"])
    _worker_running_a_chunk(stack, conn, job_id)
    assert session.delete(f"{stack.base_url}/api/documents/{body['id']}", timeout=10).status_code == 204
    registry = StartedJobRegistry(jobs.queue(conn, "livedoc").name, connection=conn)
    wait_for(
        lambda: (
            not registry.get_job_ids()
            and not any(w.get_current_job_id() for w in Worker.all(connection=conn))
        ),
        30,
        what="every chunk stopped",
    )
    # The last horse to stop removes what it stored meanwhile (it waits at most 5 s for the others).
    wait_for(
        lambda: not (stack.dir / "storage" / body["id"]).exists(),
        10,
        what="no file of the deleted document left",
    )
    assert session.get(f"{stack.base_url}/api/documents/{body['id']}", timeout=10).status_code == 404
