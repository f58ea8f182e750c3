"""Documents: upload, list, the viewer, retry, and the converted page files."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, send_file, url_for
from flask_login import current_user, login_required
from werkzeug.datastructures import FileStorage

from livedoc import documents, progress
from livedoc.audit import audit
from livedoc.errors import LivedocError, NotFound
from livedoc.extensions import db, limiter
from livedoc.models import Document
from livedoc.web import realtime_flags, redis_conn

bp = Blueprint("documents", __name__)


def _upload_limit() -> str:
    return current_app.config["RATELIMIT_UPLOAD"]


def _read_upload() -> tuple[str | None, FileStorage]:
    """The uploaded file from the multipart field `file` (Werkzeug spools large ones to disk)."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise LivedocError("Send the file as multipart/form-data in the field 'file'.",
                           code="bad_upload")
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
    return db.session.execute(
        db.select(Document).filter_by(owner_id=current_user.id).order_by(Document.created_at.desc())
    ).scalars().all()


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
    return render_template("documents/list.html", docs=docs, states=states, error=error,
                           max_mb=current_app.config["MAX_UPLOAD_MB"], flags=realtime_flags()), status


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
    """The viewer: live progress while converting, the pages when ready."""
    doc = documents.get_owned(doc_id, current_user)
    prog = documents.current_progress(redis_conn(), doc)
    manifest = documents.files_of(doc).manifest() if prog["state"] == "complete" else None
    return render_template("documents/viewer.html", doc=doc, progress=prog, manifest=manifest,
                           flags=realtime_flags(), config=current_app.config)


@bp.route("/documents/<doc_id>/pages")
@login_required
def pages_fragment(doc_id: str):
    """The rendered pages as an HTML fragment, inserted by the viewer when conversion completes."""
    doc = documents.get_owned(doc_id, current_user)
    manifest = documents.files_of(doc).manifest()
    if manifest is None:
        raise NotFound("The pages are not ready.")
    return render_template("documents/_pages.html", doc=doc, manifest=manifest)


@bp.route("/documents/<doc_id>/files/<name>")
@login_required
def page_file(doc_id: str, name: str):
    """One converted file (page image, thumbnail, text), by a name the manifest lists."""
    doc = documents.get_owned(doc_id, current_user)
    path = documents.files_of(doc).output_file(name)
    if path is None:
        raise NotFound("No such page.")
    mimetype = "text/plain; charset=utf-8" if name.endswith(".txt") else "image/jpeg"
    resp = send_file(path, mimetype=mimetype, conditional=True, max_age=3600)
    resp.headers["Cache-Control"] = "private, max-age=3600"
    return resp


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
    """One document with its progress, and its pages when complete."""
    doc = documents.get_owned(doc_id, current_user)
    prog = documents.current_progress(redis_conn(), doc)
    body = documents.summary(doc, prog)
    manifest = documents.files_of(doc).manifest() if prog["state"] == progress.State.COMPLETE.value else None
    if manifest:
        body["pages"] = [
            {"n": p["n"], "width": p["width"], "height": p["height"],
             **{k: url_for("documents.page_file", doc_id=doc.id, name=p[k])
                for k in ("image", "thumb", "text")}}
            for p in manifest["page_list"]
        ]
    return jsonify(body)


@bp.route("/api/documents/<doc_id>/retry", methods=["POST"])
@login_required
def api_retry(doc_id: str):
    """Queue a new attempt of a failed, retryable conversion; 202 with the new state."""
    doc = _retry_owned(doc_id)
    resp = jsonify(documents.summary(doc, documents.current_progress(redis_conn(), doc)))
    resp.status_code = 202
    return resp
