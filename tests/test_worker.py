"""The conversion job end to end: real Redis, real RQ worker (burst mode, in process), real files."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from pathlib import Path

import pytest
from PIL import Image
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from config import Settings
from livedoc import endings, jobs, progress
from livedoc.ids import new_doc_id
from livedoc.progress import ProgressWriter
from livedoc.storage import DocumentFiles, LocalStorage
from tests import pdfgen
from tests.support.app import run_jobs
from workers.convert import _fail
from workers.errors import CorruptDocument

FIRST_SEQ = 1


class Published:
    """Every progress message published while it is open, in order (subscribed before the job runs)."""

    def __init__(self, connection: Redis):
        self.pubsub = connection.pubsub()
        self.pubsub.psubscribe(progress.CHANNEL_PATTERN)
        confirm = self.pubsub.get_message(timeout=5)
        assert confirm and confirm["type"] == "psubscribe"
        self.messages: list[dict] = []

    def drain(self) -> list[dict]:
        """Collect what has arrived: wait (bounded) for the terminal message, then for stragglers."""
        deadline = time.monotonic() + 10
        while not (self.messages and progress.is_terminal(self.messages[-1])) and time.monotonic() < deadline:
            self._take(timeout=0.5)
        # Nothing may follow the terminal message; a short quiet spell shows that nothing did.
        while self._take(timeout=0.2):
            pass
        self.pubsub.close()
        return self.messages

    def _take(self, timeout: float) -> bool:
        message = self.pubsub.get_message(timeout=timeout)
        if message is not None and message["type"] == "pmessage":
            self.messages.append(json.loads(message["data"]))
        return message is not None


class Files:
    """A document's files on local storage, as these tests look at them."""

    def __init__(self, storage_dir: Path, doc_id: str):
        self.docs = DocumentFiles(LocalStorage(storage_dir), doc_id)
        self.root = storage_dir / doc_id
        self.scratch = storage_dir / ".scratch"

    @property
    def original(self) -> Path:
        return self.root / "original"

    def save_original(self, data: bytes) -> None:
        self.docs.save_original(data)

    def out_of(self, attempt: int) -> Path:
        return self.root / f"a{attempt}"

    @property
    def out(self) -> Path:
        """The output of the newest attempt that completed."""
        done = sorted(p for p in self.root.glob("a*") if (p / "manifest.json").is_file())
        assert done, "no attempt completed"
        return done[-1]

    def manifest(self) -> dict | None:
        done = sorted(p for p in self.root.glob("a*") if (p / "manifest.json").is_file())
        return json.loads((done[-1] / "manifest.json").read_text()) if done else None

    def attempts(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("a*"))

    def scratch_left(self) -> list[Path]:
        return list(self.scratch.glob("*")) if self.scratch.exists() else []


def _settings() -> dict:
    return Settings.from_env().as_flask_config()


def _submit(redis_conn: Redis, storage_dir: Path, data: bytes, kind: str) -> tuple[Files, str]:
    doc_id = new_doc_id()
    files = Files(storage_dir, doc_id)
    files.save_original(data)
    job_id = jobs.enqueue_conversion(redis_conn, _settings(), doc_id, kind, seq=FIRST_SEQ, attempt=1)
    return files, job_id


def _convert(redis_conn: Redis, storage_dir: Path, data: bytes, kind: str):
    files, job_id = _submit(redis_conn, storage_dir, data, kind)
    published = Published(redis_conn)
    run_jobs(redis_conn)
    return files, job_id, published.drain()


def _job(redis_conn: Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=redis_conn, serializer=jobs.SERIALIZER)


