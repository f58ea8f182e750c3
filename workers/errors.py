"""Every exception the conversion job raises to report how it ended, in one module.

A ConversionError carries its ending from the catalogue (livedoc/endings.py: a stable ``code`` and
whether a retry can help) and a ``message`` for people (no paths, no stack traces, no internal
detail). Permanent errors stop RQ's retries at once; transient ones let RQ run the job again.
"""

from __future__ import annotations

from typing import ClassVar

from livedoc import endings
from livedoc.endings import Ending


class ConversionError(Exception):
    """A conversion failure: its ending in the catalogue and a message for people."""

    ending: ClassVar[Ending] = endings.CONVERSION_FAILED
    max_retries: ClassVar[int | None] = None  # set: this failure earns fewer tries than JOB_RETRIES
    _by_code: ClassVar[dict[str, type[ConversionError]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        ConversionError._by_code[cls.ending.code] = cls

    def __init__(self, message: str | None = None):
        self.message = message or self.ending.message
        super().__init__(self.message)

    @property
    def code(self) -> str:
        """The ending's stable code."""
        return self.ending.code

    @property
    def retryable(self) -> bool:
        """Whether a new attempt can help."""
        return self.ending.retryable

    @property
    def error(self) -> dict:
        """The error as the progress contract stores it."""
        return self.ending.error(self.message)

    @classmethod
    def from_error(cls, error: dict) -> ConversionError:
        """The exception a stored `error` field stands for (raised in a render process or a chunk job)."""
        kind = ConversionError._by_code.get(str(error.get("code")), ConversionError)
        return kind(error.get("message"))


# Permanent: the same input fails the same way every time, so retrying only wastes the user's time.


class CorruptDocument(ConversionError):
    """The file is damaged or not what its type claims."""

    ending = endings.CORRUPT


class EncryptedDocument(ConversionError):
    """The PDF needs a password to open."""

    ending = endings.ENCRYPTED


class UnsupportedDocument(ConversionError):
    """The kind of file (or a feature it relies on) is not supported."""

    ending = endings.UNSUPPORTED


class TooManyPages(ConversionError):
    """The document has more pages than MAX_PAGES."""

    ending = endings.TOO_MANY_PAGES


class PageTooLarge(ConversionError):
    """A page would exceed MAX_PAGE_PIXELS when rendered."""

    ending = endings.PAGE_TOO_LARGE


class EmptyDocument(ConversionError):
    """The document has no pages (or no content at all)."""

    ending = endings.EMPTY


class InvalidJob(ConversionError):
    """The job's arguments are not valid (it was not enqueued by livedoc)."""

    ending = endings.INVALID_JOB


class TooMuchText(ConversionError):
    """A page or the document holds more text than MAX_PAGE_TEXT / MAX_DOCUMENT_TEXT."""

    ending = endings.TOO_MUCH_TEXT


class TooLargeUnpacked(ConversionError):
    """A compressed container (an Office zip) unpacks beyond its bounds: a decompression bomb."""

    ending = endings.TOO_LARGE_UNPACKED


class QuotaExceeded(ConversionError):
    """Storing the next page would take the owner past QUOTA_MB."""

    ending = endings.QUOTA_EXCEEDED


# Transient: the input is fine, something around it was not; RQ retries these.


class TransientError(ConversionError):
    """A temporary problem; the same job may well succeed when run again."""

    ending = endings.TEMPORARY


class StorageError(TransientError):
    """Reading the original or writing the output failed."""

    ending = endings.STORAGE


class ConversionTimeout(TransientError):
    """The job ran out of time."""

    ending = endings.TIMEOUT
    max_retries = 1  # a job that ran out of time once will likely do so again


class InternalError(TransientError):
    """An unexpected failure (a bug); details go to the log, never to the user."""

    ending = endings.INTERNAL
