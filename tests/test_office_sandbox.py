"""LibreOffice in its sandbox, external references dropped, Office input bounded (issue M).

Real LibreOffice, real bubblewrap, real RQ worker code (burst mode in this process, or in a child
process where its peak RSS is the measure, as tests/test_hostile.py does).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pypdfium2
import pytest
from redis import Redis

from config import ROOT, Settings
from livedoc import capabilities, jobs, keys, progress
from livedoc.ids import new_doc_id
from livedoc.storage import SOURCE_PDF, DocumentFiles, LocalStorage, page_names
from tests import officegen, pdfgen
from tests.support.app import run_jobs
from tests.support.hostile import convert_in_child
from workers import office, office_links, sandbox
from workers.rqworker import LivedocWorker

MB = 1024 * 1024
WORDS = "Visible words of the upload"


class Listener:
    """A TCP server on a free local port that records every connection (and what was sent on it)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.received.append(conn.recv(4096))
            except OSError:
                self.received.append(b"")
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def _convert(redis_conn: Redis, storage_dir: Path, data: bytes) -> tuple[DocumentFiles, dict, float]:
    files = DocumentFiles(LocalStorage(storage_dir), new_doc_id())
    files.save_original(data)
    job_id = jobs.enqueue_conversion(
        redis_conn, Settings.from_env().as_flask_config(), files.doc_id, "office", seq=1, attempt=1
    )
    started = time.monotonic()
    run_jobs(redis_conn)
    return files, progress.read(redis_conn, job_id), time.monotonic() - started


def _text(files: DocumentFiles, final: dict) -> str:
    return "\n".join(
        files.storage.get_bytes(files.key(final["attempt"], page_names(n)["text"])).decode()
        for n in range(1, final["pages"] + 1)
    )


# -- the sandbox alone -----------------------------------------------------------------------------


def test_sandbox_has_no_network_and_no_files_but_its_own(storage_dir, tmp_path, listener):
    secret = storage_dir / "other-user" / "original"
    secret.parent.mkdir()
    secret.write_text("TOKEN-OF-ANOTHER-USER")
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("mine")
    settings = Settings()
    assert sandbox.check(settings) is None

    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            sandbox.command(["sh", "-c", script], work, settings), capture_output=True, text=True, timeout=30
        )

    # Its own directory, read-write, is its working directory; the programs it needs are there.
    done = run("cat mine.txt && echo out > made.txt && ls /usr/bin/soffice")
    assert done.returncode == 0 and done.stdout.startswith("mine"), done
    assert (work / "made.txt").read_text() == "out\n"
    for path in (
        secret,
        ROOT / "config.py",
        ROOT / "instance",
        Path("/root"),
        Path("/home"),
        Path("/etc/passwd"),
    ):
        done = run(f"cat '{path}' || ls '{path}'")
        assert done.returncode != 0 and "TOKEN" not in done.stdout, (path, done)
    assert run("ls /tmp").stdout.split() == []  # its own /tmp, not the host's
    connect = f"import socket; socket.create_connection(('127.0.0.1', {listener.port}), 3)"
    done = run(f'python3 -c "{connect}"')
    assert done.returncode != 0 and "Errno" in done.stderr, done
    assert set(run("env").stdout.split()) == {"PATH=" + sandbox.PATH, "HOME=/job", "LANG=C.UTF-8", "PWD=/job"}
    time.sleep(0.5)
    assert listener.received == []


