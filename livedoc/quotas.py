"""Per-user quotas: documents kept (QUOTA_DOCUMENTS), megabytes stored (QUOTA_MB: originals plus
output) and conversions in flight (MAX_CONVERSIONS_PER_USER).

Usage is read from the database in one query; conversions in flight are the documents whose ending
the database does not know yet, settled against Redis first so that finished jobs nobody watched
do not count. Two requests of one user checked at the same moment could each fit alone, so the
check that admits a new document or attempt, and its commit, run under the user's lock in Redis
(`admitting`), held for milliseconds: not while an upload travels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import case, func

from livedoc import keys, progress
from livedoc.errors import QuotaExceeded, Unavailable
from livedoc.extensions import db
from livedoc.models import Document, User

MB = 1024 * 1024


@dataclass(frozen=True)
class Usage:
    """What a user holds now."""

    documents: int
    stored_bytes: int
    in_flight: int


def usage(user: User) -> Usage:
    """The user's documents, stored bytes and unfinished conversions, as the database has them."""
    unfinished = case((Document.state.not_in(progress.TERMINAL), 1), else_=0)
    count, stored, running = db.session.execute(
        db.select(
            func.count(Document.id),
            func.coalesce(func.sum(Document.stored_bytes), 0),
            func.coalesce(func.sum(unfinished), 0),
        ).filter(Document.owner_id == user.id)
    ).one()
    return Usage(int(count), int(stored), int(running))


@contextlib.contextmanager
def admitting(connection: Redis, user: User, timeout: float = 10.0) -> Iterator[None]:
    """Hold the user's admission lock: the quota check and the commit it allows are one step."""
    lock = connection.lock(keys.QUOTA_LOCK + str(user.id), timeout=timeout, blocking_timeout=timeout)
    try:
        acquired = lock.acquire()
    except RedisError:
        raise Unavailable() from None
    if not acquired:
        raise Unavailable("Too many of your requests at once; try again in a moment.")
    try:
        yield
    finally:
        try:
            lock.release()
        except RedisError:  # LockError among them
            pass  # expired, or Redis is gone: the lock ends by itself within `timeout`


def report(use: Usage, config: Mapping) -> dict:
    """Usage against each quota, as `GET /api/me` shows it."""
    mb_limit = config["QUOTA_MB"] * MB
    return {
        "documents": _entry(use.documents, config["QUOTA_DOCUMENTS"]),
        "stored_bytes": _entry(use.stored_bytes, mb_limit),
        "conversions_in_flight": _entry(use.in_flight, config["MAX_CONVERSIONS_PER_USER"]),
    }


def _entry(used: int, limit: int) -> dict:
    return {"used": used, "limit": limit, "remaining": max(0, limit - used)}


def check_conversion(use: Usage, config: Mapping) -> None:
    """Refuse (429) a new conversion beyond MAX_CONVERSIONS_PER_USER in flight."""
    cap = config["MAX_CONVERSIONS_PER_USER"]
    if use.in_flight >= cap:
        raise QuotaExceeded(
            429,
            "quota_conversions",
            f"You have {cap} conversions running already; wait for one to end.",
            {"name": "MAX_CONVERSIONS_PER_USER", **_entry(use.in_flight, cap)},
            retry_after=10,
        )


def check_upload(use: Usage, config: Mapping) -> int:
    """Refuse an upload over any quota; returns the bytes the user may still store."""
    cap = config["QUOTA_DOCUMENTS"]
    if use.documents >= cap:
        raise QuotaExceeded(
            429,
            "quota_documents",
            f"You have {cap} documents, the most you may keep; delete some first.",
            {"name": "QUOTA_DOCUMENTS", **_entry(use.documents, cap)},
            retry_after=3600,
        )
    check_conversion(use, config)
    left = config["QUOTA_MB"] * MB - use.stored_bytes
    if left <= 0:
        raise_storage(use, config)
    return left


def raise_storage(use: Usage, config: Mapping) -> None:
    """Refuse (413) an upload that does not fit in what is left of QUOTA_MB."""
    limit = config["QUOTA_MB"] * MB
    left = max(0, limit - use.stored_bytes)
    raise QuotaExceeded(
        413,
        "quota_mb",
        f"This file does not fit in your storage quota of {config['QUOTA_MB']} MB ({left / MB:.1f} MB left).",
        {"name": "QUOTA_MB", **_entry(use.stored_bytes, limit)},
    )
