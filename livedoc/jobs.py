"""Enqueueing conversions. Jobs are named by dotted path, so the web never imports worker code.

Every job waits in its owner's turn (livedoc/fair.py) before it enters RQ's queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from redis import Redis
from rq import Callback, Queue, Retry
from rq.job import JobStatus

from livedoc import fair, progress

CONVERT = "workers.convert.convert_document"
RENDER_HD = "workers.render.render_hd"
# Run by the worker when the job raises: it reports a worker that cannot run livedoc's jobs at all
# (workers.unrunnable.report), then admits the next jobs in turn.
ON_FAILURE = fair.ON_CONVERSION_FAILURE
SERIALIZER = progress.SERIALIZER

if TYPE_CHECKING:
    from config import Settings


def queue(connection: Redis, name: str) -> Queue:
    """The conversion queue (RQ's default serializer, so a stock `rq worker` runs its jobs)."""
    return Queue(name, connection=connection, serializer=SERIALIZER)


def job_id(doc_id: str, attempt: int) -> str:
    """The RQ job id of one user-requested attempt at converting a document."""
    return f"doc-{doc_id}-{attempt}"


def enqueue_conversion(
    connection: Redis,
    config: Mapping,
    doc_id: str,
    kind: str,
    seq: int,
    attempt: int,
    quota: Mapping | None = None,
    start: Mapping | None = None,
) -> str:
    """Queue a conversion whose progress starts at `seq` (or as `start`, an attempt that keeps pages
    stored before it); returns the job id. `quota` ({"user", "limit"}) makes the worker charge what
    it stores to the owner (workers/quota.py)."""
    intervals = [int(x) for x in str(config["JOB_RETRY_INTERVALS"]).split(",") if x.strip()]
    q = queue(connection, config["QUEUE_NAME"])
    job = q.create_job(
        CONVERT,
        args=(doc_id, kind),
        kwargs={"quota": dict(quota)} if quota else None,
        job_id=job_id(doc_id, attempt),
        meta={progress.META_KEY: dict(start) if start else progress.initial(seq, attempt)},
        retry=Retry(max=config["JOB_RETRIES"], interval=intervals) if config["JOB_RETRIES"] else None,
        timeout=config["JOB_TIMEOUT"],
        result_ttl=config["RESULT_TTL"],
        failure_ttl=config["RESULT_TTL"],
        status=JobStatus.DEFERRED,
        on_success=Callback(fair.ON_END),
        on_failure=Callback(ON_FAILURE),
        on_stopped=Callback(fair.ON_END),
        description=f"convert {kind} {doc_id} (attempt {attempt})",
    )
    fair.submit(connection, q, job, fair.user_of(quota), "doc")
    fair.admit(connection, q.name, _hd_per_user(config))
    return job.id


def _hd_per_user(config: Mapping) -> int:
    # Callers that build their own config (tests, tools) may not name it.
    return int(config.get("HD_PER_USER", fair.DEFAULT_HD_PER_USER))


def chunk_job_id(job_id: str, attempt: int, index: int) -> str:
    """The RQ job id of page range `index` of a document job's attempt (workers/chunks.py)."""
    return f"{job_id}-a{attempt}-c{index}"


def enqueue_chunks(
    connection: Redis,
    settings: Settings,
    func: str,
    args: tuple,
    job_id: str,
    attempt: int,
    count: int,
    quota: Mapping | None = None,
    result_ttl: int = 3600,
) -> None:
    """Queue page ranges 1..count-1 of a chunked attempt, in page order, as helpers of the document
    job in its owner's chunk lane (`func(*args, index)` renders range `index`)."""
    q = queue(connection, settings.QUEUE_NAME)
    intervals = [int(x) for x in settings.JOB_RETRY_INTERVALS.split(",") if x.strip()]
    retry = Retry(max=settings.JOB_RETRIES, interval=intervals) if settings.JOB_RETRIES else None
    user = fair.user_of(quota)
    for index in range(1, count):
        job = q.create_job(
            func,
            args=(*args, index),
            # The pages are charged to the owner like the document job's (workers/quota.py).
            kwargs={"quota": dict(quota)} if quota else None,
            job_id=chunk_job_id(job_id, attempt, index),
            timeout=settings.JOB_TIMEOUT,
            result_ttl=result_ttl,
            failure_ttl=result_ttl,
            retry=retry,
            status=JobStatus.DEFERRED,
            on_success=Callback(fair.ON_END),
            on_failure=Callback(fair.ON_END),
            on_stopped=Callback(fair.ON_END),
            description=f"pages chunk {index + 1}/{count} of {job_id}",
        )
        fair.submit(connection, q, job, user, "chunk")
    fair.admit(connection, q.name, settings.HD_PER_USER)


def hd_job_id(doc_id: str, attempt: int, n: int) -> str:
    """The RQ job id of one page's sharper rendition (one job however many readers ask)."""
    return f"hd-{doc_id}-{attempt}-{n}"


def enqueue_hd(
    connection: Redis,
    config: Mapping,
    doc_id: str,
    kind: str,
    attempt: int,
    n: int,
    quota: Mapping | None = None,
) -> None:
    """Queue the rendering of one page's sharper rendition, once, in its owner's turn and within
    HD_PER_USER at a time (charged to the owner's quota when `quota` is given)."""
    job_id = hd_job_id(doc_id, attempt, n)
    q = queue(connection, config["QUEUE_NAME"])
    if q.fetch_job(job_id) is not None:
        return  # asked for already (waiting, queued, running, or just done)
    job = q.create_job(
        RENDER_HD,
        args=(doc_id, kind, attempt, n),
        kwargs={"quota": dict(quota)} if quota else None,
        job_id=job_id,
        timeout=60,
        result_ttl=60,
        failure_ttl=600,
        status=JobStatus.DEFERRED,
        on_success=Callback(fair.ON_END),
        on_failure=Callback(fair.ON_END),
        on_stopped=Callback(fair.ON_END),
        description=f"sharper page {n} of {doc_id}",
    )
    fair.submit(connection, q, job, fair.user_of(quota), "hd")
    fair.admit(connection, q.name, _hd_per_user(config))
