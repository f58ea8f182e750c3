"""PDF uploads via pypdfium2: check the whole document first, then render and store page by page."""
from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from config import Settings
from workers.errors import (
    ConversionError,
    CorruptDocument,
    EmptyDocument,
    EncryptedDocument,
    PageTooLarge,
    StorageError,
    TooManyPages,
)
from workers.images import MAX_SIDE
from workers.pages import PageSink, Run, write_page_files

POINTS_PER_INCH = 72
OUTLINE_MAX_ITEMS = 5000
OUTLINE_MAX_DEPTH = 12
PR_SET_PDEATHSIG = 1
RUNS_MAX = 20_000  # text runs kept per page: a hostile page of a million tiny glyphs stays bounded


def open_document(path: Path) -> pdfium.PdfDocument:
    """Open a PDF, turning pdfium's load errors into ConversionErrors."""
    # Loaded through the raw API because pypdfium2 reports a valid zero-page file as a load failure
    # and then reads FPDF_GetLastError, which still holds the previous document's error. Here the
    # error code is read only when the load itself failed, so it belongs to this file.
    raw = pdfium_c.FPDF_LoadDocument(os.fsencode(path) + b"\x00", None)
    if not raw:
        code = pdfium_c.FPDF_GetLastError()
        if code == pdfium_c.FPDF_ERR_PASSWORD:
            raise EncryptedDocument()
        if code == pdfium_c.FPDF_ERR_SECURITY:
            raise EncryptedDocument("This PDF is protected with a kind of encryption that cannot be opened. "
                                    "Upload a copy without protection.")
        if code == pdfium_c.FPDF_ERR_FILE:
            raise StorageError()
        raise CorruptDocument("This PDF is damaged and cannot be read.")
    return pdfium.PdfDocument(raw)


def check_document(doc: pdfium.PdfDocument, settings: Settings) -> list[tuple[int, int]]:
    """Refuse empty, too long or too large documents before any page is rendered; returns the
    rendered size in pixels of every page."""
    pages = len(doc)
    if pages == 0:
        raise EmptyDocument()
    if pages > settings.MAX_PAGES:
        raise TooManyPages(f"The document has {pages} pages; the limit is {settings.MAX_PAGES}.")
    scale = settings.RENDER_DPI / POINTS_PER_INCH
    sizes = []
    for index in range(pages):
        # The size comes from the page dictionary without loading the page, so checking every page
        # up front is cheap and a user waits seconds, not minutes, to learn that page 400 is too big.
        try:
            width, height = doc.get_page_size(index)
        except pdfium.PdfiumError:
            raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
        if (width * scale * height * scale > settings.MAX_PAGE_PIXELS
                or max(width, height) * scale > MAX_SIDE):
            raise PageTooLarge(f"Page {index + 1} is too large to display at {settings.RENDER_DPI} dpi.")
        sizes.append((max(1, round(width * scale)), max(1, round(height * scale))))
    return sizes


def outline(doc: pdfium.PdfDocument) -> list[dict]:
    """The PDF's bookmarks as a tree of {title, page, children} (page: 1-based, or None)."""
    root: list[dict] = []
    stack: list[tuple[int, list[dict]]] = [(-1, root)]
    count = 0
    try:
        for item in doc.get_toc(max_depth=OUTLINE_MAX_DEPTH):
            count += 1
            if count > OUTLINE_MAX_ITEMS:
                break
            dest = item.get_dest()
            index = dest.get_index() if dest is not None else None
            node = {"title": (item.get_title() or "").strip()[:300] or "Untitled",
                    "page": index + 1 if index is not None else None, "children": []}
            while stack[-1][0] >= item.level:
                stack.pop()
            stack[-1][1].append(node)
            stack.append((item.level, node["children"]))
    except pdfium.PdfiumError:
        return root  # a damaged outline is no reason to refuse a readable document
    return root


def convert(source: Path, settings: Settings, sink: PageSink) -> None:
    """Render every page of a PDF to JPEG plus thumbnail, text and text layer, made ready in page order."""
    doc = open_document(source)
    try:
        sizes = check_document(doc, settings)
        sink.begin(sizes, outline(doc))
    finally:
        # pdfium holds native memory that Python's GC does not see; close deterministically.
        doc.close()
    from workers import chunks  # chunks renders through this module

    if chunks.wanted(settings, len(sizes)):
        chunks.run(source, settings, sink)
    else:
        render_pages(source, settings, sink.scratch, 1, len(sizes), sink.store)


Store = Callable[[dict, dict[str, Path]], None]


def render_processes(settings: Settings) -> int:
    """How many processes render one document's pages on this host (RENDER_PROCESSES, 0: every core)."""
    return settings.RENDER_PROCESSES if settings.RENDER_PROCESSES > 0 else (os.cpu_count() or 1)


