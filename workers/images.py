"""PNG and JPEG uploads (one page each), and the page writer that every kind shares.

`write_page` turns one page image into the files the viewer serves: page-NNNN.jpg, a thumbnail
and text-NNNN.txt. The PDF and text stages render with their own tools and hand their images here.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from config import Settings
from livedoc.storage import page_names
from workers.errors import CorruptDocument, PageTooLarge, UnsupportedDocument

JPEG_QUALITY = 85
THUMB_QUALITY = 80
FORMATS = ("PNG", "JPEG")
# libjpeg cannot write a side longer than this; a taller or wider page fails at write time, after
# all the work, with an error that looks like a storage fault (and would be retried).
MAX_SIDE = 65500

# Called as on_page(page, pages) when a page's work starts, so progress can report "page i of n".
PageCallback = Callable[[int, int], None]


def write_page(work: Path, n: int, image: Image.Image, text: str, settings: Settings) -> dict:
    """Write page n's JPEG, thumbnail and text into `work`; returns its manifest entry."""
    names = page_names(n)
    rgb = _to_rgb(image)
    rgb.save(work / names["image"], "JPEG", quality=JPEG_QUALITY)
    # Never upscale a narrow page: a blown-up thumbnail is blurrier than a small one.
    thumb_width = min(settings.THUMB_WIDTH, rgb.width)
    thumb_height = max(1, round(rgb.height * thumb_width / rgb.width))
    thumb = rgb.resize((thumb_width, thumb_height), Image.Resampling.LANCZOS, reducing_gap=2.0)
    thumb.save(work / names["thumb"], "JPEG", quality=THUMB_QUALITY)
    (work / names["text"]).write_text(text, encoding="utf-8", newline="")
    entry = {"n": n, **names, "width": rgb.width, "height": rgb.height}
    if rgb is not image:
        rgb.close()
    thumb.close()
    return entry


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # JPEG has no alpha; flatten onto white, as the page would look on screen, not onto black.
        rgba = image.convert("RGBA")
        page = Image.new("RGB", rgba.size, "white")
        page.paste(rgba, mask=rgba.getchannel("A"))
        rgba.close()
        return page
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit and float greyscale: scale into 8 bits rather than let convert() clip to white.
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def _decode(data: bytes, settings: Settings) -> Image.Image:
    # Pillow's bomb guard is a process-wide setting, so it is aligned with our cap only while this
    # image is opened: Pillow then refuses anything past twice the cap from the header alone, and
    # the explicit check below refuses the rest before a single pixel is decoded. It is restored
    # afterwards so that other Pillow work in this process (text pages) keeps its own limit.
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = settings.MAX_PAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if image.format not in FORMATS:
            image.close()
            raise UnsupportedDocument("Only PNG and JPEG images can be converted.")
        if image.width * image.height > settings.MAX_PAGE_PIXELS or max(image.size) > MAX_SIDE:
            image.close()
            raise PageTooLarge(_too_large_message(image.width, image.height, settings))
        image.load()
        upright = ImageOps.exif_transpose(image)
        if upright is not image:
            image.close()
        return upright
    except Image.DecompressionBombError:
        raise PageTooLarge(f"The image is too large; the limit is {_megapixels(settings)} million pixels.") \
            from None
    except (OSError, SyntaxError, ValueError, EOFError):
        # The bytes are already in memory, so an OSError here is about the data (truncated, not an
        # image), not about storage: that is permanent.
        raise CorruptDocument("The image is damaged or incomplete.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit


def _megapixels(settings: Settings) -> str:
    return f"{settings.MAX_PAGE_PIXELS / 1_000_000:g}"


def _too_large_message(width: int, height: int, settings: Settings) -> str:
    return (f"The image is {width} x {height} pixels; the limit is {_megapixels(settings)} million pixels "
            f"and {MAX_SIDE} pixels a side.")


def convert(source: Path, work: Path, settings: Settings, on_page: PageCallback) -> list[dict]:
    """Convert a PNG or JPEG into one page; returns the manifest's page list."""
    data = source.read_bytes()
    image = _decode(data, settings)
    try:
        on_page(1, 1)
        return [write_page(work, 1, image, "", settings)]
    finally:
        image.close()
