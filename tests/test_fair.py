"""Users served in turn (livedoc/fair.py): real gunicorn, real `rq worker`s, real Redis, real PDFs.

A small document of one user is read while another user's long one converts; one user's sharper
pages neither hold every worker nor delay another user's conversion; the queue notice counts the
documents ahead, not their page-range jobs, and goes once the document starts; a stock `rq worker`
serves users in turn too.
"""

from __future__ import annotations

import threading
import time

import pytest
from rq import Worker

from livedoc import fleet, jobs, progress
from livedoc.redis_client import connect
from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import wait_for
from tests.support.streams import upload, wait_document

pytestmark = pytest.mark.live

CHUNK = 30
TEXTS = [f"Page {n} of a long book\n" + "words on a line " * 30 for n in range(1, 301)]
LONG = make_pdf(TEXTS)  # 10 page ranges of CHUNK; seconds a range at 300 dpi
SHORTER = make_pdf(TEXTS[:150])  # 5 page ranges
SLOW = {"CHUNK_PAGES": str(CHUNK), "RENDER_PROCESSES": "1", "RENDER_DPI": "300"}
SMALL = make_pdf(["one", "two", "three"])
NO_WORKER = "No conversion worker is running. The document will be converted when one starts."


class Watch(threading.Thread):
    """Samples the progress of some jobs every 20 ms (the source the streams read), with the time."""

    def __init__(self, conn, job_ids: list[str]):
        super().__init__(daemon=True)
        self.conn, self.job_ids = conn, list(job_ids)
        self.samples: list[tuple[float, dict[str, dict | None]]] = []
        self.stop = threading.Event()
        self.start()

    def add(self, job_id: str) -> None:
        self.job_ids.append(job_id)

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(
                (time.monotonic(), {j: progress.read(self.conn, j) for j in list(self.job_ids)})
            )
            time.sleep(0.02)

    def first(self, job_id: str, test) -> dict[str, dict | None]:
        """Every job's progress in the first sample where `test` holds for `job_id`'s."""
        for _, row in self.samples:
            if row.get(job_id) and test(row[job_id]):
                return row
        raise AssertionError(f"{job_id}: never seen")


def _workers(stack, conn, count: int) -> None:
    for _ in range(count):
        stack.start_worker()
    wait_for(lambda: len(Worker.all(connection=conn)) >= count, 30, what=f"{count} workers registered")


def _complete(session, base: str, doc_id: str, timeout: float = 180) -> dict:
    return wait_document(
        session, base, doc_id, lambda b: b["progress"]["state"] in ("complete", "failed"), timeout
    )


def _status(conn, job_id: str) -> str | None:
    raw = conn.hget(f"rq:job:{job_id}", "status")
    return raw.decode() if raw else None


def _helpers(doc_id: str, count: int) -> list[str]:
    # workers/chunks.py names them so (jobs.chunk_job_id); spelled out, as tests/test_chunks.py does.
    return [f"{jobs.job_id(doc_id, 1)}-a1-c{i}" for i in range(1, count)]


def test_a_small_document_is_read_while_another_users_long_one_converts(make_stack):
    stack = make_stack(**SLOW)
    conn = connect(stack.redis_url)
    _workers(stack, conn, 2)
    author, reader = api(stack.user("author")), api(stack.user("reader"))
    base = stack.base_url
    long_doc = upload(author, base, LONG, "book.pdf")
    long_job = jobs.job_id(long_doc["id"], 1)
    watch = Watch(conn, [long_job])
    # The long document holds both workers: its document job and a page-range helper.
    helper = wait_for(
        lambda: next((h for h in _helpers(long_doc["id"], 10) if _status(conn, h) == "started"), None),
        60,
        0.02,
        what="a page-range job of the long document running",
    )
    small = upload(reader, base, SMALL, "note.pdf")
    small_job = jobs.job_id(small["id"], 1)
    watch.add(small_job)
    _complete(reader, base, small["id"], 60)
    final = _complete(author, base, long_doc["id"])
    watch.stop.set()
    watch.join(5)

    seen = watch.first(small_job, lambda p: p["ready"] >= 1)
    assert seen[long_job]["state"] == "running", seen[long_job]
    # Before: the small one waited behind the long one's page ranges until every range was taken,
    # when most of the book was rendered.
    assert seen[long_job]["ready"] < 150, seen[long_job]
    assert final["progress"]["state"] == "complete"
    assert [p["n"] for p in final["pages"]] == list(range(1, 301))
    # The helper gave its worker back by finishing normally, not by being killed.
    assert _status(conn, helper) == "finished"
    conn.connection_pool.disconnect()


