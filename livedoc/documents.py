"""Documents: creating them, finding the caller's own, their progress, pages, search, retry, delete."""

from __future__ import annotations

import errno
import logging
import time
import unicodedata
from collections.abc import Callable, Mapping
from typing import BinaryIO

import gevent
from flask import current_app
from gevent import monkey
from redis import Redis
from redis.exceptions import RedisError

from livedoc import capabilities, endings, fleet, jobs, progress, quotas
from livedoc.appctx import file_storage
from livedoc.audit import audit
from livedoc.errors import (
    Conflict,
    InsufficientStorage,
    LivedocError,
    NotFound,
    Unavailable,
    UnsupportedType,
)
from livedoc.extensions import db
from livedoc.ids import new_doc_id, valid_doc_id
from livedoc.models import Document, User
from livedoc.sniff import HEAD, TextCheck, kind_of_head
from livedoc.storage import HD_KINDS, DocumentFiles

log = logging.getLogger("livedoc")


def display_name(filename: str | None) -> str:
    """A name fit to show: the client's name without any path, control characters or excess length."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C")
    return name.strip()[:200] or "untitled"


def files_of(doc: Document) -> DocumentFiles:
    """The document's files in the app's storage."""
    return DocumentFiles(file_storage(), doc.id)


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


def create(
    connection: Redis, config: Mapping, owner: User, filename: str | None, upload: BinaryIO
) -> Document:
    """Store an upload (a stream, copied in chunks) and queue its conversion; the original is on disk
    before anything else. Quotas are checked first, and the stored size while copying."""
    head = upload.read(HEAD)
    if not head:
        raise LivedocError("The file is empty.", code="empty_file")
    kind = kind_of_head(head)
    capabilities.require(connection, kind)
    settle_unfinished(connection, owner, config["MAX_CONVERSIONS_PER_USER"])
    use = quotas.usage(owner)
    left = quotas.check_upload(use, config)
    doc = Document(
        id=new_doc_id(),
        owner_id=owner.id,
        filename=display_name(filename),
        kind=kind,
        size=0,
        state=progress.State.QUEUED.value,
        last_seq=1,
        attempt=1,
    )
    files = files_of(doc)
    checked = _CheckedUpload(head, upload, kind, left, lambda: quotas.raise_storage(use, config))
    added = False
    try:
        size = files.save_original_stream(checked)
        doc.size = doc.stored_bytes = size
        with quotas.admitting(connection, owner):
            # Checked again with what the user holds now: another upload may have been admitted
            # while this one was copied.
            now = quotas.usage(owner)
            if size > quotas.check_upload(now, config):
                quotas.raise_storage(now, config)
            db.session.add(doc)
            db.session.commit()
            added = True
    except BaseException as exc:
        if not added:
            db.session.rollback()
            files.delete()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # The operator has to act; the client is told so (507), without a trace in the log.
            log.error("storage full: an upload of %s could not be stored", owner.username)
            raise InsufficientStorage() from None
        raise
    _enqueue(connection, config, doc, seq=1, attempt=1)
    return doc


def settle_unfinished(connection: Redis, user: User, cap: int) -> None:
    """Record the endings of the user's conversions that ended unwatched, so they stop counting."""
    progress_of_many(connection, unfinished(user, limit=cap + 50))


def _enqueue(
    connection: Redis,
    config: Mapping,
    doc: Document,
    seq: int,
    attempt: int,
    start: progress.Progress | None = None,
) -> None:
    try:
        job_id = jobs.enqueue_conversion(
            connection,
            config,
            doc.id,
            doc.kind,
            seq=seq,
            attempt=attempt,
            quota=quotas.job_quota(doc.owner_id, config),
            start=start,
        )
    except RedisError:
        # The upload is safe on disk and in the database; let the owner retry once Redis is back.
        _store_final(doc, _not_queued(seq, attempt))
        db.session.commit()
        raise Unavailable("The file was saved but could not be queued; retry it in a moment.") from None
    doc.job_id = job_id
    db.session.commit()


def _not_queued(seq: int, attempt: int) -> progress.Progress:
    prog = progress.initial(seq, attempt)
    prog.update(progress.failure(endings.NOT_QUEUED))
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
    return (
        db.session.execute(
            db.select(Document)
            .filter(Document.owner_id == user.id, Document.state.not_in(progress.TERMINAL))
            .order_by(Document.created_at.desc())
            .limit(limit)
        )
        .scalars()
        .all()
    )


