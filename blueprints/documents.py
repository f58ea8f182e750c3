"""Documents: upload, list, the viewer, retry, delete, search, reading position, and the files."""

from __future__ import annotations

import logging
import os
import random

import gevent
import gevent.lock
from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask_login import current_user, login_required
from gevent import monkey
from werkzeug.datastructures import FileStorage

from blueprints.realtime import user_key
from livedoc import documents, fair, keys, progress, search
from livedoc.appctx import file_storage, realtime_flags, redis_conn
from livedoc.audit import audit
from livedoc.errors import LivedocError, NotFound, TooManyRequests
from livedoc.extensions import db, limiter
from livedoc.models import Document

bp = Blueprint("documents", __name__)
log = logging.getLogger("livedoc")


def sweep_forever(app) -> None:
    """Every RECOVERY_INTERVAL, in whichever web process takes the turn first (a Redis lock, so one
    per interval across hosts), settle every unfinished document: a conversion Redis lost is queued
    again from the database even when nobody is watching it."""
    interval = app.config["RECOVERY_INTERVAL"]
    while interval > 0:
        gevent.sleep(interval * random.uniform(0.5, 1.0))
        try:
            with app.app_context():
                connection = redis_conn()
                if connection.set(keys.RECOVERY_SWEEP, os.getpid(), nx=True, ex=interval):
                    documents.recover_unfinished(connection)
                    # Turns are given when jobs end (RQ callbacks, livedoc's worker); this is the net
                    # for an end nobody reported (a stock worker whose work horse died).
                    fair.admit(connection, app.config["QUEUE_NAME"], app.config["HD_PER_USER"])
        except Exception:  # noqa: BLE001 - Redis or the database may be down; the next turn tries again
            log.warning("the recovery sweep failed", exc_info=True)


def _upload_limit() -> str:
    return current_app.config["RATELIMIT_UPLOAD"]


def _read_upload() -> tuple[str | None, FileStorage]:
    """The uploaded file from the multipart field `file` (Werkzeug spools large ones to disk)."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise LivedocError("Send the file as multipart/form-data in the field 'file'.", code="bad_upload")
    upload = request.files.get("file")
    if upload is None:
        raise LivedocError("No file in the field 'file'.", code="bad_upload")
    return upload.filename, upload


def _create_from_upload() -> Document:
    """Store the uploaded file as a new document of the caller and queue its conversion."""
    filename, upload = _read_upload()
    doc = documents.create(redis_conn(), current_app.config, current_user, filename, upload.stream)
    audit("upload", document=doc.id, kind=doc.kind, size=doc.size)
    return doc


def _retry_owned(doc_id: str) -> Document:
    """Queue a new attempt of the caller's failed document."""
    doc = documents.get_owned(doc_id, current_user)
    documents.retry(redis_conn(), current_app.config, doc)
    audit("retry", document=doc.id, attempt=doc.attempt)
    return doc


def _user_docs() -> list[Document]:
    return (
        db.session.execute(
            db.select(Document).filter_by(owner_id=current_user.id).order_by(Document.created_at.desc())
        )
        .scalars()
        .all()
    )


