"""Per-user quotas: documents kept (QUOTA_DOCUMENTS), megabytes stored (QUOTA_MB: originals plus
output) and conversions in flight (MAX_CONVERSIONS_PER_USER).

Usage is read from the database in one query; conversions in flight are the documents whose ending
the database does not know yet, settled against Redis first so that finished jobs nobody watched
do not count. Two requests of one user checked at the same moment could each fit alone, so the
check that admits a new document or attempt, and its commit, run under the user's lock in Redis
(`admitting`), held for milliseconds: not while an upload travels.

While a document converts, its pages count too, as they are written: the workers charge every file
to a hash in Redis before they store it (workers/quota.py), and this module keeps the hash's base
right: under the same lock, whenever the user's usage changes in the database (an admission, a
conversion that ended, a deletion), `settled` becomes what the database says and the fields of
documents whose bytes the database now counts are removed.
"""

from __future__ import annotations

import contextlib
import logging
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
log = logging.getLogger("livedoc")


@dataclass(frozen=True)
class Usage:
    """What a user holds now."""

    documents: int
    stored_bytes: int
    in_flight: int


def usage(user: User) -> Usage:
    """The user's documents, stored bytes and unfinished conversions, as the database has them, plus
    the bytes running conversions and sharper pages stored that the database does not count yet."""
    use = _usage_of(user.id)
    charged = _charged(user.id)
    return Usage(use.documents, use.stored_bytes + charged, use.in_flight) if charged else use


def _charged(user_id: int) -> int:
    """What the workers charged beyond `settled` (workers/quota.py); 0 when Redis cannot say."""
    from livedoc.appctx import redis_conn  # the app's client; this module is imported before any app

    try:
        held = redis_conn().hgetall(keys.QUOTA_USAGE + str(user_id))
    except RedisError:
        return 0
    return sum(int(v) for f, v in held.items() if f.decode() != keys.QUOTA_SETTLED)


def _usage_of(user_id: int) -> Usage:
    unfinished = case((Document.state.not_in(progress.TERMINAL), 1), else_=0)
    count, stored, running = db.session.execute(
        db.select(
            func.count(Document.id),
            func.coalesce(func.sum(Document.stored_bytes), 0),
            func.coalesce(func.sum(unfinished), 0),
        ).filter(Document.owner_id == user_id)
    ).one()
    return Usage(int(count), int(stored), int(running))


def job_quota(user_id: int, config: Mapping) -> dict:
    """What a conversion or sharper-page job needs to charge its output to the owner (workers/quota.py)."""
    return {"user": int(user_id), "limit": int(config["QUOTA_MB"]) * MB}


@contextlib.contextmanager
def admitting(connection: Redis, user: User, timeout: float = 10.0) -> Iterator[None]:
    """Hold the user's admission lock: the quota check and the commit it allows are one step; what
    it admitted is then the base the workers charge against."""
    with _locked(connection, user.id, timeout):
        yield
        _recount(connection, user.id)


def recount(connection: Redis, user_id: int, timeout: float = 10.0) -> None:
    """After a document's bytes changed in the database (its conversion ended, it was deleted): the
    workers' base follows, under the admission lock. Never raises: a later admission does it again."""
    try:
        with _locked(connection, user_id, timeout):
            _recount(connection, user_id)
    except Unavailable:
        log.warning("quota: could not recount user %s now; the next admission will", user_id)


def _recount(connection: Redis, user_id: int) -> None:
    """Write `settled` from the database and drop the fields whose bytes it counts now: a conversion
    that has ended (its pages are in the row), a document that is gone. The caller holds the lock,
    so no admission, retry or other recount of the user's moves the database meanwhile."""
    key = keys.QUOTA_USAGE + str(user_id)
    try:
        fields = [f.decode() for f in connection.hkeys(key)]
        charged = {
            f: f.split(":", 1)[1] for f in fields if f.startswith((keys.QUOTA_CONVERTING, keys.QUOTA_HD))
        }
        states = dict(
            db.session.execute(
                db.select(Document.id, Document.state).filter(Document.id.in_(set(charged.values())))
            ).all()
            if charged
            else []
        )
        stale = [
            f
            for f, doc_id in charged.items()
            if doc_id not in states
            or (f.startswith(keys.QUOTA_CONVERTING) and states[doc_id] in progress.TERMINAL)
        ]
        stored = _usage_of(user_id).stored_bytes
        with connection.pipeline(transaction=True) as pipe:
            pipe.hset(key, keys.QUOTA_SETTLED, stored)
            if stale:
                pipe.hdel(key, *stale)
            pipe.execute()
    except RedisError as exc:
        # The workers then charge against an older base, or none (not charged) if the hash is gone.
        log.warning("quota: could not write the usage of user %s (%s)", user_id, exc.__class__.__name__)


@contextlib.contextmanager
def _locked(connection: Redis, user_id: int, timeout: float) -> Iterator[None]:
    lock = connection.lock(keys.QUOTA_LOCK + str(user_id), timeout=timeout, blocking_timeout=timeout)
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


def raise_hd_storage(use: Usage, config: Mapping) -> None:
    """Refuse (413) a sharper page that did not fit in what is left of QUOTA_MB."""
    limit = config["QUOTA_MB"] * MB
    raise QuotaExceeded(
        413,
        "quota_mb",
        f"A sharper rendition of this page does not fit in your storage quota of {config['QUOTA_MB']} MB.",
        {"name": "QUOTA_MB", **_entry(use.stored_bytes, limit)},
    )


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
