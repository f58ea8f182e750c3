"""Office documents: identified by content, turned into a PDF by a headless LibreOffice, then rendered
by the PDF pipeline (progressive pages, text layer, outline, search) into the same sink.

LibreOffice runs once per document with a fresh private profile (no state shared between
documents, no lock files, macros off), in the sandbox (workers/sandbox.py: no network, no files but
its work directory and the programs it needs), in its own process group under a guard
(workers/office_guard.py), with OFFICE_TIMEOUT of wall clock and limits on its address space
(OFFICE_MEMORY_MB), CPU time and output (CONVERTER_OUTPUT_MB). It sees a copy of the document without
its external references (workers/office_links.py) and is asked for at most MAX_PAGES + 1 pages. A
hung or crashed run is killed with its whole group and the attempt is retried once (a second hang
is final); password-protected, damaged, unsupported and over-large files fail at once, recognised
here before LibreOffice is started where the format allows it. Where the sandbox cannot be made,
this worker does not offer Office documents at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from config import ROOT, Settings
from livedoc import endings
from livedoc.storage import SOURCE_PDF
from workers import office_links, pdf_convert, sandbox
from workers.errors import (
    ConversionError,
    CorruptDocument,
    EncryptedDocument,
    TooManyPages,
    TransientError,
    UnsupportedDocument,
)
from workers.pages import PageSink

# Percent bands: 0..CONVERT_END while LibreOffice works, then the page stages from CONVERT_END.
CONVERT_START = 1
CONVERT_END = 30
TICK_SECONDS = 1.0
# The estimate of how long LibreOffice takes, measured on this project's machine (2 cores, LO 7.4):
# ~1.7 s to start with a fresh profile, then roughly 1 MB of document per second (30 slides or 50
# pages of a generated document convert in 2-4 s). The bar follows elapsed / estimate and stops at
# 95% of the band, so a slower conversion waits near the end of the band instead of overshooting.
STARTUP_SECONDS = 1.7
BYTES_PER_SECOND = 1_000_000
ESTIMATE_CAP = 0.95

ENCRYPTED = "This document is protected by a password. Upload a copy without a password."
NOT_LOADED = (
    "LibreOffice could not open this document: it is damaged, protected by a password, "
    "or not really the kind of file it looks like."
)
MACROS_OFF = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="MacroSecurityLevel"
 oor:op="fuse"><value>3</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="DisableMacrosExecution"
 oor:op="fuse"><value>true</value></prop></item>
</oor:items>
"""

OOXML_MAIN = {"word/document.xml": "docx", "ppt/presentation.xml": "pptx", "xl/workbook.xml": "xlsx"}
ODF_TYPES = {
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.oasis.opendocument.presentation": "odp",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
}
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
OLE2_KINDS = ("doc", "xls", "ppt")
# The PDF export filter of each document family; each takes a PageRange (LibreOffice >= 7.4 reads
# filter options given as JSON on the command line).
PDF_FILTERS = {
    "writer_pdf_Export": ("docx", "odt", "doc", "rtf"),
    "impress_pdf_Export": ("pptx", "odp", "ppt"),
    "calc_pdf_Export": ("xlsx", "ods", "xls"),
}
FILTER_OF = {ext: name for name, exts in PDF_FILTERS.items() for ext in exts}
# Small parts read to tell the formats apart; whatever their headers claim, no more is read.
MIMETYPE_BYTES = 256
MANIFEST_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)
_warned: set[str] = set()
_sandbox_checked: dict[str, str | None] = {}


class OfficeHung(TransientError):
    """LibreOffice did not finish within OFFICE_TIMEOUT."""

    ending = endings.OFFICE_TIMEOUT
    max_retries = 1


class OfficeTimeoutFinal(ConversionError):
    """LibreOffice did not finish within OFFICE_TIMEOUT on a second attempt: it will not next time either."""

    ending = endings.OFFICE_TIMEOUT_FINAL


class OfficeCrashed(TransientError):
    """LibreOffice died (a crash, or the memory limit)."""

    ending = endings.OFFICE_CRASHED
    max_retries = 1


class OfficeMissing(TransientError):
    """This worker host has no LibreOffice; another worker may have it."""

    ending = endings.OFFICE_MISSING


