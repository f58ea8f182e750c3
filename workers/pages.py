"""Page output, shared by every converter: a page's files, and the sink that makes pages servable.

A converter hands each rendered page to `PageSink.add`; the sink writes the page's image, thumbnail,
text and text layer into storage and only then raises `ready`, so the viewer can show page k the
moment k and every page before it are stored.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from config import Settings
from livedoc.progress import RENDER_END, RENDER_START, ProgressWriter
from livedoc.storage import LAYOUT, MANIFEST, PAGE_META, DocumentFiles, page_names
from workers.errors import TooMuchText

JPEG_QUALITY = 85
THUMB_QUALITY = 80


# A text run over the page: (x, y, width, height) as fractions of the page, and its text.
Run = tuple[float, float, float, float, str]


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as RGB, transparency flattened onto white (as the page looks on screen)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        page = Image.new("RGB", rgba.size, "white")
        page.paste(rgba, mask=rgba.getchannel("A"))
        rgba.close()
        return page
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit and float greyscale: scale into 8 bits rather than let convert() clip to white.
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def thumb_size(width: int, height: int, thumb_width: int) -> tuple[int, int]:
    """The thumbnail's size for a page image of width x height (never upscaled: a blown-up
    thumbnail is blurrier than a small one)."""
    tw = min(thumb_width, width)
    return tw, max(1, round(height * tw / width))


def for_jpeg(image: Image.Image) -> Image.Image:
    """The image as JPEG takes it: RGBX as it is (the padding byte is dropped; converting would only
    copy the page), anything else as RGB."""
    return image if image.mode == "RGBX" else to_rgb(image)


def write_page_files(
    scratch: Path,
    n: int,
    image: Image.Image,
    text: str,
    runs: list[Run],
    thumb_width: int,
    thumb: Image.Image | None = None,
) -> tuple[dict, dict[str, Path]]:
    """Write page n's files into scratch (the thumbnail from `thumb` when the converter rendered
    one itself); returns its manifest entry and the files by name."""
    names = page_names(n)
    rgb = for_jpeg(image)
    paths = {name: scratch / name for name in names.values()}
    rgb.save(paths[names["image"]], "JPEG", quality=JPEG_QUALITY)
    if thumb is None:
        # A box reduce to about the target, then LANCZOS: a third of the time of reducing_gap=2.0
        # (the page's costliest step before), with no visible difference at thumbnail size.
        thumb = rgb.resize(
            thumb_size(rgb.width, rgb.height, thumb_width), Image.Resampling.LANCZOS, reducing_gap=1.0
        )
    small = for_jpeg(thumb)
    small.save(paths[names["thumb"]], "JPEG", quality=THUMB_QUALITY)
    if small is not thumb:
        small.close()
    thumb.close()
    paths[names["text"]].write_text(text, encoding="utf-8", newline="")
    # `chars` lets the document's text be totalled from the manifest without reading every page.
    entry = {"n": n, **names, "width": rgb.width, "height": rgb.height, "chars": len(text)}
    # The layer also says what the manifest needs of the page, so a later attempt keeps the page
    # (DocumentFiles.stored_pages) without rendering it again; the viewer reads only `runs`.
    paths[names["layer"]].write_text(
        json.dumps(
            {"runs": [list(r) for r in runs], "page": {k: entry[k] for k in PAGE_META}}, separators=(",", ":")
        ),
        encoding="utf-8",
    )
    if rgb is not image:
        rgb.close()
    return entry, paths


def put_page_files(files: DocumentFiles, attempt: int, paths: dict[str, Path]) -> int:
    """Store a page's files from scratch under the attempt; returns the bytes stored."""
    size = 0
    for name, path in paths.items():
        size += files.storage.put_file(files.key(attempt, name), path)
        path.unlink(missing_ok=True)
    return size


