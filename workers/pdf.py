"""PDF uploads via pypdfium2: check the whole document first, then render and store page by page."""

from __future__ import annotations

import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from config import Settings
from livedoc.storage import DocumentFiles
from workers.errors import (
    ConversionError,
    CorruptDocument,
    EmptyDocument,
    EncryptedDocument,
    InternalError,
    PageTooLarge,
    StorageError,
    TooManyPages,
    TooMuchText,
)
from workers.images import MAX_SIDE
from workers.pages import Run, put_page_files, thumb_size, write_page_files

log = logging.getLogger(__name__)

POINTS_PER_INCH = 72
OUTLINE_MAX_ITEMS = 5000
OUTLINE_MAX_DEPTH = 12
PR_SET_PDEATHSIG = 1
RUNS_MAX = 20_000  # text runs kept per page: a hostile page of a million tiny glyphs stays bounded
# pdfium caches fonts and images per open document, growing over a long book (50 -> 93 MB over the
# 1,158 pages of a real manual); reopening every so many pages holds a render process near its start.
REOPEN_EVERY = 200
WATCH_INTERVAL = 1.0  # seconds between checks that the render processes are alive
MEMORY_MESSAGE = "A page of this PDF needs more memory to convert than this server allows."
# RGBX, 4 bytes a pixel: rows need no padding, so the PIL image shares pdfium's buffer (no copy) and
# libjpeg reads it as it is; 3-byte RGB costs a copy and a slower render (~1.5 ms of ~7 per page).
BITMAP = {"rev_byteorder": True, "prefer_bgrx": True}


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
            raise EncryptedDocument(
                "This PDF is protected with a kind of encryption that cannot be opened. "
                "Upload a copy without protection."
            )
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
        if width * scale * height * scale > settings.MAX_PAGE_PIXELS or max(width, height) * scale > MAX_SIDE:
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
            node = {
                "title": (item.get_title() or "").strip()[:300] or "Untitled",
                "page": index + 1 if index is not None else None,
                "children": [],
            }
            while stack[-1][0] >= item.level:
                stack.pop()
            stack[-1][1].append(node)
            stack.append((item.level, node["children"]))
    except pdfium.PdfiumError:
        return root  # a damaged outline is no reason to refuse a readable document
    return root


# (entry, bytes, announce): page entry stored, with its size; announce says whether its progress is
# to be published now. (None, 0, True): publish what the pages reported so far make of it.
Stored = Callable[[dict | None, int, bool], None]


def render_processes(settings: Settings) -> int:
    """How many processes render one document's pages on this host (RENDER_PROCESSES, 0: every core)."""
    return settings.RENDER_PROCESSES if settings.RENDER_PROCESSES > 0 else (os.cpu_count() or 1)


