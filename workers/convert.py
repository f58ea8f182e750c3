"""The conversion job that RQ runs: `convert_document(doc_id, kind)`.

One attempt: fresh work directory → validate → render page by page → publish the output whole →
mark complete. Every failure ends in a progress record the viewer can explain: permanent errors
stop RQ's retries at once; transient ones (storage, Redis, timeout) let RQ run the job again and
the next attempt starts from an empty work directory with its percent back at 0.
"""
from __future__ import annotations

import logging
from pathlib import Path

from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from config import Settings
from livedoc.ids import valid_doc_id
from livedoc.progress import ProgressWriter
from livedoc.storage import DocumentFiles
from workers import images, pdf, text
from workers.errors import (
    ConversionError,
    ConversionTimeout,
    InternalError,
    StorageError,
    TransientError,
    UnsupportedDocument,
)
from workers.images import PageCallback

log = logging.getLogger("livedoc.worker")

STAGES = {"pdf": pdf.convert, "image": images.convert, "text": text.convert}
RETRY_MESSAGE = "Temporary problem; trying again shortly."

# Percent bands: rendering dominates the time, so it gets most of the bar.
VALIDATING = 0
RENDER_START = 5
RENDER_END = 90
FINALIZING = 95


def convert_document(doc_id: str, kind: str) -> dict:
    """Convert one uploaded document into page images, thumbnails and text; returns {"pages": n}."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("convert_document runs only inside an RQ job")
    writer = ProgressWriter(job, job.connection)
    files: DocumentFiles | None = None
    try:
        if not valid_doc_id(doc_id):
            raise ConversionError("internal", "This conversion request is not valid.", retryable=False)
        convert_kind = STAGES.get(kind)
        if convert_kind is None:
            raise UnsupportedDocument()
        settings = Settings.from_env()
        files = DocumentFiles(settings.STORAGE_DIR, doc_id)
        writer.update("validating", VALIDATING, page=0, pages=0, message="Checking the document")
        work = files.fresh_work()
        page_list = convert_kind(files.original, work, settings, _page_reporter(writer))
        pages = len(page_list)
        writer.update("finalizing", FINALIZING, page=pages, pages=pages, message="Finishing up")
        files.publish_work(_manifest(kind, page_list))
        writer.complete(pages)
        return {"pages": pages}
    except ConversionError as exc:
        log.info("job %s: conversion failed: %s (retryable=%s)", job.id, exc.code, exc.retryable)
        _fail(job, writer, files, exc)
        raise
    except JobTimeoutException:
        _fail(job, writer, files, ConversionTimeout())
        raise
    except OSError as exc:
        log.warning("job %s: storage error (%s)", job.id, exc)
        _fail(job, writer, files, StorageError())
        raise
    except RedisError as exc:
        log.warning("job %s: redis error (%s)", job.id, exc.__class__.__name__)
        _fail(job, writer, files, TransientError())
        raise
    except Exception:
        # The job boundary is the last place that can turn a bug (in Pillow, pdfium or our code)
        # into an answer the viewer can show; without it the user would see "running" until RQ's
        # own bookkeeping noticed. The trace goes to the log and to RQ's failed-job record, never
        # to the user, and the error is retryable because a bug hit once may not be hit again.
        log.exception("job %s: unexpected error converting document %s", job.id, doc_id)
        _fail(job, writer, files, InternalError())
        raise


def _page_reporter(writer: ProgressWriter) -> PageCallback:
    def on_page(page: int, pages: int) -> None:
        percent = RENDER_START + (RENDER_END - RENDER_START) * (page - 1) / pages
        writer.update("rendering", percent, page=page, pages=pages,
                      message=f"Rendering page {page} of {pages}")
    return on_page


def _manifest(kind: str, page_list: list[dict]) -> dict:
    names = [entry[key] for entry in page_list for key in ("image", "thumb", "text")]
    return {"kind": kind, "pages": len(page_list), "files": names, "page_list": page_list}


def _fail(job: Job, writer: ProgressWriter, files: DocumentFiles | None, error: ConversionError) -> None:
    """Clean up after a failed attempt and record what happens next; never raises."""
    if files is not None:
        _discard(files)
    if not error.retryable:
        # RQ's worker consults this same job object's should_retry after the job raises.
        job.retries_left = 0
    elif isinstance(error, ConversionTimeout):
        # A job that ran out of time once will likely do so again: one more try, not JOB_RETRIES.
        job.retries_left = min(job.retries_left or 0, 1)
    will_retry = error.retryable and (job.retries_left or 0) > 0
    try:
        if will_retry:
            writer.will_retry(RETRY_MESSAGE)
        else:
            writer.fail(error.code, error.message, error.retryable)
    except Exception as exc:  # noqa: BLE001 - must not hide the error that ended the attempt
        # Redis may be the very thing that is down. The exception being handled is the one RQ has
        # to see (it decides retry or failure), and the reader derives an ending from RQ's status.
        log.warning("job %s: could not record the failure (%s)", job.id, exc.__class__.__name__)


def _discard(files: DocumentFiles) -> None:
    try:
        files.discard_work()
        work: Path = files.work
        # discard_work only removes a directory; a stray file or symlink at the work path would
        # make every later fresh_work() fail, so remove it too.
        if work.is_symlink() or (work.exists() and not work.is_dir()):
            work.unlink()
    except OSError as exc:
        log.warning("could not remove partial output (%s)", exc.__class__.__name__)
