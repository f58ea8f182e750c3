"""Per-user quotas and streamed uploads: one user cannot fill the disk or the queue for everyone."""

from __future__ import annotations

import io

import pytest

from tests.support.app import csrf_from, run_jobs

MB = 1024 * 1024


def _upload(client, token: str, data: bytes, name: str = "notes.txt"):
    return client.post(
        "/api/documents",
        headers={"Authorization": f"Bearer {token}"},
        data={"file": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def _me(client, token: str) -> dict:
    resp = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    return resp.get_json()


def _stored_dirs(storage_dir) -> list[str]:
    return sorted(p.name for p in storage_dir.iterdir())


def test_me_shows_usage_and_output_counts_once_complete(app, client, users, redis_conn, storage_dir):
    app.config.update(QUOTA_DOCUMENTS=10, QUOTA_MB=5, MAX_CONVERSIONS_PER_USER=3)
    token = users.create("alice")
    body = b"hello quota\n" * 100
    doc = _upload(client, token, body).get_json()["id"]
    me = _me(client, token)
    assert me["username"] == "alice" and me["is_admin"] is False
    assert me["usage"] == {
        "documents": {"used": 1, "limit": 10, "remaining": 9},
        "stored_bytes": {"used": len(body), "limit": 5 * MB, "remaining": 5 * MB - len(body)},
        "conversions_in_flight": {"used": 1, "limit": 3, "remaining": 2},
    }
    run_jobs(redis_conn)
    output = sum(p.stat().st_size for p in (storage_dir / doc / "a1").iterdir())
    assert output > 0
    usage = _me(client, token)["usage"]
    assert usage["stored_bytes"]["used"] == len(body) + output
    assert usage["conversions_in_flight"]["used"] == 0


def test_the_document_quota_answers_429_and_stores_nothing(app, client, users, storage_dir):
    app.config.update(QUOTA_DOCUMENTS=2)
    token = users.create("alice")
    for _ in range(2):
        assert _upload(client, token, b"one\n").status_code == 201
    before = _stored_dirs(storage_dir)
    resp = _upload(client, token, b"three\n")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3600"
    error = resp.get_json()["error"]
    assert error["code"] == "quota_documents"
    assert error["quota"] == {"name": "QUOTA_DOCUMENTS", "used": 2, "limit": 2, "remaining": 0}
    assert _stored_dirs(storage_dir) == before
    # Another user has a quota of their own.
    assert _upload(client, users.create("bob"), b"bob's\n").status_code == 201


def test_the_storage_quota_answers_413_while_copying(app, client, users, storage_dir):
    app.config.update(QUOTA_MB=1)
    token = users.create("alice")
    first = b"a" * (700 * 1024) + b"\n"
    assert _upload(client, token, first).status_code == 201
    before = _stored_dirs(storage_dir)
    resp = _upload(client, token, b"b" * (700 * 1024) + b"\n")
    assert resp.status_code == 413
    error = resp.get_json()["error"]
    assert error["code"] == "quota_mb" and "0.3 MB left" in error["message"]
    assert error["quota"] == {
        "name": "QUOTA_MB",
        "used": len(first),
        "limit": MB,
        "remaining": MB - len(first),
    }
    assert _stored_dirs(storage_dir) == before  # the partial copy is gone
    assert _me(client, token)["usage"]["documents"]["used"] == 1
    # The HTML form says the same as a page.
    users.login("alice")
    csrf = csrf_from(client.get("/documents").get_data(as_text=True))
    page = client.post(
        "/documents",
        data={"file": (io.BytesIO(b"c" * (700 * 1024)), "c.txt"), "csrf_token": csrf},
        content_type="multipart/form-data",
    )
    assert page.status_code == 413 and "storage quota of 1 MB" in page.get_data(as_text=True)


def test_conversions_in_flight_are_capped_until_they_end(app, client, users, redis_conn):
    app.config.update(MAX_CONVERSIONS_PER_USER=2)
    token = users.create("alice")
    for _ in range(2):
        assert _upload(client, token, b"queued\n").status_code == 201
    resp = _upload(client, token, b"one too many\n")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "10"
    error = resp.get_json()["error"]
    assert error["code"] == "quota_conversions"
    assert error["quota"] == {"name": "MAX_CONVERSIONS_PER_USER", "used": 2, "limit": 2, "remaining": 0}
    run_jobs(redis_conn)  # the conversions end without anyone watching them
    assert _upload(client, token, b"now there is room\n").status_code == 201


def test_a_large_upload_is_stored_byte_for_byte_and_checked_to_its_end(app, client, users, storage_dir):
    token = users.create("alice")
    big = b"".join(b"line %07d of a big text file\n" % i for i in range(100_000))
    resp = _upload(client, token, big)
    assert resp.status_code == 201
    doc = resp.get_json()["id"]
    assert (storage_dir / doc / "original").read_bytes() == big
    assert resp.get_json()["size"] == len(big)
    before = _stored_dirs(storage_dir)
    # Valid text for 3 MB, then a Latin-1 byte: refused, and nothing of it is left behind.
    resp = _upload(client, token, big + "café\n".encode("latin-1"))
    assert resp.status_code == 415 and resp.get_json()["error"]["code"] == "unsupported_type"
    assert _stored_dirs(storage_dir) == before


@pytest.mark.parametrize(
    "data,kind",
    [
        (b"%PDF-1.4\n", "pdf"),
        (b"\x89PNG\r\n\x1a\n", "image"),
        (b"\xff\xd8\xff", "image"),
        (b"plain\n", "text"),
    ],
)
def test_the_kind_comes_from_the_first_bytes(app, client, users, data, kind):
    token = users.create("alice")
    resp = _upload(client, token, data, name="whatever.bin")
    assert resp.status_code == 201 and resp.get_json()["kind"] == kind
