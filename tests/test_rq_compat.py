"""RQ as RQ documents it: stock `rq worker` processes run livedoc's jobs, and misconfigured ones
end the document failed with the cause instead of leaving it queued."""

from __future__ import annotations

import pytest

from livedoc import fleet, progress
from livedoc.redis_client import connect
from tests.live import api
from tests.support import TERMINAL, wait_for
from tests.support.streams import upload, wait_document

pytestmark = pytest.mark.live

NO_WORKER = "No conversion worker is running. The document will be converted when one starts."


def wait_terminal(session, base: str, doc_id: str, timeout: float = 60) -> dict:
    return wait_document(
        session, base, doc_id, lambda body: body["progress"]["state"] in TERMINAL, timeout, what="finished"
    )


def wait_workers(conn, n: int, timeout: float = 20) -> None:
    wait_for(lambda: fleet.workers_alive(conn, "livedoc") == n, timeout, what=f"{n} live workers")


def test_queued_documents_show_their_place_and_that_no_worker_runs(paused_stack):
    s = api(paused_stack.user("queuer"))
    base = paused_stack.base_url
    docs = [upload(s, base) for _ in range(3)]
    for place, doc in enumerate(docs, start=1):
        body = s.get(f"{base}/api/documents/{doc['id']}", timeout=10).json()
        assert body["progress"]["state"] == "queued"
        assert body["queue"] == {"position": place, "workers": 0}
    page = s.get(base + docs[0]["viewer_url"], timeout=10).text
    notice = f'<p id="queue-notice" class="notice"\n   data-workers="0" data-position="1">{NO_WORKER}</p>'
    assert notice in page
    admin = api(paused_stack.user("queue-admin", admin=True))
    admin_page = admin.get(f"{base}/admin/", timeout=10).text
    assert '<p id="queue-notice" class="notice">No conversion worker is running.' in admin_page
    assert '<dd id="workers-alive">0</dd>' in admin_page
    assert '<dd id="jobs-queued">3</dd>' in admin_page

    conn = connect(paused_stack.redis_url)
    worker = paused_stack.start_stock_worker()
    try:
        finals = [wait_terminal(s, base, d["id"]) for d in docs]
        wait_workers(conn, 1)
        assert [f["progress"]["state"] for f in finals] == ["complete"] * 3
        assert all("queue" not in f for f in finals)
        admin_page = admin.get(f"{base}/admin/", timeout=10).text
        assert '<dd id="workers-alive">1</dd>' in admin_page and "No conversion worker" not in admin_page
        assert '<dd id="jobs-queued">0</dd>' in admin_page
    finally:
        worker.stop()
        conn.connection_pool.disconnect()
    wait_workers(connect(paused_stack.redis_url), 0)


def test_stock_rq_worker_converts_a_pdf(paused_stack):
    s = api(paused_stack.user("stock"))
    base = paused_stack.base_url
    doc = upload(s, base)
    conn = connect(paused_stack.redis_url)
    # Jobs are in RQ's default serializer: what `rq worker` and the RQ dashboard read.
    assert conn.hget(progress.job_key(f"doc-{doc['id']}-1"), "meta")[:1] == b"\x80"
    paused_stack.start_stock_worker()
    final = wait_terminal(s, base, doc["id"])
    assert final["progress"]["state"] == "complete" and final["progress"]["pages"] == 3
    assert [p["n"] for p in final["pages"]] == [1, 2, 3]
    image = s.get(base + final["pages"][0]["image"], timeout=10)
    assert image.status_code == 200 and image.content[:3] == b"\xff\xd8\xff"
    assert progress.read(conn, f"doc-{doc['id']}-1")["state"] == "complete"
    conn.connection_pool.disconnect()


def test_worker_with_another_serializer_fails_the_document_naming_the_cause(paused_stack):
    s = api(paused_stack.user("json-worker"))
    base = paused_stack.base_url
    doc = upload(s, base)
    worker = paused_stack.start_stock_worker("-S", "json", name="json")
    final = wait_terminal(s, base, doc["id"], timeout=30)
    message = (
        "A conversion worker could not read this job (DeserializationError): it was started with a "
        "serializer other than RQ's default (-S). Start workers with scripts/worker or a plain "
        "`rq worker`."
    )
    assert final["progress"]["state"] == "failed"
    assert final["progress"]["attempt"] == 1
    assert final["progress"]["error"] == {
        "code": "worker_misconfigured",
        "message": message,
        "retryable": True,
    }
    conn = connect(paused_stack.redis_url)
    job_key = progress.job_key(f"doc-{doc['id']}-1")
    # Not retried: RQ holds the job as failed, not scheduled for another round on the same worker.
    assert conn.hmget(job_key, "status", "retries_left") == [b"failed", b"0"]
    page = s.get(base + doc["viewer_url"], timeout=10).text
    escaped = message.replace("'", "&#39;")
    assert f'<p id="error-message">{escaped}</p>' in page
    worker.stop()
    assert "this worker cannot run livedoc's jobs" in worker.log()
    conn.connection_pool.disconnect()


def test_worker_missing_a_package_fails_the_document_naming_the_cause(paused_stack, tmp_path):
    # A worker environment without pypdfium2, as a venv missing one package would be.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pypdfium2.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pypdfium2'\", name='pypdfium2')\n"
    )
    s = api(paused_stack.user("broken-worker"))
    base = paused_stack.base_url
    doc = upload(s, base)
    paused_stack.env["PYTHONPATH"] = str(shadow)
    try:
        paused_stack.start_stock_worker(name="broken")
    finally:
        del paused_stack.env["PYTHONPATH"]
    final = wait_terminal(s, base, doc["id"], timeout=30)
    message = (
        "A conversion worker could not load the conversion code (ModuleNotFoundError: no module "
        "named 'pypdfium2')."
    )
    assert final["progress"]["error"] == {
        "code": "worker_misconfigured",
        "message": message,
        "retryable": True,
    }
    assert final["progress"]["attempt"] == 1


def test_failure_callback_leaves_abandoned_and_failed_jobs_to_rq(redis_conn, worker_env):
    """RQ also calls the callback for jobs whose worker died (AbandonedJobError, with a stack summary
    instead of a traceback) and for jobs that raised in livedoc's code: neither is a load failure."""
    import traceback

    from rq.exceptions import AbandonedJobError
    from rq.job import Job

    from livedoc import jobs
    from workers import unrunnable

    config = {
        "JOB_RETRY_INTERVALS": "1",
        "JOB_RETRIES": 3,
        "QUEUE_NAME": "livedoc",
        "JOB_TIMEOUT": 60,
        "RESULT_TTL": 60,
    }
    job_id = jobs.enqueue_conversion(redis_conn, config, "b" * 32, "pdf", seq=1, attempt=1)
    job = Job.fetch(job_id, connection=redis_conn, serializer=jobs.SERIALIZER)
    before = progress.read(redis_conn, job_id)
    unrunnable.report(job, redis_conn, AbandonedJobError, AbandonedJobError(), traceback.extract_stack())
    try:
        raise ValueError("a bug")
    except ValueError as exc:
        unrunnable.report(job, redis_conn, ValueError, exc, exc.__traceback__)
    assert job.retries_left == 3
    assert progress.read(redis_conn, job_id) == before
    assert before["state"] == "queued" and before["seq"] == 1