def render_pages(
    source: Path,
    settings: Settings,
    scratch: Path,
    files: DocumentFiles,
    attempt: int,
    first: int,
    last: int,
    stored: Stored,
    skip: Collection[int] = (),
) -> set[int]:
    """Render pages first..last (but those in `skip`, stored already) through scratch into the
    attempt's storage and report each to `stored` (its manifest entry, its bytes) in page order;
    returns the ids of the processes that rendered them.

    From several processes pages may arrive faster than anyone can watch: their progress is
    announced at most every PROGRESS_INTERVAL, and what was held back is announced as soon as the
    next page keeps this process waiting, and at the end.

    pdfium is not thread-safe, so a document uses every core through processes, each with the PDF
    open itself. Each process also stores the pages it renders (renames, or uploads, in parallel
    too); pages are handed out one at a time and reported in page order (imap), so page k is
    reported as soon as it and those before it are stored, and nothing but the small page entries
    crosses between processes. Memory stays flat whatever the page count. The pool is forked from
    the work horse, so it is in the horse's process group (RQ kills that group on stop and on a
    hard timeout), dies with the horse (PDEATHSIG), and is terminated on every way out of this
    function.
    """
    scale = settings.RENDER_DPI / POINTS_PER_INCH
    indices = [i for i in range(first - 1, last) if i + 1 not in skip]
    if not indices:
        stored(None, 0, True)
        return set()
    processes = min(render_processes(settings), len(indices))
    if threading.active_count() > 1:
        # Forking copies only the calling thread: from a process with other threads (an app with
        # its hub, a test run) a child could inherit a lock held forever. The work horse RQ forks
        # is single-threaded; anywhere else the pages are rendered here, one at a time.
        processes = 1
    render = functools.partial(
        _render_in_child,
        scale=scale,
        scratch=str(scratch),
        thumb_width=settings.THUMB_WIDTH,
        max_text=settings.MAX_PAGE_TEXT,
    )
    if processes <= 1:
        _child_open(str(source), files, attempt)
        try:
            # Rendered right here, the next page keeps the caller waiting: announce every one.
            return _report_all(map(render, indices), stored, 0.0)
        finally:
            _child_close()
    pool = multiprocessing.get_context("fork").Pool(
        processes, initializer=_child_init, initargs=(str(source), files, attempt)
    )
    try:
        interval = settings.PROGRESS_INTERVAL / 1000
        # The pool replaces a process that dies, but the page it was rendering is never answered: its
        # own processes are watched so a death ends the attempt instead of waiting for ever.
        workers = list(pool._pool)  # type: ignore[attr-defined]  # multiprocessing keeps no public list
        return _report_all(_waiting(pool.imap(render, indices), interval, workers), stored, interval)
    finally:
        if any(worker.exitcode is not None for worker in workers):
            _unlock_dead_pool(pool)
        pool.terminate()
        pool.join()


def _unlock_dead_pool(pool) -> None:
    """Make a pool whose process died terminable: terminate() first takes the lock on the task queue,
    which a process that died reading it (pdfium aborted, or it was killed) holds for ever."""
    for worker in list(pool._pool):
        if worker.exitcode is None:
            worker.kill()
            worker.join(5)
    try:
        pool._inqueue._rlock.release()  # a Lock, not an RLock: any process may release it
    except ValueError:
        pass  # it was free


def _waiting(results, tick: float, workers: list) -> Iterator[tuple | None]:
    # imap's own iterator takes a timeout: None says the next page has kept us waiting a tick.
    while True:
        try:
            yield results.next(timeout=tick if tick > 0 else WATCH_INTERVAL)
        except multiprocessing.TimeoutError:
            _check_alive(workers)
            if tick > 0:
                yield None
        except StopIteration:
            return


def _check_alive(workers: list) -> None:
    """Raise the ending of a render process that died (they live as long as the pool)."""
    for worker in workers:
        code = worker.exitcode
        if code is None:
            continue
        log.warning("render process %s died (exit code %s)", worker.pid, code)
        if code == -signal.SIGABRT:
            # pdfium aborts when an allocation is refused (WORKER_MEMORY_MB); the same page would
            # abort again on a retry.
            raise PageTooLarge(MEMORY_MESSAGE)
        raise InternalError()


def _report_all(results: Iterable[tuple | None], stored: Stored, interval: float) -> set[int]:
    pids = set()
    announced, held = 0.0, False
    for result in results:
        if result is None:
            if held:
                stored(None, 0, True)
                announced, held = time.monotonic(), False
            continue
        if "error" in result[0]:
            raise ConversionError.from_error(result[0]["error"])
        entry, size, pid = result
        pids.add(pid)
        now = time.monotonic()
        announce = now - announced >= interval
        stored(entry, size, announce)
        if announce:
            announced = now
        held = not announce
    if held:
        stored(None, 0, True)
    return pids


_child_doc: pdfium.PdfDocument | None = None
_child_files: DocumentFiles | None = None
_child_attempt = 0


def _child_init(source: str, files: DocumentFiles, attempt: int) -> None:
    # A pool process must not outlive the work horse that forked it (a SIGKILL skips every cleanup).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Handlers inherited from the forking process (a worker's warm-shutdown handler) would swallow the
    # SIGTERM with which the pool is terminated.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    files.storage.forked()
    _child_open(source, files, attempt)


