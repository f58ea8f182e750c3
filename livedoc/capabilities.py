"""Which kinds of document the workers can convert, as the workers themselves advertise it in Redis.

Every worker converts PDFs, images and text. Office documents need LibreOffice on the worker host,
so a worker that has it keeps ``keys.CAN_CONVERT + "office"`` alive (a TTL refreshed with its
heartbeat, workers/rqworker.py); the web accepts Office uploads only while that key exists, and
learns it from the workers, never from its own host.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from livedoc import keys
from livedoc.http_errors import UnsupportedType

BUILTIN = frozenset({"pdf", "image", "text"})
OFFICE_DISABLED = "Office documents are not enabled on this server."
# What the upload form's file picker offers when Office documents are enabled.
OFFICE_ACCEPT = ".docx,.pptx,.xlsx,.odt,.odp,.ods,.rtf,.doc,.ppt,.xls"


def advertise(connection: Redis | Pipeline, kinds: Iterable[str], ttl: int) -> None:
    """Announce for `ttl` seconds that this worker converts `kinds` (a pipeline is not executed here)."""
    for kind in kinds:
        if kind not in BUILTIN:
            connection.set(keys.CAN_CONVERT + kind, 1, ex=ttl)


def can_convert(connection: Redis, kind: str) -> bool:
    """True when some live worker converts this kind."""
    return kind in BUILTIN or bool(connection.exists(keys.CAN_CONVERT + kind))


def offered(connection: Redis, kind: str) -> bool:
    """can_convert for pages that only adapt their wording: False rather than an error when Redis is down."""
    try:
        return can_convert(connection, kind)
    except RedisError:
        return False


def require(connection: Redis, kind: str) -> None:
    """Refuse an upload of a kind no worker can convert (415) before anything is stored."""
    if not can_convert(connection, kind):
        raise UnsupportedType(OFFICE_DISABLED if kind == "office" else None)