def _assert_contract(messages: list[dict]) -> None:
    """The invariants every stream relies on, checked over every published message."""
    assert messages, "no progress was published"
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(FIRST_SEQ + 1, FIRST_SEQ + 1 + len(messages))), seqs
    by_attempt: dict[int, list[dict]] = {}
    for message in messages:
        by_attempt.setdefault(message["attempt"], []).append(message)
        assert 0 <= message["percent"] <= 100
    assert list(by_attempt) == sorted(by_attempt), "attempt numbers went backwards"
    # Across attempts too: a new attempt keeps the pages stored before it.
    percents = [m["percent"] for m in messages]
    assert percents == sorted(percents), percents
    readies = [m["ready"] for m in messages]
    assert readies == sorted(readies), f"ready went back: {readies}"
    assert messages[0]["percent"] == 0 and messages[0]["ready"] == 0
    for attempt in by_attempt.values():
        assert all(0 <= m["ready"] <= m["pages"] for m in attempt)
        for m in attempt:
            if m["state"] == "complete":
                assert m["ready"] == m["pages"], "complete means every page is ready"
        rendering = [m for m in attempt if m["stage"] == "rendering"]
        if rendering:
            pages = rendering[0]["pages"]
            completed = attempt[-1]["state"] == "complete"
            # Pages are rendered in order: all of them when the attempt completed, else a prefix.
            expected = list(range(1, (pages if completed else len(rendering)) + 1))
            assert [m["page"] for m in rendering] == expected
            assert all(m["pages"] == pages for m in rendering)
    for message in messages:
        if message["state"] == "failed":
            assert set(message["error"]) == {"code", "message", "retryable"}
            assert "/" not in message["error"]["message"] and "Traceback" not in message["error"]["message"]


def _assert_failed_once(
    redis_conn: Redis, files: Files, job_id: str, messages: list[dict], code: str, original: bytes
) -> dict:
    final = progress.read(redis_conn, job_id)
    assert final["state"] == "failed"
    assert final["error"]["code"] == code
    assert final["error"]["retryable"] is False
    assert final["attempt"] == 1
    assert messages[-1] == final
    assert [m["stage"] for m in messages].count("validating") == 1, "a permanent error was retried"
    job = _job(redis_conn, job_id)
    assert job.get_status() == JobStatus.FAILED
    assert job.retries_left == 0
    assert job_id in FailedJobRegistry("livedoc", connection=redis_conn, serializer=jobs.SERIALIZER)
    assert files.original.read_bytes() == original
    assert files.manifest() is None and not files.scratch_left()
    # Pages stored before the failure stay readable; a failure before the first page leaves nothing.
    assert files.attempts() == (["a1"] if final["ready"] else [])
    _assert_contract(messages)
    return final


def _png(size: tuple[int, int], mode: str = "RGB", color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (20, 120, 220)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


PAGE_TEXTS = [
    f"This is page {word} of the test document.\nSecond line {i + 1}."
    for i, word in enumerate(["one", "two", "three", "four", "five"])
]


def test_pdf_converts_and_progress_keeps_its_contract(redis_conn, storage_dir, worker_env):
    data = pdfgen.make_pdf(PAGE_TEXTS)
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "pdf")

    final = progress.read(redis_conn, job_id)
    assert final["state"] == "complete" and final["pages"] == 5 and final["percent"] == 100
    assert final["attempt"] == 1 and final["error"] is None
    _assert_contract(messages)
    assert messages[-1] == final
    assert [m["page"] for m in messages if m["stage"] == "rendering"] == [1, 2, 3, 4, 5]
    # Each page is announced ready, one by one, before the conversion ends.
    assert [m["ready"] for m in messages] == [0, 0, 1, 2, 3, 4, 5, 5]
    stages = [m["stage"] for m in messages]
    assert stages[0] == "validating" and stages[-2:] == ["finalizing", "complete"]

    job = _job(redis_conn, job_id)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == {"pages": 5}

    manifest = files.manifest()
    assert manifest["kind"] == "pdf" and manifest["pages"] == 5
    assert [p["n"] for p in manifest["page_list"]] == [1, 2, 3, 4, 5]
    for name in manifest["files"]:
        assert (files.out / name).is_file(), name
    assert len(manifest["files"]) == 20
    layer = json.loads((files.out / "layer-0003.json").read_text())
    words = " ".join(run[4] for run in layer["runs"])
    assert "This is page three of the test document." in words
    for x, y, w, h, _text in layer["runs"]:
        assert 0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1
    layout = json.loads((files.out / "layout.json").read_text())
    assert layout["pages"] == 5 and layout["sizes"] == [[935, 1210]] * 5
    assert "page three" in (files.out / "text-0003.txt").read_text(encoding="utf-8")
    assert "page three" not in (files.out / "text-0002.txt").read_text(encoding="utf-8")
    first = manifest["page_list"][0]
    with Image.open(files.out / first["image"]) as page:
        assert page.format == "JPEG" and page.size == (first["width"], first["height"])
        # US Letter at the default 110 dpi.
        assert page.size == (935, 1210)
    with Image.open(files.out / first["thumb"]) as thumb:
        assert thumb.width == Settings().THUMB_WIDTH
    assert files.original.read_bytes() == data
    assert not files.scratch_left()


