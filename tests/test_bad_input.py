"""Hundreds of generated bad requests against every route: never a 5xx, never a leak.

Every request goes through `send` (Flask test client) or `live_send` (a raw socket to the real gunicorn
server), which count it and check what must hold for any input at all:

- the status is never 5xx;
- on /api/ routes a 4xx body is exactly ``{"error": {"code": str, "message": str}}``;
- no body or header carries a stack trace, a server path (the checkout, STORAGE_DIR, /tmp,
  site-packages) or another user's document id, unless the request itself carried that text.

Each test then checks what is precise for its inputs: the status and error code, what was stored on
disk, and that "not yours" answers exactly like "absent". The tests at the end of each part pinned
bugs this suite found (no upload limit by default, a 500 for an unreadable chunked body); they were
strict xfails until the fixes landed.
"""

from __future__ import annotations

import io
import json
import math
import re
import socket
import time
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, RequestRedirect

from livedoc.ids import valid_doc_id
from tests import dbs
from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import ROOT, TERMINAL
from tests.support.app import Users, run_jobs
from tests.support.budget import RAN, STATS
from tests.support.streams import wait_document

PDF = make_pdf(["first page of the bad-input suite", "second page"])
ABSENT = "0" * 32
MAX_SEQ = 2**53
BOUNDARY = "xYzZYbadinput"
LEAK_MARKERS = (
    "Traceback",
    'File "',
    "/work/",
    "STORAGE",
    "site-packages",
    "/tmp/",
    "/home/",
    "/usr/",
    str(ROOT),
)
CSRF_TOKEN = re.compile(r'"[\w-]+\.[\w-]+\.[\w-]+"')  # itsdangerous: payload.timestamp.signature
PERMANENT_CODES = {"corrupt", "unsupported", "empty", "encrypted", "too_many_pages", "page_too_large"}

# Routes that take a document id, with the method they answer to.
DOC_ROUTES = [
    ("GET", "/api/documents/{id}"),
    ("GET", "/api/documents/{id}/status"),
    ("GET", "/api/documents/{id}/events"),
    ("POST", "/api/documents/{id}/retry"),
    ("GET", "/documents/{id}"),
    ("GET", "/documents/{id}/download"),
    ("GET", "/documents/{id}/files/1/page-0001.jpg"),
    ("POST", "/documents/{id}/retry"),
]

# Ids as they go into the URL (already percent-encoded where that is the point).
BAD_IDS = [
    "x",
    "..",
    ".",
    "...",
    "%2e%2e",
    "%2E%2E",
    "..%2f..%2fetc%2fpasswd",
    "..%2F..%2Fmanifest.json",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252f..%252fetc",
    "%2e%2e%5c%2e%2e%5cwindows",
    "..%5c..%5c",
    "../../etc/passwd",
    "%00",
    "0" * 31 + "%00",
    "%00" + "0" * 32,
    "0" * 32 + "%00",
    "0" * 32 + "%0a",
    "0" * 32 + "%20",
    "%20" + "0" * 32,
    "%c0%ae%c0%ae",
    "%ff%fe",
    "%e2%80%ae" + "0" * 29,
    quote("é" * 32),
    quote("０" * 32),
    quote("٠" * 32),
    "A" * 32,
    "F" * 32,
    "0" * 31,
    "0" * 33,
    "f" * 31,
    "f" * 33,
    "g" * 32,
    "a" * 10_000,
    "0" * 10_000,
    "-1",
    "1e9",
    "null",
    "undefined",
    "%7B%7Bid%7D%7D",
    "%3Cscript%3E",
    "'%20OR%201=1--",
    "%25",
    "%2f",
    "%3F",
    "%23",
]

HEADER_CHARS = st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))
HYPO = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


# -- the world every test-client test starts from --------------------------------------------------


@dataclass
class World:
    """Two users with one converted document each, a client, and where the files live."""

    app: object
    client: object
    storage: Path
    tokens: dict[str, str]
    docs: dict[str, str]
    seq: int  # the seq of alice's (complete) document

    def auth(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}

    def foreign(self, who: str | None) -> list[str]:
        """Document ids that `who` must never see in a response."""
        return [doc for owner, doc in self.docs.items() if owner != who]


@pytest.fixture
def world(app, client, users, redis_conn, storage_dir) -> World:
    tokens = {"alice": users.create("alice"), "bob": users.create("bob")}
    docs = {}
    for who, token in tokens.items():
        resp = client.post(
            "/api/documents",
            headers={"Authorization": f"Bearer {token}"},
            data={"file": (io.BytesIO(PDF), f"{who}.pdf")},
            content_type="multipart/form-data",
        )
        assert resp.status_code == 201, resp.data
        docs[who] = resp.get_json()["id"]
    run_jobs(redis_conn)
    w = World(app, client, storage_dir, tokens, docs, seq=0)
    for who, doc in docs.items():
        status = send(w, "GET", f"/api/documents/{doc}/status", who=who, expect=200).get_json()
        assert status["state"] == "complete"
        if who == "alice":
            w.seq = status["seq"]
    return w


@pytest.fixture(autouse=True)
def _no_unhandled_errors(request, caplog):
    """The app's last-resort handler logs "unhandled error": no bad input may reach it."""
    yield
    RAN.add(request.node.originalname)
    if request.node.get_closest_marker("xfail") is None:
        unhandled = [r.getMessage() for r in caplog.records if "unhandled error" in r.getMessage()]
        assert not unhandled, unhandled


# -- sending and the checks that hold for every response -------------------------------------------


def check(
    status: int | None,
    headers,
    body: bytes,
    *,
    url: str,
    method: str,
    sent: str,
    foreign: list[str],
    app_answered: bool = True,
    known_bug: bool = False,
) -> None:
    """What must hold for any response to any input."""
    where = f"{method} {url[:160]} -> {status}"
    if status is not None and status >= 500:
        STATS["5xx_known_bug" if known_bug else "5xx"] += 1
        if not known_bug:
            raise AssertionError(f"5xx: {where}: {body[:400]!r}")
    text = body.decode("utf-8", "replace") + "\n" + "\n".join(f"{k}: {v}" for k, v in headers)
    for marker in LEAK_MARKERS:
        assert marker not in text or marker in sent, f"{where} leaks {marker!r}: {text[:600]}"
    for doc in foreign:
        assert doc not in text or doc in sent, f"{where} shows another user's document {doc}"
    if (
        app_answered
        and url.startswith("/api/")
        and status is not None
        and 400 <= status < 500
        and method != "HEAD"
    ):
        payload = json.loads(body)
        assert list(payload) == ["error"], where
        quota = ["quota"] if str(payload["error"].get("code")).startswith("quota_") else []
        assert sorted(payload["error"]) == ["code", "message", *quota], where
        assert isinstance(payload["error"]["code"], str) and isinstance(payload["error"]["message"], str)


def send(
    w: World,
    method: str,
    url: str,
    *,
    who: str | None = "alice",
    headers: dict | None = None,
    expect: int | set | None = None,
    known_bug: bool = False,
    **kw,
):
    """One request through the test client, counted and checked; the body is read and the response closed."""
    hdrs = {**w.auth(who), **(headers or {})}
    resp = w.client.open(url, method=method, headers=hdrs, **kw)
    body = resp.get_data()
    resp.close()
    STATS["test_client"] += 1
    check(
        resp.status_code,
        resp.headers.items(),
        body,
        url=url,
        method=method,
        sent=repr((method, url, hdrs, kw)),
        foreign=w.foreign(who),
        known_bug=known_bug,
    )
    if expect is not None:
        allowed = {expect} if isinstance(expect, int) else expect
        assert resp.status_code in allowed, f"{method} {url[:160]}: {resp.status_code} {body[:300]!r}"
    return resp


def error_code(resp) -> str:
    return resp.get_json()["error"]["code"]


def snapshot(resp, ids: list[str]) -> tuple:
    """A response with the volatile parts (CSRF token, the id asked for, cookies, date) normalised."""
    text = CSRF_TOKEN.sub('"<csrf>"', resp.get_data(as_text=True))
    volatile = ("Set-Cookie", "Date", "Content-Length")
    headers = sorted((k, v) for k, v in resp.headers.items() if k not in volatile)
    for doc in ids:
        text = text.replace(doc, "<id>")
        headers = [(k, v.replace(doc, "<id>")) for k, v in headers]
    return resp.status_code, headers, text


