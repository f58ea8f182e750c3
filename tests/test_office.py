"""Office documents with the real LibreOffice: conversion, refusals, a hung LibreOffice, capabilities."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from redis import Redis
from rq.job import Job, JobStatus

from config import ROOT, Settings
from livedoc import capabilities, jobs, keys, progress
from livedoc.ids import new_doc_id
from livedoc.sniff import sniff
from livedoc.storage import SOURCE_PDF, DocumentFiles, LocalStorage, hd_name, page_names
from tests import officegen
from tests.support.app import run_jobs
from workers import office, render
from workers.rqworker import LivedocWorker

WORDS = ["Aardvark", "Bumblebee", "Chinchilla"]


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> dict[str, bytes]:
    """A DOCX, PPTX, XLSX and ODT made by LibreOffice, page n starting with WORDS[n-1]."""
    out = tmp_path_factory.mktemp("office")
    return {
        kind: officegen.make(kind, WORDS, out / f"sample.{kind}").read_bytes()
        for kind in ("docx", "pptx", "xlsx", "odt")
    }


class Published:
    """Every progress message published while it is open, in order."""

    def __init__(self, connection: Redis):
        self.pubsub = connection.pubsub()
        self.pubsub.psubscribe(progress.CHANNEL_PATTERN)
        assert self.pubsub.get_message(timeout=5)["type"] == "psubscribe"

    def drain(self) -> list[dict]:
        messages = []
        while (message := self.pubsub.get_message(timeout=0.3)) is not None:
            if message["type"] == "pmessage":
                messages.append(json.loads(message["data"]))
        self.pubsub.close()
        return messages


def _convert(redis_conn: Redis, storage_dir: Path, data: bytes) -> tuple[DocumentFiles, str, list[dict]]:
    files = DocumentFiles(LocalStorage(storage_dir), new_doc_id())
    files.save_original(data)
    job_id = jobs.enqueue_conversion(
        redis_conn, Settings.from_env().as_flask_config(), files.doc_id, "office", seq=1, attempt=1
    )
    published = Published(redis_conn)
    run_jobs(redis_conn)
    return files, job_id, published.drain()


def _assert_invariants(messages: list[dict]) -> None:
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(2, 2 + len(messages)))
    for attempt in {m["attempt"] for m in messages}:
        mine = [m for m in messages if m["attempt"] == attempt]
        assert [m["percent"] for m in mine] == sorted(m["percent"] for m in mine)
        assert [m["ready"] for m in mine] == sorted(m["ready"] for m in mine)
    assert sum(progress.is_terminal(m) for m in messages) == 1 and progress.is_terminal(messages[-1])


@pytest.mark.parametrize("kind", ["docx", "pptx", "xlsx", "odt"])
def test_office_document_converts_with_its_words(kind, documents, redis_conn, storage_dir, worker_env):
    assert sniff(documents[kind]) == "office"
    files, job_id, messages = _convert(redis_conn, storage_dir, documents[kind])
    final = progress.read(redis_conn, job_id)
    assert final["state"] == "complete", final
    assert final["ready"] == final["pages"] >= (1 if kind == "xlsx" else 3)
    first = files.storage.get_bytes(files.key(1, page_names(1)["text"])).decode()
    assert WORDS[0] in first
    assert WORDS[1] not in first or kind == "xlsx"  # a spreadsheet may fit all sheets on one page
    stages = [m["stage"] for m in messages]
    assert stages[:2] == ["validating", "converting"] and stages[-1] == "complete"
    assert stages.index("rendering") > stages.index("converting")
    converting = [m for m in messages if m["stage"] == "converting"]
    assert all(m["percent"] < office.CONVERT_END for m in converting)
    # A live event at least every second while LibreOffice works (with some slack for a busy host).
    times = [m["updated_at"] for m in converting] + [
        next(m for m in messages if m["stage"] == "rendering")["updated_at"]
    ]
    assert max(b - a for a, b in zip(times, times[1:])) < 1.6, times
    assert any("LibreOffice (" in m["message"] for m in converting) or times[-1] - times[0] < 1.0
    _assert_invariants(messages)
    layout = files.layout(1)
    assert layout["kind"] == "office" and len(layout["sizes"]) == final["pages"]


def test_office_document_in_page_range_jobs_and_its_sharper_pages(
    documents, redis_conn, storage_dir, worker_env, monkeypatch
):
    # One page a chunk: the pages come from the attempt's stored PDF, as on another host.
    monkeypatch.setenv("CHUNK_PAGES", "1")
    files, job_id, messages = _convert(redis_conn, storage_dir, documents["docx"])
    final = progress.read(redis_conn, job_id)
    assert (final["state"], final["ready"], final["pages"]) == ("complete", 3, 3), final
    for n, word in enumerate(WORDS, 1):
        assert files.storage.get_bytes(files.key(1, page_names(n)["text"])).decode().startswith(word)
    _assert_invariants(messages)
    assert files.storage.get_bytes(files.key(1, SOURCE_PDF))[:5] == b"%PDF-"
    # A reader zooming into page 2 gets it rendered again from that PDF, sharper than the page image.
    assert render.render_hd(files.doc_id, "office", 1, 2) == {"stored": True}
    with (
        Image.open(io.BytesIO(files.storage.get_bytes(files.key(1, hd_name(2))))) as hd,
        Image.open(io.BytesIO(files.storage.get_bytes(files.key(1, page_names(2)["image"])))) as page,
    ):
        assert hd.width > 2 * page.width and hd.height > 2 * page.height
    assert render.render_hd(files.doc_id, "office", 1, 2) == {"stored": False}  # made once


def _assert_refused(redis_conn: Redis, job_id: str, messages: list[dict], code: str) -> dict:
    final = progress.read(redis_conn, job_id)
    assert final["state"] == "failed"
    assert final["error"]["code"] == code and final["error"]["retryable"] is False
    assert [m["stage"] for m in messages].count("validating") == 1, "a permanent failure was retried"
    job = Job.fetch(job_id, connection=redis_conn, serializer=jobs.SERIALIZER)
    assert job.get_status() == JobStatus.FAILED and job.retries_left == 0
    _assert_invariants(messages)
    return final


def test_password_protected_docx_fails_at_once(redis_conn, storage_dir, worker_env):
    data = officegen.encrypted_ooxml()
    assert sniff(data) == "office"
    _, job_id, messages = _convert(redis_conn, storage_dir, data)
    final = _assert_refused(redis_conn, job_id, messages, "encrypted")
    assert final["error"]["message"] == office.ENCRYPTED
    assert "converting" not in [m["stage"] for m in messages], "LibreOffice was started for it"


def test_truncated_pptx_fails_at_once(documents, redis_conn, storage_dir, worker_env):
    data = officegen.truncated(documents["pptx"])
    assert sniff(data) == "office"
    _, job_id, messages = _convert(redis_conn, storage_dir, data)
    final = _assert_refused(redis_conn, job_id, messages, "corrupt")
    assert final["error"]["message"] == "The document is damaged or incomplete (its zip structure is broken)."


def test_unloadable_document_fails_with_libreoffice_saying_so(redis_conn, storage_dir, worker_env):
    # A real compound file with a Word stream that holds no Word document: only LibreOffice can tell.
    data = officegen.ole2({"WordDocument": b"\x00" * 5000})
    _, job_id, messages = _convert(redis_conn, storage_dir, data)
    final = _assert_refused(redis_conn, job_id, messages, "corrupt")
    assert final["error"]["message"] == office.NOT_LOADED


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _hanging_office(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in LibreOffice that starts a child and sleeps, writing both pids."""
    pids = tmp_path / "pids"
    script = tmp_path / "fake-soffice"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nsleep 300\n")
    script.chmod(0o755)
    return script, pids