def test_corrupt_pdf_fails_once_for_good(redis_conn, storage_dir, worker_env):
    data = pdfgen.corrupt_pdf()
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "pdf")
    final = _assert_failed_once(redis_conn, files, job_id, messages, "corrupt", data)
    assert final["message"] == final["error"]["message"]


def test_encrypted_pdf_is_refused_without_retry(redis_conn, storage_dir, worker_env):
    data = pdfgen.encrypted_pdf()
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "pdf")
    final = _assert_failed_once(redis_conn, files, job_id, messages, "encrypted", data)
    assert "password" in final["error"]["message"]


def test_encrypted_fixture_really_is_a_password_protected_pdf():
    import pypdfium2 as pdfium

    data = pdfgen.encrypted_pdf("secret")
    with pytest.raises(pdfium.PdfiumError) as caught:
        pdfium.PdfDocument(data)
    assert caught.value.err_code == pdfium.raw.FPDF_ERR_PASSWORD
    doc = pdfium.PdfDocument(data, password="secret")
    try:
        page = doc[1]
        textpage = page.get_textpage()
        assert textpage.get_text_range() == "Top secret page two"
        textpage.close()
        page.close()
    finally:
        doc.close()


def test_pdf_without_pages_is_empty(redis_conn, storage_dir, worker_env):
    data = pdfgen.empty_pdf()
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "pdf")
    _assert_failed_once(redis_conn, files, job_id, messages, "empty", data)


def test_too_many_pages(redis_conn, storage_dir, worker_env, monkeypatch):
    monkeypatch.setenv("MAX_PAGES", "3")
    data = pdfgen.make_pdf(PAGE_TEXTS)
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "pdf")
    final = _assert_failed_once(redis_conn, files, job_id, messages, "too_many_pages", data)
    assert "5 pages" in final["error"]["message"] and "3" in final["error"]["message"]
    assert not [m for m in messages if m["stage"] == "rendering"], "nothing is rendered before the checks"


def test_oversized_page_is_refused_before_rendering(redis_conn, storage_dir, worker_env):
    # 200 x 200 inches at 110 dpi is 484 million pixels, far past the 40 million default cap.
    sizes = [pdfgen.LETTER, pdfgen.LETTER, (14400, 14400)]
    data = pdfgen.make_pdf(["one", "two", "huge"], sizes=sizes)
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "pdf")
    final = _assert_failed_once(redis_conn, files, job_id, messages, "page_too_large", data)
    assert "Page 3" in final["error"]["message"]
    assert not [m for m in messages if m["stage"] == "rendering"]


