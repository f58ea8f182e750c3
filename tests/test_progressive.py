"""Reading while it converts, end to end: real gunicorn (gevent), a real `rq worker`, real Redis.

Pages are served the moment they are ready, search covers the ready part, and deleting a document
mid-conversion stops it, ends its streams and leaves nothing behind.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

from livedoc import jobs
from livedoc.redis_client import connect
from tests.live import api, sse_events
from tests.pdfgen import make_pdf
from tests.support import TERMINAL
from tests.support.streams import upload, wait_status

pytestmark = pytest.mark.live

WORDS = ["apple", "banana", "cherry", "damson", "elder", "fig", "grape", "hazel", "iris", "juniper"]
PAGES = 60
OUTLINE = [
    ("Front matter", 0, []),
    ("Part one", 1, [("Chapter 1", 2, []), ("Chapter 2", 9, [])]),
    ("Part two", 30, []),
]
TEXTS = [f"Page {i} of the book\nThe {WORDS[i % 10]}{i} keyword lives here" for i in range(1, PAGES + 1)]
BOOK = make_pdf(TEXTS, outline=OUTLINE)
# Five times as long: seconds of conversion at 300 dpi even on both cores of a quiet machine.
LONG_BOOK = make_pdf(TEXTS * 5)
SLOW = {"RENDER_DPI": "300", "RATELIMIT_STREAM": "6000 per minute"}


@pytest.fixture
def slow_stack(make_stack):
    """A deployment whose pages take long enough to render that tests can act mid-conversion."""
    stack = make_stack(**SLOW)
    stack.start_worker()
    return stack


def test_first_page_is_served_while_the_rest_converts(slow_stack):
    s = api(slow_stack.user("early-reader"))
    base = slow_stack.base_url
    body = upload(s, base, BOOK)
    status = wait_status(s, base, body, lambda st: st["ready"] >= 1)
    assert status["state"] == "running" and status["ready"] < PAGES, status

    doc = s.get(f"{base}/api/documents/{body['id']}", timeout=10).json()
    assert doc["progress"]["state"] == "running"
    # Every page's size is known up front (placeholders); the ready ones are listed with their files.
    assert len(doc["sizes"]) == PAGES and doc["sizes"][0] == [2550, 3300]
    ready = len(doc["pages"])
    assert 1 <= ready < PAGES
    assert [p["n"] for p in doc["pages"]] == list(range(1, ready + 1))
    first = doc["pages"][0]
    image = s.get(base + first["image"], timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
    assert image.content[:3] == b"\xff\xd8\xff"
    assert "immutable" in image.headers["Cache-Control"]
    assert "Page 1 of the book" in s.get(base + first["text"], timeout=10).text
    layer = s.get(base + first["layer"], timeout=10).json()
    assert any("apple" not in r[4] and "Page 1 of the book" in r[4] for r in layer["runs"])
    # A page that is not ready yet is not served, even though its name is valid.
    later = doc["files_url"] + f"page-{PAGES:04d}.jpg"
    assert s.get(base + later, timeout=10).status_code == 404
    assert s.get(f"{base}/api/documents/{body['id']}/status", timeout=10).json()["state"] == "running"

    # The outline is there from the start too.
    assert doc["outline"] == [
        {"title": "Front matter", "page": 1, "children": []},
        {
            "title": "Part one",
            "page": 2,
            "children": [
                {"title": "Chapter 1", "page": 3, "children": []},
                {"title": "Chapter 2", "page": 10, "children": []},
            ],
        },
        {"title": "Part two", "page": 31, "children": []},
    ]

    final = wait_status(s, base, body, lambda st: st["state"] == "complete")
    assert final["ready"] == final["pages"] == PAGES
    done = s.get(f"{base}/api/documents/{body['id']}", timeout=10).json()
    assert len(done["pages"]) == PAGES
    assert s.get(base + later, timeout=10).status_code == 200


def test_every_transport_carries_ready_and_a_reconnect_restores_it(slow_stack):
    s = api(slow_stack.user("ready-watcher"))
    base = slow_stack.base_url
    body = upload(s, base, BOOK)
    resp = s.get(base + body["events_url"], stream=True, timeout=60)
    seen = []
    for message in sse_events(resp, until_terminal=False):
        if "data" in message:
            seen.append(json.loads(message["data"]))
            if seen[-1]["ready"] >= 3:
                break
    resp.close()
    readies = [m["ready"] for m in seen]
    assert readies == sorted(readies) and readies[-1] >= 3
    last_id = seen[-1]["seq"]
    # Reconnect: the first event after Last-Event-ID already says how many pages are ready.
    again = s.get(base + body["events_url"], headers={"Last-Event-ID": str(last_id)}, stream=True, timeout=60)
    nxt = next(json.loads(m["data"]) for m in sse_events(again, until_terminal=False) if "data" in m)
    again.close()
    assert nxt["seq"] > last_id and nxt["ready"] >= readies[-1]
    # Long-poll and poll carry it too; so does the multiplexed stream.
    polled = s.get(base + body["status_url"], params={"after": nxt["seq"], "wait": 5}, timeout=30).json()
    assert polled["ready"] >= nxt["ready"]
    multi = s.get(f"{base}/api/events", params={"docs": body["id"]}, stream=True, timeout=60)
    first_multi = next(json.loads(m["data"]) for m in sse_events(multi, until_terminal=False) if "data" in m)
    multi.close()
    assert first_multi["document_id"] == body["id"] and first_multi["ready"] >= polled["ready"]
    wait_status(s, base, body, lambda st: st["state"] == "complete")


def test_search_finds_a_word_on_its_page_and_says_how_much_was_searched(slow_stack):
    s = api(slow_stack.user("searcher"))
    base = slow_stack.base_url
    body = upload(s, base, BOOK)
    url = f"{base}/api/documents/{body['id']}/search"
    status = wait_status(s, base, body, lambda st: st["ready"] >= 4)
    early = s.get(url, params={"q": "Damson3 Keyword"}, timeout=10).json()
    if not early["complete"]:
        assert early["searched_pages"] < PAGES and early["pages"] == PAGES
    assert status["ready"] <= early["searched_pages"]
    hits = early["hits"]
    assert [h["page"] for h in hits] == [3]
    assert "damson3 keyword lives" in hits[0]["snippet"].lower()
    x, y, w, h = hits[0]["rects"][0]
    assert 0 < x < 1 and 0 < y < 1 and 0 < w < 1 and 0 < h < 0.1

    wait_status(s, base, body, lambda st: st["state"] == "complete")
    done = s.get(url, params={"q": "juniper59"}, timeout=10).json()
    assert done["complete"] and done["searched_pages"] == PAGES
    assert [h["page"] for h in done["hits"]] == [59]
    many = s.get(url, params={"q": "keyword lives"}, timeout=10).json()
    assert [h["page"] for h in many["hits"]] == list(range(1, PAGES + 1))
    assert s.get(url, params={"q": "no such phrase"}, timeout=10).json()["hits"] == []
    for bad in ("", "   ", "x" * 201):
        resp = s.get(url, params={"q": bad}, timeout=10)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_parameter"


def test_delete_mid_conversion_stops_it_ends_the_stream_and_leaves_no_files(slow_stack):
    s = api(slow_stack.user("deleter"))
    base = slow_stack.base_url
    body = upload(s, base, LONG_BOOK)  # still converting when the delete arrives
    doc_id = body["id"]
    resp = s.get(base + body["events_url"], stream=True, timeout=60)
    events = sse_events(resp)
    for message in events:
        if "data" in message and json.loads(message["data"])["ready"] >= 2:
            break
    storage = slow_stack.dir / "storage" / doc_id
    assert (storage / "a1" / "page-0001.jpg").is_file()

    # A stranger cannot delete it.
    other = api(slow_stack.user("stranger"))
    assert other.delete(f"{base}/api/documents/{doc_id}", timeout=10).status_code == 404

    # A viewer told "deleted" by its stream, reloading at once, finds nothing: the row went first,
    # while the DELETE is still stopping the work horse and removing the files.
    deleting = concurrent.futures.ThreadPoolExecutor(1)
    answer = deleting.submit(s.delete, f"{base}/api/documents/{doc_id}", timeout=10)
    rest = [m for m in events if "event" in m]
    assert rest[-1]["event"] == "error"
    assert s.get(f"{base}/api/documents/{doc_id}", timeout=10).status_code == 404
    assert answer.result().status_code == 204
    deleting.shutdown()
    ending = json.loads(rest[-1]["data"])
    assert ending["error"] == {"code": "deleted", "message": "This document was deleted.", "retryable": False}
    assert resp.raw.read() == b"", "the stream ended after the deleted event"

    for url in (
        f"/api/documents/{doc_id}",
        f"/api/documents/{doc_id}/status",
        f"/documents/{doc_id}",
        f"/api/documents/{doc_id}/events",
        f"/documents/{doc_id}/files/1/page-0001.jpg",
        f"/documents/{doc_id}/download",
        f"/api/documents/{doc_id}/search?q=x",
    ):
        assert s.get(base + url, timeout=10).status_code == 404, url
    assert s.delete(f"{base}/api/documents/{doc_id}", timeout=10).status_code == 404

    # The work horse was stopped and wrote nothing more; the worker goes on with other work.
    conn = connect(slow_stack.redis_url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        storage.exists() or conn.exists(f"rq:job:{jobs.job_id(doc_id, 1)}") and not _stopped(conn, doc_id)
    ):
        time.sleep(0.1)
    assert not storage.exists(), "files of the deleted document remain"
    time.sleep(1.5)  # a horse that was not stopped would write another page within this time
    assert not storage.exists()
    nxt = upload(s, base, make_pdf(["after the delete"]))
    assert wait_status(s, base, nxt, lambda st: st["state"] in TERMINAL)["state"] == "complete"
    assert doc_id not in [d["id"] for d in s.get(f"{base}/api/documents", timeout=10).json()["documents"]]
    conn.connection_pool.disconnect()


def _stopped(conn, doc_id: str) -> bool:
    status = conn.hget(f"rq:job:{jobs.job_id(doc_id, 1)}", "status")
    return status in (b"stopped", b"failed", b"canceled", b"finished")


def test_a_sharper_page_is_rendered_on_demand_once(slow_stack):
    s = api(slow_stack.user("zoomer"))
    base = slow_stack.base_url
    body = upload(s, base, make_pdf(["zoom into me", "and me"]))
    wait_status(s, base, body, lambda st: st["state"] == "complete")
    doc = s.get(f"{base}/api/documents/{body['id']}", timeout=10).json()
    hd = s.get(base + doc["pages"][0]["hd"], timeout=30)
    assert hd.status_code == 200 and hd.headers["Content-Type"] == "image/jpeg"
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(hd.content)) as image:
        # US Letter at HD_DPI=300 (pdfium rounds the height up), past the 935 x 1210 base image.
        assert image.width == 2550 and image.height in (3300, 3301)
    stored = slow_stack.dir / "storage" / body["id"] / "a1" / "hd-0001.jpg"
    assert stored.is_file() and not (stored.parent / "hd-0002.jpg").exists()
    assert s.get(base + doc["pages"][0]["hd"], timeout=30).content == hd.content
    text = upload(s, base, b"plain text has no sharper rendition\n", name="t.txt")
    wait_status(s, base, text, lambda st: st["state"] == "complete")
    tdoc = s.get(f"{base}/api/documents/{text['id']}", timeout=10).json()
    assert s.get(base + tdoc["pages"][0]["hd"], timeout=30).status_code == 404


def test_download_and_reading_position(slow_stack):
    s = api(slow_stack.user("keeper"))
    base = slow_stack.base_url
    body = upload(s, base, make_pdf(["one", "two", "three"]), name='weird "name"; ü.pdf')
    wait_status(s, base, body, lambda st: st["state"] == "complete")
    got = s.get(base + body["download_url"], timeout=10)
    assert got.status_code == 200 and got.content[:5] == b"%PDF-"
    disposition = got.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''weird%20%22name%22%3B%20%C3%BC.pdf" in disposition
    url = f"{base}/api/documents/{body['id']}/position"
    assert s.put(url, json={"page": 2}, timeout=10).status_code == 204
    assert s.get(f"{base}/api/documents/{body['id']}", timeout=10).json()["last_page"] == 2
    for bad in ({"page": 0}, {"page": 4}, {"page": "2"}, {"page": True}, {}, [], None):
        resp = s.put(url, json=bad, timeout=10)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_parameter", bad
    assert s.get(f"{base}/api/documents/{body['id']}", timeout=10).json()["last_page"] == 2