def test_with_one_worker_the_queue_notice_counts_documents_and_page_ranges_never_run_idle(make_stack):
    stack = make_stack(**SLOW)
    conn = connect(stack.redis_url)
    _workers(stack, conn, 1)
    base = stack.base_url
    author, second, third = (api(stack.user(n)) for n in ("long-author", "second", "third"))
    long_doc = upload(author, base, SHORTER, "book.pdf")
    helpers = _helpers(long_doc["id"], 5)
    # The document job split the book into five ranges (it renders the first; four jobs for the rest).
    wait_for(lambda: all(_status(conn, h) for h in helpers), 60, 0.05, what="page-range jobs")
    one = upload(second, base, SMALL, "one.pdf")
    two = upload(third, base, SMALL, "two.pdf")
    # Places among documents: the page ranges of the running book are not documents waiting.
    body = second.get(f"{base}/api/documents/{one['id']}", timeout=10).json()
    assert body["progress"]["state"] == "queued" and body["queue"] == {"position": 1, "workers": 1}
    body = third.get(f"{base}/api/documents/{two['id']}", timeout=10).json()
    assert body["queue"] == {"position": 2, "workers": 1}
    page = third.get(base + two["viewer_url"], timeout=10).text
    assert 'data-workers="1" data-position="2">Place in the queue: 2 — 1 document ahead of yours' in page
    assert "1 worker converting." in page

    # Once the first small one starts its notice goes, and the second moves up.
    wait_document(second, base, one["id"], lambda b: b["progress"]["state"] != "queued", 120)
    body = second.get(f"{base}/api/documents/{one['id']}", timeout=10).json()
    assert "queue" not in body
    assert (
        '<p id="queue-notice" class="notice" hidden' in second.get(base + one["viewer_url"], timeout=10).text
    )
    moved = wait_document(
        third,
        base,
        two["id"],
        lambda b: b["progress"]["state"] != "queued" or b["queue"]["position"] == 1,
        60,
    )
    assert moved["progress"]["state"] != "queued" or moved["queue"] == {"position": 1, "workers": 1}

    finals = [_complete(s, base, d["id"]) for s, d in ((author, long_doc), (second, one), (third, two))]
    assert [f["progress"]["state"] for f in finals] == ["complete"] * 3
    # No deadlock with one worker: the document job rendered every range itself, and the page-range
    # jobs, with nothing left to claim, were canceled instead of taking the worker in turn.
    assert [_status(conn, h) for h in helpers] == ["canceled"] * 4
    assert fleet.queue_length(conn, "livedoc") == 0
    conn.connection_pool.disconnect()


def _hd_jobs(conn, doc_id: str, pages: int) -> list[str]:
    return [jobs.hd_job_id(doc_id, 1, n) for n in range(1, pages + 1)]


def _ask_sharper(session, base: str, urls: list[str]) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=lambda u=u: session.get(base + u, timeout=30), daemon=True) for u in urls
    ]
    for t in threads:
        t.start()
    return threads


def test_sharper_pages_of_one_user_do_not_delay_another_users_conversion(make_stack):
    stack = make_stack(HD_DPI="400", HD_PER_USER="2", HD_WAIT="2")
    conn = connect(stack.redis_url)
    _workers(stack, conn, 2)
    base = stack.base_url
    zoomer, other = api(stack.user("zoomer")), api(stack.user("other"))
    book = upload(zoomer, base, make_pdf([f"Zoom page {n}\n" + "fine print " * 40 for n in range(1, 25)]))
    doc = _complete(zoomer, base, book["id"])
    hd_jobs = _hd_jobs(conn, book["id"], 24)
    threads = _ask_sharper(zoomer, base, [p["hd"] for p in doc["pages"]])
    wait_for(lambda: all(_status(conn, j) for j in hd_jobs), 30, 0.05, what="24 sharper pages asked for")
    small = upload(other, base, make_pdf(["a", "b"]), "two.pdf")
    _complete(other, base, small["id"], 60)
    done = sum(_status(conn, j) == "finished" for j in hd_jobs)
    # Before: all 24 went to the front of the queue, and the small document waited for every one.
    assert done < 16, done
    wait_for(
        lambda: all(_status(conn, j) == "finished" for j in hd_jobs), 120, 0.2, what="every sharper page"
    )
    for t in threads:
        t.join(30)
    stored = stack.dir / "storage" / book["id"] / "a1"
    assert all((stored / f"hd-{n:04d}.jpg").is_file() for n in range(1, 25))
    conn.connection_pool.disconnect()