def still_serves(w: World) -> None:
    """After the bad inputs, a normal request still works."""
    listing = send(w, "GET", "/api/documents", expect=200).get_json()
    assert [d["id"] for d in listing["documents"]][-1] == w.docs["alice"]
    assert (
        send(w, "GET", f"/api/documents/{w.docs['alice']}", expect=200).get_json()["progress"]["state"]
        == "complete"
    )


def multipart(parts: list[tuple[bytes | None, bytes | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A hand-made multipart body: (field name or None, filename or None, content) per part."""
    out = b""
    for name, filename, content in parts:
        disposition = b"form-data"
        if name is not None:
            disposition += b'; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += (
            b"--"
            + boundary.encode()
            + b"\r\nContent-Disposition: "
            + disposition
            + b"\r\nContent-Type: application/octet-stream\r\n\r\n"
            + content
            + b"\r\n"
        )
    return out + b"--" + boundary.encode() + b"--\r\n"


def doc_ids_on_disk(storage: Path) -> set[str]:
    return {p.name for p in storage.iterdir() if p.name != ".scratch"}


def assert_storage_sane(w: World) -> None:
    """Only <id>/original|a<attempt> under STORAGE_DIR (and an empty scratch), nothing next to it."""
    for entry in w.storage.iterdir():
        if entry.name == ".scratch":
            assert entry.is_dir() and not list(entry.iterdir()), "a worker left scratch files"
            continue
        assert entry.is_dir() and valid_doc_id(entry.name), entry.name
        names = {p.name for p in entry.iterdir()}
        assert all(n == "original" or re.fullmatch(r"a[1-9][0-9]*", n) for n in names), (entry.name, names)
    beside = {p.name for p in w.storage.parent.iterdir()}
    assert beside <= {"storage", "db"}, beside  # db: the test database (tests/dbs.py)


def api_doc_ids(w: World, who: str = "alice") -> list[str]:
    return [d["id"] for d in send(w, "GET", "/api/documents", who=who, expect=200).get_json()["documents"]]


def is_clean_name(name: str) -> bool:
    return (
        0 < len(name) <= 200
        and "/" not in name
        and "\\" not in name
        and not any(unicodedata.category(ch)[0] == "C" for ch in name)
    )


# -- ids ---------------------------------------------------------------------------------------------


def id_status(url_map: Map, method: str, template: str, raw_id: str) -> int:
    """The exact status of `method` on template with a bad id (or file name) put in: 404, unless the id
    changes the path itself (it decodes to nothing or has a slash) so that it lands on another route:
    one for other methods answers 405, one that takes an id 404 again (the next word is no id)."""
    path = unquote(template.replace("{id}", raw_id)).split("?")[0]
    try:
        url_map.bind("127.0.0.1").match(path, method)
    except MethodNotAllowed:
        return 405
    except RequestRedirect as redirect:
        return redirect.code
    except NotFound:
        pass
    return 404


def test_bad_ids_on_every_document_route(world):
    w = world
    mine = w.docs["alice"]
    near_misses = [
        mine.upper(),
        mine[:31],
        mine + "0",
        mine[1:],
        " " + mine,
        quote(" " + mine),
        mine + "%00",
        mine + "%0a",
        mine + "%20",
        mine + "/",
        mine[:16] + "%2F" + mine[16:],
        "%2e%2e%2f" + mine,
        mine.replace(mine[0], "G", 1),
        quote(mine[:31] + "é"),
    ]
    for method, route in DOC_ROUTES:
        for raw_id in BAD_IDS + near_misses:
            url = route.replace("{id}", raw_id)
            resp = send(w, method, url, expect=id_status(w.app.url_map, method, route, raw_id))
            if url.startswith("/api/") and resp.status_code == 404:
                assert error_code(resp) == "not_found"

    routes = st.sampled_from(DOC_ROUTES)
    ids = st.one_of(
        st.text(max_size=80).map(lambda s: quote(s, safe="")),
        st.text(max_size=40).map(lambda s: quote(s, safe="/%")),
        st.binary(min_size=1, max_size=48).map(lambda b: quote(b, safe="")),
        st.text(alphabet="0123456789abcdefABCDEF", min_size=28, max_size=36),
        st.from_regex(r"\A[0-9a-f]{0,31}[A-Z.~_-][0-9a-f]{0,31}\Z"),
        st.integers(min_value=0, max_value=12_000).map(lambda n: "a" * n),
        st.sampled_from(BAD_IDS),
    )

    @settings(HYPO, max_examples=150)
    @given(route=routes, raw_id=ids, who=st.sampled_from(["alice", "bob"]))
    def one(route, raw_id, who):
        if unquote(raw_id) in w.docs.values():
            return  # a real id is not a bad id
        method, template = route
        resp = send(
            w,
            method,
            template.replace("{id}", raw_id),
            who=who,
            expect=id_status(w.app.url_map, method, template, raw_id),
        )
        if template.startswith("/api/") and resp.status_code == 404:
            assert error_code(resp) == "not_found"

    one()
    still_serves(w)


def test_bad_file_names_are_404(world):
    w = world
    mine = w.docs["alice"]
    names = [
        "manifest.json",
        "original",
        "original.part",
        "out",
        "work",
        "..",
        ".",
        "%2e%2e",
        "..%2fmanifest.json",
        "..%2Foriginal",
        "%2e%2e%2foriginal",
        "..%5coriginal",
        "%2fetc%2fpasswd",
        "%2Ftmp%2Fx",
        "C:%5Cwindows%5Cwin.ini",
        "page-0001.jpg%00",
        "page-0001.jpg%00.txt",
        "page-0001.jpg%0a",
        "PAGE-0001.JPG",
        "page-1.jpg",
        "page-0000.jpg",
        "page-9999.jpg",
        "page-0001.jpg.",
        "page-0001.jpg%20",
        "%20page-0001.jpg",
        "thumb-0001.jpg..",
        "text-0001.txt~",
        quote("page-０００１.jpg"),
        "x" * 10_000,
        "%ff",
        "%c0%ae%c0%ae%c0%afmanifest.json",
        "out%2Fmanifest.json",
        "..%2f..%2f..%2f..%2fetc%2fpasswd",
    ]
    for name in names:
        for who in ("alice", "bob"):
            resp = send(
                w,
                "GET",
                f"/documents/{mine}/files/1/{name}",
                who=who,
                expect=id_status(w.app.url_map, "GET", f"/documents/{mine}/files/1/{{id}}", name),
            )
            assert b"%PDF" not in resp.data and b'"page_list"' not in resp.data
    # Another attempt's files, or no attempt at all, are not served either.
    for attempt in ("0", "2", "-1", "01", "1.0", "9" * 25, "x", "%2e%2e"):
        template = f"/documents/{mine}/files/{{id}}/page-0001.jpg"
        resp = send(
            w,
            "GET",
            template.replace("{id}", attempt),
            expect=id_status(w.app.url_map, "GET", template, attempt),
        )
        assert b"\xff\xd8\xff" not in resp.data
    # Ready pages' files work for the owner, and for nobody else.
    ok = send(w, "GET", f"/documents/{mine}/files/1/page-0001.jpg", expect=200)
    assert ok.mimetype == "image/jpeg" and ok.data[:3] == b"\xff\xd8\xff"
    assert "first page" in send(w, "GET", f"/documents/{mine}/files/1/text-0001.txt", expect=200).get_data(
        as_text=True
    )
    layer = send(w, "GET", f"/documents/{mine}/files/1/layer-0001.json", expect=200).get_json()
    assert any("first page" in run[4] for run in layer["runs"])
    send(w, "GET", f"/documents/{mine}/files/1/page-0001.jpg", who="bob", expect=404)
    still_serves(w)


def test_not_yours_answers_exactly_like_absent(world):
    w = world
    theirs = w.docs["alice"]
    before = send(w, "GET", f"/api/documents/{theirs}/status", expect=200).get_json()
    variants = [
        {},
        {"Last-Event-ID": "0"},
        {"Last-Event-ID": "garbage"},
        {"Accept": "text/event-stream"},
        {"Accept": "application/json"},
        {"Accept": "text/html"},
    ]
    suffixes = ["", "?after=0", "?after=0&wait=1", "?wait=abc"]
    routes = DOC_ROUTES + [
        ("GET", "/documents/{id}/files/1/text-0001.txt"),
        ("GET", "/documents/{id}/files/1/manifest.json"),
        ("GET", "/documents/{id}/files/1/original"),
        ("HEAD", "/api/documents/{id}"),
        ("DELETE", "/api/documents/{id}"),
        ("POST", "/documents/{id}/delete"),
        ("GET", "/api/documents/{id}/search?q=page"),
        ("PUT", "/api/documents/{id}/position"),
        ("HEAD", "/documents/{id}"),
        ("OPTIONS", "/api/documents/{id}"),
        ("PUT", "/api/documents/{id}"),
        ("DELETE", "/documents/{id}"),
    ]
    compared = 0
    for who in ("bob", None):
        for method, route in routes:
            for i, extra in enumerate(variants):
                suffix = suffixes[i % len(suffixes)] if route.endswith("/status") else ""
                answers = [
                    snapshot(
                        send(w, method, route.replace("{id}", doc) + suffix, who=who, headers=extra), [doc]
                    )
                    for doc in (theirs, ABSENT, "f" * 32, "Z" * 32)
                ]
                assert answers[0] == answers[1] == answers[2], (who, method, route, extra)
                if who:  # a malformed id is refused just like an absent one
                    assert answers[3] == answers[0], (method, route, extra)
                assert answers[0][0] in (302, 400, 401, 404, 405) or method == "OPTIONS", answers[0][:2]
                compared += 1
    assert compared == 2 * len(routes) * len(variants)
    # Bob's retries did nothing to alice's document.
    after = send(w, "GET", f"/api/documents/{theirs}/status", expect=200).get_json()
    assert {**after, "updated_at": 0} == {**before, "updated_at": 0}
    still_serves(w)


# -- Last-Event-ID, after, wait ------------------------------------------------------------------------


def test_last_event_id_values(world):
    w = world
    url = f"/api/documents/{w.docs['alice']}/events"

    def has_the_end(value: str) -> bool:
        """The client says it has the terminal event already: a seq at or past it (as EventSource
        sends it back), which a 204 tells to stop reconnecting; anything else gets the event."""
        return value.isascii() and value.isdigit() and len(value) <= 20 and int(value) >= w.seq

    def one(value: str) -> None:
        if has_the_end(value):
            resp = send(w, "GET", url, headers={"Last-Event-ID": value}, expect=204)
            assert resp.get_data() == b""
        else:
            resp = send(w, "GET", url, headers={"Last-Event-ID": value}, expect=200)
            assert resp.mimetype == "text/event-stream"
            text = resp.get_data(as_text=True)
            assert text.startswith("retry: "), text[:100]
            assert "event: complete" in text, (value, text)
        # Not yours / absent / malformed: 404 whatever the header says.
        for who, doc in (("bob", w.docs["alice"]), ("alice", ABSENT), ("alice", "Z" * 32)):
            resp = send(
                w,
                "GET",
                f"/api/documents/{doc}/events",
                who=who,
                headers={"Last-Event-ID": value},
                expect=404,
            )
            assert error_code(resp) == "not_found"

    seq = w.seq
    table = [
        "",
        "0",
        "1",
        str(seq - 1),
        str(seq),
        str(seq + 1),
        "0" * 10 + str(seq),
        f" {seq}",
        f"{seq} ",
        "-1",
        f"-{seq}",
        "+1",
        "1.0",
        "1e3",
        "0x10",
        "abc",
        "null",
        "NaN",
        "inf",
        "9" * 20,
        "9" * 21,
        "9" * 10_000,
        "18446744073709551616",
        str(MAX_SEQ),
        "١٢",
        "²",
        "½",
        "é☃",
        "\x00",
        f"{seq}\x00",
        "x" * 10_000,
        "%31",
        "\t",
        ";",
        "1,2",
        "💥" * 100,
    ]
    for value in table:
        one(value)

    values = st.one_of(
        st.text(alphabet=HEADER_CHARS, max_size=40),
        st.integers(min_value=-(10**25), max_value=10**25).map(str),
        st.sampled_from([str(seq), str(seq - 1), str(seq + 1), "0" * 5 + str(seq)]),
    )

    @settings(HYPO, max_examples=60)
    @given(value=values)
    def generated(value):
        one(value)

    generated()
    still_serves(w)


def after_ok(raw: str | None) -> bool:
    """`after`: a whole number from 0 to 2**53, ASCII digits only."""
    return raw in (None, "") or (len(raw) <= 20 and raw.isascii() and raw.isdigit() and int(raw) <= MAX_SEQ)


def wait_ok(raw: str | None) -> bool:
    """`wait`: a finite, non-negative number of seconds (longer ones are served as the longest)."""
    if raw in (None, ""):
        return True
    if len(raw) > 20:
        return False
    try:
        value = float(raw)
    except ValueError:
        return False
    return 0 <= value < math.inf


def test_after_and_wait_values(world):
    w = world
    doc = w.docs["alice"]
    url = f"/api/documents/{doc}/status"

    def one(after: str | None, wait: str | None) -> None:
        query = {k: v for k, v in (("after", after), ("wait", wait)) if v is not None}
        started = time.monotonic()
        resp = send(w, "GET", url, query_string=query, expect={200, 400})
        assert time.monotonic() - started < 5, "a complete document is never waited on"
        if after_ok(after) and wait_ok(wait):
            assert resp.status_code == 200, (after, wait, resp.data)
            body = resp.get_json()
            assert body["document_id"] == doc and body["state"] == "complete"
        else:
            assert resp.status_code == 400, (after, wait)
            assert error_code(resp) == "bad_parameter"
        # Bob gets what an absent id gets: 400 for a bad parameter (checked before any lookup), else 404.
        theirs = send(w, "GET", url, who="bob", query_string=query, expect={400, 404})
        absent = send(w, "GET", url.replace(doc, ABSENT), who="bob", query_string=query, expect={400, 404})
        assert snapshot(theirs, [doc]) == snapshot(absent, [ABSENT])

    table = [
        "-1",
        "-0",
        "0",
        "1",
        "abc",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e309",
        "-1e309",
        "1e3",
        "1e-400",
        "1.5",
        "0x10",
        "1_0",
        " 5",
        "5 ",
        "+5",
        "١٢",
        "²",
        "é",
        "\x00",
        "5\x00",
        "9" * 20,
        "9" * 21,
        "9" * 10_000,
        str(MAX_SEQ),
        str(MAX_SEQ + 1),
        "00000000000000000001",
        "1" + "0" * 19,
        "%ff",
        "[]",
        "1;2",
        "💥",
    ]
    for value in table:
        one(value, None)
        one(None, value)
    one("", "")
    one("abc", "abc")

    # Repeated parameters: the first one counts.
    for query, expect in (
        ("after=1&after=x", 200),
        ("after=x&after=1", 400),
        ("wait=1&wait=nan", 200),
        ("wait=nan&wait=1", 400),
        ("after=&after=-1", 200),
        ("after=0&wait=0&after=-5", 200),
        ("after[]=1", 200),
        ("after=%ff%fe", 400),
        ("wait=%00", 400),
        ("after", 200),
        ("&&&=&=", 200),
        ("after=1&" * 500, 200),
        ("wait=" + "1" * 21, 400),
    ):
        send(w, "GET", f"{url}?{query}", expect=expect)

    texts = st.one_of(
        st.none(),
        st.text(max_size=25),
        st.integers(-(10**22), 10**22).map(str),
        st.floats().map(repr),
        st.floats().map(str),
    )

    @settings(HYPO, max_examples=100)
    @given(after=texts, wait=texts)
    def generated(after, wait):
        one(after, wait)

    generated()
    still_serves(w)


# -- methods, authorization, content types ---------------------------------------------------------------

ALLOWED = [  # route: methods it answers (besides HEAD and OPTIONS for GET routes)
    ("/api/documents", {"GET", "POST"}),
    ("/api/documents/{id}", {"GET", "DELETE"}),
    ("/api/documents/{id}/status", {"GET"}),
    ("/api/documents/{id}/search", {"GET"}),
    ("/api/documents/{id}/position", {"PUT"}),
    ("/api/documents/{id}/events", {"GET"}),
    ("/api/documents/{id}/retry", {"POST"}),
    ("/api/realtime/stats", {"GET"}),
    ("/documents", {"GET", "POST"}),
    ("/documents/{id}", {"GET"}),
    ("/documents/{id}/download", {"GET"}),
    ("/documents/{id}/delete", {"POST"}),
    ("/documents/{id}/files/1/page-0001.jpg", {"GET"}),
    ("/documents/{id}/retry", {"POST"}),
    ("/logout", {"POST"}),
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "TRACE", "PROPFIND", "CONNECT"]


def test_wrong_methods_are_405(world):
    w = world
    for route, allowed in ALLOWED:
        for doc in (w.docs["alice"], ABSENT):
            url = route.replace("{id}", doc)
            for method in METHODS:
                if method in allowed:
                    continue
                resp = send(w, method, url, expect=405)
                assert set(resp.headers["Allow"].split(", ")) >= allowed
                if url.startswith("/api/"):
                    assert resp.get_json()["error"]["code"] == "method_not_allowed"
                else:
                    assert resp.mimetype == "text/html"
            if "{id}" not in route:
                break
    # Without a token a cookie-less write is refused by the CSRF check first: still a 4xx, still JSON.
    for url in (f"/api/documents/{w.docs['alice']}", f"/api/documents/{w.docs['alice']}/status"):
        for method in ("PUT", "PATCH", "DELETE", "POST"):
            resp = send(w, method, url, who=None, expect=400)
            assert resp.get_json()["error"]["message"] == "The CSRF token is missing."
    still_serves(w)


def test_bad_authorization_and_cookies(world):
    w = world
    alice, bob = w.tokens["alice"], w.tokens["bob"]
    mine = w.docs["alice"]
    bad = [
        "Bearer",
        "Bearer ",
        "Bearer  ",
        "bearer",
        "Bearer " + "x" * 10_000,
        "Bearer " + "x" * 201,
        "Basic xyz",
        "Basic YWxpY2U6cHctYWxpY2U=",
        "Token " + alice,
        alice,
        "Bearer\t" + alice,
        "Bearer " + alice + "x",
        "Bearer " + alice[:-1],
        "Bearer " + alice.upper(),
        "Bearer " + alice + ",x",
        f"Bearer {alice} {alice}",
        "Bearer ☃",
        "Bearer é",
        "Bearer \x00",
        "Bearer " + "💥" * 50,
        "Digest username=alice",
        "Bearer null",
        "Bearer undefined",
        "Bearer " + "A" * 43,
        ", Bearer x",
        "Bearer%20" + alice,
        "Negotiate " + "Y" * 5000,
        "\x00" * 20,
        "" + " " * 100,
    ]
    for value in bad:
        hdr = {"Authorization": value}
        resp = send(w, "GET", "/api/documents", who=None, headers=hdr, expect=401)
        assert error_code(resp) == "unauthorized"
        send(w, "GET", f"/api/documents/{mine}/status", who=None, headers=hdr, expect=401)
        send(w, "GET", f"/api/documents/{mine}/events", who=None, headers=hdr, expect=401)
        page = send(w, "GET", f"/documents/{mine}", who=None, headers=hdr, expect=302)
        assert page.headers["Location"].startswith("/login?next=")
        # A write with a bad token: "Bearer ..." skips the CSRF check (no cookie involved) and is 401;
        # anything else is a cookie-style write without a CSRF token: 400.
        upload = send(
            w,
            "POST",
            "/api/documents",
            who=None,
            headers=hdr,
            expect={400, 401},
            data={"file": (io.BytesIO(PDF), "x.pdf")},
            content_type="multipart/form-data",
        )
        assert upload.status_code == (401 if value.lower().startswith("bearer ") else 400), value
    # Harmless spellings of a good token work; another user's good token sees only its own documents.
    for value in (f"bearer {alice}", f"BEARER {alice}", f"Bearer  {alice}  ", f"Bearer {alice}\t"):
        send(w, "GET", f"/api/documents/{mine}", who=None, headers={"Authorization": value}, expect=200)
    send(w, "GET", f"/api/documents/{mine}", who=None, headers={"Authorization": f"Bearer {bob}"}, expect=404)
    # Forged or garbage cookies are no login.
    for cookie in (
        "session=garbage",
        "session=" + "A" * 5000,
        "session=eyJfdXNlcl9pZCI6IjEifQ.x.y",
        "remember_token=1|deadbeef",
        "remember_token=garbage",
        "remember_token=" + "9" * 5000,
        "session=\x00",
        "session=%00%ff",
    ):
        resp = send(w, "GET", "/api/documents", who=None, headers={"Cookie": cookie}, expect=401)
        assert error_code(resp) == "unauthorized"
    # Generated header values: never a user.
    values = st.text(alphabet=HEADER_CHARS, max_size=300)

    @settings(HYPO, max_examples=40)
    @given(value=values, scheme=st.sampled_from(["", "Bearer ", "bearer ", "Basic "]))
    def generated(value, scheme):
        send(w, "GET", "/api/documents", who=None, headers={"Authorization": scheme + value}, expect=401)

    generated()
    still_serves(w)


def test_bad_content_types_and_multipart(world):
    w = world
    good = multipart([(b"file", b"x.pdf", PDF)])
    before = api_doc_ids(w)
    mpb = "multipart/form-data; boundary=" + BOUNDARY
    cases = [  # (content type or None, body, status, code)
        (None, PDF, 400, "bad_upload"),
        ("application/pdf", PDF, 400, "bad_upload"),
        ("application/octet-stream", PDF, 400, "bad_upload"),
        ("application/x-www-form-urlencoded", b"file=%25PDF-1.4%0A", 400, "bad_upload"),
        ("application/json", b'{"file": "JVBERi0xLjQK"}', 400, "bad_upload"),
        ("text/plain", b"file=hello", 400, "bad_upload"),
        ("multipart/form-data", good, 400, "bad_upload"),
        ("multipart/form-data; boundary=", good, 400, "bad_upload"),
        ("multipart/form-data; boundary=wrong", good, 400, "bad_upload"),
        ("multipart/form-data; boundary=" + "b" * 10_000, good, 400, "bad_upload"),
        ("multipart/mixed; boundary=" + BOUNDARY, good, 400, "bad_upload"),
        ("multipart/form-datax; boundary=" + BOUNDARY, good, 400, "bad_upload"),
        (mpb, good[: len(good) // 2], 400, "bad_upload"),
        (mpb, good[:-40], 400, "bad_upload"),
        (mpb, b"\r\n" * 5000, 400, "bad_upload"),
        (mpb, b"\xff" * 1000, 400, "bad_upload"),
        (mpb, b"", 400, "bad_upload"),
        (mpb, multipart([(b"File", b"x.pdf", PDF)]), 400, "bad_upload"),
        (mpb, multipart([(b"files", b"x.pdf", PDF)]), 400, "bad_upload"),
        (mpb, multipart([(None, b"x.pdf", PDF)]), 400, "bad_upload"),
        (mpb, multipart([(b"file", None, PDF)]), 400, "bad_upload"),
        (mpb, multipart([(b"file", b"x.pdf", b"")]), 400, "empty_file"),
        # A filename that is not UTF-8 makes Werkzeug drop the whole form (see the report).
        (mpb, multipart([(b"file", b"\xff\xfe.pdf", PDF)]), 400, "bad_upload"),
        (";;;=", good, 400, "bad_upload"),
        ("☃/☃", good, 400, "bad_upload"),
        (mpb, multipart([(b"file", b"x.zip", b"PK\x03\x04" + b"\x00" * 50)]), 415, "unsupported_type"),
    ]
    for ctype, body, status, code in cases:
        headers = {"Content-Type": ctype} if ctype else {}
        resp = send(w, "POST", "/api/documents", headers=headers, data=body, expect=status)
        assert error_code(resp) == code, (ctype, body[:60])
        # The HTML form answers the same status, as a page.
        page = send(w, "POST", "/documents", headers=headers, data=body, expect=status)
        assert page.mimetype == "text/html"
    assert api_doc_ids(w) == before, "a refused upload left a document behind"
    assert doc_ids_on_disk(w.storage) == set(w.docs.values()), "a refused upload left files behind"

    # Legitimate spellings are accepted.
    accepted = []
    for ctype in (
        f"MULTIPART/FORM-DATA; BOUNDARY={BOUNDARY}",
        f'multipart/form-data; boundary="{BOUNDARY}"',
        f"multipart/form-data; boundary={BOUNDARY}; charset=☃",
    ):
        resp = send(w, "POST", "/api/documents", headers={"Content-Type": ctype}, data=good, expect=201)
        accepted.append(resp.get_json()["id"])
    # Two files in the field: the first one is the upload, and only one document is made.
    two = multipart([(b"file", b"first.pdf", PDF), (b"file", b"second.txt", b"second file\n")])
    resp = send(w, "POST", "/api/documents", headers={"Content-Type": mpb}, data=two, expect=201)
    body = resp.get_json()
    assert body["filename"] == "first.pdf" and body["kind"] == "pdf"
    accepted.append(body["id"])
    assert api_doc_ids(w)[: len(accepted)] == accepted[::-1]
    for doc in accepted:
        assert (w.storage / doc / "original").read_bytes() == PDF
    # The form-urlencoded test-client spelling.
    send(w, "POST", "/api/documents", data={"file": "not a file"}, expect=400)
    assert_storage_sane(w)
    still_serves(w)


# -- uploads -----------------------------------------------------------------------------------------


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("word/document.xml", "<w:document/>" * 50)
    return buf.getvalue()


ZIP = _zip_bytes()
PNG_SIG = b"\x89PNG\r\n\x1a\n"
JUNK = bytes(range(256)) * 8

# name: (bytes, status at upload, expected ending: "failed", "complete" or "either")
UPLOADS = {
    "empty.pdf": (b"", 400, None),
    "zip-named.pdf": (ZIP, 415, None),
    "zip-then-pdf.pdf": (ZIP + PDF, 415, None),
    "gif.pdf": (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", 415, None),
    "utf16.txt": ("hello".encode("utf-16"), 415, None),
    "latin1.txt": ("café".encode("latin-1"), 415, None),
    "control.txt": (b"hello\x01world", 415, None),
    "nul.txt": (b"\x00", 415, None),
    "truncated-half.pdf": (PDF[: len(PDF) // 2], 201, "either"),
    "truncated-tail.pdf": (PDF[:-30], 201, "either"),
    "header-only.pdf": (b"%PDF-1.7\n", 201, "failed"),
    "header-nul.pdf": (b"%PDF-" + b"\x00" * 1000, 201, "failed"),
    "pdf-header-then-zip.pdf": (b"%PDF-1.4\n" + ZIP, 201, "failed"),
    "pdf-then-zip.pdf": (PDF + ZIP, 201, "either"),
    "pdf-then-junk.pdf": (PDF + JUNK, 201, "either"),
    "png-garbage.png": (PNG_SIG + JUNK, 201, "failed"),
    "png-sig-only.png": (PNG_SIG, 201, "failed"),
    "png-cut-ihdr.png": (PNG_SIG + b"\x00\x00\x00\rIHDR\x00\x00\x10\x00", 201, "failed"),
    "jpeg-junk.jpg": (b"\xff\xd8\xff" + JUNK, 201, "failed"),
    "jpeg-soi-only.jpg": (b"\xff\xd8\xff", 201, "failed"),
    "jpeg-header-pdf.pdf": (b"\xff\xd8\xff\xe0" + PDF, 201, "failed"),
    "png-then-zip.png": (PNG_SIG + ZIP, 201, "failed"),
    "script.pdf": (b"<script>alert(1)</script>\n", 201, "complete"),
}


def test_bad_uploads_then_worker(world, redis_conn):
    w = world
    accepted = {}
    before = api_doc_ids(w)
    for name, (data, status, _) in UPLOADS.items():
        resp = send(
            w,
            "POST",
            "/api/documents",
            data={"file": (io.BytesIO(data), name)},
            content_type="multipart/form-data",
            expect=status,
        )
        if status == 201:
            accepted[name] = resp.get_json()["id"]
        else:
            assert error_code(resp) == ("empty_file" if status == 400 else "unsupported_type"), name
        # Again through the HTML form: the same status, as a page.
        page = send(
            w,
            "POST",
            "/documents",
            data={"file": (io.BytesIO(data), name)},
            content_type="multipart/form-data",
            expect=303 if status == 201 else status,
        )
        if status == 201:
            accepted[name + " (form)"] = page.headers["Location"].rsplit("/", 1)[-1]
    assert len(api_doc_ids(w)) == len(before) + len(accepted)
    for name, doc in accepted.items():
        assert (w.storage / doc / "original").read_bytes() == UPLOADS[name.split(" ")[0]][0]

    run_jobs(redis_conn)

    for name, doc in accepted.items():
        data, _, ending = UPLOADS[name.split(" ")[0]]
        status = send(w, "GET", f"/api/documents/{doc}/status", expect=200).get_json()
        assert status["state"] in TERMINAL, (name, status)
        if ending != "either":
            assert status["state"] == ending, (name, status)
        if status["state"] == "failed":
            assert status["error"]["retryable"] is False, (name, status["error"])
            assert status["error"]["code"] in PERMANENT_CODES, (name, status["error"])
            retry = send(w, "POST", f"/api/documents/{doc}/retry", expect=409)
            assert error_code(retry) == "not_retryable"
            send(w, "GET", f"/documents/{doc}/files/1/page-0001.jpg", expect=404)
            assert send(w, "GET", f"/api/documents/{doc}", expect=200).get_json()["pages"] == []
            events = send(w, "GET", f"/api/documents/{doc}/events", expect=200).get_data(as_text=True)
            assert "event: error" in events
        else:
            send(w, "GET", f"/documents/{doc}/files/1/page-0001.jpg", expect=200)
            assert "event: complete" in send(w, "GET", f"/api/documents/{doc}/events", expect=200).get_data(
                as_text=True
            )
        send(w, "GET", f"/documents/{doc}", expect=200)
        send(w, "GET", f"/api/documents/{doc}", expect=200)
        send(w, "GET", f"/api/documents/{doc}/status", who="bob", expect=404)
        # The upload is kept byte for byte, whatever became of its conversion.
        assert (w.storage / doc / "original").read_bytes() == data, name
    assert_storage_sane(w)
    still_serves(w)


FILENAMES = {  # as sent: the display name must be exactly this
    "../../etc/passwd": "passwd",
    "../../../../../../tmp/evil.pdf": "evil.pdf",
    "/etc/passwd": "passwd",
    # In a quoted multipart filename a backslash escapes the next character: the app never sees it.
    "..\\..\\windows\\win.ini": "....windowswin.ini",
    "C:\\Users\\x\\report.pdf": "C:Usersxreport.pdf",
    "a\x00b.pdf": "ab.pdf",
    "../\x00../passwd\x00.pdf": "passwd.pdf",
    "x/": "untitled",
    "": "untitled",
    "\x00": "untitled",
    "..": "..",
    ".": ".",
    "%2e%2e%2fetc%2fpasswd": "%2e%2e%2fetc%2fpasswd",
    "\u202ecod.exe": "cod.exe",
    "名前.pdf": "名前.pdf",
    "<script>alert(1)</script>.pdf": "script>.pdf",
    "x" * 10_000 + ".pdf": "x" * 200,
    " spaced .pdf ": "spaced .pdf",
    "tab\there.pdf": "tabhere.pdf",
    "storage/original": "original",
}


def test_upload_file_names_never_become_paths(world):
    w = world
    made = []
    for sent, shown in FILENAMES.items():
        resp = send(
            w,
            "POST",
            "/api/documents",
            data={"file": (io.BytesIO(PDF), sent)},
            content_type="multipart/form-data",
            expect=201,
        )
        body = resp.get_json()
        assert body["filename"] == shown, (sent[:40], body["filename"][:40])
        assert is_clean_name(body["filename"])
        assert (w.storage / body["id"] / "original").read_bytes() == PDF
        made.append(body["id"])
    # The viewer and the list show the name escaped.
    html = send(w, "GET", "/documents", expect=200).get_data(as_text=True)
    assert "<script>alert(1)" not in html
    # Raw multipart with a NUL and a slash in the filename header itself.
    raw = multipart([(b"file", b"..\x00/..\x00/etc/pass\x00wd", PDF)])
    resp = send(
        w,
        "POST",
        "/api/documents",
        data=raw,
        expect=201,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert resp.get_json()["filename"] == "passwd"
    made.append(resp.get_json()["id"])
    # Escaped backslashes do reach the app as Windows separators.
    raw = multipart([(b"file", b"..\\\\..\\\\windows\\\\win.ini", PDF)])
    resp = send(
        w,
        "POST",
        "/api/documents",
        data=raw,
        expect=201,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert resp.get_json()["filename"] == "win.ini"
    made.append(resp.get_json()["id"])

    names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)

    @settings(HYPO, max_examples=40)
    @given(name=names)
    def generated(name):
        count = len(doc_ids_on_disk(w.storage))
        resp = send(
            w,
            "POST",
            "/api/documents",
            data={"file": (io.BytesIO(PDF), name)},
            content_type="multipart/form-data",
            expect={201, 400},
        )
        if resp.status_code == 201:  # quotes or line breaks in the name can break the test client's multipart
            body = resp.get_json()
            assert is_clean_name(body["filename"]), body["filename"]
            assert (w.storage / body["id"] / "original").read_bytes() == PDF
        else:
            assert error_code(resp) == "bad_upload"
            assert len(doc_ids_on_disk(w.storage)) == count

    generated()
    assert set(made) <= doc_ids_on_disk(w.storage)
    assert_storage_sane(w)
    still_serves(w)


def test_oversized_uploads_are_413(world):
    w = world
    w.app.config["MAX_CONTENT_LENGTH"] = 10_000
    before = api_doc_ids(w)
    big = b"%PDF-1.4\n" + b"0" * 20_000
    for route in ("/api/documents", "/documents"):
        resp = send(
            w,
            "POST",
            route,
            data={"file": (io.BytesIO(big), "big.pdf")},
            content_type="multipart/form-data",
            expect=413,
        )
        if route.startswith("/api/"):
            assert error_code(resp) == "too_large"
        # A declared length over the limit is refused before the body is read.
        send(
            w,
            "POST",
            route,
            data=b"x" * 20_000,
            content_type=f"multipart/form-data; boundary={BOUNDARY}",
            expect=413,
        )
        # Werkzeug's own form limits: more than MAX_FORM_PARTS parts, a text field over MAX_FORM_MEMORY_SIZE.
        w.app.config["MAX_CONTENT_LENGTH"] = 2_000_000
        many = multipart([(b"f%d" % i, None, b"x") for i in range(1200)] + [(b"file", b"x.pdf", PDF)])
        mpb = f"multipart/form-data; boundary={BOUNDARY}"
        send(w, "POST", route, data=many, content_type=mpb, expect=413)
        field = multipart([(b"file", None, b"x" * 600_000)])
        send(w, "POST", route, data=field, content_type=mpb, expect=413)
        w.app.config["MAX_CONTENT_LENGTH"] = 10_000
    # Just under the limit is fine.
    small = send(
        w,
        "POST",
        "/api/documents",
        data={"file": (io.BytesIO(PDF), "fits.pdf")},
        content_type="multipart/form-data",
        expect=201,
    ).get_json()["id"]
    assert api_doc_ids(w) == [small, *before]
    assert doc_ids_on_disk(w.storage) == {small, *w.docs.values()}
    still_serves(w)


# -- fixed bugs, test client (were strict xfails) ------------------------------


def test_max_upload_mb_is_enforced_by_default(redis_url, storage_dir, worker_env, tmp_path, redis_conn):
    from app import create_app

    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "REDIS_URL": redis_url,
            "STORAGE_DIR": str(storage_dir),
            "RATELIMIT_ENABLED": False,
            "MAX_UPLOAD_MB": 1,
            "SQLALCHEMY_DATABASE_URI": dbs.fresh(tmp_path / "limit"),
        }
    )
    try:
        client = app.test_client()
        token = Users(app, client).create("limited")
        w = World(app, client, storage_dir, {"limited": token}, {}, seq=0)
        big = b"%PDF-1.4\n" + b"0" * (3 * 1024 * 1024)
        resp = send(
            w,
            "POST",
            "/api/documents",
            who="limited",
            data={"file": (io.BytesIO(big), "big.pdf")},
            content_type="multipart/form-data",
        )
        assert resp.status_code == 413, f"a 3 MB upload with MAX_UPLOAD_MB=1 got {resp.status_code}"
    finally:
        app.extensions["livedoc.redis"].connection_pool.disconnect()


class BrokenBody(io.BytesIO):
    """A request body whose read fails, as gunicorn's does on a malformed chunked body."""

    def read(self, size: int | None = -1) -> bytes:
        raise OSError("Invalid chunk size: b'zz'")

    read1 = readline = read


def test_unreadable_request_body_is_400_not_500(world):
    w = world
    statuses = []
    for route, who, ctype in (
        ("/api/documents", "alice", f"multipart/form-data; boundary={BOUNDARY}"),
        ("/documents", "alice", f"multipart/form-data; boundary={BOUNDARY}"),
        ("/login", None, "application/x-www-form-urlencoded"),
    ):
        resp = send(
            w,
            "POST",
            route,
            who=who,
            input_stream=BrokenBody(),
            headers={"Content-Type": ctype, "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
            known_bug=True,
        )
        statuses.append(resp.status_code)
    assert statuses == [400, 400, 400], statuses


# -- the real server ---------------------------------------------------------------------------------


@dataclass
class LiveWorld:
    stack: object
    port: int
    tokens: dict[str, str]
    docs: dict[str, str]
    seq: int

    def foreign(self, who: str | None) -> list[str]:
        return [doc for owner, doc in self.docs.items() if owner != who]


def _wait_terminal(session, base: str, doc: str, timeout: float = 60) -> dict:
    """Poll the (not rate-limited) document endpoint until the conversion has ended."""
    return wait_document(
        session, base, doc, lambda body: body["progress"]["state"] in TERMINAL, timeout, what="finished"
    )["progress"]


@pytest.fixture(scope="module")
def live_world(live):
    tokens = {"alice": live.user("badinput-alice"), "bob": live.user("badinput-bob")}
    docs = {}
    for who, token in tokens.items():
        resp = api(token).post(f"{live.base_url}/api/documents", files={"file": ("doc.pdf", PDF)}, timeout=10)
        assert resp.status_code == 201, resp.text
        docs[who] = resp.json()["id"]
    finals = {who: _wait_terminal(api(tokens[who]), live.base_url, doc) for who, doc in docs.items()}
    assert all(p["state"] == "complete" for p in finals.values()), finals
    return LiveWorld(live, live.ports[0], tokens, docs, finals["alice"]["seq"])


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def raw_http(port: int, request: bytes, timeout: float = 15) -> tuple[int | None, dict[str, str], bytes]:
    """Send bytes, half-close, read to the end; (status or None, lower-cased headers, de-chunked body)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server refused the request and closed first (ENOTCONN): read what it sent
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # the server refused the request and reset the connection: what was read counts
    data = b"".join(chunks)
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return int(lines[0].split()[1]), headers, body


STREAM_ROUTES = ("/status", "/events")


def live_send(
    lw: LiveWorld,
    method: str,
    target: str | bytes,
    *,
    who: str | None = "alice",
    headers: list[tuple[str, str | bytes]] = (),
    body: bytes = b"",
    length: bool = True,
    expect: set[int | None],
    server: bool = False,
    known_bug: bool = False,
):
    """One raw HTTP/1.1 request to gunicorn, counted and checked. `server`: gunicorn itself refuses it."""
    lines = [_b(method) + b" " + _b(target) + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if who:
        lines.append(b"Authorization: Bearer " + _b(lw.tokens[who]))
    lines += [_b(k) + b": " + _b(v) for k, v in headers]
    if body and length:
        lines.append(b"Content-Length: %d" % len(body))
    request = b"\r\n".join(lines) + b"\r\n\r\n" + body
    status, hdrs, data = raw_http(lw.port, request)
    STATS["live"] += 1
    app_answered = "content-security-policy" in hdrs
    path = _b(target).decode("latin-1").split("?")[0]
    check(
        status,
        hdrs.items(),
        data,
        url=path,
        method=method,
        sent=repr(request),
        foreign=lw.foreign(who),
        app_answered=app_answered,
        known_bug=known_bug,
    )
    allowed = set(expect)
    if app_answered and path.endswith(STREAM_ROUTES):
        allowed.add(429)  # the per-IP stream limit is shared with the other live tests in this session
    if status == 429:
        STATS["rate_limited"] += 1
        assert json.loads(data)["error"]["code"] == "rate_limited" and "retry-after" in hdrs
    if not known_bug:
        assert status in allowed, f"{method} {path[:120]}: {status} {data[:300]!r}"
        if status is not None and status != 429:
            assert app_answered != server, f"{method} {path[:120]}: answered by the wrong layer ({status})"
        if server:
            STATS["server_refusals"] += 1
    return status, hdrs, data


def _live_upload(lw: LiveWorld, data: bytes, name: bytes = b"x.pdf", who: str = "alice"):
    body = multipart([(b"file", name, data)])
    return live_send(
        lw,
        "POST",
        "/api/documents",
        who=who,
        body=body,
        expect={201, 400, 415},
        headers=[("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")],
    )


@pytest.fixture(scope="module")
def live_routes(tmp_path_factory, redis_url) -> Map:
    """The app's routes, for id_status: the live server runs the same app."""
    from app import create_app

    work = tmp_path_factory.mktemp("routes")
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "routes",
            "REDIS_URL": redis_url,
            "STORAGE_DIR": str(work),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{work / 'routes.db'}",
        }
    )
    return app.url_map


@pytest.fixture
def lw(live_world):
    """The live world for one test; afterwards the server is still up and logged no stack trace."""
    web = live_world.stack.webs[0]
    log_start = len(web.log())
    yield live_world
    assert web.popen.poll() is None
    new_log = web.log()[log_start:]
    assert "Traceback" not in new_log and "unhandled error" not in new_log, new_log[-3000:]


# Bad ids, spread over the document routes (the stream routes are rate limited). Formatted with the
# ids of the live world: {mine} is alice's document, {bobs} bob's.
LIVE_BAD_IDS = [
    "x",
    "..",
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fmanifest.json",
    "%00",
    "0" * 32 + "%00",
    "%c0%ae%c0%ae",
    quote("é" * 32),
    "{mine_upper}",
    "{mine_short}",
    "{mine}0",
    "A" * 32,
    "0" * 33,
    "..%5c..%5c",
    "%ff",
    "../../etc/passwd",
    ABSENT,
    "{bobs}",
]


def live_id(lw: LiveWorld, template: str) -> str:
    mine = lw.docs["alice"]
    return template.format(mine=mine, mine_upper=mine.upper(), mine_short=mine[:31], bobs=lw.docs["bob"])


@pytest.mark.live
@pytest.mark.parametrize("i, template", list(enumerate(LIVE_BAD_IDS)), ids=LIVE_BAD_IDS)
def test_live_bad_id(lw, live_routes, i, template):
    raw_id = live_id(lw, template)
    method, route = DOC_ROUTES[i % len(DOC_ROUTES)]
    expect = id_status(live_routes, method, route, raw_id)
    live_send(lw, method, route.replace("{id}", raw_id), expect={expect})


# Targets gunicorn refuses before the app: raw bytes, a 10k request line, a space in the path.
SERVER_REFUSED_TARGETS = [
    b"/api/documents/\x00",
    "/api/documents/é",
    b"/api/documents/" + b"a" * 10_000,
    "/documents/{mine}/files/" + "x" * 10_000,
    b"/api/documents/\xff\xfe/status",
    "/api/documents/{mine} x",
]


@pytest.mark.live
@pytest.mark.parametrize(
    "target", SERVER_REFUSED_TARGETS, ids=["nul", "non-ascii", "long-id", "long-name", "raw-bytes", "space"]
)
def test_live_target_refused_by_gunicorn(lw, target):
    if isinstance(target, str):
        target = live_id(lw, target)
    live_send(lw, "GET", target, expect={400, 414}, server=True)


@pytest.mark.live
@pytest.mark.parametrize(
    "name", ["manifest.json", "original", "..%2fmanifest.json", "%2fetc%2fpasswd", "page-0001.jpg%00"]
)
def test_live_bad_file_name(lw, live_routes, name):
    template = f"/documents/{lw.docs['alice']}/files/1/{{id}}"
    expect = id_status(live_routes, "GET", template, name)
    live_send(lw, "GET", template.replace("{id}", name), expect={expect})


@pytest.mark.live
def test_live_page_file_is_served(lw):
    live_send(lw, "GET", f"/documents/{lw.docs['alice']}/files/1/page-0001.jpg", expect={200})


@pytest.mark.live
@pytest.mark.parametrize(
    "method, route",
    DOC_ROUTES[:2] + DOC_ROUTES[3:],
    ids=[f"{m} {r}" for m, r in DOC_ROUTES[:2] + DOC_ROUTES[3:]],
)
def test_live_not_yours_answers_exactly_like_absent(lw, method, route):
    answers = []
    for doc in (lw.docs["alice"], ABSENT):
        status, hdrs, data = live_send(lw, method, route.replace("{id}", doc), who="bob", expect={404})
        volatile = ("date", "set-cookie", "content-length")
        headers = sorted((k, v.replace(doc, "<id>")) for k, v in hdrs.items() if k not in volatile)
        answers.append((status, headers, CSRF_TOKEN.sub("<csrf>", data.decode().replace(doc, "<id>"))))
    assert answers[0] == answers[1], route


@pytest.mark.live
@pytest.mark.parametrize(
    "value",
    ["-1", "abc", "9" * 25, "99999999999999999999", "é☃".encode(), "x" * 5000, "١٢".encode(), "{seq}"],
    ids=["negative", "word", "25-nines", "20-nines", "utf8", "5000-x", "arabic-digits", "the-final-seq"],
)
def test_live_last_event_id(lw, value):
    """On the owner's complete document the stream sends the final event and ends, unless the client
    has it already (a seq at or past it): then 204, the answer that stops EventSource."""
    if value == "{seq}":
        value = str(lw.seq)
    events = f"/api/documents/{lw.docs['alice']}/events"
    ended = value.isdigit() and len(value) <= 20 and int(value) >= lw.seq  # it has the terminal event
    status, hdrs, data = live_send(
        lw, "GET", events, headers=[("Last-Event-ID", value)], expect={204 if ended else 200}
    )
    if status == 200:
        assert hdrs["content-type"].startswith("text/event-stream")
        assert data.startswith(b"retry: ")
        assert b"event: complete" in data, value
    else:
        assert data == b""


@pytest.mark.live
def test_live_last_event_id_on_a_foreign_document_or_oversized(lw):
    events = f"/api/documents/{lw.docs['alice']}/events"
    live_send(lw, "GET", events, who="bob", headers=[("Last-Event-ID", "-1")], expect={404})
    live_send(lw, "GET", events, headers=[("Last-Event-ID", "9" * 9000)], expect={431}, server=True)


@pytest.mark.live
@pytest.mark.parametrize(
    "query, expect",
    [
        ("after=-1", 400),
        ("after=abc", 400),
        ("wait=nan", 400),
        ("wait=inf", 400),
        ("wait=1e309", 400),
        ("wait=-1", 400),
        ("after=%ff", 400),
        ("after=9007199254740993", 400),
        ("after=1&after=x", 200),
        ("wait=5&wait=x", 200),
        ("after=0&wait=1e3", 200),
        ("wait=%E2%88%9E", 400),
    ],
)
def test_live_after_and_wait(lw, query, expect):
    started = time.monotonic()
    live_send(lw, "GET", f"/api/documents/{lw.docs['alice']}/status?{query}", expect={expect})
    assert time.monotonic() - started < 5


@pytest.mark.live
@pytest.mark.parametrize(
    "method, route",
    [
        ("PUT", "/api/documents/{id}"),
        ("PATCH", "/api/documents/{id}"),
        ("POST", "/api/documents/{id}/position"),
        ("GET", "/api/documents/{id}/retry"),
        ("DELETE", "/api/documents"),
        ("TRACE", "/api/documents"),
        ("PROPFIND", "/api/documents/{id}"),
        ("PUT", "/documents/{id}"),
    ],
)
def test_live_wrong_method(lw, method, route):
    status, hdrs, _ = live_send(lw, method, route.replace("{id}", lw.docs["alice"]), expect={405})
    assert "allow" in hdrs


@pytest.mark.live
@pytest.mark.parametrize(
    "value",
    [
        "Bearer",
        "Bearer ",
        "Basic xyz",
        "Bearer é☃".encode(),
        "Bearer " + "x" * 300,
        "Token {token}",
        "{token}",
    ],
    ids=["bare-scheme", "empty-token", "basic", "utf8", "300-x", "other-scheme", "no-scheme"],
)
def test_live_bad_authorization(lw, value):
    if isinstance(value, str):
        value = value.format(token=lw.tokens["alice"])
    status, _, data = live_send(
        lw, "GET", "/api/documents", who=None, headers=[("Authorization", value)], expect={401}
    )
    assert json.loads(data)["error"]["code"] == "unauthorized"


@pytest.mark.live
def test_live_oversized_authorization_is_refused_by_gunicorn(lw):
    live_send(
        lw,
        "GET",
        "/api/documents",
        who=None,
        headers=[("Authorization", "Bearer " + "x" * 10_000)],
        expect={431},
        server=True,
    )


GOOD_UPLOAD = multipart([(b"file", b"x.pdf", PDF)])
MULTIPART = ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")


@pytest.mark.live
@pytest.mark.parametrize(
    "ctype, body",
    [
        ("multipart/form-data", GOOD_UPLOAD),
        ("application/x-www-form-urlencoded", b"file=x"),
        ("application/pdf", PDF),
        ("multipart/form-data; boundary=nope", GOOD_UPLOAD),
    ],
    ids=["no-boundary", "urlencoded", "bare-pdf", "wrong-boundary"],
)
def test_live_bad_content_type(lw, ctype, body):
    live_send(lw, "POST", "/api/documents", headers=[("Content-Type", ctype)], body=body, expect={400})


@pytest.mark.live
@pytest.mark.parametrize(
    "lengths",
    [["-1"], ["abc"], ["1e3"], ["10", "20"], [" 5 5"]],
    ids=["negative", "word", "float", "two-values", "spaces"],
)
def test_live_unparseable_content_length_is_refused_by_gunicorn(lw, lengths):
    live_send(
        lw,
        "POST",
        "/api/documents",
        headers=[MULTIPART] + [("Content-Length", v) for v in lengths],
        body=GOOD_UPLOAD,
        length=False,
        expect={400},
        server=True,
    )


@pytest.mark.live
def test_live_inconsistent_lengths(lw):
    """gunicorn refuses a length with chunking; the app refuses a body cut short or declared too long."""
    live_send(
        lw,
        "POST",
        "/api/documents",
        headers=[MULTIPART, ("Content-Length", str(len(GOOD_UPLOAD))), ("Transfer-Encoding", "chunked")],
        body=GOOD_UPLOAD,
        length=False,
        expect={400},
        server=True,
    )
    short = str(len(GOOD_UPLOAD) - 50)
    live_send(
        lw,
        "POST",
        "/api/documents",
        headers=[MULTIPART, ("Content-Length", short)],
        body=GOOD_UPLOAD,
        length=False,
        expect={400},
    )
    # Declared longer than sent, and the multipart is cut: the app sees the end of the body early.
    long = str(len(GOOD_UPLOAD) + 500)
    live_send(
        lw,
        "POST",
        "/api/documents",
        headers=[MULTIPART, ("Content-Length", long)],
        body=GOOD_UPLOAD[:-60],
        length=False,
        expect={400},
    )


@pytest.mark.live
def test_live_chunked_upload_is_stored(lw):
    chunked = b"%x\r\n" % len(GOOD_UPLOAD) + GOOD_UPLOAD + b"\r\n0\r\n\r\n"
    status, _, data = live_send(
        lw,
        "POST",
        "/api/documents",
        body=chunked,
        length=False,
        expect={201},
        headers=[MULTIPART, ("Transfer-Encoding", "chunked")],
    )
    storage = Path(lw.stack.env["STORAGE_DIR"])
    assert (storage / json.loads(data)["id"] / "original").read_bytes() == PDF


@pytest.mark.live
def test_live_protocol_garbage(lw):
    live_send(lw, "GET", "/api/documents HTTP/2.0\r\nX: y", expect={400}, server=True)
    assert raw_http(lw.port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64)[0] in (None, 400)
    assert raw_http(lw.port, b"GARBAGE\r\n\r\n")[0] in (None, 400)
    STATS["live"] += 2


@pytest.mark.live
def test_live_bad_uploads_converted_by_the_real_worker(lw):
    session = api(lw.tokens["alice"])
    uploads = {}
    for name in ("truncated-half.pdf", "pdf-header-then-zip.pdf", "png-garbage.png", "jpeg-junk.jpg"):
        status, _, data = _live_upload(lw, UPLOADS[name][0], name.encode())
        assert status == 201
        uploads[name] = json.loads(data)["id"]
    for name, data in (("empty.pdf", b""), ("zip-named.pdf", ZIP)):
        assert _live_upload(lw, data, name.encode())[0] == UPLOADS[name][1]
    status, _, data = _live_upload(lw, PDF, b"../../\x00etc/passwd")
    named = json.loads(data)
    assert status == 201 and named["filename"] == "passwd"
    storage = Path(lw.stack.env["STORAGE_DIR"])
    for name, doc in uploads.items():
        final = _wait_terminal(session, lw.stack.base_url, doc)
        assert final["state"] in TERMINAL
        if UPLOADS[name][2] != "either":
            assert final["state"] == UPLOADS[name][2], (name, final)
        if final["state"] == "failed":
            assert final["error"]["retryable"] is False and final["error"]["code"] in PERMANENT_CODES
        assert (storage / doc / "original").read_bytes() == UPLOADS[name][0]
    assert (storage / named["id"] / "original").read_bytes() == PDF
    assert not (storage.parent / "etc").exists() and not list(storage.parent.rglob("passwd"))
    assert session.get(f"{lw.stack.base_url}/api/documents/{lw.docs['alice']}", timeout=10).status_code == 200
    STATS["live"] += 1


@pytest.mark.live
def test_live_malformed_chunked_body_is_400_not_500(live_world):
    lw = live_world
    mp = ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    statuses = []
    for body in (b"zz\r\nabc\r\n0\r\n\r\n", b"1000\r\nabc"):
        status, _, _ = live_send(
            lw,
            "POST",
            "/api/documents",
            headers=[mp, ("Transfer-Encoding", "chunked")],
            body=body,
            length=False,
            expect=set(),
            known_bug=True,
        )
        statuses.append(status)
    status, _, _ = live_send(
        lw,
        "POST",
        "/login",
        who=None,
        body=b"zz\r\nabc\r\n0\r\n\r\n",
        length=False,
        headers=[("Content-Type", "application/x-www-form-urlencoded"), ("Transfer-Encoding", "chunked")],
        expect=set(),
        known_bug=True,
    )
    statuses.append(status)
    assert lw.stack.webs[0].popen.poll() is None
    assert statuses == [400, 400, 400], statuses


@pytest.mark.live
def test_live_declared_oversized_body_is_413(live_world):
    lw = live_world
    good = multipart([(b"file", b"x.pdf", PDF)])
    headers = [
        ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),
        ("Content-Length", "99999999999999"),
    ]
    status, _, _ = live_send(
        lw, "POST", "/api/documents", body=good, length=False, expect=set(), known_bug=True, headers=headers
    )
    assert status == 413, status
