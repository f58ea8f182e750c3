"""The storage quota holds while a document converts, and a document's text is capped.

Before, QUOTA_MB was checked only when an upload was admitted and when its conversion ended: a small
PDF of dense pages stored megabytes of page images far past the quota, two conversions of one user
together passed it, and a sharper (HD) page was never counted at all.
"""

from __future__ import annotations

import io
import random
import time

import pytest

from tests.live import api
from tests.pdfgen import make_pdf
from tests.support.app import run_jobs

MB = 1024 * 1024
# A page of random letters at 1400 x 1600 pt: about 20 KB of PDF, 2 MB of page image at RENDER_DPI,
# 8.7 MB at HD_DPI, about 20,000 characters of text.
PAGE_SIZE = (1400.0, 1600.0)


def _page(seed: int) -> str:
    rnd = random.Random(seed)
    return "\n".join(
        "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(180)) for _ in range(110)
    )


def dense_pdf(pages: int, seed: int = 0) -> bytes:
    """A small PDF whose pages render to about 2 MB each."""
    return make_pdf([_page(seed * 1000 + i) for i in range(pages)], sizes=[PAGE_SIZE] * pages)


def _stored(storage_dir) -> int:
    """Bytes under the storage directory, leaving out workers' scratch space."""
    return sum(
        p.stat().st_size
        for p in storage_dir.rglob("*")
        if p.is_file() and ".scratch" not in p.relative_to(storage_dir).parts
    )


def _upload(client, token: str, data: bytes, name: str = "dense.pdf") -> str:
    resp = client.post(
        "/api/documents",
        headers={"Authorization": f"Bearer {token}"},
        data={"file": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["id"]


def _status(client, token: str, doc: str) -> dict:
    resp = client.get(f"/api/documents/{doc}/status", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    return resp.get_json()


@pytest.mark.parametrize("chunk_pages", ["0", "2"], ids=["one-job", "page-ranges"])
def test_a_conversion_stops_at_the_storage_quota_and_keeps_its_pages(
    app, client, users, redis_conn, storage_dir, monkeypatch, chunk_pages
):
    monkeypatch.setenv("CHUNK_PAGES", chunk_pages)
    app.config.update(QUOTA_MB=5)
    token = users.create("alice")
    pdf = dense_pdf(8)  # about 170 KB that renders to 16 MB of pages
    doc = _upload(client, token, pdf)
    run_jobs(redis_conn)

    prog = _status(client, token, doc)
    assert prog["state"] == "failed", prog
    assert prog["error"]["code"] == "quota_exceeded" and prog["error"]["retryable"] is False
    stored = _stored(storage_dir)
    assert stored <= 5 * MB, stored  # charged before it is written: not even the page in flight
    assert 1 <= prog["ready"] < 8
    for n in range(1, prog["ready"] + 1):
        page = client.get(
            f"/documents/{doc}/files/{prog['attempt']}/page-{n:04d}.jpg",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert page.status_code == 200 and page.data[:2] == b"\xff\xd8"
        page.close()
    me = client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert me["usage"]["stored_bytes"]["used"] == stored


def test_a_sharper_page_beyond_the_quota_is_not_stored(app, client, users, redis_conn, storage_dir):
    app.config.update(QUOTA_MB=5, HD_WAIT=1)
    token = users.create("alice")
    doc = _upload(client, token, dense_pdf(1))
    run_jobs(redis_conn)
    prog = _status(client, token, doc)
    assert prog["state"] == "complete", prog
    before = _stored(storage_dir)
    assert before < 3 * MB

    url = f"/documents/{doc}/files/{prog['attempt']}/hd-0001.jpg"
    headers = {"Authorization": f"Bearer {token}"}
    first = client.get(url, headers=headers)  # queues the rendition; nothing runs it yet
    assert first.status_code == 503
    run_jobs(redis_conn)  # an 8.7 MB rendition: past the 5 MB quota
    assert _stored(storage_dir) == before
    assert not list(storage_dir.rglob("hd-*.jpg"))
    again = client.get(url, headers=headers)
    assert again.status_code == 413, again.data[:300]  # a page route: an HTML answer
    assert b"does not fit in your storage quota" in again.data
    # The normal page image is still there for the viewer to keep.
    page = client.get(f"/documents/{doc}/files/{prog['attempt']}/page-0001.jpg", headers=headers)
    assert page.status_code == 200
    page.close()


def test_a_lost_usage_hash_fails_nothing_and_the_next_admission_writes_it_again(
    app, client, users, redis_conn, storage_dir
):
    app.config.update(QUOTA_MB=5)
    token = users.create("alice")
    doc = _upload(client, token, dense_pdf(1))
    lost = redis_conn.keys("livedoc:quota-usage:*")
    assert len(lost) == 1
    redis_conn.delete(*lost)  # as after a Redis restart without persistence
    run_jobs(redis_conn)
    assert _status(client, token, doc)["state"] == "complete"  # not charged, not failed

    second = _upload(client, token, dense_pdf(8, seed=1))
    # The base is what the database says: the first document whole, the second one's original.
    assert int(redis_conn.hget(lost[0], "settled")) == _stored(storage_dir)
    run_jobs(redis_conn)
    prog = _status(client, token, second)
    assert prog["state"] == "failed" and prog["error"]["code"] == "quota_exceeded", prog
    assert _stored(storage_dir) <= 5 * MB


@pytest.mark.parametrize("chunk_pages", ["0", "2"], ids=["one-job", "page-ranges"])
def test_a_document_with_too_much_text_ends_too_much_text(
    app, client, users, redis_conn, storage_dir, monkeypatch, chunk_pages
):
    monkeypatch.setenv("CHUNK_PAGES", chunk_pages)
    monkeypatch.setenv("MAX_DOCUMENT_TEXT", "50000")  # about two and a half of these pages
    token = users.create("alice")
    doc = _upload(client, token, dense_pdf(6))
    run_jobs(redis_conn)
    prog = _status(client, token, doc)
    assert prog["state"] == "failed", prog
    assert prog["error"]["code"] == "too_much_text" and prog["error"]["retryable"] is False
    assert prog["ready"] == 2  # 2 pages of about 20,000 characters fit in 50,000; the third does not


@pytest.mark.live
def test_two_conversions_of_one_user_cannot_together_pass_the_quota(make_stack):
    stack = make_stack(QUOTA_MB="8")
    stack.start_worker()
    stack.start_worker()
    token = stack.user("twin")
    s = api(token)
    docs = []
    for i in range(2):
        # Each alone fits (3 pages: about 6 MB); together they do not.
        resp = s.post(f"{stack.base_url}/api/documents", files={"file": (f"t{i}.pdf", dense_pdf(3, seed=i))})
        assert resp.status_code == 201, resp.text
        docs.append(resp.json()["id"])
    deadline = time.monotonic() + 180
    ends = {}
    while time.monotonic() < deadline and len(ends) < 2:
        for doc in docs:
            prog = s.get(f"{stack.base_url}/api/documents/{doc}/status", timeout=10).json()
            if prog["state"] in ("complete", "failed"):
                ends[doc] = prog
        time.sleep(0.5)
    assert len(ends) == 2, stack.logs()
    stored = _stored(stack.dir / "storage")
    assert stored <= 8 * MB, (stored, ends)
    codes = sorted((p.get("error") or {}).get("code") or p["state"] for p in ends.values())
    assert "quota_exceeded" in codes, codes
    used = s.get(f"{stack.base_url}/api/me", timeout=10).json()["usage"]["stored_bytes"]["used"]
    assert used == stored
