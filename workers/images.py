"""PNG and JPEG uploads: one page each, decoded under the pixel cap before a pixel is read."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from config import Settings
from workers.errors import CorruptDocument, PageTooLarge, UnsupportedDocument
from workers.pages import PageSink

FORMATS = ("PNG", "JPEG")
# libjpeg cannot write a side longer than this; a taller or wider page fails at write time, after
# all the work, with an error that looks like a storage fault (and would be retried).
MAX_SIDE = 65500


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
        raise PageTooLarge(
            f"The image is too large; the limit is {_megapixels(settings)} million pixels."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        # The bytes are already in memory, so an OSError here is about the data (truncated, not an
        # image), not about storage: that is permanent.
        raise CorruptDocument("The image is damaged or incomplete.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit


def _megapixels(settings: Settings) -> str:
    return f"{settings.MAX_PAGE_PIXELS / 1_000_000:g}"


def _too_large_message(width: int, height: int, settings: Settings) -> str:
    return (
        f"The image is {width} x {height} pixels; the limit is {_megapixels(settings)} million pixels "
        f"and {MAX_SIDE} pixels a side."
    )


def convert(source: Path, settings: Settings, sink: PageSink) -> None:
    """Convert a PNG or JPEG into one page."""
    data = source.read_bytes()
    image = _decode(data, settings)
    try:
        sink.begin([image.size])
        sink.add(1, image, "", [])
    finally:
        image.close()
