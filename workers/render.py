"""Sharper renditions on demand: `render_hd(doc_id, kind, attempt, n)`, queued by the web when a
reader zooms in further than the page image's pixels allow. One that does not fit in its owner's
storage quota is not stored: the viewer keeps the page image."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rq import get_current_job

from config import Settings
from livedoc import keys
from livedoc.storage import HD_KINDS, DocumentFiles, hd_name, open_storage
from workers.errors import QuotaExceeded
from workers.pages import JPEG_QUALITY, for_jpeg
from workers.pdf import BITMAP, POINTS_PER_INCH, open_document
from workers.quota import Meter, charged

NOT_STORED_QUOTA = {"stored": False, "reason": "quota_exceeded"}


def render_hd(doc_id: str, kind: str, attempt: int, n: int, quota: dict | None = None) -> dict:
    """Render page n of a document's PDF at HD_DPI (within MAX_PAGE_PIXELS x 4) and store it as
    hd-NNNN.jpg, if it fits in the owner's quota (`quota`: {"user", "limit"}; none for older jobs)."""
    settings = Settings.from_env()
    job = get_current_job()
    meter = Meter.of_job(job.connection, quota, doc_id, keys.QUOTA_HD) if job is not None else None
    files = DocumentFiles(charged(open_storage(settings), meter), doc_id)
    key = files.key(attempt, hd_name(n))
    if kind not in HD_KINDS or files.storage.exists(key):
        return {"stored": False}
    root = files.storage.scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{doc_id}-hd-", dir=root))
    try:
        pdf_key = files.pdf_key(kind, attempt)
        source = files.storage.local_path(pdf_key)
        if source is None:
            source = scratch / "source.pdf"
            files.storage.fetch(pdf_key, source)
        doc = open_document(source)
        try:
            page = doc[n - 1]
            width, height = page.get_size()
            # Never more pixels than four normal pages' worth: zoom is no way around the bomb cap.
            scale = min(
                settings.HD_DPI / POINTS_PER_INCH,
                (4 * settings.MAX_PAGE_PIXELS / max(1.0, width * height)) ** 0.5,
            )
            bitmap = page.render(scale=scale, **BITMAP)
            image = bitmap.to_pil()
            rgb = for_jpeg(image)
            out = scratch / hd_name(n)
            rgb.save(out, "JPEG", quality=JPEG_QUALITY)
            if rgb is not image:
                rgb.close()
            image.close()
            bitmap.close()
            page.close()
        finally:
            doc.close()
        try:
            files.storage.put_file(key, out)
        except QuotaExceeded:
            return NOT_STORED_QUOTA
        return {"stored": True}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
