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


# -- hand-made packages: linked content, decompression bombs, page floods ----------------------------

ODF_NS = NS + ' xmlns:xlink="http://www.w3.org/1999/xlink"'
W_NS = (
    'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" '
    'xmlns:wp="http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing" '
    'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" '
    'xmlns:pic="http://schemas.openxmlformats.org/drawingml/2006/picture"'
)
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="' + REL + '/officeDocument" Target="word/document.xml"/></Relationships>'
)
DOCX_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" ContentType="application/'
    'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)


def odt_package(body: str, extra: dict[str, bytes] | None = None) -> bytes:
    """An ODT whose content.xml holds `body` (text:, draw:, xlink: prefixes bound) and `extra` parts."""
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {ODF_NS} office:version="1.2">'
        f"<office:body><office:text>{body}</office:text></office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?><manifest:manifest '
        'xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
        '<manifest:file-entry manifest:full-path="/" '
        'manifest:media-type="application/vnd.oasis.opendocument.text"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.text")
        zf.writestr("META-INF/manifest.xml", manifest, zipfile.ZIP_DEFLATED)
        zf.writestr("content.xml", content, zipfile.ZIP_DEFLATED)
        for name, data in (extra or {}).items():
            zf.writestr(name, data, zipfile.ZIP_DEFLATED)
    return out.getvalue()


def docx_package(body: str, relationships: str = "") -> bytes:
    """A DOCX whose document body is `body` (w:, r:, wp:, a:, pic: bound) with extra relationships."""
    document = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document {W_NS}><w:body>{body}'
        "</w:body></w:document>"
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{relationships}'
        "</Relationships>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", DOCX_TYPES)
        zf.writestr("_rels/.rels", PKG_RELS)
        zf.writestr("word/document.xml", document)
        zf.writestr("word/_rels/document.xml.rels", rels)
    return out.getvalue()


def linked_image_odt(url: str, words: str) -> bytes:
    """An ODT saying `words` with a page-sized image linked (not embedded) to `url`."""
    return odt_package(
        f"<text:p>{escape(words)}</text:p><text:p>"
        '<draw:frame draw:name="linked" svg:width="15cm" svg:height="20cm">'
        f'<draw:image xlink:href="{escape(url)}" xlink:type="simple" xlink:show="embed" '
        'xlink:actuate="onLoad"/></draw:frame></text:p>'
    )


def linked_image_docx(url: str, words: str) -> bytes:
    """A DOCX saying `words` with a page-sized image linked (TargetMode="External") to `url`."""
    cx, cy = 5400000, 7200000
    drawing = (
        f'<w:p><w:r><w:drawing><wp:inline><wp:extent cx="{cx}" cy="{cy}"/><wp:docPr id="1" name="linked"/>'
        '<a:graphic><a:graphicData uri="http://schemas.openxmlformats.org/drawingml/2006/picture">'
        '<pic:pic><pic:nvPicPr><pic:cNvPr id="1" name="linked"/><pic:cNvPicPr/></pic:nvPicPr>'
        '<pic:blipFill><a:blip r:link="rIdImg"/><a:stretch><a:fillRect/></a:stretch></pic:blipFill>'
        f'<pic:spPr><a:xfrm><a:off x="0" y="0"/><a:ext cx="{cx}" cy="{cy}"/></a:xfrm>'
        '<a:prstGeom prst="rect"/></pic:spPr></pic:pic></a:graphicData></a:graphic></wp:inline>'
        "</w:drawing></w:r></w:p>"
    )
    rel = f'<Relationship Id="rIdImg" Type="{REL}/image" Target="{escape(url)}" TargetMode="External"/>'
    return docx_package(f"<w:p><w:r><w:t>{escape(words)}</w:t></w:r></w:p>{drawing}", rel)


def page_breaks_docx(count: int) -> bytes:
    """A DOCX of `count` pages, each a number and a page break: a few hundred KB that lay out as a book."""
    # Numbered pages: 100,000 identical ones would compress past OFFICE_ZIP_RATIO and be refused as a bomb.
    page = '<w:p><w:r><w:t>{}</w:t></w:r><w:r><w:br w:type="page"/></w:r></w:p>'
    return docx_package("".join(page.format(n) for n in range(1, count + 1)))


def rows_xlsx(rows: int) -> bytes:
    """An XLSX of one sheet with `rows` rows of numbers: thousands of printed pages."""
    sheet = io.StringIO()
    sheet.write(
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet '
        'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
    )
    for n in range(1, rows + 1):
        sheet.write(f'<row r="{n}"><c r="A{n}"><v>{n}</v></c><c r="B{n}"><v>{n * 7}</v></c></row>')
    sheet.write("</sheetData></worksheet>")
    main = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    types = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{main}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{main}.worksheet+xml"/></Types>'
    )
    workbook = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook '
        'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        f'xmlns:r="{REL}"><sheets><sheet name="Rows" sheetId="1" r:id="rId1"/></sheets></workbook>'
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{REL}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", types)
        zf.writestr("_rels/.rels", PKG_RELS.replace("word/document.xml", "xl/workbook.xml"))
        zf.writestr("xl/workbook.xml", workbook)
        zf.writestr("xl/_rels/workbook.xml.rels", rels)
        zf.writestr("xl/worksheets/sheet1.xml", sheet.getvalue())
    return out.getvalue()


def zip_bomb(dest: Path, kind: str, size: int, declared: int | None = None) -> Path:
    """Write a zip shaped like an ODT ("odt": its `mimetype` entry) or a DOCX ("docx": word/document.xml)
    whose bomb entry inflates to `size` bytes of zeros; `declared` makes its headers lie about that size.
    """
    name = "mimetype" if kind == "odt" else "word/document.xml"
    chunk = b"\x00" * (1 << 20)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        if kind == "docx":
            zf.writestr("[Content_Types].xml", DOCX_TYPES)
            zf.writestr("_rels/.rels", PKG_RELS)
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as entry:
            left = size
            while left > 0:
                entry.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    if declared is not None:
        data = bytearray(dest.read_bytes())
        raw = name.encode()
        # The central directory's record (PK\1\2) and the local header (PK\3\4) both hold the size.
        for signature, size_at, name_at in ((b"PK\x01\x02", 24, 46), (b"PK\x03\x04", 22, 30)):
            at = data.find(signature)
            while at != -1:
                if data[at + name_at : at + name_at + len(raw)] == raw:
                    data[at + size_at : at + size_at + 4] = struct.pack("<I", declared)
                at = data.find(signature, at + 4)
        dest.write_bytes(bytes(data))
    return dest
