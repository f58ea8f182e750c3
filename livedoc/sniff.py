"""Recognise an upload's type by its content (magic bytes, container structure), never by its name.

The kind is read from the first HEAD bytes; a text upload is then checked as it streams by
(`TextCheck`), so the web process never needs the whole file in memory to refuse a binary one.
Office files are OOXML (a zip with [Content_Types].xml and a Word, PowerPoint or Excel main part),
ODF (a zip whose first entry is its `mimetype`), OLE2 compound files (DOC, XLS, PPT) and RTF.
"""

from __future__ import annotations

import codecs
import re

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # compound file: DOC, XLS, PPT, encrypted OOXML
ZIP_MAGIC = b"PK\x03\x04"
ODF_MIMETYPE = re.compile(rb"mimetypeapplication/vnd\.oasis\.opendocument\.(?:text|presentation|spreadsheet)")
# OOXML: a zip holding [Content_Types].xml and the main part of a Word, PowerPoint or Excel file.
OOXML_MAIN = re.compile(rb"(word/document\.xml|ppt/presentation\.xml|xl/workbook\.xml)")
OOXML_TYPES = b"[Content_Types].xml"
# Zip entry names are in the local headers near the start and in the central directory at the end:
# the start is enough to tell an Office file (the worker opens the whole file and says precisely
# what is wrong with a cut one).
HEAD = 256 * 1024
OFFICE_TAIL = 64 * 1024
# Control characters are looked for in the first this-many characters only.
CONTROL_WINDOW = 65536
_ALLOWED_CONTROLS = "\t\n\r\f"


def kind_of_head(head: bytes) -> str:
    """'pdf', 'image' or 'office' by content; anything else can only be 'text' (TextCheck confirms)."""
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    if is_office(head):
        return "office"
    return "text"


def is_office(data: bytes) -> bool:
    """True for an OOXML, ODF, OLE2 (legacy Office) or RTF file, told apart by content."""
    head = data[:HEAD]
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
        window = head + tail if len(data) > HEAD else head
        return OOXML_TYPES in window and OOXML_MAIN.search(window) is not None
    return OOXML_MAIN.search(head) is not None


class TextCheck:
    """Checks, chunk by chunk, that an upload is UTF-8 text: no NUL, no stray control characters."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._chars = 0
        self.ok = True

    def feed(self, chunk: bytes) -> bool:
        """Check the next chunk; False once the upload is known not to be text."""
        if not self.ok:
            return False
        if b"\x00" in chunk:
            self.ok = False
            return False
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError:
            self.ok = False
            return False
        if self._chars < CONTROL_WINDOW:
            window = text[: CONTROL_WINDOW - self._chars]
            if any(ord(ch) < 32 and ch not in _ALLOWED_CONTROLS for ch in window):
                self.ok = False
        self._chars += len(text)
        return self.ok

    def finish(self) -> bool:
        """True when everything fed was text (and something was)."""
        if self.ok:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self.ok = False
        return self.ok and self._chars > 0


def sniff(data: bytes) -> str | None:
    """'pdf', 'image', 'text' or 'office' for a supported upload held whole, None for anything else."""
    if not data:
        return None
    kind = kind_of_head(data[:HEAD])
    if kind in ("pdf", "image"):
        return kind
    if is_office(data):
        return "office"
    if kind == "office":
        return None  # its start looked like Office, the whole zip says otherwise
    check = TextCheck()
    check.feed(data)
    return "text" if check.finish() else None
