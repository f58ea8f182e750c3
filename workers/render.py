"""Sharper renditions on demand: `render_hd(doc_id, kind, attempt, n)`, queued by the web when a
reader zooms in further than the page image's pixels allow."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from config import Settings
from livedoc.storage import HD_KINDS, DocumentFiles, hd_name, open_storage
from workers.pages import JPEG_QUALITY, for_jpeg
from workers.pdf import BITMAP, POINTS_PER_INCH, open_document


def render_hd(doc_id: str, kind: str, attempt: int, n: int) -> dict:
    """Render page n of a document's PDF at HD_DPI (within MAX_PAGE_PIXELS x 4) and store it as
    hd-NNNN.jpg."""
    settings = Settings.from_env()
    files = DocumentFiles(open_storage(settings), doc_id)
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
        files.storage.put_file(key, out)
        return {"stored": True}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