def _store_final(doc: Document, prog: progress.Progress, manifest: dict | None = None) -> None:
    doc.state = prog["state"]
    doc.last_seq = prog["seq"]
    doc.attempt = prog.get("attempt", doc.attempt)
    # A failed attempt keeps the pages it stored readable: the row remembers how many (`ready`).
    doc.pages = (
        (manifest or {}).get("pages", prog.get("pages") or 0)
        if doc.state == "complete"
        else prog.get("ready") or 0
    )
    # The quota counts what the document holds now: its original, and the pages it kept.
    doc.stored_bytes = files_of(doc).stored_bytes() or doc.size
    error = prog.get("error") or {}
    doc.error_code = error.get("code")
    doc.error_message = error.get("message")
    doc.error_retryable = error.get("retryable")


def _from_final(doc: Document) -> progress.Progress:
    prog = progress.initial(doc.last_seq, doc.attempt)
    complete = doc.state == progress.State.COMPLETE.value
    prog.update(
        state=doc.state,
        stage=doc.state,
        percent=100 if complete else prog["percent"],
        page=doc.pages,
        pages=doc.pages,
        ready=doc.pages,
        message="Ready" if complete else doc.error_message,
    )
    if not complete:
        prog["error"] = {
            "code": doc.error_code,
            "message": doc.error_message,
            "retryable": bool(doc.error_retryable),
        }
    return prog


def _settle(connection: Redis, doc: Document, prog: progress.Progress | None) -> progress.Progress:
    """Reconcile what Redis says with what the database remembers (RQ expires old jobs)."""
    if prog is None:
        # The job's record is gone: its output decides the ending, or, after a grace period in
        # which a worker that rode out a Redis restart would have written again, it is lost.
        manifest = _finished_manifest(doc)
        if manifest is not None:
            prog = progress.initial(progress.vanished_seq(doc.last_seq), manifest["attempt"])
            prog.update(
                state=progress.State.COMPLETE.value,
                stage="complete",
                percent=100,
                pages=manifest["pages"],
                page=manifest["pages"],
                ready=manifest["pages"],
                message="Ready",
            )
        else:
            last = progress.initial(doc.last_seq, doc.attempt)
            prog = progress.vanished_endings(
                connection, {doc.job_id: last}, current_app.config["JOB_VANISH_GRACE"]
            ).get(doc.job_id)
            if prog is None:
                return last  # not an ending yet
            # Nobody wrote within the grace: no worker holds it. The original is in storage, so the
            # document is queued again (keeping its pages) rather than lost with Redis.
            again = _recover(connection, current_app.config, doc, last)
            if again is not None:
                return again
    if progress.is_terminal(prog) and prog["seq"] > doc.last_seq:
        manifest = files_of(doc).manifest(prog["attempt"]) if prog["state"] == "complete" else None
        _store_final(doc, prog, manifest)
        db.session.commit()
        # The row counts the pages now: the workers' quota base takes them over from the conversion.
        quotas.recount(connection, doc.owner_id)
    return prog


# A document whose conversion vanished this many attempts in is given up (worker_lost), not queued
# again: something other than a lost Redis keeps ending it.
RECOVER_ATTEMPTS = 12


def _recover(
    connection: Redis, config: Mapping, doc: Document, last: progress.Progress
) -> progress.Progress | None:
    """Queue again a document whose job vanished from Redis, as a new attempt that keeps every page
    stored before; its progress, or None when it is not to be recovered (or another host did)."""
    files = files_of(doc)
    attempt = max([doc.attempt, *files.attempts_stored()]) + 1
    if attempt > RECOVER_ATTEMPTS:
        return None
    # Above any seq the vanished job reached, so every viewer applies it (progress.vanished_seq).
    seq = progress.vanished_seq(doc.last_seq)
    claimed = db.session.execute(
        db.update(Document)
        .where(
            Document.id == doc.id,
            Document.job_id == doc.job_id,
            Document.state.not_in(progress.TERMINAL),
        )
        .values(attempt=attempt, last_seq=seq)
    ).rowcount
    db.session.commit()
    if claimed != 1:
        return last  # another request or host recovers it
    db.session.refresh(doc)
    log.warning("document %s: its job vanished from Redis; queued again as attempt %d", doc.id, attempt)
    start = _resumed(files, seq, attempt, "The conversion was interrupted; it goes on where it stopped.")
    try:
        _enqueue(connection, config, doc, seq=seq, attempt=attempt, start=start)
    except Unavailable:
        return _from_final(doc)
    return start


