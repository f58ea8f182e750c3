"""The storage contract, run against both backends: a local directory and S3 (moto's server process)."""

from __future__ import annotations

import io
import os
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from config import Settings
from livedoc.storage import (
    DocumentFiles,
    LocalStorage,
    S3Storage,
    content_disposition,
    open_storage,
    parse_s3_url,
)

DOC = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    """Each test runs once on LocalStorage and once on S3Storage, both made by open_storage."""
    if request.param == "local":
        yield open_storage(Settings(STORAGE_DIR=str(tmp_path / "storage")))
        return
    s3 = request.getfixturevalue("s3_settings")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, s3[name])
    yield open_storage(
        Settings(
            STORAGE_URL=s3["STORAGE_URL"],
            S3_ENDPOINT_URL=s3["S3_ENDPOINT_URL"],
            SCRATCH_DIR=str(tmp_path / "scratch"),
            S3_URL_EXPIRY=60,
        )
    )


def test_open_storage_picks_the_backend(store, tmp_path):
    if isinstance(store, S3Storage):
        assert store.prefix == "docs/"
        assert store.scratch_root() == tmp_path / "scratch" / "livedoc-scratch"
    else:
        assert isinstance(store, LocalStorage)
        assert store.scratch_root() == tmp_path / "storage" / ".scratch"


def test_bytes_round_trip_and_absence(store):
    assert store.get_bytes(f"{DOC}/a1/layout.json") is None
    assert store.exists(f"{DOC}/a1/layout.json") is False
    store.put_bytes(f"{DOC}/a1/layout.json", b'{"pages":2}')
    assert store.get_bytes(f"{DOC}/a1/layout.json") == b'{"pages":2}'
    assert store.exists(f"{DOC}/a1/layout.json") is True
    store.put_bytes(f"{DOC}/a1/layout.json", b"{}")
    assert store.get_bytes(f"{DOC}/a1/layout.json") == b"{}"


def test_put_stream_stores_every_byte_in_parts(store):
    # 9 MiB + 7: above boto3's 8 MiB multipart threshold, and not a whole number of parts.
    data = os.urandom(1024) * (9 * 1024) + b"tail!!!"
    assert store.put_stream(f"{DOC}/original", io.BytesIO(data)) == len(data)
    assert store.get_bytes(f"{DOC}/original") == data
    assert store.size_of_prefix(f"{DOC}/") == len(data)


def test_put_file_stores_and_takes_the_scratch_file(store):
    scratch = store.scratch_root()
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "page-0001.jpg"
    path.write_bytes(b"\xff\xd8jpeg")
    assert store.put_file(f"{DOC}/a1/page-0001.jpg", path) == 6
    assert not path.exists()
    assert store.get_bytes(f"{DOC}/a1/page-0001.jpg") == b"\xff\xd8jpeg"