@pytest.mark.parametrize(
    "data, size", [(_png((640, 480)), (640, 480)), (_jpeg((300, 900)), (300, 900))], ids=["png", "jpeg"]
)
def test_image_converts_to_one_page(redis_conn, storage_dir, worker_env, data, size):
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "image")
    final = progress.read(redis_conn, job_id)
    assert final["state"] == "complete" and final["pages"] == 1
    _assert_contract(messages)
    manifest = files.manifest()
    assert manifest["kind"] == "image" and manifest["pages"] == 1
    entry = manifest["page_list"][0]
    assert (entry["width"], entry["height"]) == size
    with Image.open(files.out / entry["image"]) as page:
        assert page.format == "JPEG" and page.size == size
    with Image.open(files.out / entry["thumb"]) as thumb:
        assert thumb.width == 180 and thumb.height == round(size[1] * 180 / size[0])
    assert (files.out / entry["text"]).read_text() == ""


def test_transparent_png_is_flattened_onto_white(redis_conn, storage_dir, worker_env):
    data = _png((50, 50), mode="RGBA", color=(0, 0, 0, 0))
    files, _, _ = _convert(redis_conn, storage_dir, data, "image")
    with Image.open(files.out / "page-0001.jpg") as page:
        assert all(channel > 245 for channel in page.getpixel((25, 25)))


def test_truncated_image_is_corrupt(redis_conn, storage_dir, worker_env):
    whole = _jpeg((800, 600))
    data = whole[: len(whole) // 2]
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "image")
    _assert_failed_once(redis_conn, files, job_id, messages, "corrupt", data)


# The three checks that stop a large image, each with the case only it can stop and its own message:
# Pillow's bomb guard refuses past twice the cap from the header alone, the explicit cap refuses the
# rest before a pixel is decoded, and the side limit refuses what libjpeg could not write.
@pytest.mark.parametrize(
    "cap, size, message",
    [
        pytest.param(
            "1000",
            (300, 300),
            "The image is too large; the limit is 0.001 million pixels.",
            id="pillow-bomb-guard",
        ),
        # 20,000 pixels is exactly twice the cap: Pillow only warns, the explicit check refuses it.
        pytest.param(
            "10000",
            (200, 100),
            "The image is 200 x 100 pixels; the limit is 0.01 million pixels and 65500 pixels a side.",
            id="pixel-cap",
        ),
        pytest.param(
            "40000000",
            (1, 70_000),
            "The image is 1 x 70000 pixels; the limit is 40 million pixels and 65500 pixels a side.",
            id="side-limit",
        ),
    ],
)
def test_image_too_large_is_stopped_by_its_own_check(
    redis_conn, storage_dir, worker_env, monkeypatch, cap, size, message
):
    monkeypatch.setenv("MAX_PAGE_PIXELS", cap)
    data = _png(size)
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "image")
    final = _assert_failed_once(redis_conn, files, job_id, messages, "page_too_large", data)
    assert final["error"]["message"] == message