def _child_open(source: str, files: DocumentFiles, attempt: int) -> None:
    global _child_doc, _child_source, _child_rendered, _child_files, _child_attempt
    _child_source, _child_rendered, _child_files, _child_attempt = source, 0, files, attempt
    _child_doc = open_document(Path(source))
    # Without this, filled-in form fields would render empty.
    _child_doc.init_forms()


def _child_close() -> None:
    global _child_doc
    if _child_doc is not None:
        _child_doc.close()
        _child_doc = None


_child_source = ""
_child_rendered = 0


def _render_in_child(index: int, scale: float, scratch: str, thumb_width: int, max_text: int = 0) -> tuple:
    """Render one page and write its files; (entry, paths, pid), or ({"error": ...},) when it fails."""
    global _child_rendered
    if _child_rendered >= REOPEN_EVERY:
        assert _child_files is not None
        _child_close()
        _child_open(_child_source, _child_files, _child_attempt)
    _child_rendered += 1
    assert _child_doc is not None and _child_files is not None
    pages: list[tuple[dict, dict[str, Path]]] = []
    try:
        render_page(
            _child_doc,
            index,
            scale,
            lambda n, image, text, runs, thumb: pages.append(
                write_page_files(Path(scratch), n, image, text, runs, thumb_width, thumb)
            ),
            thumb_width,
            max_text,
        )
    except ConversionError as exc:
        return ({"error": exc.error},)
    entry, paths = pages[0]
    try:
        size = put_page_files(_child_files, _child_attempt, paths)
    except ConversionError as exc:  # the owner's storage quota refused the page (workers/quota.py)
        return ({"error": exc.error},)
    except Exception:  # noqa: BLE001 - an object store's exceptions need not survive the trip back
        log.exception("storing page %d failed", index + 1)
        return ({"error": StorageError().error},)
    return entry, size, os.getpid()


def render_page(
    doc: pdfium.PdfDocument,
    index: int,
    scale: float,
    add: Callable[[int, Image.Image, str, list[Run], Image.Image | None], object],
    thumb_width: int = 0,
    max_text: int = 0,
) -> None:
    """Render one page (and, given a thumb_width, its thumbnail) and hand them to `add` (a sink's
    add); its native memory is released before returning. A page with more than `max_text`
    characters of text (0: any) ends the conversion with TooMuchText."""
    try:
        _render_page(doc, index, scale, add, thumb_width, max_text)
    except MemoryError:
        # An allocation refused under WORKER_MEMORY_MB (a page bitmap, its JPEG): the same page
        # would be refused again, so this ends the conversion rather than retrying it.
        raise PageTooLarge(
            f"Page {index + 1} needs more memory to convert than this server allows."
        ) from None


def _render_page(
    doc: pdfium.PdfDocument,
    index: int,
    scale: float,
    add: Callable[[int, Image.Image, str, list[Run], Image.Image | None], object],
    thumb_width: int,
    max_text: int,
) -> None:
    try:
        page = doc[index]
    except pdfium.PdfiumError:
        raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
    try:
        try:
            text, runs = page_text(page, max_text, index + 1)
            bitmap = page.render(scale=scale, **BITMAP)
        except pdfium.PdfiumError:
            raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
        thumb_bitmap = None
        try:
            if thumb_width:
                # pdfium draws the thumbnail at its own scale in a fraction of the time a resize of
                # the page image takes, and sharper (text is hinted at the small size).
                tw, _ = thumb_size(bitmap.width, bitmap.height, thumb_width)
                try:
                    thumb_bitmap = page.render(scale=scale * tw / bitmap.width, **BITMAP)
                except pdfium.PdfiumError:
                    raise CorruptDocument(f"Page {index + 1} of this PDF is damaged.") from None
            # The PIL images may share the bitmaps' buffers, so they are written before those close.
            image = bitmap.to_pil()
            thumb = thumb_bitmap.to_pil() if thumb_bitmap is not None else None
            add(index + 1, image, text, runs, thumb)
            image.close()
        finally:
            bitmap.close()
            if thumb_bitmap is not None:
                thumb_bitmap.close()
    finally:
        page.close()


