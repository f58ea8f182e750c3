"""Documents: creating them, finding the caller's own, their progress, and retrying them."""
from __future__ import annotations

import logging
import shutil
import time
import unicodedata
from collections.abc import Callable, Mapping
from typing import BinaryIO

from flask import current_app
from redis import Redis
from redis.exceptions import RedisError

from livedoc import jobs, keys, progress, quotas
from livedoc.audit import audit
from livedoc.errors import Conflict, LivedocError, NotFound, Unavailable, UnsupportedType
from livedoc.extensions import db
from livedoc.ids import new_doc_id, valid_doc_id
from livedoc.models import Document, User
from livedoc.sniff import HEAD, TextCheck, kind_of_head
from livedoc.storage import DocumentFiles

log = logging.getLogger("livedoc")


def display_name(filename: str | None) -> str:
    """A name fit to show: the client's name without any path, control characters or excess length."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C")
    return name.strip()[:200] or "untitled"


def files_of(doc: Document) -> DocumentFiles:
    """The document's files under STORAGE_DIR."""
    return DocumentFiles(current_app.config["STORAGE_DIR"], doc.id)


class _CheckedUpload:
    """The upload as a stream for storage: its head again, then the rest, checked on the way.

    A text upload that turns out not to be UTF-8 text, or an upload that outgrows the caller's
    storage quota, stops the copy where it is found, not after the whole file is stored.
    """

    def __init__(self, head: bytes, rest: BinaryIO, kind: str, limit: int, on_over: Callable[[], None]):
        self.head, self.rest, self.limit, self.on_over = head, rest, limit, on_over
        self.text = TextCheck() if kind == "text" else None
        self.seen = 0

    def read(self, size: int = -1) -> bytes:
        if self.head:
            chunk, self.head = self.head, b""
        else:
            chunk = self.rest.read(size)
        self.seen += len(chunk)
        if self.seen > self.limit:
            self.on_over()
        if self.text is not None and not (self.text.feed(chunk) if chunk else self.text.finish()):
            raise UnsupportedType()
        return chunk


def create(connection: Redis, config: Mapping, owner: User, filename: str | None,
           upload: BinaryIO) -> Document:
    """Store an upload (a stream, copied in chunks) and queue its conversion; the original is on disk
    before anything else. Quotas are checked first, and the stored size while copying."""
    head = upload.read(HEAD)
    if not head:
        raise LivedocError("The file is empty.", code="empty_file")
    kind = kind_of_head(head)
    settle_unfinished(connection, owner, config["MAX_CONVERSIONS_PER_USER"])
    use = quotas.usage(owner)
    left = quotas.check_upload(use, config)
    doc = Document(id=new_doc_id(), owner_id=owner.id, filename=display_name(filename), kind=kind,
                   size=0, state=progress.State.QUEUED.value, last_seq=1, attempt=1)
    files = files_of(doc)
    checked = _CheckedUpload(head, upload, kind, left, lambda: quotas.raise_storage(use, config))
    try:
        size = files.save_original_stream(checked)
    except BaseException:
        shutil.rmtree(files.root, ignore_errors=True)
        raise
    doc.size = doc.stored_bytes = size
    db.session.add(doc)
    db.session.commit()
    _enqueue(connection, config, doc, seq=1, attempt=1)
    return doc


def settle_unfinished(connection: Redis, user: User, cap: int) -> None:
    """Record the endings of the user's conversions that ended unwatched, so they stop counting."""
    progress_of_many(connection, unfinished(user, limit=cap + 50))


def _enqueue(connection: Redis, config: Mapping, doc: Document, seq: int, attempt: int) -> None:
    try:
        job_id = jobs.enqueue_conversion(connection, config, doc.id, doc.kind, seq=seq, attempt=attempt)
    except RedisError:
        # The upload is safe on disk and in the database; let the owner retry once Redis is back.
        _store_final(doc, _not_queued(seq, attempt))
        db.session.commit()
        raise Unavailable("The file was saved but could not be queued; retry it in a moment.") from None
    doc.job_id = job_id
    db.session.commit()