# -- pages -----------------------------------------------------------------------------------------
@bp.route("/")
def index():
    """Home: the document list for users, the login page for everyone else."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return redirect(url_for("documents.list_page"))


@bp.route("/documents")
@login_required
def list_page():
    """'My documents' with their states and the upload form."""
    return _render_list()


def _render_list(error: str | None = None, status: int = 200):
    docs = _user_docs()
    states = documents.progress_of_many(redis_conn(), docs)
    return render_template(
        "documents/list.html",
        docs=docs,
        states=states,
        error=error,
        max_mb=current_app.config["MAX_UPLOAD_MB"],
        flags=realtime_flags(),
    ), status


@bp.route("/documents", methods=["POST"])
@login_required
@limiter.limit(_upload_limit)
def upload_form():
    """The HTML upload form: store, queue, and go to the viewer."""
    try:
        doc = _create_from_upload()
    except LivedocError as exc:
        return _render_list(exc.message, exc.status)
    return redirect(url_for("documents.viewer", doc_id=doc.id), code=303)


@bp.route("/documents/<doc_id>")
@login_required
def viewer(doc_id: str):
    """The viewer: live progress, and every page the moment it is ready."""
    doc = documents.get_owned(doc_id, current_user)
    prog = documents.current_progress(redis_conn(), doc)
    queue = documents.queue_status(redis_conn(), current_app.config, doc, prog)
    return render_template(
        "documents/viewer.html",
        doc=doc,
        progress=prog,
        layout=documents.pages_of(doc, prog),
        flags=realtime_flags(),
        config=current_app.config,
        queue=queue,
    )


@bp.route("/documents/<doc_id>/files/<attempt>/<name>")
@login_required
def page_file(doc_id: str, attempt: str, name: str):
    """One page file (image, thumbnail, text, text layer) of a page that is ready."""
    doc = documents.get_owned(doc_id, current_user)
    # One spelling per file: "01" or "+1" would be the same attempt under another URL.
    number = (
        int(attempt)
        if attempt.isascii() and attempt.isdigit() and attempt[0] != "0" and len(attempt) < 10
        else None
    )
    prog = documents.current_progress(redis_conn(), doc)
    parsed = documents.servable(doc, prog, number, name) if number is not None else None
    if parsed is None:
        raise NotFound("No such page, or it is not ready yet.")
    if parsed[0] == "hd":
        documents.sharper_page(redis_conn(), current_app.config, doc, number, parsed[1])
    return _send(documents.files_of(doc).key(number, name), name)


def _send(key: str, name: str, download_name: str | None = None) -> Response:
    """A stored file: sent from local disk, or a redirect to a short-lived object-storage URL."""
    from livedoc.storage import MIMETYPES

    store = file_storage()
    url = store.url(key, download_name)
    if url is not None:
        resp = redirect(url, code=302)
        resp.headers["Cache-Control"] = "private, no-store"
        return resp
    path = store.local_path(key)
    if path is None:
        raise NotFound("No such file.")
    if download_name is not None:
        return send_file(
            path,
            as_attachment=True,
            download_name=download_name,
            mimetype="application/octet-stream",
            conditional=True,
            max_age=0,
        )
    resp = send_file(path, mimetype=MIMETYPES[name.rsplit(".", 1)[-1]], conditional=True, max_age=86400)
    # A file name within an attempt never changes content: browsers may keep it.
    resp.headers["Cache-Control"] = "private, max-age=86400, immutable"
    return resp


@bp.route("/documents/<doc_id>/download")
@login_required
def download(doc_id: str):
    """The original upload, as an attachment with its original name."""
    doc = documents.get_owned(doc_id, current_user)
    audit("download", document=doc.id)
    files = documents.files_of(doc)
    return _send(files.original_key, "original", download_name=doc.filename)


@bp.route("/documents/<doc_id>/delete", methods=["POST"])
@login_required
def delete_form(doc_id: str):
    """The delete button (after the page's confirmation)."""
    _delete_owned(doc_id)
    return redirect(url_for("documents.list_page"), code=303)


def _delete_owned(doc_id: str) -> None:
    doc = documents.get_owned(doc_id, current_user)
    documents.delete(redis_conn(), current_app.config, doc)
    audit("delete", document=doc_id)


@bp.route("/documents/<doc_id>/retry", methods=["POST"])
@login_required
def retry_form(doc_id: str):
    """The retry button."""
    doc = _retry_owned(doc_id)
    return redirect(url_for("documents.viewer", doc_id=doc.id), code=303)


# -- API -------------------------------------------------------------------------------------------
@bp.route("/api/documents", methods=["POST"])
@login_required
@limiter.limit(_upload_limit)
def api_upload():
    """Upload a document (multipart field `file`); 201 with its URLs."""
    doc = _create_from_upload()
    body = documents.summary(doc, documents.current_progress(redis_conn(), doc))
    resp = jsonify(body)
    resp.status_code = 201
    resp.headers["Location"] = body["viewer_url"]
    return resp


@bp.route("/api/documents")
@login_required
def api_list():
    """The caller's documents with their progress."""
    docs = _user_docs()
    states = documents.progress_of_many(redis_conn(), docs)
    resp = jsonify({"documents": [documents.summary(d, states[d.id]) for d in docs]})
    resp.headers["X-Livedoc-Mode"] = realtime_flags().transport  # pollers climb back when it rises
    return resp


@bp.route("/api/documents/<doc_id>")
@login_required
def api_get(doc_id: str):
    """One document with its progress, its ready pages, every page's size, and its outline."""
    doc = documents.get_owned(doc_id, current_user)
    prog = documents.current_progress(redis_conn(), doc)
    body = {**documents.summary(doc, prog), **documents.pages_of(doc, prog), "last_page": doc.last_page}
    queue = documents.queue_status(redis_conn(), current_app.config, doc, prog)
    if queue is not None:
        body["queue"] = queue.as_dict()
    return jsonify(body)


@bp.route("/api/documents/<doc_id>", methods=["DELETE"])
@login_required
def api_delete(doc_id: str):
    """Delete a document: its conversion stops, its streams end on "deleted", its files go."""
    _delete_owned(doc_id)
    return Response(status=204)


def _search_limit() -> str:
    return current_app.config["RATELIMIT_SEARCH"]


# Searches running at once in this process (SEARCH_CONCURRENCY): each pauses between pages, but ten
# at once would still share the processor ten ways with every stream. Beyond, a search waits, then 429.
_searching: gevent.lock.BoundedSemaphore | None = None


def _pause() -> None:
    # Under gunicorn's gevent worker (sockets patched) a search lets every other request run between
    # pages. Elsewhere (the test client, a plain WSGI server) another greenlet, such as a stream hub's,
    # may sit in an unpatched blocking read: switching to it would hang this request for good.
    if monkey.is_module_patched("socket"):
        gevent.sleep(0)


def _search_slots() -> gevent.lock.BoundedSemaphore:
    global _searching
    if _searching is None:
        _searching = gevent.lock.BoundedSemaphore(current_app.config["SEARCH_CONCURRENCY"])
    return _searching


@bp.route("/api/documents/<doc_id>/search")
@login_required
@limiter.limit(_search_limit, key_func=user_key)
def api_search(doc_id: str):
    """Find a phrase in the pages that are ready: hits with page, snippet and rectangles."""
    query = request.args.get("q", "")
    doc = documents.get_owned(doc_id, current_user)
    try:
        search.needle_of(query)
    except search.BadQuery as exc:
        raise LivedocError(str(exc), code="bad_parameter") from None
    prog = documents.current_progress(redis_conn(), doc)
    files, attempt = documents.files_of(doc), prog.get("attempt", doc.attempt)
    db.session.close()  # the search may take a while: hold no database connection through it
    budget_ms = current_app.config["SEARCH_BUDGET_MS"]
    slots = _search_slots()
    if not slots.acquire(timeout=budget_ms / 1000):
        audit("limit_hit", limit="searches_per_process", cap=current_app.config["SEARCH_CONCURRENCY"])
        raise TooManyRequests("Too many searches are running; try again in a moment.", retry_after=2)
    try:
        found = search.search(
            files, attempt, prog.get("ready") or 0, query, pause=_pause, budget_ms=budget_ms
        )
    finally:
        slots.release()
    return jsonify(
        {
            "query": query,
            "hits": found["hits"],
            "searched_pages": found["searched_pages"],
            "pages": prog.get("pages") or 0,
            "complete": prog["state"] == progress.State.COMPLETE.value,
            "truncated": found["truncated"],
        }
    )


@bp.route("/api/documents/<doc_id>/position", methods=["PUT"])
@login_required
def api_position(doc_id: str):
    """Remember the page being read (`{"page": n}`), restored when the viewer opens again."""
    doc = documents.get_owned(doc_id, current_user)
    body = request.get_json(silent=True)
    page = body.get("page") if isinstance(body, dict) else None
    if not isinstance(page, int) or isinstance(page, bool) or not 1 <= page <= max(1, doc.pages or 100_000):
        raise LivedocError('Send {"page": n} with a page number of this document.', code="bad_parameter")
    documents.set_position(doc, page)
    return Response(status=204)


@bp.route("/api/documents/<doc_id>/retry", methods=["POST"])
@login_required
def api_retry(doc_id: str):
    """Queue a new attempt of a failed, retryable conversion; 202 with the new state."""
    doc = _retry_owned(doc_id)
    resp = jsonify(documents.summary(doc, documents.current_progress(redis_conn(), doc)))
    resp.status_code = 202
    return resp
