"""Every error the conversion job reports, in one module.

A ConversionError carries what the viewer shows: a stable ``code``, a ``message`` for people (no
paths, no stack traces, no internal detail) and ``retryable``: whether trying again can help.
Permanent errors stop RQ's retries at once; transient ones let RQ run the job again.
"""
from __future__ import annotations


class ConversionError(Exception):
    """A conversion failure with a code, a message for people, and whether a retry can help."""

    code = "conversion_failed"
    message = "The document could not be converted."
    retryable = False

    def __init__(self, code: str | None = None, message: str | None = None, retryable: bool | None = None):
        self.code = code or type(self).code
        self.message = message or type(self).message
        self.retryable = type(self).retryable if retryable is None else retryable
        super().__init__(self.message)

    def as_dict(self) -> dict:
        """The error as the progress contract stores it."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class _Known(ConversionError):
    """A ConversionError whose code and retryability are fixed by its class; only the message varies."""

    def __init__(self, message: str | None = None):
        super().__init__(message=message)


# Permanent: the same input fails the same way every time, so retrying only wastes the user's time.

class CorruptDocument(_Known):
    """The file is damaged or not what its type claims."""

    code = "corrupt"
    message = "The file is damaged and cannot be read."


class EncryptedDocument(_Known):
    """The PDF needs a password to open."""

    code = "encrypted"
    message = "This PDF is protected by a password. Upload a copy without a password."


class UnsupportedDocument(_Known):
    """The kind of file (or a feature it relies on) is not supported."""

    code = "unsupported"
    message = "This kind of file cannot be converted."


class TooManyPages(_Known):
    """The document has more pages than MAX_PAGES."""

    code = "too_many_pages"
    message = "The document has too many pages."


class PageTooLarge(_Known):
    """A page would exceed MAX_PAGE_PIXELS when rendered."""

    code = "page_too_large"
    message = "A page is too large to display."


class EmptyDocument(_Known):
    """The document has no pages (or no content at all)."""

    code = "empty"
    message = "The document has no pages."


# Transient: the input is fine, something around it was not; RQ retries these.

class TransientError(_Known):
    """A temporary problem; the same job may well succeed when run again."""

    code = "temporary"
    message = "A temporary problem interrupted the conversion."
    retryable = True


class StorageError(TransientError):
    """Reading the original or writing the output failed."""

    code = "storage"
    message = "A temporary storage problem interrupted the conversion."


class ConversionTimeout(TransientError):
    """The job ran out of time."""

    code = "timeout"
    message = "The conversion took too long."


class InternalError(TransientError):
    """An unexpected failure (a bug); details go to the log, never to the user."""

    code = "internal"
    message = "Something went wrong on our side while converting the document."


class WorkerMisconfigured(TransientError):
    """A worker could not load the job at all (another serializer, missing code or packages).

    Retryable: once the operator fixes or replaces the worker, the same document converts.
    """

    code = "worker_misconfigured"
    message = "A conversion worker could not run this job; the operator must fix the worker."