def test_one_user_has_at_most_hd_per_user_sharper_pages_admitted(make_stack):
    stack = make_stack(HD_DPI="400", HD_PER_USER="1", HD_WAIT="2")
    conn = connect(stack.redis_url)
    _workers(stack, conn, 1)
    base = stack.base_url
    zoomer = api(stack.user("capped"))
    book = upload(zoomer, base, make_pdf([f"Page {n}" for n in range(1, 9)]))
    doc = _complete(zoomer, base, book["id"])
    hd_jobs = _hd_jobs(conn, book["id"], 8)
    admitted: list[int] = []
    stop = threading.Event()

    stored = stack.dir / "storage" / book["id"] / "a1"

    def sample() -> None:
        # Admitted and not rendered yet (a job stores its page, then ends while the next is admitted).
        while not stop.is_set():
            admitted.append(
                sum(
                    _status(conn, j) in ("queued", "started") and not (stored / f"hd-{n:04d}.jpg").exists()
                    for n, j in enumerate(hd_jobs, start=1)
                )
            )
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = _ask_sharper(zoomer, base, [p["hd"] for p in doc["pages"]])
    wait_for(lambda: all(_status(conn, j) == "finished" for j in hd_jobs), 90, 0.1, what="every sharper page")
    stop.set()
    sampler.join(5)
    for t in threads:
        t.join(30)
    # Before: every one was queued at once.
    assert max(admitted) == 1, max(admitted)
    conn.connection_pool.disconnect()


def test_a_stock_rq_worker_serves_users_in_turn(paused_stack):
    base = paused_stack.base_url
    first, second = api(paused_stack.user("first")), api(paused_stack.user("second"))
    # No worker yet: one user's three documents, then another user's one.
    docs = [upload(first, base, SMALL, f"f{i}.pdf") for i in range(3)] + [
        upload(second, base, SMALL, "s.pdf")
    ]
    places = [(s, d) for s, d in zip([first] * 3 + [second], docs, strict=True)]
    assert [s.get(f"{base}/api/documents/{d['id']}", timeout=10).json()["queue"] for s, d in places] == [
        {"position": p, "workers": 0} for p in (1, 3, 4, 2)
    ]
    conn = connect(paused_stack.redis_url)
    paused_stack.start_stock_worker()
    finals = [_complete(s, base, d["id"], 60) for s, d in places]
    assert [f["progress"]["state"] for f in finals] == ["complete"] * 4
    started = {}
    for d in docs:
        job = jobs.queue(conn, "livedoc").fetch_job(jobs.job_id(d["id"], 1))
        started[d["id"]] = job.started_at
    order = sorted(started, key=started.get)
    # The second user's document went second, not behind the first user's three.
    assert order == [docs[0]["id"], docs[3]["id"], docs[1]["id"], docs[2]["id"]]
    conn.connection_pool.disconnect()


@pytest.mark.browser
def test_the_viewers_queue_notice_follows_the_place_and_goes_when_the_conversion_starts(
    make_stack, open_context, console
):
    from playwright.sync_api import expect

    from tests.support.browser import login

    stack = make_stack(RENDER_DPI="300", RENDER_PROCESSES="1", CHUNK_PAGES="0")
    token = stack.user("waiter")
    session = api(token)
    first = upload(session, stack.base_url, SHORTER, "first.pdf")  # seconds of work for one worker
    second = upload(session, stack.base_url, SMALL, "second.pdf")
    page = open_context(stack, "waiter").new_page()
    login(page, "waiter")
    page.goto(f"/documents/{second['id']}")
    page.wait_for_function("() => !!(window.livedoc && window.livedoc.page)")
    notice = page.locator("#queue-notice")
    expect(notice).to_have_text(NO_WORKER)
    stack.start_worker()
    # The page asks again while the document waits: a worker came, and the first document is running.
    expect(notice).to_have_text("Next in the queue — 1 worker converting.", timeout=30_000)
    wait_document(session, stack.base_url, first["id"], lambda b: b["progress"]["state"] == "running", 30)
    expect(notice).to_be_hidden(timeout=120_000)  # this one started
    page.wait_for_function("() => window.livedoc.state().state === 'complete'", timeout=60_000)
    expect(notice).to_be_hidden()
    console.assert_clean()


def test_workers_that_come_up_after_uploads_each_take_a_waiting_document(make_stack):
    # Turns are given as jobs end: two documents of two users uploaded while no worker ran, then two
    # workers start. The second must not wait for the first document's end (the web's periodic
    # admission is off here, so only the workers can give the turn).
    stack = make_stack(RECOVERY_INTERVAL="0", CHUNK_PAGES="0", RENDER_PROCESSES="1", RENDER_DPI="300")
    conn = connect(stack.redis_url)
    try:
        bodies = [upload(api(stack.user(f"early{i}")), stack.base_url, SHORTER) for i in range(2)]
        job_ids = [jobs.job_id(b["id"], 1) for b in bodies]
        _workers(stack, conn, 2)

        def states():
            now = [(progress.read(conn, j) or {}).get("state") for j in job_ids]
            return now if all(s in ("running", "complete") for s in now) else None

        both = wait_for(states, 90, 0.05, what="both documents started")
        assert both.count("running") == 2, f"one started only after the other ended: {both}"
    finally:
        conn.connection_pool.disconnect()