def unavailable(settings: Settings) -> str | None:
    """Why this host cannot convert Office documents (no LibreOffice, no sandbox), or None when it can."""
    if shutil.which(settings.OFFICE_BINARY) is None:
        return f"LibreOffice ({settings.OFFICE_BINARY!r}) is not installed"
    if settings.SANDBOX_BINARY not in _sandbox_checked:
        # Runs a process, so once per SANDBOX_BINARY: a host does not gain namespaces while it is up.
        _sandbox_checked[settings.SANDBOX_BINARY] = sandbox.check(settings)
    problem = _sandbox_checked[settings.SANDBOX_BINARY]
    if problem is not None:
        return f"LibreOffice would run outside a sandbox: {problem}"
    return None


def available(settings: Settings) -> bool:
    """True when this host can run LibreOffice, and in the sandbox."""
    return unavailable(settings) is None


def local_kinds(settings: Settings) -> list[str]:
    """The optional kinds this worker host converts (what it advertises, livedoc/capabilities.py).

    Fails closed: without the sandbox no Office, said once in the log.
    """
    problem = unavailable(settings)
    if problem is None:
        return ["office"]
    if problem not in _warned:
        _warned.add(problem)
        log.warning("Office documents are off on this worker: %s", problem)
    return []


# -- telling the formats apart ---------------------------------------------------------------------


def identify(path: Path, settings: Settings) -> str:
    """The file extension LibreOffice should see (docx, odp, xls, ...); refuses what it cannot open."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"{\\rtf"):
        return "rtf"
    if head == OLE2_MAGIC:
        return _identify_ole2(path)
    if head.startswith(b"PK\x03\x04"):
        return _identify_zip(path, settings)
    raise UnsupportedDocument("This kind of file cannot be converted.")


def _identify_zip(path: Path, settings: Settings) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            office_links.check_zip(zf, settings)
            names = set(zf.namelist())
            if "mimetype" in names:
                mimetype = office_links.read_member(zf, "mimetype", MIMETYPE_BYTES)
                mimetype = mimetype.decode("ascii", "replace").strip()
                ext = ODF_TYPES.get(mimetype)
                if ext is None:
                    raise UnsupportedDocument("This kind of OpenDocument file cannot be converted.")
                manifest = (
                    office_links.read_member(zf, "META-INF/manifest.xml", MANIFEST_BYTES)
                    if "META-INF/manifest.xml" in names
                    else b""
                )
                if b"encryption-data" in manifest:
                    raise EncryptedDocument(ENCRYPTED)
                return ext
            if "[Content_Types].xml" in names:
                for part, ext in OOXML_MAIN.items():
                    if part in names:
                        return ext
            raise UnsupportedDocument("This kind of file cannot be converted.")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, ValueError):
        raise CorruptDocument(
            "The document is damaged or incomplete (its zip structure is broken)."
        ) from None
    except (NotImplementedError, RuntimeError):
        # zipfile raises these for an unknown compression method or an encrypted entry.
        raise CorruptDocument("The document uses a zip feature that cannot be read.") from None


def _identify_ole2(path: Path) -> str:
    try:
        ole = _Ole2(path)
        names = ole.names()
        if "EncryptionInfo" in names and "EncryptedPackage" in names:
            raise EncryptedDocument(ENCRYPTED)  # an encrypted DOCX, PPTX or XLSX
        if "WordDocument" in names:
            # FIB flags: fEncrypted (0x0100) and fObfuscated (0x8000) mean a password is needed.
            flags = struct.unpack_from("<H", ole.read("WordDocument", 12), 10)[0]
            if flags & 0x8100:
                raise EncryptedDocument(ENCRYPTED)
            return "doc"
        for book in ("Workbook", "Book"):
            if book in names:
                if _biff_has_filepass(ole.read(book, 4096)):
                    raise EncryptedDocument(ENCRYPTED)
                return "xls"
        if "PowerPoint Document" in names:
            if "EncryptedSummary" in names:
                raise EncryptedDocument(ENCRYPTED)
            return "ppt"
    except (struct.error, ValueError, IndexError):
        raise CorruptDocument("The document is damaged or incomplete.") from None
    raise UnsupportedDocument("This kind of Microsoft Office file cannot be converted.")


def _biff_has_filepass(data: bytes) -> bool:
    """True when the workbook globals start with a FILEPASS record (the workbook is encrypted)."""
    at = 0
    for _ in range(32):
        if at + 4 > len(data):
            return False
        kind, size = struct.unpack_from("<HH", data, at)
        if kind == 0x002F:
            return True
        if kind == 0x000A:  # EOF of the globals substream
            return False
        at += 4 + size
    return False


class _Ole2:
    """Just enough of the compound file format to list stream names and read a stream's start."""

    END = 0xFFFFFFFE

    def __init__(self, path: Path):
        self.data = path.read_bytes()
        header = self.data[:512]
        if len(header) < 512 or header[:8] != OLE2_MAGIC:
            raise ValueError("not a compound file")
        self.sector = 1 << struct.unpack_from("<H", header, 0x1E)[0]
        if self.sector not in (512, 4096):
            raise ValueError("bad sector size")
        self.cutoff = struct.unpack_from("<I", header, 0x38)[0]
        self.max_sectors = len(self.data) // self.sector + 1
        fat_sectors = [s for s in struct.unpack_from("<109I", header, 0x4C) if s < self.max_sectors]
        difat, count = struct.unpack_from("<II", header, 0x44)
        for _ in range(min(count, self.max_sectors)):
            if difat >= self.max_sectors:
                break
            entries = struct.unpack_from(f"<{self.sector // 4}I", self._sector(difat))
            fat_sectors += [s for s in entries[:-1] if s < self.max_sectors]
            difat = entries[-1]
        self.fat: list[int] = []
        for s in fat_sectors:
            self.fat += struct.unpack_from(f"<{self.sector // 4}I", self._sector(s))
        self.entries: dict[str, tuple[int, int]] = {}
        directory = b"".join(self._sector(s) for s in self._chain(struct.unpack_from("<I", header, 0x30)[0]))
        for at in range(0, len(directory) - 127, 128):
            length = struct.unpack_from("<H", directory, at + 0x40)[0]
            kind = directory[at + 0x42]
            if kind not in (1, 2, 5) or not 2 <= length <= 64:
                continue
            name = directory[at : at + length - 2].decode("utf-16-le", "replace")
            start, size = struct.unpack_from("<IQ", directory, at + 0x74)
            self.entries[name] = (start, size & 0xFFFFFFFF if self.sector == 512 else size)

    def _sector(self, n: int) -> bytes:
        at = (n + 1) * self.sector
        block = self.data[at : at + self.sector]
        if len(block) < self.sector:
            raise ValueError("sector beyond the end of the file")
        return block

    def _chain(self, start: int) -> list[int]:
        chain, current = [], start
        while current < self.max_sectors and len(chain) < self.max_sectors:
            chain.append(current)
            current = self.fat[current] if current < len(self.fat) else self.END
        return chain

    def names(self) -> set[str]:
        """The names of every storage and stream."""
        return set(self.entries)

    def read(self, name: str, limit: int) -> bytes:
        """The first `limit` bytes of a stream held in regular sectors ("" for a small stream)."""
        start, size = self.entries[name]
        if size < self.cutoff:
            return b""  # kept in the mini stream; only needed for the large streams read here
        out = bytearray()
        for s in self._chain(start):
            out += self._sector(s)
            if len(out) >= min(limit, size):
                break
        return bytes(out[: min(limit, size)])