def _marked(marker: str) -> set[int]:
    """The pids of the processes whose command line holds `marker`."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.add(int(entry))
            except OSError:
                pass
    return pids


def test_hung_libreoffice_is_killed_at_the_timeout_and_retried_once(
    documents, redis_conn, storage_dir, worker_env, monkeypatch, tmp_path
):
    # The stand-in runs in the sandbox, which can write no pid file here (and has pids of its own):
    # its processes are found by a marker in their command lines, watched while the job runs.
    suffix = f"-{tmp_path.name}-{time.monotonic_ns()}"
    marker = "hung" + suffix
    script = tmp_path / "fake-soffice"
    inner = f'sh -c "sleep 300; : ${{m}}{suffix}"'
    script.write_text(f"#!/bin/sh\nm=hung\n{inner} &\n{inner}\n")
    script.chmod(0o755)
    seen: set[int] = set()
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            seen.update(_marked(marker))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    monkeypatch.setenv("OFFICE_BINARY", str(script))
    monkeypatch.setenv("OFFICE_TIMEOUT", "2")
    started = time.monotonic()
    _, job_id, messages = _convert(redis_conn, storage_dir, documents["docx"])
    elapsed = time.monotonic() - started
    watching.set()
    watcher.join(5)
    final = progress.read(redis_conn, job_id)
    # The first hang is retried; the second is the document's, and final.
    assert final["state"] == "failed" and final["error"]["code"] == "office_timeout_final", final
    assert final["error"]["retryable"] is False
    assert final["error"]["message"] == "LibreOffice took longer than 2 s and was stopped."
    assert final["attempt"] == 2, "retried exactly once"
    assert [m["stage"] for m in messages].count("retrying") == 1
    assert 4 <= elapsed < 15
    assert len(seen) == 4  # two runs, each two shells
    assert not [p for p in seen if _alive(p)], "a LibreOffice process survived"
    _assert_invariants(messages)


def test_guard_kills_libreoffice_when_the_worker_dies(tmp_path):
    script, pids = _hanging_office(tmp_path)
    guard = subprocess.Popen(
        [sys.executable, "-m", "workers.office_guard", str(script)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while (not pids.exists() or len(pids.read_text().split()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    started = [int(p) for p in pids.read_text().split()]
    assert all(_alive(p) for p in started)
    guard.stdin.close()  # what the kernel does when the work horse holding the pipe is killed
    assert guard.wait(5) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in started if _alive(p)]


def test_no_libreoffice_means_office_uploads_are_refused(client, users, redis_conn, documents):
    token = users.create()

    def upload(data: bytes, name: str):
        return client.post(
            "/api/documents",
            headers={"Authorization": f"Bearer {token}"},
            data={"file": (io.BytesIO(data), name)},
            content_type="multipart/form-data",
        )

    resp = upload(documents["docx"], "handout.docx")
    assert resp.status_code == 415
    assert resp.get_json() == {
        "error": {"code": "unsupported_type", "message": "Office documents are not enabled on this server."}
    }
    capabilities.advertise(redis_conn, ["office"], ttl=30)
    resp = upload(documents["docx"], "handout.docx")
    assert resp.status_code == 201 and resp.get_json()["kind"] == "office"
    # Not by name: the same bytes under any name are an Office document, a zip without parts is not.
    assert upload(documents["pptx"], "slides.pdf").get_json()["kind"] == "office"
    assert upload(b"PK\x03\x04" + b"\x00" * 60, "x.docx").status_code == 415


def test_worker_advertises_office_only_where_libreoffice_is(redis_conn, monkeypatch):
    from livedoc.jobs import queue

    for binary, expected in (("/nonexistent/soffice", 0), ("soffice", 1)):
        redis_conn.delete(keys.CAN_CONVERT + "office")
        monkeypatch.setenv("OFFICE_BINARY", binary)
        worker = LivedocWorker([queue(redis_conn, "livedoc")], connection=redis_conn)
        worker.heartbeat()
        assert redis_conn.exists(keys.CAN_CONVERT + "office") == expected, binary
        if expected:
            assert 0 < redis_conn.ttl(keys.CAN_CONVERT + "office") <= worker.worker_ttl + 60
    assert capabilities.can_convert(redis_conn, "pdf") is True


def test_libreoffice_runs_with_macros_disabled(documents, tmp_path):
    source = tmp_path / "document.docx"
    source.write_bytes(documents["docx"])
    ticks: list[float] = []
    result = office.to_pdf(source, tmp_path, Settings(), ticks.append)
    assert result == tmp_path / "out" / "document.pdf" and result.read_bytes().startswith(b"%PDF-")
    # LibreOffice rewrites the profile's settings on exit: they survive only if it took them.
    saved = (tmp_path / "profile" / "user" / "registrymodifications.xcu").read_text()
    scripting = [line for line in saved.splitlines() if "Security/Scripting" in line]
    assert any('"DisableMacrosExecution"' in line and "<value>true</value>" in line for line in scripting)
    assert any('"MacroSecurityLevel"' in line and "<value>3</value>" in line for line in scripting)


def test_upload_form_offers_office_files_only_when_a_worker_converts_them(client, users, redis_conn):
    users.create()
    users.login()
    page = client.get("/documents").get_data(as_text=True)
    assert ".docx" not in page and "PDF, PNG, JPEG or plain text, up to" in page
    capabilities.advertise(redis_conn, ["office"], ttl=30)
    page = client.get("/documents").get_data(as_text=True)
    assert f'text/plain,{capabilities.OFFICE_ACCEPT}"' in page
    assert "plain text or Office documents (Word, PowerPoint, Excel,\n      OpenDocument, RTF), up to" in page