def _resumed(files: DocumentFiles, seq: int, attempt: int, message: str) -> progress.Progress:
    """The first progress of an attempt the web queues: the newest earlier attempt's pages are moved
    under its number first, so the pages a viewer was shown stay servable (`ready` never goes back)."""
    files.carry_over(attempt)
    layout = files.layout(attempt) or {}
    pages = int(layout.get("pages") or 0)
    return progress.resumed(seq, attempt, files.leading_pages(attempt), pages, message)


def recover_unfinished(connection: Redis, limit: int = 500) -> None:
    """Settle every unfinished document (a periodic sweep): those whose job vanished from Redis, even
    with nobody watching, are queued again after the grace."""
    docs = (
        db.session.execute(
            db.select(Document)
            .filter(Document.state.not_in(progress.TERMINAL), Document.job_id.is_not(None))
            .order_by(Document.created_at)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    progress_of_many(connection, docs)


def _finished_manifest(doc: Document) -> dict | None:
    """The manifest of an attempt of this document that completed, looked for when its job vanished
    (RQ retries raise the attempt number past the document's, at most JOB_RETRIES times)."""
    files = files_of(doc)
    for attempt in range(doc.attempt + current_app.config["JOB_RETRIES"], doc.attempt - 1, -1):
        manifest = files.manifest(attempt)
        if manifest is not None:
            return {**manifest, "attempt": attempt}
    return None


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
        raise Conflict(
            "Only a failed conversion that can succeed on a new try can be retried.", code="not_retryable"
        )
    owner = db.session.get(User, doc.owner_id)
    settle_unfinished(connection, owner, config["MAX_CONVERSIONS_PER_USER"])
    attempt, seq = prog.get("attempt", 1) + 1, prog["seq"] + 1
    with quotas.admitting(connection, owner):
        quotas.check_conversion(quotas.usage(owner), config)
        # Claim the retry in one conditional UPDATE, so two clicks cannot queue two attempts.
        claimed = db.session.execute(
            db.update(Document)
            .where(
                Document.id == doc.id,
                Document.state == progress.State.FAILED.value,
                Document.last_seq == prog["seq"],
            )
            .values(
                state=progress.State.QUEUED.value,
                last_seq=seq,
                attempt=attempt,
                error_code=None,
                error_message=None,
                error_retryable=None,
            )
        ).rowcount
        db.session.commit()
    if claimed != 1:
        raise Conflict("A retry is already under way.", code="retry_in_progress")
    db.session.refresh(doc)
    start = _resumed(files_of(doc), seq, attempt, "Queued again; the pages converted so far stay.")
    _enqueue(connection, config, doc, seq=seq, attempt=attempt, start=start)
    return doc


def queue_status(
    connection: Redis, config: Mapping, doc: Document, prog: progress.Progress
) -> fleet.QueueInfo | None:
    """While the document waits for a worker: its place among the documents that start before it
    (not counting page ranges or sharper pages) and how many workers are alive."""
    if prog["state"] != progress.State.QUEUED.value or not doc.job_id:
        return None
    queue_name, cap = config["QUEUE_NAME"], config.get("HD_PER_USER", 2)
    return fleet.waiting_place(connection, queue_name, doc.job_id, cap)


def status_body(doc: Document, prog: progress.Progress) -> dict:
    """JSON of the status endpoint: the progress contract plus the document id."""
    return status_body_of(doc.id, prog)


def status_body_of(doc_id: str, prog: progress.Progress) -> dict:
    """The status JSON of a document known by its id only (a parked long-poll holds no row)."""
    return {**prog, "document_id": doc_id}


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
        "download_url": url_for("documents.download", doc_id=doc.id),
        "search_url": url_for("documents.api_search", doc_id=doc.id),
    }


# -- pages, reading position, delete ------------------------------------------------------------


def files_url(doc: Document, attempt: int) -> str:
    """The URL prefix of an attempt's page files (the client appends a file name)."""
    from flask import url_for

    return url_for("documents.page_file", doc_id=doc.id, attempt=attempt, name="page-0001.jpg")[
        : -len("page-0001.jpg")
    ]


def pages_of(doc: Document, prog: progress.Progress) -> dict:
    """What the viewer lays out: every page's size (placeholders), the ready pages' files, the outline."""
    attempt, ready = prog.get("attempt", doc.attempt), prog.get("ready") or 0
    layout = files_of(doc).layout(attempt)
    if layout is None:
        return {"files_url": None, "sizes": [], "pages": [], "outline": [], "hd": False}
    base = files_url(doc, attempt)
    sizes = layout.get("sizes") or []
    ready = min(ready, len(sizes))
    pages = []
    for n in range(1, ready + 1):
        width, height = sizes[n - 1]
        names = storage_names(n)
        pages.append({"n": n, "width": width, "height": height, **{k: base + v for k, v in names.items()}})
    return {
        "files_url": base,
        "sizes": sizes,
        "pages": pages,
        "outline": layout.get("outline") or [],
        "hd": doc.kind in HD_KINDS,
    }


def storage_names(n: int) -> dict[str, str]:
    """Page n's file names by role, as the API lists them."""
    from livedoc.storage import hd_name, page_names

    return {**page_names(n), "hd": hd_name(n)}


def _sleep(seconds: float) -> None:
    # gevent's sleep under gunicorn -k gevent: other requests go on meanwhile. Where sockets are not
    # gevent's (the test client) another greenlet, such as a stream hub's, may sit in a plain blocking
    # read, and switching to it would hang this request for good: a plain sleep there.
    if monkey.is_module_patched("socket"):
        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


def servable(doc: Document, prog: progress.Progress, attempt: int, name: str) -> tuple[str, int] | None:
    """(role, page) when this file of this attempt may be served now: its page is ready."""
    from livedoc.storage import parse_page_file

    parsed = parse_page_file(name)
    if parsed is None or attempt != prog.get("attempt", doc.attempt):
        return None
    if parsed[1] < 1 or parsed[1] > (prog.get("ready") or 0):
        return None
    return parsed


def sharper_page(connection: Redis, config: Mapping, doc: Document, attempt: int, n: int) -> None:
    """Make sure page n's sharper rendition is stored, rendering it on a worker first if need be.

    Rendered on demand because a reader zooms into few pages: storing every page at HD_DPI would
    take about 7 times the storage of the page images for pages nobody zooms into.
    """
    if doc.kind not in HD_KINDS:
        raise NotFound("No sharper rendition of this page.")
    files = files_of(doc)
    key = files.key(attempt, storage_names(n)["hd"])
    if files.storage.exists(key):
        return
    owner_id = doc.owner_id
    db.session.close()  # the wait below may be seconds long: hold no database connection
    jobs.enqueue_hd(
        connection, config, doc.id, doc.kind, attempt, n, quota=quotas.job_quota(owner_id, config)
    )
    job_key = progress.job_key(jobs.hd_job_id(doc.id, attempt, n))
    deadline = time.monotonic() + config["HD_WAIT"]
    while time.monotonic() < deadline:
        _sleep(0.1)
        if files.storage.exists(key):
            return
        # Its job stores the file before it finishes: finished without it, it did not fit the quota.
        if connection.hget(job_key, "status") == b"finished" and not files.storage.exists(key):
            quotas.raise_hd_storage(quotas.usage(db.session.get(User, owner_id)), config)
    raise Unavailable("The sharper page is not rendered yet; try again in a moment.")


def set_position(doc: Document, page: int) -> None:
    """Remember the page the owner is reading."""
    doc.last_page = page
    db.session.commit()


def delete(connection: Redis, config: Mapping, doc: Document) -> None:
    """Remove the row, then stop the conversion, end every open stream on "deleted", remove the files."""
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job

    prog = current_progress(connection, doc)
    files, job_id, owner_id = files_of(doc), doc.job_id, doc.owner_id
    # The row goes first: a viewer told "deleted" by its stream may reload at once and must find
    # nothing. A crash after this commit can leave files without a row, never a row without files.
    db.session.delete(doc)
    db.session.commit()
    if job_id:
        try:
            job = Job.fetch(job_id, connection=connection, serializer=jobs.SERIALIZER)
        except NoSuchJobError:
            job = None
        if job is not None:
            # First the mark that stops every writer, then the running work horse itself.
            progress.mark_deleted(connection, job, prog)
            jobs.queue(connection, config["QUEUE_NAME"]).remove(job.id)
            try:
                send_stop_job_command(connection, job.id, serializer=jobs.SERIALIZER)
            except InvalidJobOperation:
                pass  # not running: nothing to stop
            else:
                _wait_stopped(connection, job.id)
    files.delete()
    # Its bytes leave the workers' quota base too (settled, and what its conversion had charged).
    quotas.recount(connection, owner_id)


def _wait_stopped(connection: Redis, job_id: str, timeout: float = 5.0) -> None:
    """Wait (cooperatively) until the stopped work horse is gone: killed between storing a page
    file and its next (refused) save, it could not remove that file itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if connection.hget(progress.job_key(job_id), "status") != b"started":
            return
        _sleep(0.05)