def render_pages(source: Path, settings: Settings, scratch: Path, first: int, last: int,
                 store: Store) -> set[int]:
    """Render pages first..last into scratch and hand each to `store` in page order; returns the ids
    of the processes that rendered them.

    pdfium is not thread-safe, so a document uses every core through processes, each with the PDF
    open itself. Pages are handed out one at a time and come back in page order (imap), so page k
    is stored as soon as it and those before it are rendered, and nothing but the small page
    entries crosses between processes: the images go through scratch files, and memory stays flat
    whatever the page count. The pool is forked from the work horse, so it is in the horse's
    process group (RQ kills that group on stop and on a hard timeout), dies with the horse
    (PDEATHSIG), and is terminated on every way out of this function.
    """
    scale = settings.RENDER_DPI / POINTS_PER_INCH
    processes = min(render_processes(settings), last - first + 1)
    if threading.active_count() > 1:
        # Forking copies only the calling thread: from a process with other threads (an app with
        # its hub, a test run) a child could inherit a lock held forever. The work horse RQ forks
        # is single-threaded; anywhere else the pages are rendered here, one at a time.
        processes = 1
    render = functools.partial(_render_in_child, scale=scale, scratch=str(scratch),
                               thumb_width=settings.THUMB_WIDTH)
    if processes <= 1:
        _child_open(str(source))
        try:
            results = map(render, range(first - 1, last))
            return _store_all(results, store)
        finally:
            _child_close()
    pool = multiprocessing.get_context("fork").Pool(processes, initializer=_child_init,
                                                    initargs=(str(source),))
    try:
        return _store_all(pool.imap(render, range(first - 1, last)), store)
    finally:
        pool.terminate()
        pool.join()


def _store_all(results: Iterable[tuple], store: Store) -> set[int]:
    pids = set()
    for result in results:
        if "error" in result[0]:
            raise ConversionError.from_error(result[0]["error"])
        entry, paths, pid = result
        pids.add(pid)
        store(entry, {name: Path(path) for name, path in paths.items()})
    return pids


_child_doc: pdfium.PdfDocument | None = None


def _child_init(source: str) -> None:
    # A pool process must not outlive the work horse that forked it (a SIGKILL skips every cleanup).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Handlers inherited from the forking process (a worker's warm-shutdown handler) would swallow the
    # SIGTERM with which the pool is terminated.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _child_open(source)


def _child_open(source: str) -> None:
    global _child_doc
    _child_doc = open_document(Path(source))
    # Without this, filled-in form fields would render empty.
    _child_doc.init_forms()


def _child_close() -> None:
    global _child_doc
    if _child_doc is not None:
        _child_doc.close()
        _child_doc = None


def _render_in_child(index: int, scale: float, scratch: str, thumb_width: int) -> tuple:
    """Render one page and write its files; (entry, paths, pid), or ({"error": ...},) when it fails."""
    assert _child_doc is not None
    pages: list[tuple[dict, dict[str, Path]]] = []
    try:
        render_page(_child_doc, index, scale,
                    lambda n, image, text, runs: pages.append(
                        write_page_files(Path(scratch), n, image, text, runs, thumb_width)))
    except ConversionError as exc:
        return ({"error": exc.error},)
    entry, paths = pages[0]
    return entry, {name: str(path) for name, path in paths.items()}, os.getpid()


def render_page(doc: pdfium.PdfDocument, index: int, scale: float,
                add: Callable[[int, Image.Image, str, list[Run]], object]) -> None:
    """Render one page and hand it to `add` (a sink's add); its native memory is released before returning."""
    try:
        page = doc[index]
    except pdfium.PdfiumError:
        raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
    try:
        try:
            text, runs = page_text(page)
            bitmap = page.render(scale=scale, rev_byteorder=True)
        except pdfium.PdfiumError:
            raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
        try:
            # The PIL image may share the bitmap's buffer, so it is written before the bitmap closes.
            image = bitmap.to_pil()
            add(index + 1, image, text, runs)
            image.close()
        finally:
            bitmap.close()
    finally:
        page.close()


def page_text(page: pdfium.PdfPage) -> tuple[str, list[Run]]:
    """The page's text, and its text runs at their positions (fractions of the rendered page)."""
    textpage = page.get_textpage()
    try:
        text = _normalise(textpage.get_text_range())
        left, bottom, right, top = page.get_cropbox()
        width, height = max(right - left, 1e-6), max(top - bottom, 1e-6)
        rotation = page.get_rotation() % 360
        runs: list[Run] = []
        for i in range(min(textpage.count_rects(), RUNS_MAX)):
            rl, rb, rr, rt = textpage.get_rect(i)
            run_text = textpage.get_text_bounded(rl, rb, rr, rt).replace("\r", "").replace("\n", " ")
            if not run_text.strip():
                continue
            # Top-down fractions of the unrotated page, then turned the way the page is shown.
            u0, u1 = (rl - left) / width, (rr - left) / width
            v0, v1 = (top - rt) / height, (top - rb) / height
            x0, y0, x1, y1 = _rotate(u0, v0, u1, v1, rotation)
            runs.append((round(x0, 5), round(y0, 5), round(x1 - x0, 5), round(y1 - y0, 5), run_text))
        return text, runs
    finally:
        textpage.close()


def _rotate(u0: float, v0: float, u1: float, v1: float, rotation: int) -> tuple[float, float, float, float]:
    corners = [(u0, v0), (u1, v1)]
    if rotation == 90:
        corners = [(1 - v, u) for u, v in corners]
    elif rotation == 180:
        corners = [(1 - u, 1 - v) for u, v in corners]
    elif rotation == 270:
        corners = [(v, 1 - u) for u, v in corners]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _normalise(text: str) -> str:
    # pdfium separates lines with CRLF; the text files use plain newlines like the text kind does.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if not text or text.endswith("\n") else text + "\n"