def _marked(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_guard_takes_the_whole_sandbox_down_when_the_worker_dies(tmp_path):
    # Inside the sandbox processes are in a session of their own: only the pid namespace's teardown
    # (bwrap --die-with-parent, then its pid 1 gone) can end them when the guard's group is killed.
    suffix = f"-{os.getpid()}-{time.monotonic_ns()}"
    marker = "sandboxed" + suffix
    work = tmp_path / "work"
    work.mkdir()
    # Only the two inner shells' command lines hold the marker whole (the outer one builds it).
    inner = f'sh -c "sleep 300; : ${{m}}{suffix}"'
    argv = ["sh", "-c", f"m=sandboxed; {inner} & {inner}"]
    guard = subprocess.Popen(
        [sys.executable, "-m", "workers.office_guard", *sandbox.command(argv, work, Settings())],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while len(_marked(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_marked(marker)) == 2
    guard.stdin.close()  # the work horse is gone
    guard.wait(5)
    deadline = time.monotonic() + 5
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _marked(marker) == []


# -- external references ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["docx", "odt"])
def test_linked_image_reaches_no_host(kind, listener, redis_conn, storage_dir, worker_env):
    url = f"http://127.0.0.1:{listener.port}/x.png"
    data = (officegen.linked_image_docx if kind == "docx" else officegen.linked_image_odt)(url, WORDS)
    files, final, _ = _convert(redis_conn, storage_dir, data)
    assert final["state"] == "complete", final
    assert WORDS in _text(files, final)
    time.sleep(0.5)
    assert listener.received == [], listener.received


def test_the_sandbox_alone_keeps_a_linked_image_from_the_network(listener, tmp_path):
    # The second layer off: LibreOffice gets the link itself, and still reaches nothing.
    work = tmp_path / "work"
    work.mkdir()
    source = work / "document.odt"
    source.write_bytes(officegen.linked_image_odt(f"http://127.0.0.1:{listener.port}/x.png", WORDS))
    result = office.to_pdf(source, work, Settings(), lambda elapsed: None)
    assert WORDS in pypdfium2.PdfDocument(str(result))[0].get_textpage().get_text_range()
    time.sleep(0.5)
    assert listener.received == []


@pytest.mark.parametrize("kind", ["docx", "odt"])
def test_another_users_document_linked_by_path_does_not_leak(kind, client, users, redis_conn, storage_dir):
    capabilities.advertise(redis_conn, ["office"], ttl=60)
    token = "CONFIDENTIAL-7Q4Z-OF-BOB"
    bob = DocumentFiles(LocalStorage(storage_dir), new_doc_id())
    bob.save_original(pdfgen.make_pdf([f"{token} salary figures"]))
    secret = storage_dir / bob.original_key
    assert secret.is_file()
    url = secret.as_uri()
    data = (officegen.linked_image_docx if kind == "docx" else officegen.linked_image_odt)(url, WORDS)
    auth = {"Authorization": f"Bearer {users.create()}"}
    resp = client.post(
        "/api/documents",
        headers=auth,
        data={"file": (io.BytesIO(data), f"mine.{kind}")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 201, resp.get_json()
    doc_id = resp.get_json()["id"]
    run_jobs(redis_conn)
    mine = DocumentFiles(LocalStorage(storage_dir), doc_id)
    final = client.get(f"/api/documents/{doc_id}/status", headers=auth).get_json()
    assert final["state"] == "complete", final
    text = _text(mine, final)
    assert WORDS in text and token not in text
    found = client.get(f"/api/documents/{doc_id}/search", headers=auth, query_string={"q": token[:16]})
    assert found.status_code == 200 and found.get_json()["hits"] == [], found.get_json()
    found = client.get(f"/api/documents/{doc_id}/search", headers=auth, query_string={"q": "Visible words"})
    assert found.get_json()["hits"], "the search itself works"


def test_rewrite_drops_external_references_and_keeps_the_rest(tmp_path):
    settings = Settings()
    source = tmp_path / "in.odt"
    source.write_bytes(
        officegen.odt_package(
            '<text:p><text:a xlink:href="#inside">anchor</text:a><text:a xlink:href="http://x/">web</text:a>'
            '<text:a xlink:href="./Object%201">obj</text:a><text:a xlink:href="..%2Fup">up</text:a>'
            '<text:a xlink:href="/etc/passwd">abs</text:a><text:a xlink:href="Pictures/a.png">pic</text:a>'
            '<text:a xlink:href="FILE:///x">file</text:a> a &lt; b &amp; c\n  spaced</text:p>'
        )
    )
    dest = tmp_path / "out.odt"
    assert office_links.copy_zip(source, dest, "odt", settings) == 4
    with zipfile.ZipFile(dest) as zf:
        assert zf.namelist()[0] == "mimetype" and zf.getinfo("mimetype").compress_type == zipfile.ZIP_STORED
        content = zf.read("content.xml").decode()
    for kept in ('"#inside"', '"./Object%201"', '"Pictures/a.png"', "a &lt; b &amp; c\n  spaced"):
        assert kept in content
    for gone in ("http://x/", "..%2Fup", "/etc/passwd", "FILE:"):
        assert gone not in content
    docx = tmp_path / "in.docx"
    docx.write_bytes(
        officegen.docx_package(
            "<w:p/>",
            '<Relationship Id="a" Type="t" Target="media/image1.png"/>'
            '<Relationship Id="b" Type="t" Target="/word/media/x.png"/>'
            '<Relationship Id="c" Type="t" Target="https://evil/x" TargetMode="External"/>'
            '<Relationship Id="d" Type="t" Target="file:///etc/passwd"/>'
            '<Relationship Id="e" Type="t" Target="\\\\server\\share\\x"/>',
        )
    )
    assert office_links.copy_zip(docx, tmp_path / "out.docx", "docx", settings) == 3
    with zipfile.ZipFile(tmp_path / "out.docx") as zf:
        rels = zf.read("word/_rels/document.xml.rels").decode()
    assert 'Id="a"' in rels and 'Id="b"' in rels and "evil" not in rels and "passwd" not in rels
    assert "server" not in rels
    doctype = tmp_path / "dtd.docx"
    with zipfile.ZipFile(doctype, "w") as zf:
        zf.writestr("[Content_Types].xml", officegen.DOCX_TYPES)
        zf.writestr(
            "word/document.xml",
            '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><w:document>&e;</w:document>',
        )
    with pytest.raises(office_links.UnsupportedDocument):
        office_links.copy_zip(doctype, tmp_path / "x.docx", "docx", settings)


def test_rtf_fields_and_object_links_are_neutralised(tmp_path):
    source = tmp_path / "in.rtf"
    body = (
        rb"{\rtf1{\field{\*\fldinst INCLUDEPICTURE "
        + b"a" * 70_000
        + rb' "http://x/y.png"}{\fldrslt shown}}{\object\objautlink\objlink x}{\*\FLDINST y}\par}'
    )
    source.write_bytes(body)
    dest = tmp_path / "out.rtf"
    assert office_links.copy_rtf(source, dest, 2000) == 4
    out = dest.read_bytes()
    assert b"\\fldinst" not in out.lower() and b"objlink" not in out and b"objautlink" not in out
    assert len(out) == len(body) and b"{\\fldrslt shown}" in out


# -- bounded input ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """1 GiB of zeros as an ODT's `mimetype` and as a DOCX's document part, honest and lying headers."""
    out = tmp_path_factory.mktemp("bombs")
    return {
        "mimetype": officegen.zip_bomb(out / "mimetype.odt", "odt", 1 << 30),
        "ooxml-part": officegen.zip_bomb(out / "part.docx", "docx", 1 << 30),
        "mimetype-lying": officegen.zip_bomb(out / "lying.odt", "odt", 1 << 30, declared=40),
        "ooxml-part-lying": officegen.zip_bomb(out / "lying.docx", "docx", 1 << 30, declared=400),
    }


@pytest.mark.parametrize(
    "name, codes",
    [
        ("mimetype", {"too_large_unpacked"}),
        ("ooxml-part", {"too_large_unpacked"}),
        # A header that lies small: reads stop at what it claims, and the checksum then fails.
        ("mimetype-lying", {"too_large_unpacked", "corrupt"}),
        ("ooxml-part-lying", {"too_large_unpacked", "corrupt"}),
    ],
)
def test_zip_bomb_ends_quickly_in_little_memory(name, codes, bombs, redis_url, redis_conn, tmp_path):
    assert bombs[name].stat().st_size < 2 * MB
    result = convert_in_child(
        redis_url, tmp_path / "storage", "office", [bombs[name]], job_timeout=300, timeout=900
    )
    final = result["progress"]
    print(
        f"{name}: {result['seconds']} s, peak {result['peak_mb']} MB (base {result['base_mb']} MB), {final}"
    )
    assert final["state"] == "failed" and final["error"]["code"] in codes, final
    assert final["error"]["retryable"] is False and final["attempt"] == 1, final
    assert result["seconds"] < 30, result
    assert result["peak_mb"] - result["base_mb"] < 150, result


def test_docx_of_100000_page_breaks_is_refused_before_libreoffice(redis_conn, storage_dir, worker_env):
    data = officegen.page_breaks_docx(100_000)
    assert len(data) < 512 * 1024
    files, final, seconds = _convert(redis_conn, storage_dir, data)
    assert final["state"] == "failed" and final["error"]["code"] == "too_many_pages", final
    assert final["error"]["retryable"] is False and final["attempt"] == 1
    assert final["error"]["message"] == "The document has more than 2000 pages, the limit."
    assert seconds < 60, seconds


def test_spreadsheet_of_thousands_of_pages_is_exported_only_up_to_the_limit(
    redis_conn, storage_dir, worker_env, monkeypatch
):
    # 300 pages is the limit here; the sheet prints to thousands. LibreOffice exports 301 and stops.
    monkeypatch.setenv("MAX_PAGES", "300")
    data = officegen.rows_xlsx(150_000)
    files, final, seconds = _convert(redis_conn, storage_dir, data)
    assert final["state"] == "failed" and final["error"]["code"] == "too_many_pages", final
    assert final["error"]["retryable"] is False and final["attempt"] == 1
    exported = pypdfium2.PdfDocument(files.storage.get_bytes(files.key(1, SOURCE_PDF)))
    assert len(exported) == 301


@pytest.mark.parametrize("kind", ["pptx", "odt"])
def test_page_range_limits_every_family(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_PAGES", "2")
    source = tmp_path / f"document.{kind}"
    officegen.make(kind, [f"W{i}" for i in range(6)], source)
    result = office.to_pdf(source, tmp_path, Settings.from_env(), lambda elapsed: None)
    assert len(pypdfium2.PdfDocument(str(result))) == 3


# -- failing closed --------------------------------------------------------------------------------


def test_no_sandbox_means_no_office(redis_conn, monkeypatch, caplog):
    from livedoc.jobs import queue

    monkeypatch.setattr(office, "_warned", set())
    for binary in ("/bin/false", "/nonexistent/bwrap"):
        monkeypatch.setenv("SANDBOX_BINARY", binary)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="workers.office"):
            assert office.local_kinds(Settings.from_env()) == []
            assert office.local_kinds(Settings.from_env()) == []
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "sandbox" in warnings[0].getMessage(), warnings
        assert office.available(Settings.from_env()) is False
        redis_conn.delete(keys.CAN_CONVERT + "office")
        worker = LivedocWorker([queue(redis_conn, "livedoc")], connection=redis_conn)
        worker.heartbeat()
        assert redis_conn.exists(keys.CAN_CONVERT + "office") == 0
    monkeypatch.setenv("SANDBOX_BINARY", "bwrap")
    assert office.local_kinds(Settings.from_env()) == ["office"]
