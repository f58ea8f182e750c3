"""Object storage end to end: gunicorn (gevent) + `rq worker` on S3 (moto's server as its own process)."""

from __future__ import annotations

import time

import pytest
import requests

from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import wait_for
from tests.support.streams import poll_until_terminal, slow_pdf, upload

pytestmark = pytest.mark.live

SLOW_PDF = slow_pdf(60)


def keys_under(moto_server, settings: dict, doc_id: str) -> list[str]:
    bucket, prefix = settings["STORAGE_URL"][5:].split("/", 1)
    listing = moto_server.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{doc_id}/")
    return sorted(obj["Key"].split("/", 1)[1] for obj in listing.get("Contents", []))


def test_conversion_on_s3_serves_pages_while_running_and_delete_removes_every_object(
    make_stack, moto_server, s3_settings
):
    stack = make_stack(RENDER_DPI="300", **s3_settings)
    s = api(stack.user("s3reader"))
    body = upload(s, stack.base_url, SLOW_PDF)
    doc = body["id"]
    assert keys_under(moto_server, s3_settings, doc) == [f"{doc}/original"]
    stack.start_worker()

    def page_one_ready() -> dict | None:
        st = s.get(stack.base_url + body["status_url"], timeout=5).json()
        return st if st["state"] == "running" and st["ready"] >= 1 else None

    running = wait_for(page_one_ready, 30, 0.05, what="page 1 ready")
    page_url = f"{stack.base_url}/documents/{doc}/files/1/page-0001.jpg"
    before = len(moto_server.requests())
    resp = s.get(page_url, allow_redirects=False, timeout=5)
    after_redirect = len(moto_server.requests())
    assert resp.status_code == 302
    assert resp.headers["Cache-Control"] == "private, no-store"
    location = resp.headers["Location"]
    assert location.startswith(f"{moto_server.url}/{s3_settings['STORAGE_URL'][5:]}/{doc}/a1/page-0001.jpg?")
    image = requests.get(location, timeout=5)
    assert (image.status_code, image.headers["Content-Type"], image.content[:3]) == (
        200,
        "image/jpeg",
        b"\xff\xd8\xff",
    )
    # A page view costs the web no S3 request at all (signing is local), and the browser one GET
    # (the worker meanwhile goes on PUTting pages, so only the other requests are counted).
    s3_calls = moto_server.requests()[before:]
    assert [c for c in s3_calls[: after_redirect - before] if not c.startswith("PUT ")] == []
    assert [c.split("?")[0] for c in s3_calls if doc in c and not c.startswith("PUT ")] == [
        f"GET /{s3_settings['STORAGE_URL'][5:]}/{doc}/a1/page-0001.jpg"
    ]
    still = s.get(stack.base_url + body["status_url"], timeout=5).json()
    assert still["state"] == "running", f"conversion ended before the page was checked: {running}, {still}"

    # A page that is not ready is refused by the web before any URL is made.
    late = s.get(f"{stack.base_url}/documents/{doc}/files/1/page-0060.jpg", allow_redirects=False, timeout=5)
    assert late.status_code == 404
    # The viewer's CSP lets page images come from the object store.
    before = len(moto_server.requests())
    viewer = s.get(stack.base_url + body["viewer_url"], timeout=5)
    # The viewer page reads the attempt's layout (page sizes, outline): one S3 GET (the worker
    # meanwhile only PUTs pages).
    assert [c for c in moto_server.requests()[before:] if not c.startswith("PUT ")] == [
        f"GET /{s3_settings['STORAGE_URL'][5:]}/{doc}/a1/layout.json"
    ]
    csp = viewer.headers["Content-Security-Policy"].split("; ")
    img_src = next(d for d in csp if d.startswith("img-src"))
    assert img_src == f"img-src 'self' data: {moto_server.url}"

    download = s.get(stack.base_url + body["download_url"], allow_redirects=False, timeout=5)
    assert download.status_code == 302
    original = requests.get(download.headers["Location"], timeout=5)
    assert original.content == SLOW_PDF
    assert original.headers["Content-Disposition"] == (
        "attachment; filename=\"doc.pdf\"; filename*=UTF-8''doc.pdf"
    )

    assert s.delete(f"{stack.base_url}/api/documents/{doc}", timeout=10).status_code == 204
    # The worker stops at its next page and removes what it stored meanwhile.
    wait_for(lambda: keys_under(moto_server, s3_settings, doc) == [], 20, 0.05, what="every object deleted")
    time.sleep(1.5)  # a window: a worker that was not stopped would store another page within it
    assert keys_under(moto_server, s3_settings, doc) == []
    # Nothing was ever written to a local STORAGE_DIR.
    assert not (stack.dir / "storage").exists()


