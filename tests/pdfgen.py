"""A tiny writer of real PDFs for tests: text pages in Helvetica, correct xref, optional encryption.

Everything is built by hand so the tests need no PDF library besides the one under test (pdfium).
Encryption is the PDF 1.4 standard security handler, revision 2 (RC4, 40-bit key), done properly:
pdfium refuses the file without the user password and opens it with the right one.
"""

from __future__ import annotations

import hashlib
import zlib

LETTER = (612.0, 792.0)

# The padding string of the standard security handler (PDF 1.7, 7.6.3.3, algorithm 2).
_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")
_FILE_ID = bytes.fromhex("6c697665646f632d746573742d696421")
_PERMISSIONS = -44


def _escape(text: str) -> bytes:
    # Helvetica with the standard encoding: keep Latin-1 and escape the three special bytes.
    raw = text.encode("latin-1", errors="replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _content(text: str, height: float) -> bytes:
    lines = text.split("\n")
    ops = [b"BT", b"/F1 12 Tf", b"14 TL", f"72 {height - 72:.0f} Td".encode()]
    for i, line in enumerate(lines):
        if i:
            ops.append(b"T*")
        ops.append(b"(" + _escape(line) + b") Tj")
    ops.append(b"ET")
    return b"\n".join(ops) + b"\n"


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def _md5(data: bytes) -> bytes:
    # MD5 and RC4 because the PDF format prescribes them for this handler; this is no security.
    return hashlib.md5(data, usedforsecurity=False).digest()


def _pad(password: str) -> bytes:
    return (password.encode("latin-1") + _PAD)[:32]


class _Security:
    """Revision 2 of the standard security handler: the /Encrypt values and per-object keys."""

    def __init__(self, user_password: str, owner_password: str):
        owner_key = _md5(_pad(owner_password))[:5]
        self.owner_entry = _rc4(owner_key, _pad(user_password))
        seed = _pad(user_password) + self.owner_entry + _PERMISSIONS.to_bytes(4, "little", signed=True)
        self.key = _md5(seed + _FILE_ID)[:5]
        self.user_entry = _rc4(self.key, _PAD)

    def encrypt(self, num: int, data: bytes) -> bytes:
        object_key = _md5(self.key + num.to_bytes(3, "little") + b"\x00\x00")[:10]
        return _rc4(object_key, data)

    def dictionary(self) -> bytes:
        return (
            b"<< /Filter /Standard /V 1 /R 2 /O <"
            + self.owner_entry.hex().encode()
            + b"> /U <"
            + self.user_entry.hex().encode()
            + b"> /P "
            + str(_PERMISSIONS).encode()
            + b" >>"
        )


# A bookmark: (title, 0-based page index, children).
Bookmark = tuple[str, int, list]


def make_pdf(
    pages: list[str],
    sizes: list[tuple[float, float]] | None = None,
    user_password: str | None = None,
    outline: list[Bookmark] | None = None,
) -> bytes:
    """A valid PDF with one page per string (lines split on newlines), US Letter unless sized,
    with bookmarks when `outline` is given (not with a password)."""
    sizes = sizes or [LETTER] * len(pages)
    security = _Security(user_password, "owner-" + user_password) if user_password else None
    objects: dict[int, bytes] = {}
    first_page = 4
    kids = " ".join(f"{first_page + 2 * i} 0 R" for i in range(len(pages)))
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[2] = f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode()
    objects[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    for i, (text, (width, height)) in enumerate(zip(pages, sizes)):
        page_num, content_num = first_page + 2 * i, first_page + 2 * i + 1
        objects[page_num] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width:g} {height:g}] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_num} 0 R >>"
        ).encode()
        stream = _content(text, height)
        if security:
            stream = security.encrypt(content_num, stream)
        objects[content_num] = f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream"
    if outline and not security:
        root = max(objects) + 1
        objects[root] = b""  # reserved: the items number themselves after it
        objects[1] = f"<< /Type /Catalog /Pages 2 0 R /Outlines {root} 0 R >>".encode()
        first, last, count = _outline_items(objects, outline, root, first_page)
        objects[root] = f"<< /Type /Outlines /First {first} 0 R /Last {last} 0 R /Count {count} >>".encode()
    trailer_extra = b""
    if security:
        encrypt_num = max(objects) + 1
        objects[encrypt_num] = security.dictionary()
        trailer_extra = f" /Encrypt {encrypt_num} 0 R".encode()
    return _assemble(objects, trailer_extra)


