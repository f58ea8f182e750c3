"""Plain UTF-8 text uploads: paginated by lines, each page drawn as an image with its text alongside."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from config import Settings
from workers.errors import CorruptDocument, EmptyDocument, TooManyPages, TooMuchText
from workers.pages import PageSink, Run

WRAP_AT = 100
FONT_SIZE = 14
MARGIN = 40
TAB_SIZE = 4
# A monospaced face keeps columns (code, tables, logs) lined up; Pillow's bundled font is the
# fallback on machines without DejaVu.
MONO_FONTS = ("DejaVuSansMono.ttf", "LiberationMono-Regular.ttf", "NotoSansMono-Regular.ttf")

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=1)
def _font() -> Font:
    for name in MONO_FONTS:
        try:
            return ImageFont.truetype(name, FONT_SIZE)
        except OSError:
            continue
    return ImageFont.load_default(size=FONT_SIZE)


def decode(data: bytes) -> str:
    """The upload as text; anything that is not UTF-8 is refused rather than guessed at."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CorruptDocument("This text file is not valid UTF-8.") from None


# Line breaks as str.splitlines() knows them, found one at a time so a file is never split whole.
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# Every control character (all below " ") is drawn as a space.
_BLANK_CONTROLS = {code: " " for code in range(32)}


def iter_lines(text: str) -> Iterator[str]:
    """The lines of `text` as str.splitlines() gives them, lazily."""
    start = 0
    for match in _LINE_BREAK.finditer(text):
        yield text[start : match.start()]
        start = match.end()
    if start < len(text):
        yield text[start:]


def wrap(lines: Iterable[str], width: int = WRAP_AT, limit: int | None = None) -> Iterator[str]:
    """Display lines: tabs expanded, control characters blanked, long lines wrapped at `width`.

    With `limit`, a line is cut before it is expanded to what can still fill `limit` + 1 display
    lines, so a huge line costs time in proportion to what is shown, not to its length.
    """
    produced = 0
    for line in lines:
        if limit is not None:
            # Each display line takes at most `width` characters of the (expanded) line.
            line = line[: (limit - produced + 1) * width]
        line = line.expandtabs(TAB_SIZE).translate(_BLANK_CONTROLS)
        start, end = 0, len(line)
        while end - start > width:
            # Prefer breaking after a space so words stay whole; cut hard when there is none nearby.
            cut = line.rfind(" ", start + width // 2, start + width)
            cut = start + width if cut < 0 else cut + 1
            yield line[start:cut]
            produced += 1
            start = cut
        yield line[start:] if start else line
        produced += 1


def paginate(text: str, lines_per_page: int, max_pages: int) -> list[list[str]]:
    """Split text into pages of display lines; stops as soon as the page limit is passed."""
    pages: list[list[str]] = []
    page: list[str] = []
    limit = lines_per_page * max_pages
    for line in wrap(iter_lines(text), limit=limit):
        page.append(line)
        if len(page) == lines_per_page:
            pages.append(page)
            page = []
        if len(pages) * lines_per_page + len(page) > limit:
            # No need to wrap the rest of a huge file only to say it is too long.
            raise TooManyPages(f"The text is longer than {max_pages} pages of {lines_per_page} lines.")
    if page:
        pages.append(page)
    return pages


def _line_height(font: Font) -> int:
    _, top, _, bottom = font.getbbox("Ág")
    return int((bottom - top) * 1.35) + 1


def page_size(lines_per_page: int) -> tuple[int, int]:
    """Width and height of every text page."""
    font = _font()
    width = 2 * MARGIN + int(font.getlength("M" * WRAP_AT)) + 1
    return width, 2 * MARGIN + _line_height(font) * lines_per_page


def render_page(lines: list[str], lines_per_page: int) -> Image.Image:
    """One page of text drawn black on white; every page has the same size."""
    font = _font()
    line_height = _line_height(font)
    image = Image.new("RGB", page_size(lines_per_page), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        if line:
            draw.text((MARGIN, MARGIN + i * line_height), line, fill="black", font=font)
    return image


def page_runs(lines: list[str], size: tuple[int, int]) -> list[Run]:
    """Where each drawn line sits on the page, as fractions of it (the text layer)."""
    font = _font()
    line_height = _line_height(font)
    width, height = size
    return [
        (
            round(MARGIN / width, 5),
            round((MARGIN + i * line_height) / height, 5),
            round(font.getlength(line) / width, 5),
            round(line_height / height, 5),
            line,
        )
        for i, line in enumerate(lines)
        if line.strip()
    ]


def convert(source: Path, settings: Settings, sink: PageSink) -> None:
    """Paginate a UTF-8 text file and draw each page."""
    text = decode(source.read_bytes())
    if not text.strip():
        raise EmptyDocument("The text file is empty.")
    per_page = max(1, settings.TEXT_LINES_PER_PAGE)
    pages = paginate(text, per_page, settings.MAX_PAGES)
    size = page_size(per_page)
    sink.begin([size] * len(pages))
    for n, lines in enumerate(pages, start=1):
        # A page holds at most TEXT_LINES_PER_PAGE lines of WRAP_AT characters (6,000 by default), so
        # only a very long page setting can pass MAX_PAGE_TEXT; the cap holds for every kind all the same.
        page_text = "\n".join(lines) + "\n"
        if len(page_text) > settings.MAX_PAGE_TEXT:
            raise TooMuchText(
                f"Page {n} holds {len(page_text):,} characters of text; "
                f"the limit is {settings.MAX_PAGE_TEXT:,} a page."
            )
        image = render_page(lines, per_page)
        try:
            sink.add(n, image, page_text, page_runs(lines, size))
        finally:
            image.close()