def page_text(page: pdfium.PdfPage, max_chars: int = 0, number: int = 0) -> tuple[str, list[Run]]:
    """The page's text, and its text runs at their positions (fractions of the rendered page).

    With `max_chars`, a page whose text holds more characters refuses with TooMuchText (naming page
    `number`) before any of them is read.
    """
    textpage = page.get_textpage()
    try:
        count = pdfium_c.FPDFText_CountChars(textpage.raw)
        if max_chars and count > max_chars:
            raise TooMuchText(
                f"Page {number or '?'} holds {count:,} characters of text; the limit is {max_chars:,} a page."
            )
        text = _normalise(textpage.get_text_range())
        left, bottom, right, top = page.get_cropbox()
        width, height = max(right - left, 1e-6), max(top - bottom, 1e-6)
        rotation = page.get_rotation() % 360
        runs: list[Run] = []
        found = _object_runs(textpage, count)
        for rl, rb, rr, rt, chars in found if found is not None else _char_runs(textpage, count):
            # Per character pdfium gives its line-end hyphen as U+0002 (U+FFFE in the page's text).
            run_text = chars.replace("\r", "").replace("\n", " ").replace("\x02", _HYPHEN_MARK)
            if run_text.endswith(_HYPHEN_MARK):
                # The word goes on in the next run, on the next line: the text layer joins the two
                # where a run ends with a soft hyphen (U+00AD) instead of breaking the line.
                run_text = _normalise(run_text, False) + "\u00ad"
            elif _HYPHEN_MARK in run_text:
                run_text = _normalise(run_text, False)
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


# pdfium's per-character calls, typed for speed: the page's characters are read one call each, so the
# conversions ctypes does per call are most of the cost (handles and pointers pass as plain ints).
_VOID, _INT = ctypes.c_void_p, ctypes.c_int


def _c_function(function: object, restype: type, *argtypes: type) -> Callable:
    return ctypes.CFUNCTYPE(restype, *argtypes)(ctypes.cast(function, _VOID).value)


_char_object = _c_function(pdfium_c.FPDFText_GetTextObject, _VOID, _VOID, _INT)
_char_unicode = _c_function(pdfium_c.FPDFText_GetUnicode, ctypes.c_uint, _VOID, _INT)
_char_box = _c_function(pdfium_c.FPDFText_GetCharBox, _INT, _VOID, _INT, _VOID, _VOID, _VOID, _VOID)
_BOX = struct.Struct("4d")  # left, right, bottom, top: FPDFText_GetCharBox's order
_TINY = 0.01  # pdfium's kSizeEpsilon: narrower or lower boxes belong to no rectangle
_SPACE = 0x20


# A text run in page points (left, bottom, right, top) with its text.
PointRun = tuple[float, float, float, float, str]


def _object_runs(textpage: pdfium.PdfTextPage, count: int) -> list[PointRun] | None:
    """The page's text runs as `_char_runs` makes them, at half its cost where it can: pdfium's own
    rectangles (FPDFText_CountRects: one pass, in C), each with the characters of its stretch of one
    text object; None when a text object has only characters of no size (it has no rectangle: which
    stretch is which then takes every character's box, `_char_runs`).

    A character of no size inside a stretch (an invisible zero-width glyph) is read into its text
    here, where the bounded read and `_char_runs` leave it out.
    """
    if count <= 0:
        return []
    page = ctypes.cast(textpage.raw, _VOID).value
    rects = pdfium_c.FPDFText_CountRects(textpage.raw, 0, count)
    texts: list[str] = []
    current = None
    chars: list[str] = []
    after_char = False
    for index in range(count):
        obj = _char_object(page, index)
        code = _char_unicode(page, index)
        if obj is None:  # a space or line end pdfium generated between text objects
            if code == _SPACE and after_char:
                chars.append(" ")
            after_char = False
            continue
        if obj != current:
            if current is not None:
                texts.append("".join(chars))
                if len(texts) >= rects:
                    return None
            current, chars = obj, []
        if code:
            chars.append(chr(code) if code < 0xD800 else _character(code))
        after_char = True
    if current is not None:
        texts.append("".join(chars))
    # Each stretch of a text object with a sized character is one rectangle, in order; one with none
    # is skipped there, and the stretches on either side of it may merge: either way fewer rectangles.
    if len(texts) != rects:
        return None
    runs = []
    for i, text in enumerate(texts[:RUNS_MAX]):
        left, bottom, right, top = textpage.get_rect(i)
        runs.append((left, bottom, right, top, text))
    return runs


