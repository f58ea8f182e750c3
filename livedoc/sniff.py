"""Recognise an upload's type by its content (magic bytes), never by its name."""
from __future__ import annotations

import re

KINDS = ("pdf", "image", "text", "office")

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # compound file: DOC, XLS, PPT, encrypted OOXML
ZIP_MAGIC = b"PK\x03\x04"
ODF_MIMETYPE = re.compile(rb"mimetypeapplication/vnd\.oasis\.opendocument\.(?:text|presentation|spreadsheet)")
# OOXML: a zip holding [Content_Types].xml and the main part of a Word, PowerPoint or Excel file.
OOXML_MAIN = re.compile(rb"(word/document\.xml|ppt/presentation\.xml|xl/workbook\.xml)")
OOXML_TYPES = b"[Content_Types].xml"
# Zip entry names are in the local headers near the start and in the central directory at the end;
# both ends are looked at (only the start when the caller hands over the first bytes of an upload).
OFFICE_HEAD = 256 * 1024
OFFICE_TAIL = 64 * 1024


def sniff(data: bytes) -> str | None:
    """'pdf', 'image', 'text' or 'office' for a supported upload, None for anything else."""
    head = data[:1024]
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    if is_office(data):
        return "office"
    if _is_text(data):
        return "text"
    return None


def is_office(data: bytes) -> bool:
    """True for an OOXML, ODF, OLE2 (legacy Office) or RTF file, told apart by content."""
    head = data[:OFFICE_HEAD]
    if head.startswith(OLE2_MAGIC) or head.startswith(b"{\\rtf"):
        return True
    if not head.startswith(ZIP_MAGIC):
        return False
    # ODF stores an uncompressed `mimetype` entry first, so its value sits right after its name.
    if ODF_MIMETYPE.search(head[:200]):
        return True
    tail = data[-OFFICE_TAIL:]
    if b"PK\x05\x06" in tail:
        # The whole zip is here (its end record is): it must list [Content_Types].xml and a main part.
        window = head + tail if len(data) > OFFICE_HEAD else head
        return OOXML_TYPES in window and OOXML_MAIN.search(window) is not None
    # Only a start (an upload being streamed, or a cut file): judge by the parts written first; the
    # worker opens the whole file and says precisely what is wrong with it.
    return OOXML_MAIN.search(head) is not None


def _is_text(data: bytes) -> bool:
    if not data or b"\x00" in data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    control = sum(1 for ch in text[:65536] if ord(ch) < 32 and ch not in "\t\n\r\f")
    return control == 0