def _not_queued(seq: int, attempt: int) -> progress.Progress:
    prog = progress.initial(seq, attempt)
    message = "The conversion could not be queued."
    prog.update(state=progress.State.FAILED.value, stage="failed", message=message,
                error={"code": "not_queued", "message": message, "retryable": True})
    return prog


def get_owned(doc_id: str, user: User) -> Document:
    """The user's document; NotFound both when it is absent and when it is someone else's."""
    if not valid_doc_id(doc_id):
        raise NotFound()
    doc = db.session.get(Document, doc_id)
    if doc is None or doc.owner_id != user.id:
        if doc is not None:
            audit("access_denied", document=doc_id)
        raise NotFound()
    return doc


def owned_among(doc_ids: list[str], user_id: int) -> dict[str, Document]:
    """Those of the ids that name the user's documents, in one query (the rest: absent or not theirs)."""
    valid = [d for d in doc_ids if valid_doc_id(d)]
    if not valid:
        return {}
    found = db.session.execute(db.select(Document).filter(Document.id.in_(valid))).scalars().all()
    for doc in found:
        if doc.owner_id != user_id:
            audit("access_denied", document=doc.id)
    return {doc.id: doc for doc in found if doc.owner_id == user_id}


def unfinished(user: User, limit: int) -> list[Document]:
    """The user's documents whose conversion has not ended, newest first."""
    return db.session.execute(
        db.select(Document).filter(Document.owner_id == user.id, Document.state.not_in(progress.TERMINAL))
        .order_by(Document.created_at.desc()).limit(limit)).scalars().all()


def _output_bytes(doc: Document) -> int:
    try:
        return sum(p.stat().st_size for p in files_of(doc).out.iterdir() if p.is_file())
    except OSError:
        return 0


def _store_final(doc: Document, prog: progress.Progress) -> None:
    # The quota counts what the document holds now: its original, and its output once complete.
    complete = prog["state"] == progress.State.COMPLETE.value
    doc.stored_bytes = doc.size + (_output_bytes(doc) if complete else 0)
    doc.state = prog["state"]
    doc.last_seq = prog["seq"]
    doc.attempt = prog.get("attempt", doc.attempt)
    doc.pages = prog.get("pages") or 0
    error = prog.get("error") or {}
    doc.error_code = error.get("code")
    doc.error_message = error.get("message")
    doc.error_retryable = error.get("retryable")


def _from_final(doc: Document) -> progress.Progress:
    prog = progress.initial(doc.last_seq, doc.attempt)
    complete = doc.state == progress.State.COMPLETE.value
    prog.update(state=doc.state, stage=doc.state, percent=100 if complete else prog["percent"],
                page=doc.pages, pages=doc.pages, message="Ready" if complete else doc.error_message)
    if not complete:
        prog["error"] = {"code": doc.error_code, "message": doc.error_message,
                         "retryable": bool(doc.error_retryable)}
    return prog


def _settle(connection: Redis, doc: Document, prog: progress.Progress | None) -> progress.Progress:
    """Reconcile what Redis says with what the database remembers (RQ expires old jobs)."""
    if prog is None:
        # The job's record is gone: its output decides the ending, or, after a grace period in
        # which a worker that rode out a Redis restart would have written again, it is lost.
        seq = progress.vanished_seq(doc.last_seq)
        if files_of(doc).manifest() is not None:
            prog = progress.initial(seq, doc.attempt)
            prog.update(state=progress.State.COMPLETE.value, stage="complete", percent=100,
                        message="Ready")
        elif _missing_for(connection, doc.job_id) < current_app.config["JOB_VANISH_GRACE"]:
            return progress.initial(doc.last_seq, doc.attempt)  # not an ending yet
        else:
            prog = progress.lost(progress.initial(seq - 1, doc.attempt))
    if progress.is_terminal(prog) and prog["seq"] > doc.last_seq:
        if prog["state"] == progress.State.COMPLETE.value:
            manifest = files_of(doc).manifest() or {}
            prog = {**prog, "pages": manifest.get("pages", prog.get("pages", 0))}
        _store_final(doc, prog)
        db.session.commit()
    return prog


