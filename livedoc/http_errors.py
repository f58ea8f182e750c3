"""The errors a request can end in, each with its HTTP status, a stable code and a message for people.

Plain exceptions without Flask, so that the layer the web and the worker share (capabilities,
quotas, documents) can raise them without the worker loading Flask; livedoc/errors.py turns them
into responses.
"""

from __future__ import annotations


class LivedocError(Exception):
    """An error with an HTTP status, a stable code and a message for people."""

    status = 400
    code = "bad_request"
    message = "The request is not valid."

    def __init__(self, message: str | None = None, *, code: str | None = None, headers: dict | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.code = code or self.code
        self.headers = headers or {}


class NotFound(LivedocError):
    """Absent, or not the caller's: the two are never told apart."""

    status = 404
    code = "not_found"
    message = "No such document."


class Unauthorized(LivedocError):
    """No session and no valid token."""

    status = 401
    code = "unauthorized"
    message = "Log in or send an API token."


class Forbidden(LivedocError):
    """Logged in, but not allowed."""

    status = 403
    code = "forbidden"
    message = "You are not allowed to do that."


class Conflict(LivedocError):
    """The document is not in a state that allows the action."""

    status = 409
    code = "conflict"


class UnsupportedType(LivedocError):
    """The upload is not a PDF, PNG, JPEG or UTF-8 text."""

    status = 415
    code = "unsupported_type"
    message = "Only PDF, PNG, JPEG and plain UTF-8 text files can be converted."


class TooManyRequests(LivedocError):
    """A rate limit or the open-stream cap was hit."""

    status = 429
    code = "rate_limited"
    message = "Too many requests; try again later."

    def __init__(self, message: str | None = None, *, retry_after: int = 5, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class QuotaExceeded(LivedocError):
    """A per-user quota is used up: 413 for stored megabytes, 429 for counts; says how much is left."""

    def __init__(self, status: int, code: str, message: str, quota: dict, retry_after: int | None = None):
        super().__init__(
            message, code=code, headers={"Retry-After": str(retry_after)} if retry_after else None
        )
        self.status = status
        self.extra = {"quota": quota}


class InsufficientStorage(LivedocError):
    """The storage is full (ENOSPC, EDQUOT): nothing of the upload was kept."""

    status = 507
    code = "insufficient_storage"
    message = "The server has no room to store this file right now; try again later."


class Unavailable(LivedocError):
    """A backing service (Redis) cannot be reached."""

    status = 503
    code = "unavailable"
    message = "The service is briefly unavailable; try again in a moment."

    def __init__(self, message: str | None = None):
        super().__init__(message, headers={"Retry-After": "5"})