# -- running LibreOffice ---------------------------------------------------------------------------


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group has already ended: nothing left running


def estimate(elapsed: float, size: int) -> float:
    """The converting band's percent after `elapsed` seconds for a document of `size` bytes."""
    expected = STARTUP_SECONDS + size / BYTES_PER_SECOND
    return CONVERT_START + (CONVERT_END - CONVERT_START) * min(ESTIMATE_CAP, elapsed / expected)


def _installed_outside_usr(binary: str) -> list[str]:
    """What of a LibreOffice installed outside /usr the sandbox must show (its program's install root)."""
    real = Path(binary).resolve()
    if real.is_relative_to("/usr"):
        return []
    return [str(real.parent.parent if real.parent.name == "program" else real)]


def to_pdf(source: Path, workdir: Path, settings: Settings, tick: Callable[[float], None]) -> Path:
    """Convert workdir/<name> into workdir/out/<stem>.pdf with LibreOffice in the sandbox; `tick(elapsed)`
    every second. At most MAX_PAGES + 1 pages are exported: one more than the limit is enough to refuse.
    """
    binary = shutil.which(settings.OFFICE_BINARY)
    if binary is None:
        raise OfficeMissing()
    if sandbox.binary(settings) is None:
        raise OfficeMissing("This worker cannot run LibreOffice in its sandbox; trying another.")
    profile = workdir / "profile"
    (profile / "user").mkdir(parents=True, exist_ok=True)
    (profile / "user" / "registrymodifications.xcu").write_text(MACROS_OFF, encoding="utf-8")
    outdir = workdir / "out"
    outdir.mkdir(exist_ok=True)
    inside = sandbox.WORKDIR
    pages = json.dumps({"PageRange": {"type": "string", "value": f"1-{settings.MAX_PAGES + 1}"}})
    export = f"pdf:{FILTER_OF.get(source.suffix[1:], 'writer_pdf_Export')}:{pages}"
    cmd = [
        binary,
        "--headless",
        "--invisible",
        "--norestore",
        "--nolockcheck",
        "--nologo",
        "--nodefault",
        f"-env:UserInstallation={(inside / profile.relative_to(workdir)).as_uri()}",
        "--convert-to",
        export,
        "--outdir",
        str(inside / outdir.relative_to(workdir)),
        str(inside / source.relative_to(workdir)),
    ]
    cmd = sandbox.command(
        cmd,
        workdir,
        settings,
        env={"HOME": str(inside / profile.relative_to(workdir))},
        readonly=_installed_outside_usr(binary),
    )
    # The guard is ours and stays outside the sandbox; what it starts (bwrap, LibreOffice) is inside.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}
    with open(workdir / "office.log", "wb") as log:
        guard = subprocess.Popen(
            [sys.executable, "-m", "workers.office_guard", *cmd],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
            # CPU: threads of one process add up, so twice the wall clock; the wall clock is what
            # normally ends a run, this holds when nobody is left to watch it.
            preexec_fn=sandbox.limits(
                settings.OFFICE_MEMORY_MB, 2 * settings.OFFICE_TIMEOUT, settings.CONVERTER_OUTPUT_MB
            ),
        )
    started = time.monotonic()
    next_tick = started + TICK_SECONDS
    try:
        while True:
            try:
                code = guard.wait(
                    timeout=max(0.05, min(next_tick, started + settings.OFFICE_TIMEOUT) - time.monotonic())
                )
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - started >= settings.OFFICE_TIMEOUT:
                raise OfficeHung(f"LibreOffice took longer than {settings.OFFICE_TIMEOUT} s and was stopped.")
            if now >= next_tick:
                tick(now - started)
                next_tick = now + TICK_SECONDS
    finally:
        # Whatever happened (done, hung, deleted, the job's own timeout), nothing it started survives.
        _kill_group(guard.pid)
        if guard.stdin is not None:
            guard.stdin.close()
        guard.wait()
    result = outdir / (source.stem + ".pdf")
    if code != 0:
        raise OfficeCrashed()
    if not result.exists() or result.stat().st_size == 0:
        # Headless LibreOffice exits 0 with "source file could not be loaded" for a file it cannot open.
        raise CorruptDocument(NOT_LOADED)
    return result