def _missing_for(connection: Redis, job_id: str) -> float:
    """Seconds since any reader first found this job's record missing (shared by all hosts)."""
    key = keys.MISSING_JOB + job_id
    now = time.time()
    connection.set(key, now, nx=True, ex=7 * 24 * 3600)
    first = connection.get(key)
    return now - float(first) if first else 0.0


def current_progress(connection: Redis, doc: Document) -> progress.Progress:
    """The document's progress now: from its job while it runs, from the database after."""
    if doc.state in progress.TERMINAL:
        return _from_final(doc)
    if doc.job_id is None:
        return progress.initial(doc.last_seq, doc.attempt)  # being queued right now
    return _settle(connection, doc, progress.read(connection, doc.job_id) if doc.job_id else None)


def progress_of_many(connection: Redis, docs: list[Document]) -> dict[str, progress.Progress]:
    """Progress of many documents, reading Redis once for all running ones."""
    running = [d for d in docs if d.state not in progress.TERMINAL and d.job_id]
    fresh = progress.read_many(connection, [d.job_id for d in running])
    out = {}
    for doc in docs:
        if doc.state in progress.TERMINAL:
            out[doc.id] = _from_final(doc)
        elif doc.job_id is None:
            out[doc.id] = progress.initial(doc.last_seq, doc.attempt)
        else:
            out[doc.id] = _settle(connection, doc, fresh.get(doc.job_id))
    return out


def retry(connection: Redis, config: Mapping, doc: Document) -> Document:
    """Queue a new attempt of a document whose last attempt failed with a retryable error."""
    prog = current_progress(connection, doc)
    error = prog.get("error") or {}
    if prog["state"] != progress.State.FAILED.value or not error.get("retryable"):
        raise Conflict("Only a failed conversion that can succeed on a new try can be retried.",
                       code="not_retryable")
    owner = db.session.get(User, doc.owner_id)
    settle_unfinished(connection, owner, config["MAX_CONVERSIONS_PER_USER"])
    quotas.check_conversion(quotas.usage(owner), config)
    attempt, seq = prog.get("attempt", 1) + 1, prog["seq"] + 1
    # Claim the retry in one conditional UPDATE, so two clicks cannot queue two attempts.
    claimed = db.session.execute(
        db.update(Document)
        .where(Document.id == doc.id, Document.state == progress.State.FAILED.value,
               Document.last_seq == prog["seq"])
        .values(state=progress.State.QUEUED.value, last_seq=seq, attempt=attempt, error_code=None,
                error_message=None, error_retryable=None)
    ).rowcount
    db.session.commit()
    if claimed != 1:
        raise Conflict("A retry is already under way.", code="retry_in_progress")
    db.session.refresh(doc)
    _enqueue(connection, config, doc, seq=seq, attempt=attempt)
    return doc


def status_body(doc: Document, prog: progress.Progress) -> dict:
    """JSON of the status endpoint: the progress contract plus the document id."""
    return {**prog, "document_id": doc.id}


def summary(doc: Document, prog: progress.Progress) -> dict:
    """A document as listed by the API."""
    from flask import url_for

    return {
        "id": doc.id,
        "filename": doc.filename,
        "kind": doc.kind,
        "size": doc.size,
        "created_at": doc.created_at.isoformat() + "Z",
        "progress": prog,
        "status_url": url_for("realtime.status", doc_id=doc.id),
        "events_url": url_for("realtime.events", doc_id=doc.id),
        "viewer_url": url_for("documents.viewer", doc_id=doc.id),
    }
