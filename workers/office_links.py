"""Office files without their external references, made before LibreOffice opens them; bounded zip reads.

LibreOffice follows what a document links to: an image or OLE object linked by URL or by path, a
linked section or sheet, a template. It runs in a sandbox with no network and no files but its own
(workers/sandbox.py); this is the second layer, so a link never even reaches it:

- OOXML (docx, pptx, xlsx): every `*.rels` part is rewritten without the relationships that point
  outside the package (TargetMode="External", or a Target that is a URL or a Windows/UNC path).
- ODF (odt, odp, ods): every XML part but the manifest is rewritten without the `xlink:href`
  attributes that point outside the package (a URL scheme, an absolute path, `..`): images, linked
  objects and OLE objects, sections, sheets, templates, hyperlinks.
- Any XML part of either that declares a DTD is refused: neither format uses one, and a DTD's
  external entities are references too.
- RTF: every field instruction (`\\fldinst`) is renamed to a destination readers skip, so a field
  shows its stored result. Instruction text can be split across groups and escapes (INCLUDE{}TEXT),
  so recognising only the dangerous fields (INCLUDEPICTURE, INCLUDETEXT, LINK, DDE, IMPORT) would
  not be sound; the cost is that a PAGE field shows the number it had when the file was saved.
  Linked objects (`\\objlink`, `\\objautlink`) become plain embedded ones (their stored result).
- Legacy binary files (doc, xls, ppt: OLE2 compound files) are copied unchanged: their linked
  objects and fields live in binary records that cannot be rewritten safely here. The sandbox is
  the layer there.

Zip members are never read whole: the declared sizes are checked against OFFICE_UNZIPPED_MB (in
total) and OFFICE_ZIP_RATIO (per member) before anything is read, and every read is counted as it
streams, so a header that lies about a size does not help either.
"""

from __future__ import annotations

import re
import urllib.parse
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

from config import Settings
from workers.errors import CorruptDocument, TooLargeUnpacked, TooManyPages, UnsupportedDocument

MB = 1024 * 1024
CHUNK = 64 * 1024
# More members than any real document has; the central directory is parsed whole by zipfile.
MAX_MEMBERS = 20_000
# Below this a member's ratio is not judged: small, repetitive XML compresses very well and is harmless.
RATIO_FLOOR = 1 * MB
MAX_DEPTH = 5_000
XLINK = "http://www.w3.org/1999/xlink"
RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
ODF_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
ODF_STYLE = "urn:oasis:names:tc:opendocument:xmlns:style:1.0"
FO = "urn:oasis:names:tc:opendocument:xmlns:xsl-fo-compatible:1.0"
OFF = ("0", "false", "off")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
DTD = "This document declares a DTD (Office documents never do), so it cannot be converted."
BROKEN_XML = "The document is damaged: one of its parts is not well-formed XML."
TOO_DEEP = "The document nests its content too deeply to be converted."
RTF_FIELD = re.compile(rb"\\(fldinst|objlink|objautlink)(?![A-Za-z])", re.IGNORECASE)
RTF_PAGE = re.compile(rb"\\page(?![A-Za-z])")
RTF_RENAMED = {b"fldinst": b"fldxxxx", b"objlink": b"objxxxx", b"objautlink": b"objxxxxxxx"}


class _Refused(Exception):
    """Raised inside an expat handler; carries the ConversionError to raise outside it."""

    def __init__(self, error: Exception):
        self.error = error


# -- bounded zip reads -----------------------------------------------------------------------------


def check_zip(zf: zipfile.ZipFile, settings: Settings) -> None:
    """Refuse a zip whose declared sizes unpack beyond OFFICE_UNZIPPED_MB or a member's ratio."""
    members = zf.infolist()
    if len(members) > MAX_MEMBERS:
        raise TooLargeUnpacked(f"The document holds more than {MAX_MEMBERS} parts.")
    total = 0
    for info in members:
        total += info.file_size
        if (
            info.file_size > RATIO_FLOOR
            and info.file_size > max(1, info.compress_size) * settings.OFFICE_ZIP_RATIO
        ):
            raise TooLargeUnpacked()
    if total > settings.OFFICE_UNZIPPED_MB * MB:
        raise TooLargeUnpacked()