def test_text_paginates(redis_conn, storage_dir, worker_env):
    lines_per_page = Settings().TEXT_LINES_PER_PAGE
    # 130 short lines plus one 250-character line, which wraps into 3 display lines: 133 lines.
    body = "".join(f"line {i}\n" for i in range(1, 131)) + "x" * 250 + "\n"
    files, job_id, messages = _convert(redis_conn, storage_dir, body.encode(), "text")
    final = progress.read(redis_conn, job_id)
    expected_pages = -(-133 // lines_per_page)
    assert final["state"] == "complete" and final["pages"] == expected_pages == 3
    _assert_contract(messages)
    manifest = files.manifest()
    assert manifest["kind"] == "text"
    page1 = (files.out / "text-0001.txt").read_text(encoding="utf-8").splitlines()
    assert page1[0] == "line 1" and len(page1) == lines_per_page
    page3 = (files.out / "text-0003.txt").read_text(encoding="utf-8").splitlines()
    assert page3[-3:] == ["x" * 100, "x" * 100, "x" * 50]
    sizes = {(p["width"], p["height"]) for p in manifest["page_list"]}
    assert len(sizes) == 1, "every text page has the same size"


def test_non_utf8_text_is_corrupt(redis_conn, storage_dir, worker_env):
    data = "Grüße aus Köln\n".encode("latin-1")
    files, job_id, messages = _convert(redis_conn, storage_dir, data, "text")
    final = _assert_failed_once(redis_conn, files, job_id, messages, "corrupt", data)
    assert "UTF-8" in final["error"]["message"]


def test_unknown_kind_is_unsupported(redis_conn, storage_dir, worker_env):
    files, job_id, _ = _convert(redis_conn, storage_dir, b"whatever", "spreadsheet")
    final = progress.read(redis_conn, job_id)
    assert final["state"] == "failed" and final["error"]["code"] == "unsupported"
    assert final["error"]["retryable"] is False
    assert _job(redis_conn, job_id).get_status() == JobStatus.FAILED
    assert files.original.read_bytes() == b"whatever"


def test_transient_storage_fault_is_retried_then_succeeds(redis_conn, storage_dir, worker_env):
    data = pdfgen.make_pdf(PAGE_TEXTS[:3])
    files, job_id = _submit(redis_conn, storage_dir, data, "pdf")
    # A real filesystem fault: a directory where attempt 1 must store its first page image, so the
    # store (a rename) fails with IsADirectoryError (an OSError). Attempt 2 writes under its own
    # number, keeps only whole pages of attempt 1 (none here) and removes the rest.
    (files.out_of(1) / "page-0001.jpg").mkdir(parents=True)
    published = Published(redis_conn)
    run_jobs(redis_conn)
    messages = published.drain()

    _assert_contract(messages)
    attempts = sorted({m["attempt"] for m in messages})
    assert attempts == [1, 2]
    first = [m for m in messages if m["attempt"] == 1]
    second = [m for m in messages if m["attempt"] == 2]
    assert first[-1]["state"] == "queued" and first[-1]["stage"] == "retrying"
    assert first[-1]["message"] == "Temporary problem; trying again shortly."
    assert first[-1]["ready"] == 0
    # Percent never goes back, across attempts too; no page was stored whole, so none is kept.
    assert second[0]["percent"] == max(m["percent"] for m in first)
    assert second[0]["stage"] == "validating" and second[0]["ready"] == 0
    assert second[-1]["state"] == "complete" and second[-1]["pages"] == second[-1]["ready"] == 3
    assert [m["page"] for m in second if m["stage"] == "rendering"] == [1, 2, 3]

    final = progress.read(redis_conn, job_id)
    assert final == messages[-1] and final["attempt"] == 2
    job = _job(redis_conn, job_id)
    assert job.get_status() == JobStatus.FINISHED
    assert job.retries_left == Settings().JOB_RETRIES - 1
    assert files.original.read_bytes() == data
    assert files.manifest()["pages"] == 3 and files.out == files.out_of(2)
    assert files.attempts() == ["a2"], "attempt 1's leftovers were removed"
    assert not files.scratch_left()


def test_persistent_storage_fault_exhausts_retries_keeps_the_original(redis_conn, storage_dir, worker_env):
    data = pdfgen.make_pdf(PAGE_TEXTS)
    files, job_id = _submit(redis_conn, storage_dir, data, "pdf")
    # The workers' scratch space is taken by a regular file: every attempt fails to make its
    # scratch directory (FileExistsError) before it renders a page.
    files.scratch.write_bytes(b"in the way")
    published = Published(redis_conn)
    run_jobs(redis_conn)
    messages = published.drain()

    retries = Settings().JOB_RETRIES
    final = progress.read(redis_conn, job_id)
    assert final["state"] == "failed"
    assert final["error"] == {
        "code": "storage",
        "retryable": True,
        "message": "A temporary storage problem interrupted the conversion.",
    }
    assert final["attempt"] == 1 + retries
    _assert_contract(messages)
    retrying = [m for m in messages if m["stage"] == "retrying"]
    assert len(retrying) == retries
    assert [m["stage"] for m in messages].count("validating") == 1 + retries
    assert _job(redis_conn, job_id).get_status() == JobStatus.FAILED
    assert files.original.read_bytes() == data
    assert files.manifest() is None and files.attempts() == []


def _dead_redis() -> Redis:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: every command fails with a real ConnectionError.
    return Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


def _saved_job(redis_conn: Redis, seq: int = 7, attempt: int = 1) -> Job:
    job = Job.create(
        jobs.CONVERT,
        args=("0" * 32, "pdf"),
        connection=redis_conn,
        serializer=jobs.SERIALIZER,
        id="unit-job",
        meta={progress.META_KEY: progress.initial(seq, attempt)},
    )
    job.save()
    return job


def test_failure_is_not_masked_when_redis_is_down(redis_conn, caplog):
    job = _saved_job(redis_conn)
    dead = _dead_redis()
    writer = ProgressWriter(job, dead)
    # Must return quietly: the exception RQ has to see is the one being handled, not Redis's.
    with caplog.at_level(logging.WARNING, logger="livedoc.worker"):
        _fail(job, writer, CorruptDocument())
    assert "could not record the failure (ConnectionError)" in caplog.text
    assert job.retries_left == 0


def test_progress_writer_invariants(redis_conn):
    job = _saved_job(redis_conn, seq=7, attempt=1)
    published = Published(redis_conn)

    writer = ProgressWriter(job, redis_conn)
    assert writer.attempt == 1, "an attempt that never started keeps its number"
    first = writer.update("validating", 0, page=0, pages=0)
    assert first["seq"] == 8 and first["state"] == "running" and first["percent"] == 0
    assert writer.update("rendering", 40, page=1, pages=3)["percent"] == 40
    assert writer.update("rendering", 20, page=2, pages=3)["percent"] == 40, "percent went back"
    assert writer.update("rendering", 250, page=3, pages=3)["percent"] == 100, "percent is capped"
    retry = writer.will_retry("Temporary problem; trying again shortly.")
    assert retry["state"] == "queued" and retry["stage"] == "retrying" and retry["seq"] == 12

    # What the next attempt's writer sees is what Redis holds, as with a real retry.
    stored = progress.read(redis_conn, job.id)
    assert stored == retry
    again = ProgressWriter(_job(redis_conn, job.id), redis_conn)
    assert again.attempt == 2
    restarted = again.update("validating", 0)
    # The next attempt keeps the pages stored before it: percent goes on from where it was.
    assert restarted["percent"] == 100 and restarted["seq"] == 13 and restarted["attempt"] == 2
    failed = again.fail(endings.CORRUPT, "The file is damaged and cannot be read.")
    assert failed["state"] == "failed" and progress.is_terminal(failed)
    assert failed["error"] == {
        "code": "corrupt",
        "message": "The file is damaged and cannot be read.",
        "retryable": False,
    }
    assert progress.read(redis_conn, job.id) == failed
    # The RQ-side copy of meta agrees with what readers see.
    assert _job(redis_conn, job.id).meta[progress.META_KEY] == failed

    messages = published.drain()
    assert [m["seq"] for m in messages] == list(range(8, 15))
    assert messages[-1] == failed
    first_attempt = [m["percent"] for m in messages if m["attempt"] == 1]
    assert first_attempt == sorted(first_attempt)


def test_progress_writer_complete(redis_conn):
    job = _saved_job(redis_conn, seq=1)
    writer = ProgressWriter(job, redis_conn)
    writer.update("rendering", 50, page=1, pages=2)
    done = writer.complete(2)
    assert done["state"] == "complete" and done["percent"] == 100 and done["page"] == done["pages"] == 2
    assert progress.read(redis_conn, job.id) == done
