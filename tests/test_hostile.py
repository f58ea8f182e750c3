"""Hostile uploads of every accepted type: each ends quickly, in a clear state, within a memory bound.

Each file is converted by a real RQ worker in its own process (tests/hostile_child.py), so the time
and the peak RSS measured are the conversion's alone. The bounds are generous for a loaded 2-core
machine but far below what the unbounded code took (a 44 MB single-line text: more than 300 s).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from tests import pdfgen
from tests.support.hostile import convert_in_child

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
SECONDS = 20.0
PEAK_MB = 700.0


def _png(width: int, height: int, rows: bytes | None = None, color_type: int = 0) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\x00" * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png_zero_bomb(width: int, height: int) -> bytes:
    """A real, complete greyscale image of `width` x `height` zeros: tiny file, big bitmap."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return _png(width, height, rows=None)[:33] + _idat_chunk(body) + _iend()


def _idat_chunk(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))


def _iend() -> bytes:
    return struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG header whose frame claims `width` x `height`, with no image data behind it."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof + b"\xff\xd9"


def _pdf_many_pages(count: int) -> bytes:
    """A page tree listing one page object `count` times: a few MB claiming a huge document."""
    kids = b" ".join([b"3 0 R"] * count)
    return pdfgen._assemble(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [" + kids + b"] /Count " + str(count).encode() + b" >>",
            3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        }
    )


def _pdf_lying_count() -> bytes:
    return pdfgen._assemble(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [3 0 R] /Count 2147483647 >>",
            3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        }
    )


def _pdf_deep_tree(depth: int) -> bytes:
    """Page-tree nodes nested `depth` deep with one page at the bottom."""
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>"}
    for i in range(depth):
        num = 2 + i
        objects[num] = f"<< /Type /Pages /Kids [{num + 1} 0 R] /Count 1 >>".encode()
    objects[2 + depth] = f"<< /Type /Page /Parent {1 + depth} 0 R /MediaBox [0 0 612 792] >>".encode()
    return pdfgen._assemble(objects)


def _pdf_deep_arrays(depth: int) -> bytes:
    """One page whose resources nest arrays `depth` deep."""
    return pdfgen._assemble(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Foo "
            + b"[" * depth
            + b"]" * depth
            + b" >>",
        }
    )


def _pdf_content_bomb(ops: int) -> bytes:
    """One page whose Flate content stream inflates to `ops` tiny path operations."""
    body = zlib.compress(b"0 0 m 1 1 l S\n" * ops, 9)
    return pdfgen._assemble(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
            4: f"<< /Length {len(body)} /Filter /FlateDecode >>\nstream\n".encode() + body + b"\nendstream",
        }
    )


# name: (kind, bytes factory, expected state, expected error code or None)
HOSTILE = {
    "text-one-44mb-line": ("text", lambda: b"a" * (44 * MB), "failed", "too_many_pages"),
    "text-one-44mb-line-of-words": (
        "text",
        lambda: b"lorem ipsum " * (44 * MB // 12),
        "failed",
        "too_many_pages",
    ),
    "text-44mb-of-tabs": ("text", lambda: b"\t" * (44 * MB), "failed", "empty"),
    "text-44mb-line-of-tab-x": ("text", lambda: b"\tx" * (22 * MB), "failed", "too_many_pages"),
    "text-44mb-of-newlines": ("text", lambda: b"\n" * (44 * MB), "failed", "empty"),
    "text-22m-short-lines": ("text", lambda: b"x\n" * (22 * MB), "failed", "too_many_pages"),
    "text-44mb-two-byte-chars": ("text", lambda: "é".encode() * (22 * MB), "failed", "too_many_pages"),
    "png-claims-100000x100000": ("image", lambda: _png(100_000, 100_000), "failed", "page_too_large"),
    "png-1x70000": ("image", lambda: _png_zero_bomb(1, 70_000), "failed", "page_too_large"),
    "png-6000x6000-zeros": ("image", lambda: _png_zero_bomb(6000, 6000), "complete", None),
    "jpeg-claims-65000x65000": ("image", lambda: _jpeg_claiming(65_000, 65_000), "failed", "page_too_large"),
    "pdf-1000000-pages": ("pdf", lambda: _pdf_many_pages(1_000_000), "failed", "too_many_pages"),
    "pdf-lying-page-count": ("pdf", _pdf_lying_count, "complete", None),
    "pdf-page-tree-100000-deep": ("pdf", lambda: _pdf_deep_tree(100_000), "failed", "corrupt"),
    "pdf-arrays-1000000-deep": ("pdf", lambda: _pdf_deep_arrays(1_000_000), "complete", None),
    "pdf-content-bomb": ("pdf", lambda: _pdf_content_bomb(1_000_000), "complete", None),
    "pdf-page-1x60000-points": (
        "pdf",
        lambda: pdfgen.make_pdf(["x"], sizes=[(1, 60000)]),
        "failed",
        "page_too_large",
    ),
    "pdf-page-14400x14400-points": (
        "pdf",
        lambda: pdfgen.make_pdf(["x"], sizes=[(14400, 14400)]),
        "failed",
        "page_too_large",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_upload_is_bounded(name, redis_url, redis_conn, tmp_path):
    kind, make, state, code = HOSTILE[name]
    source = tmp_path / "upload"
    source.write_bytes(make())
    result = convert_in_child(redis_url, tmp_path / "storage", kind, [source], timeout=180)
    final = result["progress"]
    print(
        f"{name}: {result['seconds']} s, peak {result['peak_mb']} MB "
        f"(base {result['base_mb']} MB), {final['state']} {final.get('error')}"
    )
    assert final["state"] == state, (name, final)
    assert (final.get("error") or {}).get("code") == code, (name, final)
    if code is not None:
        assert final["error"]["retryable"] is False and final["attempt"] == 1, final
    assert result["seconds"] < SECONDS, result
    assert result["peak_mb"] < PEAK_MB, result


def test_a_timed_out_job_is_retried_once(redis_conn, storage_dir, worker_env, monkeypatch):
    """JOB_TIMEOUT twice ends the document: a job that ran out of time will likely do so again."""
    from livedoc import jobs, progress
    from livedoc.ids import new_doc_id
    from livedoc.storage import DocumentFiles, LocalStorage
    from tests.support.app import run_jobs
    from workers import convert

    calls = []

    def too_slow(source, settings, sink):
        calls.append(1)
        import time

        time.sleep(5)  # a converter that runs past JOB_TIMEOUT (1 s)
        return []

    monkeypatch.setitem(convert.CONVERTERS, "text", too_slow)
    doc_id = new_doc_id()
    DocumentFiles(LocalStorage(storage_dir), doc_id).save_original(b"hello\n")
    config = {
        "QUEUE_NAME": "livedoc",
        "JOB_RETRY_INTERVALS": "0,0,0",
        "JOB_RETRIES": 3,
        "JOB_TIMEOUT": 1,
        "RESULT_TTL": 600,
    }
    job_id = jobs.enqueue_conversion(redis_conn, config, doc_id, "text", seq=1, attempt=1)
    run_jobs(redis_conn)
    final = progress.read(redis_conn, job_id)
    assert len(calls) == 2
    assert final["state"] == "failed" and final["error"]["code"] == "timeout", final
