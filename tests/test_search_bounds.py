"""Search never blocks the web process: bounded reads, pauses between pages, a time budget, a
per-process cap on concurrent searches and a per-user rate limit (issue M, item 3).

The live tests run a real gunicorn (gevent) web process and a real worker on a document whose 100
pages each hold about a megabyte of text (an 18 KB PDF: every page shares one compressed content
stream), as stored before the worker capped text per page.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
import zlib

import pytest
import requests

from livedoc import search
from livedoc.ids import new_doc_id
from livedoc.storage import DocumentFiles, LocalStorage, page_names
from tests import pdfgen
from tests.live import ROOT, api
from tests.support.streams import poll_until_terminal, upload

# -- the pure search over a real local storage ------------------------------------------------------


def _store_pages(tmp_path, texts: list[bytes], layers: list[bytes | None] | None = None) -> DocumentFiles:
    files = DocumentFiles(LocalStorage(tmp_path / "storage"), new_doc_id())
    for n, raw in enumerate(texts, 1):
        files.storage.put_bytes(files.key(1, page_names(n)["text"]), raw)
        layer = (layers or [None] * len(texts))[n - 1]
        if layer is not None:
            files.storage.put_bytes(files.key(1, page_names(n)["layer"]), layer)
    return files


def test_the_search_module_loads_neither_flask_nor_gevent():
    # Shared by web and worker: the web hands it a pause instead of it importing gevent.
    code = (
        "import sys, livedoc.search; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'gevent'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_normalised_in_slices_equals_the_whole_page_normalised(monkeypatch):
    monkeypatch.setattr(search, "SLICE_CHARS", 7)
    rng = random.Random(7)
    alphabet = ["a", "B", "ß", " ", "  ", "\n", "\t", "x", "\u2003", "é"]
    pauses = []
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        joined = " ".join(text.split())
        assert search.normalised(text, lambda: pauses.append(1)) == (joined, joined.casefold()), repr(text)
    assert pauses, "a text longer than a slice pauses between slices"


def test_a_huge_page_is_read_only_up_to_its_prefix_and_paused_within(tmp_path):
    # 2 MB of text on page 1; the word sits past the prefix the search reads, and on page 2.
    huge = b"filler words here " * (2 * 1024 * 1024 // 18) + b" needle "
    files = _store_pages(tmp_path, [huge, b"a needle on page two"])
    pauses = []
    found = search.search(files, 1, 2, "NEEDLE", pause=lambda: pauses.append(1), budget_ms=60_000)
    assert [h["page"] for h in found["hits"]] == [2]
    assert found["searched_pages"] == 2 and found["truncated"] is False
    assert len(pauses) >= search.PAGE_BYTES // search.SLICE_CHARS  # within the page, not only between


def test_the_time_budget_stops_the_search_and_says_how_far_it_got(tmp_path):
    files = _store_pages(tmp_path, [f"page {n} text".encode() for n in range(1, 11)])
    now = [0.0]

    def pause() -> None:
        now[0] += 0.1  # every page "takes" 100 ms

    found = search.search(files, 1, 10, "text", pause=pause, budget_ms=350, clock=lambda: now[0])
    assert found["searched_pages"] == 4
    assert [h["page"] for h in found["hits"]] == [1, 2, 3, 4]
    assert found["truncated"] is True


def test_hits_snippets_and_rectangles_as_before(tmp_path):
    layer = b'{"runs": [[0.1, 0.2, 0.5, 0.02, "Hello World"], [1, 2], "junk"]}'
    texts = [b"Hello   World\n again", b"nothing", b"hello world"]
    files = _store_pages(tmp_path, texts, [layer, None, b"[]"])
    found = search.search(files, 1, 3, " hello  WORLD ", pause=lambda: None, budget_ms=1000)
    assert found == {
        "hits": [
            {
                "page": 1,
                "snippet": "Hello World again",
                "offset": 0,
                "length": 11,
                "rects": [[0.1, 0.2, 0.5, 0.02]],
            },
            {"page": 3, "snippet": "hello world", "offset": 0, "length": 11, "rects": []},
        ],
        "searched_pages": 3,
        "truncated": False,
    }


def test_an_oversized_text_layer_is_not_parsed(tmp_path):
    big_layer = b'{"runs": [' + b'[0, 0, 1, 1, "word"],' * (search.LAYER_BYTES // 20) + b'[0, 0, 1, 1, "x"]]}'
    files = _store_pages(tmp_path, [b"word"], [big_layer])
    found = search.search(files, 1, 1, "word", pause=lambda: None, budget_ms=1000)
    assert found["hits"][0]["rects"] == []


@pytest.mark.parametrize("query", ["", "   ", "x" * 201])
def test_a_bad_query_is_refused(tmp_path, query):
    files = _store_pages(tmp_path, [b"text"])
    with pytest.raises(search.BadQuery):
        search.search(files, 1, 1, query, pause=lambda: None, budget_ms=1000)


def test_on_s3_a_page_is_read_by_a_ranged_get(s3_settings, monkeypatch):
    from config import Settings
    from livedoc.storage import S3Storage

    for name, value in s3_settings.items():
        monkeypatch.setenv(name, value)
    storage = S3Storage.from_settings(Settings.from_env())
    files = DocumentFiles(storage, new_doc_id())
    key = files.key(1, page_names(1)["text"])
    storage.put_bytes(key, b"x" * (search.PAGE_BYTES + 10) + b" needle")
    storage.put_bytes(files.key(1, page_names(2)["text"]), b"")
    storage.put_bytes(files.key(1, page_names(3)["text"]), b"a needle")
    assert storage.get_prefix(key, 10) == b"x" * 10
    assert storage.get_prefix(key, 0) == b""
    assert storage.get_prefix(files.key(1, page_names(2)["text"]), 10) == b""  # empty: no byte 0
    assert storage.get_prefix(files.key(1, "absent.txt"), 10) is None
    found = search.search(files, 1, 4, "needle", pause=lambda: None, budget_ms=10_000)
    assert [h["page"] for h in found["hits"]] == [3] and found["searched_pages"] == 4


# -- live: a real gunicorn + gevent web process and a real worker -----------------------------------

PAGES = 40
# pdfium's text extraction grows with lines × characters, so few long lines (23,100 characters each,
# under its 32,768 per string) keep the conversion to about two seconds a page.
LINE = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 300
LINES_PER_PAGE = 32  # ~740 KB of text per page, ~30 MB in all: the old search took ~0.5 s each


def heavy_text_pdf(pages: int = PAGES, lines: int = LINES_PER_PAGE) -> bytes:
    """A small PDF whose every page shows ~0.75 MB of text in a tiny font: one shared, compressed stream."""
    ops = [b"BT", b"/F1 0.1 Tf", b"0.15 TL", b"10 780 Td"]
    body = f"({LINE}) Tj T*".encode()
    ops += [body] * lines
    ops.append(b"ET")
    stream = zlib.compress(b"\n".join(ops) + b"\n", 9)
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode() + stream + b"\nendstream",
    }
    kids = []
    for i in range(pages):
        num = 5 + i
        kids.append(f"{num} 0 R")
        objects[num] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents 4 0 R >>"
        )
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {pages} >>".encode()
    return pdfgen._assemble(objects)


HEAVY_ENV = {
    # Stored as documents converted before the caps existed: the search must cope with what is there.
    "MAX_PAGE_TEXT": "10000000",
    "MAX_DOCUMENT_TEXT": "1000000000",
    "RATELIMIT_SEARCH": "1000 per minute",
    "RATELIMIT_STREAM": "100000 per minute",
    # The heartbeat gunicorn kills a blocked worker by: shorter than the default 30 s, so a blocked
    # event loop shows as a WORKER TIMEOUT within the test, not only as latency.
    "GUNICORN_CMD_ARGS": "--timeout 10",
}


@pytest.fixture
def heavy_stack(make_stack):
    """A stack holding one converted document of 40 pages × ~0.75 MB of text; (stack, token, doc id)."""
    stack = make_stack(**HEAVY_ENV)
    stack.start_worker()
    token = stack.user("heavy")
    s = api(token)
    body = upload(s, stack.base_url, heavy_text_pdf(), "heavy.pdf")
    status = poll_until_terminal(s, stack.base_url, body, timeout=500)
    assert status["state"] == "complete", status
    storage = stack.dir / "storage"
    text_bytes = sum(p.stat().st_size for p in storage.rglob("text-*.txt"))
    assert text_bytes > 25 * 1024 * 1024, f"the pages hold {text_bytes} bytes of text, not ~30 MB"
    return stack, token, body["id"]


def _web_pids(log: str) -> set[str]:
    return set(re.findall(r"Booting worker with pid: (\d+)", log))


@pytest.mark.timeout(900)
def test_ten_searches_at_once_neither_kill_nor_stall_the_web_process(heavy_stack):
    stack, token, doc_id = heavy_stack
    web = stack.webs[0]
    pids_before = _web_pids(web.log())
    other = api(stack.user("bystander"))
    assert other.get(f"{stack.base_url}/api/me", timeout=10).status_code == 200

    search_url = f"{stack.base_url}/api/documents/{doc_id}/search"
    statuses: list[int] = []
    bodies: list[dict] = []
    latencies: list[float] = []
    stop = threading.Event()

    def searcher(i: int) -> None:
        s = api(token)  # a session (connection) of its own
        try:
            resp = s.get(search_url, params={"q": f"zebra{i}"}, timeout=120)
        except requests.RequestException as exc:
            statuses.append(-1)
            bodies.append({"exception": repr(exc)})
            return
        statuses.append(resp.status_code)
        is_json = resp.headers.get("Content-Type", "").startswith("application/json")
        bodies.append(resp.json() if is_json else {"text": resp.text[:300]})

    def poller() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                code = other.get(f"{stack.base_url}/api/me", timeout=60).status_code
            except requests.RequestException:
                code = -1
            latencies.append(time.monotonic() - t0 if code == 200 else float("inf"))
            time.sleep(0.02)

    watch = threading.Thread(target=poller)
    watch.start()
    time.sleep(0.3)
    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    time.sleep(0.3)
    stop.set()
    watch.join(60)

    log = web.log()
    assert "WORKER TIMEOUT" not in log, log[-3000:]
    assert _web_pids(log) == pids_before, "the web process was replaced"
    assert web.popen.poll() is None
    assert len(statuses) == 10 and all(code in (200, 429) for code in statuses), (statuses, bodies)
    assert statuses.count(200) >= 2, statuses
    for code, body in zip(statuses, bodies):
        if code == 200:
            assert body["hits"] == [] and body["pages"] == PAGES and body["complete"] is True
            assert 0 <= body["searched_pages"] <= PAGES
            assert body["truncated"] is (body["searched_pages"] < PAGES)
        else:
            assert body["error"]["code"] == "rate_limited"

    # A phrase on every page: the normal answer, stopped by the hit cap on page 1.
    resp = api(token).get(search_url, params={"q": "Dolor  SIT"}, timeout=60)
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"query", "hits", "searched_pages", "pages", "complete", "truncated"}
    assert len(body["hits"]) == search.MAX_HITS and body["truncated"] is True
    assert {h["page"] for h in body["hits"]} == {1}
    assert "dolor sit" in body["hits"][0]["snippet"]

    assert latencies
    worst = max(latencies)
    assert worst < 1.0, f"/api/me took up to {worst:.2f} s during the searches ({len(latencies)} calls)"


def test_the_search_rate_limit_is_per_user_with_retry_after(make_stack):
    stack = make_stack(RATELIMIT_SEARCH="3 per minute")
    stack.start_worker()
    alice, bob = api(stack.user("alice")), api(stack.user("bob"))
    body = upload(alice, stack.base_url, pdfgen.make_pdf(["one two", "three"]))
    assert poll_until_terminal(alice, stack.base_url, body)["state"] == "complete"
    url = f"{stack.base_url}/api/documents/{body['id']}/search"
    codes = [alice.get(url, params={"q": "two"}, timeout=10).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    refused = alice.get(url, params={"q": "two"}, timeout=10)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["message"]
    # Another user has a limit of their own (a 404: not their document, but not rate-limited).
    assert bob.get(url, params={"q": "two"}, timeout=10).status_code == 404