def read_member(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """At most `limit` bytes of a member, whatever its header claims (None-safe: KeyError if absent)."""
    with zf.open(name) as member:
        return member.read(limit)


class _Budget:
    """Counts the bytes a whole zip unpacks to, as they stream."""

    def __init__(self, settings: Settings):
        self.left = settings.OFFICE_UNZIPPED_MB * MB
        self.ratio = settings.OFFICE_ZIP_RATIO

    def chunks(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
        """A member's bytes in chunks, stopped the moment it exceeds what was declared or allowed."""
        # zipfile already stops at the declared file_size and reads at most compress_size raw bytes;
        # these counts hold even if it did not.
        allowed = max(info.file_size, 0)
        ratio_cap = max(RATIO_FLOOR, max(1, info.compress_size) * self.ratio)
        seen = 0
        with zf.open(info) as member:
            while chunk := member.read(CHUNK):
                seen += len(chunk)
                self.left -= len(chunk)
                if seen > allowed or seen > ratio_cap or self.left < 0:
                    raise TooLargeUnpacked()
                yield chunk


# -- streaming XML rewrite -------------------------------------------------------------------------


def _outside(target: str) -> bool:
    """True when a reference points outside the package (a URL, an absolute or a parent path)."""
    value = urllib.parse.unquote(target.strip())
    if SCHEME.match(value) or value.startswith(("/", "\\")) or "\\" in value:
        return True
    return ".." in re.split(r"[/\\]", value)


class _XmlFilter:
    """Re-serialises an XML part while it streams, refusing DTDs, dropping what `policy` rejects.

    policy "check": the part is only parsed (the original bytes are kept); "odf": xlink:href attributes
    pointing outside are removed; "rels": external Relationship elements are removed.
    """

    def __init__(self, policy: str, write: Callable[[bytes], object], max_pages: int = 0):
        self.policy = policy
        # Explicit page breaks counted on the way: each starts a page, so more than MAX_PAGES of them
        # is a document LibreOffice would spend OFFICE_TIMEOUT laying out only to be refused.
        self.max_pages = max_pages
        self.breaks = 0
        self.breaking_styles: set[str] = set()
        self.style: str | None = None
        self.write = write
        self.parser = expat.ParserCreate()
        self.parser.ordered_attributes = True
        self.parser.buffer_text = True
        self.parser.StartDoctypeDeclHandler = self._doctype
        self.parser.EntityDeclHandler = self._doctype
        self.scopes: list[dict[str, str] | None] = [{"xml": "http://www.w3.org/XML/1998/namespace"}]
        self.skipping = 0
        self.removed = 0
        if policy != "check":
            self.parser.XmlDeclHandler = self._decl
            self.parser.StartElementHandler = self._start
            self.parser.EndElementHandler = self._end
            self.parser.CharacterDataHandler = self._text
            self.parser.CommentHandler = self._comment
            self.parser.ProcessingInstructionHandler = self._pi
        else:
            self.parser.StartElementHandler = self._check
            self.parser.EndElementHandler = self._pop

    def feed(self, data: bytes, final: bool = False) -> None:
        """Parse the next chunk of the part."""
        try:
            self.parser.Parse(data, final)
        except _Refused as refused:
            raise refused.error from None
        except expat.ExpatError:
            raise CorruptDocument(BROKEN_XML) from None

    def _doctype(self, *args) -> None:
        raise _Refused(UnsupportedDocument(DTD))

    def _decl(self, version, encoding, standalone) -> None:
        alone = "" if standalone == -1 else f' standalone="{"yes" if standalone else "no"}"'
        self.write(f'<?xml version="{version or "1.0"}" encoding="UTF-8"{alone}?>'.encode())

    def _push(self, attrs: list[str]) -> None:
        if len(self.scopes) > MAX_DEPTH:
            raise _Refused(UnsupportedDocument(TOO_DEEP))
        declared = {
            (attrs[i][6:] if attrs[i].startswith("xmlns:") else ""): attrs[i + 1]
            for i in range(0, len(attrs), 2)
            if attrs[i] == "xmlns" or attrs[i].startswith("xmlns:")
        }
        self.scopes.append(declared or None)

    def _pop(self, name: str) -> None:
        self.scopes.pop()

    def _check(self, name: str, attrs: list[str]) -> None:
        self._push(attrs)
        if self.max_pages:
            self._count(name, [(attrs[i], attrs[i + 1]) for i in range(0, len(attrs), 2)])

    def _named(self, pairs: list[tuple[str, str]], uri: str, local: str) -> str | None:
        for key, value in pairs:
            if key.rsplit(":", 1)[-1] == local and ":" in key and self._uri(key) == uri:
                return value
        return None

    def _count(self, name: str, pairs: list[tuple[str, str]]) -> None:
        local, uri = name.rsplit(":", 1)[-1], self._uri(name)
        if uri == W:
            if local == "br" and self._named(pairs, W, "type") == "page":
                self.breaks += 1
            elif local == "pageBreakBefore" and (self._named(pairs, W, "val") or "1").lower() not in OFF:
                self.breaks += 1
        elif uri == ODF_STYLE and local == "style":
            self.style = self._named(pairs, ODF_STYLE, "name")
        elif uri == ODF_STYLE and local == "paragraph-properties" and self.style is not None:
            if "page" in (self._named(pairs, FO, "break-before"), self._named(pairs, FO, "break-after")):
                self.breaking_styles.add(self.style)
        elif uri == ODF_TEXT and local in ("p", "h"):
            if self._named(pairs, ODF_TEXT, "style-name") in self.breaking_styles:
                self.breaks += 1
        if self.breaks >= self.max_pages:
            raise _Refused(TooManyPages(f"The document has more than {self.max_pages} pages, the limit."))

    def _uri(self, qname: str) -> str | None:
        prefix = qname.split(":", 1)[0] if ":" in qname else ""
        for scope in reversed(self.scopes):
            if scope is not None and prefix in scope:
                return scope[prefix]
        return None

    def _start(self, name: str, attrs: list[str]) -> None:
        self._push(attrs)
        if self.max_pages:
            self._count(name, [(attrs[i], attrs[i + 1]) for i in range(0, len(attrs), 2)])
        if self.skipping:
            self.skipping += 1
            return
        pairs = [(attrs[i], attrs[i + 1]) for i in range(0, len(attrs), 2)]
        if self.policy == "rels" and name.rsplit(":", 1)[-1] == "Relationship" and self._uri(name) == RELS:
            values = {k: v for k, v in pairs}
            if values.get("TargetMode", "").strip().lower() == "external" or _outside_rel(
                values.get("Target", "")
            ):
                self.skipping = 1
                self.removed += 1
                return
        if self.policy == "odf":
            kept = []
            for key, value in pairs:
                if (
                    ":" in key
                    and key.rsplit(":", 1)[1] == "href"
                    and self._uri(key) == XLINK
                    and _outside(value)
                ):
                    self.removed += 1
                    continue
                kept.append((key, value))
            pairs = kept
        out = "<" + name + "".join(f" {key}={_attr(value)}" for key, value in pairs) + ">"
        self.write(out.encode())

    def _end(self, name: str) -> None:
        self.scopes.pop()
        if self.skipping:
            self.skipping -= 1
            return
        self.write(f"</{name}>".encode())

    def _text(self, data: str) -> None:
        if not self.skipping:
            self.write(escape(data).encode())

    def _comment(self, data: str) -> None:
        if not self.skipping:
            self.write(f"<!--{data}-->".encode())

    def _pi(self, target: str, data: str) -> None:
        if not self.skipping:
            self.write(f"<?{target} {data}?>".encode())


def _attr(value: str) -> str:
    # Characters that attribute-value normalisation would turn into spaces stay characters.
    return quoteattr(value, {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _outside_rel(target: str) -> bool:
    """An internal OOXML target may be an absolute part name (/word/x.xml), but never a URL or a path."""
    value = urllib.parse.unquote(target.strip())
    return bool(SCHEME.match(value)) or "\\" in value or value.startswith("//")


def _policy(ext: str, name: str) -> str | None:
    lower = name.lower()
    if not lower.endswith((".xml", ".rels")):
        return None
    if ext in ("docx", "pptx", "xlsx"):
        return "rels" if lower.endswith(".rels") else "check"
    return "check" if lower == "meta-inf/manifest.xml" else "odf"


def copy_zip(source: Path, dest: Path, ext: str, settings: Settings) -> int:
    """Copy an OOXML or ODF package to dest without external references; returns how many were dropped."""
    removed = 0
    try:
        with zipfile.ZipFile(source) as zf, zipfile.ZipFile(dest, "w") as out:
            check_zip(zf, settings)
            budget = _Budget(settings)
            for info in zf.infolist():
                target = zipfile.ZipInfo(info.filename, info.date_time)
                target.external_attr = info.external_attr
                target.compress_type = (
                    zipfile.ZIP_STORED if info.compress_type == zipfile.ZIP_STORED else zipfile.ZIP_DEFLATED
                )
                if info.is_dir():
                    out.writestr(target, b"")
                    continue
                with out.open(target, "w", force_zip64=info.file_size > 256 * MB) as stream:
                    policy = _policy(ext, info.filename)
                    removed += _copy_member(zf, info, stream, policy, budget, settings.MAX_PAGES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError):
        raise CorruptDocument(
            "The document is damaged or incomplete (its zip structure is broken)."
        ) from None
    except (NotImplementedError, RuntimeError):
        raise CorruptDocument("The document uses a zip feature that cannot be read.") from None
    return removed


def _copy_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    stream: BinaryIO,
    policy: str | None,
    budget: _Budget,
    max_pages: int,
) -> int:
    if policy is None:
        for chunk in budget.chunks(zf, info):
            stream.write(chunk)
        return 0
    counted = info.filename in ("word/document.xml", "content.xml")
    xml = _XmlFilter(policy, stream.write, max_pages if counted else 0)
    for chunk in budget.chunks(zf, info):
        xml.feed(chunk)
        if policy == "check":
            stream.write(chunk)
    xml.feed(b"", final=True)
    return xml.removed


def copy_rtf(source: Path, dest: Path, max_pages: int) -> int:
    """Copy an RTF file with its field instructions and object links renamed away; returns how many.

    More than `max_pages` explicit page breaks (\\page) are refused as too many pages.
    """
    longest = max(len(k) for k in RTF_RENAMED) + 1
    removed = 0
    breaks = 0

    def rename(match: re.Match) -> bytes:
        nonlocal removed
        removed += 1
        word = match.group(1)
        return b"\\" + RTF_RENAMED[word.lower()]

    with open(source, "rb") as src, open(dest, "wb") as out:
        carry = b""
        while True:
            chunk = src.read(CHUNK)
            data = carry + chunk
            if not chunk:
                out.write(RTF_FIELD.sub(rename, data))
                break
            # Hold back a tail that could be the start of a control word cut by the chunk boundary;
            # renaming keeps lengths, so the held tail is rewritten whole with the next chunk.
            cut = max(len(data) - longest, 0)
            slash = data.rfind(b"\\", cut)
            keep = slash if slash != -1 else len(data)
            out.write(RTF_FIELD.sub(rename, data[:keep]))
            breaks += len(RTF_PAGE.findall(data, 0, keep))
            if breaks >= max_pages:
                raise TooManyPages(f"The document has more than {max_pages} pages, the limit.")
            carry = data[keep:]
    return removed
