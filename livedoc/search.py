"""Find a phrase in a document's page texts, with bounded work that pauses for other requests.

A search runs inside a web process that serves every user's streams, so it must never hold the
processor long: it reads a bounded prefix of each page's text file (whatever size the file has;
documents converted before the worker capped text can hold megabytes per page), calls `pause`
between pages and between slices of a long page (the web passes `gevent.sleep(0)`), and stops
after `budget_ms` of work or DOCUMENT_BYTES of text, answering with what it found so far and how
far it got. Pure functions over the storage: no Flask, no gevent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypedDict

from livedoc.storage import DocumentFiles, page_names

MAX_QUERY = 200
MAX_HITS = 200
MAX_RECT_PAGES = 50  # pages whose text layer is read for highlight rectangles
MAX_RECTS = 100  # rectangles per page
SNIPPET = 60  # characters of context either side of a hit
# 4 bytes per character of the worker's MAX_PAGE_TEXT (100,000) fits: a capped page is read whole.
PAGE_BYTES = 512 * 1024
LAYER_BYTES = 1024 * 1024  # a larger text layer gives no rectangles (it is not parsed at all)
DOCUMENT_BYTES = 64 * 1024 * 1024  # text one search reads at most, whatever its time budget
SLICE_CHARS = 32 * 1024  # text normalised between two pauses (well under a millisecond)
RUNS_PER_PAUSE = 2000  # text-layer runs looked at between two pauses


class BadQuery(ValueError):
    """The query is empty or longer than MAX_QUERY characters."""


class Found(TypedDict):
    """What one search found: the hits, the pages 1..searched_pages searched, whether it stopped early."""

    hits: list[dict]
    searched_pages: int
    truncated: bool


class _OutOfBudget(Exception):
    """The time budget ran out in the middle of a page."""


def needle_of(query: str) -> str:
    """The query as it is searched for: whitespace runs as one space, case-folded (BadQuery if unusable)."""
    needle = " ".join(query.split()).casefold()
    if not needle or len(needle) > MAX_QUERY:
        raise BadQuery(f"Search for 1 to {MAX_QUERY} characters in 'q'.")
    return needle


def search(
    files: DocumentFiles,
    attempt: int,
    ready: int,
    query: str,
    *,
    pause: Callable[[], None],
    budget_ms: int,
    clock: Callable[[], float] = time.monotonic,
) -> Found:
    """Where the phrase occurs in pages 1..ready of an attempt: page, snippet, offset and rectangles.

    Stops at MAX_HITS hits, after budget_ms of work (by `clock`, in seconds) or after DOCUMENT_BYTES
    of text; `truncated` says it stopped before the end, `searched_pages` how far it got.
    """
    needle = needle_of(query)
    deadline = clock() + budget_ms / 1000

    def out_of_time() -> bool:
        return clock() >= deadline

    hits: list[dict] = []
    rect_pages = read = searched = 0
    truncated = False
    for n in range(1, ready + 1):
        if len(hits) >= MAX_HITS or read >= DOCUMENT_BYTES or out_of_time():
            truncated = True
            break
        names = page_names(n)
        key, limit = files.key(attempt, names["text"]), min(PAGE_BYTES, DOCUMENT_BYTES - read)
        raw = files.storage.get_prefix(key, limit)
        if raw:
            read += len(raw)
            try:
                text, folded = normalised(raw.decode("utf-8", "replace"), pause, out_of_time)
            except _OutOfBudget:
                truncated = True
                break
            start = folded.find(needle)
            if start >= 0:
                rects: list[list[float]] = []
                if rect_pages < MAX_RECT_PAGES:
                    rect_pages += 1
                    rects = hit_rects(read_layer(files, attempt, names["layer"]), needle, pause)
                _add_hits(hits, n, text, folded, needle, start, rects)
        searched = n
        pause()
    return {"hits": hits, "searched_pages": searched, "truncated": truncated or len(hits) >= MAX_HITS}


def _add_hits(
    hits: list[dict], n: int, text: str, folded: str, needle: str, start: int, rects: list[list[float]]
) -> None:
    """Page n's hits from offset `start` on, up to MAX_HITS in all; the rectangles go with the first."""
    while start >= 0 and len(hits) < MAX_HITS:
        lo, hi = max(0, start - SNIPPET), min(len(text), start + len(needle) + SNIPPET)
        snippet = ("…" if lo else "") + text[lo:hi] + ("…" if hi < len(text) else "")
        hits.append({"page": n, "snippet": snippet, "offset": start, "length": len(needle), "rects": rects})
        rects = []
        start = folded.find(needle, start + len(needle))


def normalised(
    text: str, pause: Callable[[], None], out_of_time: Callable[[], bool] = lambda: False
) -> tuple[str, str]:
    """`" ".join(text.split())` and its case-folded form, built SLICE_CHARS at a time with a pause
    between slices (raises _OutOfBudget when out_of_time() says so between two slices)."""
    if len(text) <= SLICE_CHARS:
        joined = " ".join(text.split())
        return joined, joined.casefold()
    parts: list[str] = []
    folded: list[str] = []
    space = False  # whitespace seen since the last word written
    for at in range(0, len(text), SLICE_CHARS):
        if at:
            pause()
            if out_of_time():
                raise _OutOfBudget
        piece = text[at : at + SLICE_CHARS]
        words = piece.split()
        if words:
            # A word cut by the slice boundary joins up again: a space only where the text had one.
            if parts and (space or piece[0].isspace()):
                parts.append(" ")
                folded.append(" ")
            joined = " ".join(words)
            parts.append(joined)
            folded.append(joined.casefold())
            space = piece[-1].isspace()
        else:
            space = True
    return "".join(parts), "".join(folded)


def read_layer(files: DocumentFiles, attempt: int, name: str) -> dict:
    """A page's text layer, or {} when it is absent, unreadable or larger than LAYER_BYTES."""
    raw = files.storage.get_prefix(files.key(attempt, name), LAYER_BYTES + 1)
    if not raw or len(raw) > LAYER_BYTES:
        return {}
    try:
        layer = json.loads(raw)
    except ValueError:
        return {}
    return layer if isinstance(layer, dict) else {}


def hit_rects(layer: dict, needle: str, pause: Callable[[], None] = lambda: None) -> list[list[float]]:
    """The parts of the text runs that hold the phrase (proportional within a run)."""
    rects: list[list[float]] = []
    runs = layer.get("runs")
    if not isinstance(runs, list):
        return rects
    for i, run in enumerate(runs):
        if len(rects) >= MAX_RECTS:
            break
        if i and i % RUNS_PER_PAUSE == 0:
            pause()
        if not isinstance(run, list) or len(run) != 5:
            continue
        x, y, w, h, text = run
        if not all(isinstance(v, (int, float)) for v in (x, y, w, h)):
            continue
        folded = str(text).casefold()
        at = folded.find(needle)
        while at >= 0 and len(rects) < MAX_RECTS:
            per = w / max(1, len(folded))
            rects.append([round(x + at * per, 5), y, round(len(needle) * per, 5), h])
            at = folded.find(needle, at + len(needle))
    return rects
