"""Recognise an upload's type by its content (magic bytes), never by its name.

The kind is read from the first HEAD bytes; a text upload is then checked as it streams by
(`TextCheck`), so the web process never needs the whole file in memory to refuse a binary one.
"""
from __future__ import annotations

import codecs

KINDS = ("pdf", "image", "text")
HEAD = 1024
# Control characters are looked for in the first this-many characters only.
CONTROL_WINDOW = 65536
_ALLOWED_CONTROLS = "\t\n\r\f"


def kind_of_head(head: bytes) -> str:
    """'pdf' or 'image' by magic bytes; anything else can only be 'text' (which TextCheck confirms)."""
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    return "text"


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
            window = text[:CONTROL_WINDOW - self._chars]
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
    """'pdf', 'image' or 'text' for a supported upload, None for anything else."""
    if not data:
        return None
    kind = kind_of_head(data[:HEAD])
    if kind != "text":
        return kind
    check = TextCheck()
    check.feed(data)
    return "text" if check.finish() else None
