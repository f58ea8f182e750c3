"""Office documents for tests and benchmarks, made by the real LibreOffice from flat OpenDocument XML.

`make(kind, pages, words, dest)` writes a DOCX, PPTX, XLSX or ODT whose page (slide, sheet) n starts
with `words[n-1]`; a private profile per call keeps it apart from the worker's conversions.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" '
    'xmlns:fo="urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0" '
    'xmlns:presentation="urn:oasis:names:tc:opendocument:xmlns:presentation:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"'
)
FILLER = (
    "The quick brown fox jumps over the lazy dog while the committee reviews the quarterly "
    "figures and the lecture notes for the coming term. "
)
FLAT = {"docx": "fodt", "odt": "fodt", "pptx": "fodp", "xlsx": "fods"}


def _document(kind: str, body: str, styles: str = "") -> str:
    """A flat OpenDocument of a kind (text, presentation, spreadsheet) around its body's content."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document {NS} office:version="1.2" '
        f'office:mimetype="application/vnd.oasis.opendocument.{kind}">{styles}'
        f"<office:body><office:{kind}>{body}</office:{kind}></office:body></office:document>"
    )


def _text(words: list[str]) -> str:
    styles = (
        '<office:automatic-styles><style:style style:name="brk" style:family="paragraph">'
        '<style:paragraph-properties fo:break-before="page"/></style:style></office:automatic-styles>'
    )
    body = []
    for i, word in enumerate(words):
        style = ' text:style-name="brk"' if i else ""
        body.append(f'<text:h{style} text:outline-level="1">{escape(word)} heading</text:h>')
        body += [f"<text:p>{FILLER * 3}</text:p>" for _ in range(3)]
    return _document("text", "".join(body), styles)


def _slides(words: list[str]) -> str:
    pages = []
    for i, word in enumerate(words):
        pages.append(
            f'<draw:page draw:name="s{i + 1}"><draw:frame svg:x="2cm" svg:y="2cm" svg:width="20cm" '
            f'svg:height="3cm"><draw:text-box><text:p>{escape(word)} slide title</text:p>'
            f"<text:p>{FILLER}</text:p></draw:text-box></draw:frame></draw:page>"
        )
    return _document("presentation", "".join(pages))


def _sheets(words: list[str]) -> str:
    tables = []
    for i, word in enumerate(words):
        rows = (
            f"<table:table-row><table:table-cell><text:p>{escape(word)} cell</text:p></table:table-cell>"
            f"<table:table-cell><text:p>{i + 1}</text:p></table:table-cell></table:table-row>"
        )
        tables.append(f'<table:table table:name="Sheet{i + 1}">{rows}</table:table>')
    return _document("spreadsheet", "".join(tables))


def make(kind: str, words: list[str], dest: Path) -> Path:
    """Write dest (a .docx, .pptx, .xlsx or .odt) with one page, slide or sheet per word."""
    flat = FLAT[kind]
    xml = {"fodt": _text, "fodp": _slides, "fods": _sheets}[flat](words)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{dest.stem}.{flat}"
        src.write_text(xml, encoding="utf-8")
        subprocess.run(
            [
                "soffice",
                "--headless",
                "--norestore",
                "--nolockcheck",
                f"-env:UserInstallation={(Path(tmp) / 'profile').as_uri()}",
                "--convert-to",
                kind,
                "--outdir",
                tmp,
                str(src),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        shutil.move(Path(tmp) / f"{dest.stem}.{kind}", dest)
    return dest


def encrypted_ooxml() -> bytes:
    """A compound file shaped like a password-protected DOCX: EncryptionInfo + EncryptedPackage streams.

    That container is what Office writes for any encrypted OOXML file; the payload is not a real
    cipher text, which is fine because the worker must refuse it before anything tries to open it.
    """
    info = (
        b"\x04\x00\x04\x00\x40\x00\x00\x00" + b'<?xml version="1.0"?><encryption '
        b'xmlns="http://schemas.microsoft.com/office/2006/encryption"/>'
    )
    package = struct.pack("<Q", 4096) + bytes(range(256)) * 16
    return ole2({"EncryptionInfo": info, "EncryptedPackage": package})


def ole2(streams: dict[str, bytes]) -> bytes:
    """A minimal version-3 compound file holding the given streams in regular 512-byte sectors."""
    sector = 512
    body = bytearray()
    starts = {}
    fat: list[int] = []
    for name, data in streams.items():
        count = max(1, -(-len(data) // sector))
        first = len(fat)
        starts[name] = first
        fat += list(range(first + 1, first + count)) + [0xFFFFFFFE]
        body += data.ljust(count * sector, b"\x00")
    dir_sector = len(fat)
    fat.append(0xFFFFFFFE)
    fat_sector = len(fat)
    fat.append(0xFFFFFFFD)

    def entry(
        name: str, kind: int, start: int, size: int, child: int = 0xFFFFFFFF, right: int = 0xFFFFFFFF
    ) -> bytes:
        raw = name.encode("utf-16-le") + b"\x00\x00"
        out = io.BytesIO()
        out.write(raw.ljust(64, b"\x00"))
        out.write(struct.pack("<HBB", len(raw), kind, 1))
        out.write(struct.pack("<III", 0xFFFFFFFF, right, child))
        out.write(b"\x00" * 36)
        out.write(struct.pack("<IQ", start, size))
        return out.getvalue().ljust(128, b"\x00")

    names = list(streams)
    directory = entry("Root Entry", 5, 0xFFFFFFFE, 0, child=1)
    for i, name in enumerate(names):
        right = i + 2 if i + 1 < len(names) else 0xFFFFFFFF
        directory += entry(name, 2, starts[name], len(streams[name]), right=right)
    body += directory.ljust(sector, b"\x00")
    body += struct.pack(f"<{sector // 4}I", *(fat + [0xFFFFFFFF] * (sector // 4 - len(fat))))
    header = bytearray(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16)
    header += struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + b"\x00" * 6
    header += struct.pack("<IIIIIIIII", 0, 1, dir_sector, 0, 4096, 0xFFFFFFFE, 0, 0xFFFFFFFE, 0)
    header += struct.pack("<I", fat_sector) + struct.pack("<I", 0xFFFFFFFF) * 108
    return bytes(header) + bytes(body)


def truncated(data: bytes) -> bytes:
    """The first half of a file, as an interrupted upload or copy leaves it."""
    return data[: len(data) // 2]


def zip_names(data: bytes) -> list[str]:
    """The entry names of a zip (to check what a generated document holds)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.namelist()