@dataclass
class PageSink:
    """Stores pages as they are rendered and reports them ready in page order."""

    files: DocumentFiles
    attempt: int
    writer: ProgressWriter
    settings: Settings
    kind: str
    pages: int = 0
    entries: dict[int, dict] = field(default_factory=dict)
    ready: int = 0
    stored: int = 0
    scratch: Path | None = None
    # Where the page stages' percent band starts (an Office document spends the first part converting).
    render_start: float = RENDER_START
    # The job's owner and storage limit (workers/quota.py), handed on to its page-range jobs.
    quota: dict | None = None
    chars: int = 0  # text characters of the pages stored, against MAX_DOCUMENT_TEXT
    # Pages an earlier attempt stored whole, kept as they are (never rendered or stored again).
    kept: set[int] = field(default_factory=set)
    _announced: int = 0  # the `ready` last saved

    def __post_init__(self) -> None:
        root = self.files.storage.scratch_root()
        root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{self.files.doc_id}-a{self.attempt}-", dir=root))

    def keep(self, entries: dict[int, dict], size: int) -> None:
        """Count pages an earlier attempt stored (DocumentFiles.stored_pages) as this attempt's own."""
        self.kept = set(entries)
        self.entries.update(entries)
        self.stored += size
        self.chars += sum(e.get("chars", 0) for e in entries.values())
        while self.ready + 1 in self.entries:
            self.ready += 1
        self._announced = self.ready

    def begin(self, sizes: list[tuple[int, int]], outline: list[dict] | None = None) -> None:
        """Announce the page count and sizes (the viewer lays out placeholders) before page 1."""
        self.pages = len(sizes)
        layout = {
            "kind": self.kind,
            "pages": self.pages,
            "sizes": [list(s) for s in sizes],
            "outline": outline or [],
        }
        self.files.storage.put_bytes(
            self.files.key(self.attempt, LAYOUT), json.dumps(layout, separators=(",", ":")).encode()
        )
        self.writer.update(
            "rendering",
            self.render_start,
            page=1,
            pages=self.pages,
            ready=0,
            message=f"Rendering page 1 of {self.pages}",
        )

    def add(
        self, n: int, image: Image.Image, text: str, runs: list[Run], thumb: Image.Image | None = None
    ) -> None:
        """Write page n's files and store them; the page becomes ready with those before it."""
        if n in self.kept:
            return  # stored whole by an earlier attempt
        entry, paths = write_page_files(self.scratch, n, image, text, runs, self.settings.THUMB_WIDTH, thumb)
        self.stored_page(entry, put_page_files(self.files, self.attempt, paths))

    def stored_page(self, entry: dict | None, size: int, announce: bool = True) -> None:
        """Count a page stored (here or by a render process) and advance `ready` past it; its
        progress is saved now if `announce`, or once every page is ready (entry None: save now)."""
        if entry is not None:
            self.chars += entry.get("chars", 0)
            if self.chars > self.settings.MAX_DOCUMENT_TEXT:
                raise TooMuchText(
                    f"The document holds more than {self.settings.MAX_DOCUMENT_TEXT:,} characters of text."
                )
            self.stored += size
            self.entries[entry["n"]] = entry
            while self.ready + 1 in self.entries:
                self.ready += 1
        if self.ready > self._announced and (announce or entry is None or self.ready == self.pages):
            self._report()

    def _report(self) -> None:
        self._announced = done = self.ready
        total = self.pages
        percent = self.render_start + (RENDER_END - self.render_start) * done / max(1, total)
        nxt = min(done + 1, total)
        message = f"Rendering page {nxt} of {total}" if done < total else "Finishing up"
        self.writer.update(
            "rendering" if done < total else "finalizing",
            percent,
            page=nxt,
            pages=total,
            ready=done,
            message=message,
        )

    def finish(self) -> int:
        """Write the manifest of a complete attempt; returns the page count."""
        page_list = [self.entries[n] for n in range(1, self.pages + 1)]
        names = [e[k] for e in page_list for k in ("image", "thumb", "text", "layer")]
        manifest = {
            "kind": self.kind,
            "pages": self.pages,
            "attempt": self.attempt,
            "files": names,
            "bytes": self.stored,
            "page_list": page_list,
        }
        self.files.storage.put_bytes(
            self.files.key(self.attempt, MANIFEST), json.dumps(manifest, separators=(",", ":")).encode()
        )
        return self.pages

    def close(self) -> None:
        """Remove the scratch directory."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
