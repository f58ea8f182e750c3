"""One document on every core: pages render in several processes and still become ready in order."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker

from config import Settings
from livedoc import jobs, progress
from livedoc.ids import new_doc_id
from livedoc.storage import DocumentFiles, LocalStorage, page_names
from tests import pdfgen
from workers import pdf

TEXTS = [f"Page {n} says wombat{n}." for n in range(1, 13)]
# Enough pages that the second render process, forked a moment after the first, still finds work
# left when pages are cheap (about 5 ms each) and the machine is busy.
MANY = [f"Page {n} says wombat{n}." for n in range(1, 401)]


def test_pages_render_in_several_processes_and_are_stored_in_order(tmp_path):
    source = tmp_path / "doc.pdf"
    source.write_bytes(pdfgen.make_pdf(MANY))
    settings = Settings(RENDER_PROCESSES=2)
    files = DocumentFiles(LocalStorage(tmp_path / "storage"), new_doc_id())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stored: list[int] = []
    texts: dict[int, str] = {}

    def reported(entry: dict | None, size: int, announce: bool) -> None:
        if entry is None:
            return  # "announce what is held back": nothing to count
        # A page is reported only once the process that rendered it has stored every file.
        names = page_names(entry["n"])
        stored.append(entry["n"])
        texts[entry["n"]] = files.storage.get_bytes(files.key(1, names["text"])).decode()
        assert size == sum(
            len(files.storage.get_bytes(files.key(1, names[k]))) for k in ("image", "thumb", "text", "layer")
        )

    pids = pdf.render_pages(source, settings, scratch, files, 1, 1, len(MANY), reported)
    assert stored == list(range(1, len(MANY) + 1))
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(f"wombat{n}." in texts[n] for n in stored)
    assert list(scratch.iterdir()) == []  # every scratch file was moved into storage
    assert not [
        p
        for p in pids
        if Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] != "Z"
    ], "a render process survived"
    # A range, in one process (RENDER_PROCESSES=1 renders in the caller).
    stored.clear()
    assert pdf.render_pages(source, Settings(RENDER_PROCESSES=1), scratch, files, 1, 5, 7, reported) == {
        os.getpid()
    }
    assert stored == [5, 6, 7]


def test_render_processes_default_to_every_core():
    assert pdf.render_processes(Settings()) == os.cpu_count()
    assert pdf.render_processes(Settings(RENDER_PROCESSES=3)) == 3


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        # Every page saved as it becomes ready...
        ("0", [0, 0, *range(1, 13), 12]),
        # ...or, with pages arriving faster than PROGRESS_INTERVAL, the first page at once, the ones
        # between held back (nothing kept the work horse waiting for a tick), the last page at once.
        ("10000", [0, 0, 1, 12, 12]),
    ],
)
def test_a_job_with_a_pool_keeps_ready_in_page_order(
    redis_conn: Redis, storage_dir, worker_env, monkeypatch, interval, expected
):
    monkeypatch.setenv("RENDER_PROCESSES", "2")
    monkeypatch.setenv("PROGRESS_INTERVAL", interval)
    files = DocumentFiles(LocalStorage(storage_dir), new_doc_id())
    files.save_original(pdfgen.make_pdf(TEXTS))
    job_id = jobs.enqueue_conversion(
        redis_conn, Settings.from_env().as_flask_config(), files.doc_id, "pdf", seq=1, attempt=1
    )
    pubsub = redis_conn.pubsub()
    pubsub.psubscribe(progress.CHANNEL_PATTERN)
    pubsub.get_message(timeout=5)
    # A forking worker, as deployed: the pool is used only from a single-threaded work horse (RQ's
    # SimpleWorker runs the job beside its pub/sub thread, where pages render in the caller).
    Worker([jobs.queue(redis_conn, "livedoc")], connection=redis_conn, serializer=jobs.SERIALIZER).work(
        burst=True, with_scheduler=False
    )
    messages = []
    while (message := pubsub.get_message(timeout=0.3)) is not None:
        if message["type"] == "pmessage":
            messages.append(json.loads(message["data"]))
    readies = [m["ready"] for m in messages]
    assert readies == expected, readies
    assert [m["seq"] for m in messages] == list(range(2, 2 + len(messages)))
    assert progress.read(redis_conn, job_id)["state"] == "complete"
    manifest = files.manifest(1)
    assert [p["n"] for p in manifest["page_list"]] == list(range(1, 13))
    for n in (1, 7, 12):
        assert f"wombat{n}." in files.storage.get_bytes(files.key(1, page_names(n)["text"])).decode()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry))
    return found


def test_the_pool_is_gone_when_rendering_stops_half_way(tmp_path):
    source = tmp_path / "doc.pdf"
    source.write_bytes(pdfgen.make_pdf(TEXTS))
    before = _children(os.getpid())
    stored: list[int] = []

    def reported(entry: dict | None, size: int, announce: bool) -> None:
        if entry is None:
            return
        stored.append(entry["n"])
        if entry["n"] == 3:
            raise RuntimeError("stop here")  # what a timeout or a deleted document does mid-way

    files = DocumentFiles(LocalStorage(tmp_path / "storage"), new_doc_id())
    try:
        pdf.render_pages(source, Settings(RENDER_PROCESSES=2), tmp_path, files, 1, 1, len(TEXTS), reported)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the store's exception was swallowed")
    assert stored == [1, 2, 3]
    assert _children(os.getpid()) - before == set(), "a render process outlived the render"