def _char_runs(textpage: pdfium.PdfTextPage, count: int) -> Iterator[PointRun]:
    """The page's text runs (left, bottom, right, top in page points, and text), in one pass over its
    characters: the rectangles pdfium's FPDFText_CountRects / GetRect give, each with the text
    FPDFText_GetBoundedText would read in it (at most RUNS_MAX of them).

    Those calls read each rectangle's text by scanning the whole page again (quadratic: 31 s for a
    one-page file of 300,000 characters). A rectangle is a stretch of consecutive characters of one
    text object (pdfium's generated spaces and line ends, and characters of no size, belong to none);
    here each gets its own characters, and a space right after them, as the bounded read did. What
    differs: characters of other text objects that overlap a rectangle (a TeX logo's raised letters)
    are no longer read into it twice.
    """
    page = ctypes.cast(textpage.raw, _VOID).value
    buffer = bytearray(_BOX.size)
    box = ctypes.addressof((ctypes.c_double * 4).from_buffer(buffer))
    at_left, at_right, at_bottom, at_top = box, box + 8, box + 16, box + 24
    made = 0
    current = None  # the text object of the run being built
    chars: list[str] = []
    left = right = bottom = top = 0.0
    after_char = False  # the previous character belongs to the run (a space may follow it)
    for index in range(count):
        obj = _char_object(page, index)
        code = _char_unicode(page, index)
        if obj is not None:
            _char_box(page, index, at_left, at_right, at_bottom, at_top)
            cl, cr, cb, ct = _BOX.unpack_from(buffer)
            if cr - cl < _TINY or ct - cb < _TINY:
                obj = None
        if obj is None:
            if code == _SPACE and after_char:
                chars.append(" ")
            after_char = False
            continue
        if obj != current:
            if current is not None:
                yield left, bottom, right, top, "".join(chars)
                made += 1
                if made >= RUNS_MAX:
                    return
            current, chars = obj, []
            left, right, bottom, top = cl, cr, cb, ct
        else:
            if cl < left:
                left = cl
            if cr > right:
                right = cr
            if cb < bottom:
                bottom = cb
            if ct > top:
                top = ct
        if code:
            chars.append(chr(code) if code < 0xD800 else _character(code))
        after_char = True
    if current is not None:
        yield left, bottom, right, top, "".join(chars)


def _character(code: int) -> str:
    # pdfium's code points come from the file's own maps: a surrogate or a value past Unicode
    # would not survive UTF-8.
    return chr(code) if code < 0xD800 or 0xDFFF < code <= 0x10FFFF else "\ufffd"


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


# pdfium's mark for a hyphen that ends a line inside a word (a soft hyphen, or a hard one it takes for
# one); its text then goes on with the word's second half, the line break already dropped.
_HYPHEN_MARK = "\ufffe"


def _normalise(text: str, lines: bool = True) -> str:
    # The word's halves joined as pdftotext and PDF.js's find join them ("encour-|aged": "encouraged"),
    # so that search finds the word; a compound keeps its hyphen there ("up-to-|date": "up-to-date").
    if _HYPHEN_MARK in text:
        parts = text.split(_HYPHEN_MARK)
        joined = [parts[0]]
        for part in parts[1:]:
            words = joined[-1].split()
            joined.append(("-" if words and "-" in words[-1] else "") + part)
        text = "".join(joined)
    if not lines:
        return text
    # pdfium separates lines with CRLF; the text files use plain newlines like the text kind does.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if not text or text.endswith("\n") else text + "\n"
