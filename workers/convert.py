"""The conversion job that RQ runs: `convert_document(doc_id, kind)`.

One attempt: validate → announce the page sizes → render and store page by page, each page servable
as soon as it and those before it are stored (`ready`) → write the manifest → mark complete. Every
failure ends in a progress record the viewer can explain: permanent errors stop RQ's retries at
once; transient ones (storage, Redis, timeout) let RQ run the job again, and the next attempt
keeps every page stored before and renders only the rest (`ready` and percent never go back). A
document deleted while it converts stops the job at its next progress save, and the job removes
what it wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from config import Settings
from livedoc import keys
from livedoc.ids import valid_doc_id
from livedoc.progress import Deleted, ProgressWriter
from livedoc.storage import DocumentFiles, open_storage
from workers import images, office, pdf_convert, text
from workers.errors import (
    ConversionError,
    ConversionTimeout,
    InternalError,
    InvalidJob,
    StorageError,
    TransientError,
    UnsupportedDocument,
)
from workers.pages import PageSink
from workers.quota import Meter, charged

log = logging.getLogger("livedoc.worker")

# The converter of each kind: convert(original path, settings, sink) renders every page into sink.
Converter = Callable[[Path, Settings, PageSink], None]
CONVERTERS: dict[str, Converter] = {
    "pdf": pdf_convert.convert,
    "image": images.convert,
    "text": text.convert,
    "office": office.convert,
}
RETRY_MESSAGE = "Temporary problem; trying again shortly."


def convert_document(doc_id: str, kind: str, quota: dict | None = None) -> dict:
    """Convert one uploaded document into page images, thumbnails, text and text layers, charging
    what it stores to its owner's quota (`quota`: {"user", "limit"}; none for older jobs)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("convert_document runs only inside an RQ job")
    writer = ProgressWriter(job, job.connection)
    files: DocumentFiles | None = None
    sink: PageSink | None = None
    try:
        if not valid_doc_id(doc_id):
            raise InvalidJob()
        converter = CONVERTERS.get(kind)
        if converter is None:
            raise UnsupportedDocument()
        settings = Settings.from_env()
        meter = Meter.of_job(job.connection, quota, doc_id, keys.QUOTA_CONVERTING)
        files = DocumentFiles(charged(open_storage(settings), meter), doc_id)
        # Resume, never redo: the pages an earlier attempt stored whole become this attempt's (page
        # URLs name the attempt, so they move under it before this attempt says a word).
        kept, kept_bytes = files.stored_pages(writer.attempt) if files.carry_over(writer.attempt) else ({}, 0)
        if meter is not None:
            meter.restart(kept_bytes)
        ready = next(n for n in range(len(kept) + 1) if n + 1 not in kept)
        writer.update("validating", 0, page=ready, ready=ready, message="Checking the document")
        sink = PageSink(files, writer.attempt, writer, settings, kind, quota=quota)
        sink.keep(kept, kept_bytes)
        converter(_original(files, sink.scratch), settings, sink)
        pages = sink.finish()
        writer.complete(pages)
        # A page-range job of an earlier attempt that was still rendering may have written after the
        # carry-over: nothing of that attempt is ever served.
        files.clear_attempts(writer.attempt - 1)
        return {"pages": pages}
    except Deleted:
        log.info("job %s: the document was deleted; stopping", job.id)
        job.retries_left = 0
        if files is not None:
            files.delete()
        return {"deleted": True}
    except ConversionError as exc:
        log.info("job %s: conversion failed: %s (retryable=%s)", job.id, exc.code, exc.retryable)
        _fail(job, writer, exc)
        raise
    except JobTimeoutException:
        _fail(job, writer, ConversionTimeout())
        raise
    except OSError as exc:
        log.warning("job %s: storage error (%s)", job.id, exc)
        _fail(job, writer, StorageError())
        raise
    except RedisError as exc:
        log.warning("job %s: redis error (%s)", job.id, exc.__class__.__name__)
        _fail(job, writer, TransientError())
        raise
    except Exception:
        # The job boundary is the last place that can turn a bug (in Pillow, pdfium or our code)
        # into an answer the viewer can show; without it the user would see "running" until RQ's
        # own bookkeeping noticed. The trace goes to the log and to RQ's failed-job record, never
        # to the user, and the error is retryable because a bug hit once may not be hit again.
        log.exception("job %s: unexpected error converting document %s", job.id, doc_id)
        _fail(job, writer, InternalError())
        raise
    finally:
        if sink is not None:
            sink.close()


def _original(files: DocumentFiles, scratch: Path) -> Path:
    """A local path of the upload: in place on local storage, else copied into scratch."""
    path = files.storage.local_path(files.original_key)
    if path is not None:
        return path
    path = scratch / "original"
    files.storage.fetch(files.original_key, path)
    return path


def _fail(job: Job, writer: ProgressWriter, error: ConversionError) -> None:
    """Record what happens next after a failed attempt; never raises.

    The pages the attempt stored stay readable: a document whose page 400 is damaged can still be
    read up to page 399. A new attempt starts by removing them.
    """
    if not error.retryable:
        # RQ's worker consults this same job object's should_retry after the job raises.
        job.retries_left = 0
    cap = error.max_retries
    if cap is not None:
        # Some failures earn fewer tries than JOB_RETRIES (a hung LibreOffice: one more, not three).
        job.retries_left = min(job.retries_left or 0, cap)
    will_retry = error.retryable and (job.retries_left or 0) > 0
    try:
        if will_retry:
            writer.will_retry(RETRY_MESSAGE)
        else:
            writer.fail(error.ending, error.message)
    except Deleted:
        pass  # deleted meanwhile: nothing to record
    except Exception as exc:  # noqa: BLE001 - must not hide the error that ended the attempt
        # Redis may be the very thing that is down. The exception being handled is the one RQ has
        # to see (it decides retry or failure), and the reader derives an ending from RQ's status.
        log.warning("job %s: could not record the failure (%s)", job.id, exc.__class__.__name__)
