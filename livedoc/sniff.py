"""Recognise an upload's type by its content (magic bytes), never by its name."""
from __future__ import annotations

KINDS = ("pdf", "image", "text")


def sniff(data: bytes) -> str | None:
    """'pdf', 'image' or 'text' for a supported upload, None for anything else."""
    head = data[:1024]
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "image"
    if _is_text(data):
        return "text"
    return None


def _is_text(data: bytes) -> bool:
    if not data or b"\x00" in data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    control = sum(1 for ch in text[:65536] if ord(ch) < 32 and ch not in "\t\n\r\f")
    return control == 0