def test_complete_document_on_s3_lists_every_file_and_serves_them(make_stack, moto_server, s3_settings):
    stack = make_stack(**s3_settings)
    stack.start_worker()
    s = api(stack.user("s3done"))
    start = len(moto_server.requests())
    body = upload(s, stack.base_url, make_pdf(["one", "two"]))
    assert poll_until_terminal(s, stack.base_url, body)["state"] == "complete"
    doc = body["id"]
    # What a 2-page conversion costs in S3 requests: the web PUTs the upload; the worker lists the
    # document once (pages an earlier attempt stored: none), fetches the original (HEAD + GET), PUTs
    # the layout, 4 files per page and the manifest; the web reads the manifest once when it records
    # the final state, and lists the document once for its quota.
    root = f"/{s3_settings['STORAGE_URL'][5:]}/{doc}"
    bucket = root.split("/")[1]
    per_page = [
        f"PUT {root}/a1/{role}-{n:04d}.{ext}"
        for n in (1, 2)
        for role, ext in (("page", "jpg"), ("thumb", "jpg"), ("text", "txt"), ("layer", "json"))
    ]
    made = moto_server.requests()[start:]
    listing = f"GET /{bucket}?list-type=2&prefix={root[len(bucket) + 2 :]}/&encoding-type=url"
    assert made[:5] + made[5 + len(per_page) :] == [
        f"PUT {root}/original",
        listing,
        f"HEAD {root}/original",
        f"GET {root}/original",
        f"PUT {root}/a1/layout.json",
        f"PUT {root}/a1/manifest.json",
        f"GET {root}/a1/manifest.json",
        listing,
    ]
    # The render processes upload their pages side by side: each file once, in any order.
    assert sorted(made[5 : 5 + len(per_page)]) == sorted(per_page)
    pages = [
        f"{doc}/a1/{role}-{n:04d}.{ext}"
        for n in (1, 2)
        for role, ext in (("page", "jpg"), ("thumb", "jpg"), ("text", "txt"), ("layer", "json"))
    ]
    expected = sorted([f"{doc}/original", f"{doc}/a1/layout.json", f"{doc}/a1/manifest.json", *pages])
    assert keys_under(moto_server, s3_settings, doc) == expected
    before = len(moto_server.requests())
    assert s.get(stack.base_url + body["viewer_url"], timeout=5).status_code == 200
    assert moto_server.requests()[before:] == [f"GET /{s3_settings['STORAGE_URL'][5:]}/{doc}/a1/layout.json"]
    text = s.get(f"{stack.base_url}/documents/{doc}/files/1/text-0002.txt", timeout=5)
    assert text.status_code == 200  # followed the redirect to moto
    assert text.url.startswith(moto_server.url)
    assert (text.headers["Content-Type"], text.text.strip()) == ("text/plain; charset=utf-8", "two")
    hits = s.get(f"{stack.base_url}/api/documents/{doc}/search", params={"q": "two"}, timeout=5).json()
    assert [h["page"] for h in hits["hits"]] == [2]
