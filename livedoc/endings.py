"""Every code that ends a conversion, in one catalogue: the code, the message people read, and
whether a new attempt can help (`retryable`).

A failed progress carries ``error: {code, message, retryable}`` (livedoc/progress.py) and its code is
one of these. The worker's exceptions (workers/errors.py, workers/office.py) take theirs from here;
so do the endings readers derive themselves (``worker_lost``, ``deleted``, ``not_queued``) and the
callback for a worker that cannot run the job (``worker_misconfigured``). README lists them.

Permanent endings: the same input fails the same way every time, so a retry only wastes the user's
time. Retryable ones: the input is fine, something around it was not. The statuses a page-range
job's merge answers ("lost", "stale", "ended") never reach a user: they are not endings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ending:
    """One way a conversion can end in failure."""

    code: str
    message: str
    retryable: bool

    def error(self, message: str | None = None) -> dict:
        """The progress contract's `error` field for this ending (with a more precise message)."""
        return {"code": self.code, "message": message or self.message, "retryable": self.retryable}


# Permanent.
CONVERSION_FAILED = Ending("conversion_failed", "The document could not be converted.", False)
CORRUPT = Ending("corrupt", "The file is damaged and cannot be read.", False)
ENCRYPTED = Ending(
    "encrypted", "This PDF is protected by a password. Upload a copy without a password.", False
)
UNSUPPORTED = Ending("unsupported", "This kind of file cannot be converted.", False)
TOO_MANY_PAGES = Ending("too_many_pages", "The document has too many pages.", False)
PAGE_TOO_LARGE = Ending("page_too_large", "A page is too large to display.", False)
EMPTY = Ending("empty", "The document has no pages.", False)
INVALID_JOB = Ending("invalid_job", "This conversion request is not valid.", False)
DELETED = Ending("deleted", "This document was deleted.", False)
TOO_MUCH_TEXT = Ending("too_much_text", "The document holds more text than can be kept.", False)
TOO_LARGE_UNPACKED = Ending(
    "too_large_unpacked", "The document unpacks to far more data than its size suggests.", False
)
QUOTA_EXCEEDED = Ending("quota_exceeded", "The converted document does not fit in your storage quota.", False)
OFFICE_TIMEOUT_FINAL = Ending(
    "office_timeout_final", "LibreOffice took too long to convert this document, twice.", False
)

# Retryable.
TEMPORARY = Ending("temporary", "A temporary problem interrupted the conversion.", True)
STORAGE = Ending("storage", "A temporary storage problem interrupted the conversion.", True)
TIMEOUT = Ending("timeout", "The conversion took too long.", True)
INTERNAL = Ending("internal", "Something went wrong on our side while converting the document.", True)
WORKER_MISCONFIGURED = Ending(
    "worker_misconfigured",
    "A conversion worker could not run this job; the operator must fix the worker.",
    True,
)
WORKER_LOST = Ending("worker_lost", "The conversion stopped unexpectedly.", True)
NOT_QUEUED = Ending("not_queued", "The conversion could not be queued.", True)
OFFICE_TIMEOUT = Ending("office_timeout", "LibreOffice took too long to convert this document.", True)
OFFICE_CRASHED = Ending(
    "office_crashed", "LibreOffice stopped unexpectedly while converting this document.", True
)
OFFICE_MISSING = Ending(
    "office_missing", "This worker cannot convert Office documents; trying another.", True
)

CATALOGUE: dict[str, Ending] = {
    e.code: e
    for e in (
        CONVERSION_FAILED,
        CORRUPT,
        ENCRYPTED,
        UNSUPPORTED,
        TOO_MANY_PAGES,
        PAGE_TOO_LARGE,
        EMPTY,
        INVALID_JOB,
        DELETED,
        TOO_MUCH_TEXT,
        TOO_LARGE_UNPACKED,
        QUOTA_EXCEEDED,
        OFFICE_TIMEOUT_FINAL,
        TEMPORARY,
        STORAGE,
        TIMEOUT,
        INTERNAL,
        WORKER_MISCONFIGURED,
        WORKER_LOST,
        NOT_QUEUED,
        OFFICE_TIMEOUT,
        OFFICE_CRASHED,
        OFFICE_MISSING,
    )
}