def convert(source: Path, settings: Settings, sink: PageSink) -> None:
    """Convert an Office document to PDF, then render its pages like any PDF."""
    ext = identify(source, settings)
    workdir = sink.scratch / "office"
    workdir.mkdir()
    # LibreOffice picks its import filter by extension first; the content decided the extension.
    document = workdir / f"document.{ext}"
    if ext in ("rtf",):
        dropped = office_links.copy_rtf(source, document, settings.MAX_PAGES)
    elif ext in OLE2_KINDS:
        # Linked objects of the binary formats live in records not rewritten here: the sandbox is
        # the layer that keeps them from reaching anything.
        shutil.copyfile(source, document)
        dropped = 0
    else:
        dropped = office_links.copy_zip(source, document, ext, settings)
    if dropped:
        log.info("job %s: %d external references removed before conversion", sink.files.doc_id, dropped)
    size = document.stat().st_size
    sink.writer.update("converting", CONVERT_START, message="Converting with LibreOffice")

    def tick(elapsed: float) -> None:
        sink.writer.update(
            "converting", estimate(elapsed, size), message=f"Converting with LibreOffice ({elapsed:.0f} s)"
        )

    try:
        result = to_pdf(document, workdir, settings, tick)
    except OfficeHung as hung:
        # The first hang may be the host's (busy, swapping); the same document hanging again is the
        # document's, and a third try would only hold a worker for another OFFICE_TIMEOUT.
        if sink.attempt >= 2:
            raise OfficeTimeoutFinal(hung.message) from None
        raise
    shutil.rmtree(workdir / "profile", ignore_errors=True)
    # Stored for page-range jobs on other hosts and for sharper renditions of its pages.
    copy = workdir / SOURCE_PDF
    shutil.copyfile(result, copy)
    sink.files.storage.put_file(sink.files.pdf_key("office", sink.attempt), copy)
    sink.render_start = CONVERT_END
    try:
        pdf_convert.convert(result, settings, sink)
    except TooManyPages:
        # LibreOffice stopped at MAX_PAGES + 1: the document has at least that many, maybe far more.
        raise TooManyPages(
            f"The document has more than {settings.MAX_PAGES} pages; that is the limit."
        ) from None