def _outline_items(
    objects: dict[int, bytes], items: list[Bookmark], parent: int, first_page: int
) -> tuple[int, int, int]:
    """Write one level of bookmarks (and their children); returns first, last and count."""
    nums = [max(objects) + 1 + i for i in range(len(items))]
    for num in nums:
        objects[num] = b""  # reserve the numbers before the children take theirs
    count = len(items)
    for i, (title, index, children) in enumerate(items):
        fields = [
            f"/Title ({title})",
            f"/Parent {parent} 0 R",
            f"/Dest [{first_page + 2 * index} 0 R /XYZ 0 792 0]",
        ]
        if i:
            fields.append(f"/Prev {nums[i - 1]} 0 R")
        if i + 1 < len(items):
            fields.append(f"/Next {nums[i + 1]} 0 R")
        if children:
            first, last, sub = _outline_items(objects, children, nums[i], first_page)
            fields.append(f"/First {first} 0 R /Last {last} 0 R /Count {sub}")
            count += sub
        objects[nums[i]] = ("<< " + " ".join(fields) + " >>").encode()
    return nums[0], nums[-1], count


def _assemble(objects: dict[int, bytes], trailer_extra: bytes = b"") -> bytes:
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += f"{num} 0 obj\n".encode() + objects[num] + b"\nendobj\n"
    size = max(objects) + 1
    xref_at = len(out)
    out += f"xref\n0 {size}\n".encode() + b"0000000000 65535 f \n"
    for num in range(1, size):
        out += f"{offsets[num]:010d} 00000 n \n".encode() if num in offsets else b"0000000000 65535 f \n"
    file_id = _FILE_ID.hex().encode()
    out += (
        f"trailer\n<< /Size {size} /Root 1 0 R".encode()
        + trailer_extra
        + b" /ID [<"
        + file_id
        + b"> <"
        + file_id
        + b">] >>\n"
    )
    out += f"startxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(out)


def encrypted_pdf(password: str = "secret") -> bytes:
    """A two-page PDF that opens only with `password` (pdfium reports a password error without it)."""
    return make_pdf(["Top secret page one", "Top secret page two"], user_password=password)


def empty_pdf() -> bytes:
    """A well-formed PDF whose page tree has no pages."""
    return _assemble({1: b"<< /Type /Catalog /Pages 2 0 R >>", 2: b"<< /Type /Pages /Kids [] /Count 0 >>"})


def corrupt_pdf() -> bytes:
    """Starts like a PDF (so the upload sniffer accepts it) but holds no readable PDF structure."""
    return b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\nthis is not a pdf body\n%%EOF\n"


def dense_text_pdf(chars: int, pages: int = 1, per_show: int = 10, font_size: float = 1) -> bytes:
    """`pages` pages sharing one Flate content stream of `chars` characters shown `per_show` at a
    time, each show on a line of its own: a file of a few KB whose pages each hold `chars`
    characters in chars / per_show text objects (the shape that made the old text layer quadratic)."""
    show = b"(" + (b"abcdefghij" * (per_show // 10 + 1))[:per_show] + b") Tj T*\n"
    stream = b"BT /F1 %g Tf %g TL 20 780 Td\n" % (font_size, font_size) + show * (chars // per_show) + b"ET\n"
    body = zlib.compress(stream, 9)
    first_page = 5
    kids = " ".join(f"{first_page + i} 0 R" for i in range(pages))
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: f"<< /Length {len(body)} /Filter /FlateDecode >>\nstream\n".encode() + body + b"\nendstream",
    }
    for i in range(pages):
        objects[first_page + i] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R >>"
        )
    return _assemble(objects)
