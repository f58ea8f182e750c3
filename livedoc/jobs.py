"""Enqueueing conversions. Jobs are named by dotted path, so the web never imports worker code."""

from __future__ import annotations

from collections.abc import Mapping

from redis import Redis
from rq import Callback, Queue, Retry

from livedoc import progress

CONVERT = "workers.convert.convert_document"
RENDER_HD = "workers.render.render_hd"
# Run by the worker when the job raises; it reports a worker that cannot run livedoc's jobs at all.
ON_FAILURE = "workers.unrunnable.report"
SERIALIZER = progress.SERIALIZER


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
    job = queue(connection, config["QUEUE_NAME"]).enqueue(
        CONVERT,
        doc_id,
        kind,
        job_id=job_id(doc_id, attempt),
        meta={progress.META_KEY: dict(start) if start else progress.initial(seq, attempt)},
        retry=Retry(max=config["JOB_RETRIES"], interval=intervals) if config["JOB_RETRIES"] else None,
        job_timeout=config["JOB_TIMEOUT"],
        result_ttl=config["RESULT_TTL"],
        failure_ttl=config["RESULT_TTL"],
        on_failure=Callback(ON_FAILURE),
        description=f"convert {kind} {doc_id} (attempt {attempt})",
        **({"quota": dict(quota)} if quota else {}),
    )
    return job.id


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
    """Queue the rendering of one page's sharper rendition ahead of conversions, once (charged to
    the owner's quota when `quota` is given)."""
    job_id = hd_job_id(doc_id, attempt, n)
    q = queue(connection, config["QUEUE_NAME"])
    if q.fetch_job(job_id) is not None:
        return  # asked for already (queued, running, or just done)
    q.enqueue(
        RENDER_HD,
        doc_id,
        kind,
        attempt,
        n,
        job_id=job_id,
        at_front=True,
        job_timeout=60,
        result_ttl=60,
        failure_ttl=600,
        description=f"sharper page {n} of {doc_id}",
        **({"quota": dict(quota)} if quota else {}),
    )