def test_fetch_copies_to_a_local_file(store, tmp_path):
    store.put_bytes(f"{DOC}/original", b"%PDF-1.4 x")
    store.fetch(f"{DOC}/original", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"%PDF-1.4 x"
    with pytest.raises(FileNotFoundError):
        store.fetch(f"{OTHER}/original", tmp_path / "none")


def test_delete_prefix_and_size_cover_exactly_the_prefix(store):
    store.put_bytes(f"{DOC}/original", b"12345")
    store.put_bytes(f"{DOC}/a1/page-0001.jpg", b"123")
    store.put_bytes(f"{DOC}/a2/page-0001.jpg", b"1234567")
    store.put_bytes(f"{OTHER}/original", b"99")
    assert store.size_of_prefix(f"{DOC}/") == 15
    assert store.size_of_prefix(f"{DOC}/a1/") == 3
    store.delete_prefix(f"{DOC}/a1/")
    assert store.get_bytes(f"{DOC}/a1/page-0001.jpg") is None
    assert store.size_of_prefix(f"{DOC}/") == 12
    store.delete_prefix(f"{DOC}/")
    assert store.size_of_prefix(f"{DOC}/") == 0
    assert store.get_bytes(f"{OTHER}/original") == b"99"
    store.delete_prefix(f"{DOC}/")  # nothing left: still fine


def test_document_files_delete_removes_everything_of_the_document(store):
    files = DocumentFiles(store, DOC)
    files.save_original(b"orig")
    for n in range(1, 4):
        store.put_bytes(files.key(1, f"page-{n:04d}.jpg"), b"p" * n)
    store.put_bytes(files.key(1, "manifest.json"), b'{"pages":3}')
    assert files.stored_bytes() == 4 + 6 + 11
    assert files.manifest(1) == {"pages": 3}
    files.clear_attempts(1)
    assert files.stored_bytes() == 4
    files.delete()
    assert files.stored_bytes() == 0


def test_a_later_attempt_carries_over_only_whole_pages(store):
    files = DocumentFiles(store, DOC)
    files.save_original(b"orig")
    layer = b'{"runs":[],"page":{"width":10,"height":20,"chars":3}}'
    for n in (1, 2, 4):  # pages 1, 2 and 4 whole; page 3 has its image only (killed mid-store)
        for name in ("page-%04d.jpg", "thumb-%04d.jpg", "text-%04d.txt"):
            store.put_bytes(files.key(1, name % n), b"x")
        store.put_bytes(files.key(1, f"layer-{n:04d}.json"), layer)
    store.put_bytes(files.key(1, "page-0003.jpg"), b"x")
    store.put_bytes(files.key(1, "layout.json"), b'{"pages":4}')
    store.put_bytes(files.key(1, "hd-0002.jpg"), b"hd")
    assert files.carry_over(2)
    assert files.attempts_stored() == [2], "attempt 1 is gone, leftovers included"
    assert files.layout(2) == {"pages": 4} and store.exists(files.key(2, "hd-0002.jpg"))
    assert not store.exists(files.key(2, "page-0003.jpg"))
    kept, size = files.stored_pages(2)
    assert sorted(kept) == [1, 2, 4] and kept[4]["width"] == 10 and kept[4]["chars"] == 3
    assert size == 3 * (3 + len(layer))
    assert files.leading_pages(2) == 2
    assert not DocumentFiles(store, "b" * 32).carry_over(1), "nothing stored: nothing to look at"


def test_local_files_are_paths_and_s3_files_are_presigned_urls(store):
    store.put_bytes(f"{DOC}/a1/page-0001.jpg", b"\xff\xd8\xff\xe0jpeg")
    store.put_bytes(f"{DOC}/original", b"%PDF-1.4 original")
    if isinstance(store, LocalStorage):
        assert store.url(f"{DOC}/a1/page-0001.jpg") is None
        assert store.local_path(f"{DOC}/a1/page-0001.jpg") == store.root / DOC / "a1" / "page-0001.jpg"
        assert store.local_path(f"{DOC}/a1/page-0002.jpg") is None
        return
    assert store.local_path(f"{DOC}/a1/page-0001.jpg") is None
    page = requests.get(store.url(f"{DOC}/a1/page-0001.jpg"), timeout=10)
    assert (page.status_code, page.headers["Content-Type"], page.content) == (
        200,
        "image/jpeg",
        b"\xff\xd8\xff\xe0jpeg",
    )
    down = requests.get(store.url(f"{DOC}/original", 'Résumé "final"; v2.pdf'), timeout=10)
    assert down.status_code == 200
    assert down.content == b"%PDF-1.4 original"
    assert down.headers["Content-Type"] == "application/octet-stream"
    assert down.headers["Content-Disposition"] == (
        'attachment; filename="R_sum_ _final__ v2.pdf"; '
        "filename*=UTF-8''R%C3%A9sum%C3%A9%20%22final%22%3B%20v2.pdf"
    )
    # moto checks neither signatures nor expiry: the test can check only what the URL asks for.
    query = parse_qs(urlsplit(store.url(f"{DOC}/a1/page-0001.jpg")).query)
    assert (query["X-Amz-Expires"], query["X-Amz-Algorithm"], query["X-Amz-SignedHeaders"]) == (
        ["60"],
        ["AWS4-HMAC-SHA256"],
        ["host"],
    )
    assert len(query["X-Amz-Signature"][0]) == 64


def test_delete_prefix_pages_through_more_than_one_listing_and_batch(s3_settings, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, s3_settings[name])
    store = open_storage(
        Settings(STORAGE_URL=s3_settings["STORAGE_URL"], S3_ENDPOINT_URL=s3_settings["S3_ENDPOINT_URL"])
    )
    from concurrent.futures import ThreadPoolExecutor

    # 1003 objects: two list pages (1000 keys each at most) and two DeleteObjects batches.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.put_bytes(f"{DOC}/a1/page-{n:04d}.jpg", b"xy"), range(1, 1004)))
    assert store.size_of_prefix(f"{DOC}/") == 2006
    store.delete_prefix(f"{DOC}/")
    assert store.size_of_prefix(f"{DOC}/") == 0


@pytest.mark.parametrize(
    "url, expected",
    [
        ("s3://bucket/prefix", ("bucket", "prefix")),
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/a/b/", ("bucket", "a/b")),
    ],
)
def test_parse_s3_url(url, expected):
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("bad", ["http://bucket/x", "s3:///x", "bucket/x", "s3://"])
def test_bad_storage_url_is_a_clear_settings_error(bad):
    with pytest.raises(ValueError, match="STORAGE_URL must look like s3://bucket/prefix"):
        Settings.from_env({"STORAGE_URL": bad})


def test_bad_addressing_style_is_a_clear_settings_error():
    with pytest.raises(ValueError, match="S3_ADDRESSING_STYLE must be one of auto, path, virtual"):
        Settings.from_env({"S3_ADDRESSING_STYLE": "dns"})


def test_content_disposition_ascii_names_are_kept():
    assert content_disposition("report 2024.pdf") == (
        "attachment; filename=\"report 2024.pdf\"; filename*=UTF-8''report%202024.pdf"
    )
