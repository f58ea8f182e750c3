"""Quotas hold when one user's uploads arrive at the same moment, on two web servers over S3 (moto's
server as its own process). Copying an upload to S3 lets other requests run: checked only before the
copy, all 12 uploads got in under a quota of 3; checked again after it but without the user's lock,
8–9 did on PostgreSQL, whose commit lets other requests run too."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from tests.live import api
from tests.pdfgen import make_pdf

pytestmark = [pytest.mark.live, pytest.mark.db]  # db: also on PostgreSQL, where the commit itself yields

UPLOADS = 12
# About 300 KB: big enough that its copy to S3 takes a while, small enough for a quick test.
PDF = make_pdf([f"Page {i} of a racing upload " + "x" * 400 for i in range(1, 400)])


def race(stack, token: str) -> list:
    """UPLOADS uploads of one user, released together and spread over both servers."""
    start = threading.Barrier(UPLOADS)

    def one(i: int):
        s = api(token)
        start.wait()
        resp = s.post(f"{stack.url(i % 2)}/api/documents", files={"file": (f"race-{i}.pdf", PDF)}, timeout=60)
        s.close()
        return resp.status_code, resp.json()

    with concurrent.futures.ThreadPoolExecutor(UPLOADS) as pool:
        return list(pool.map(one, range(UPLOADS)))


@pytest.mark.parametrize(
    ("quota", "admitted", "status", "code"),
    [
        ({"QUOTA_DOCUMENTS": "3"}, 3, 429, "quota_documents"),
        ({"QUOTA_MB": "1"}, 1024 * 1024 // len(PDF), 413, "quota_mb"),
    ],
    ids=["documents", "megabytes"],
)
def test_simultaneous_uploads_never_pass_a_quota(
    make_stack, moto_server, s3_settings, quota, admitted, status, code
):
    stack = make_stack(RATELIMIT_UPLOAD="1000 per minute", **quota, **s3_settings)
    stack.start_web()  # a second host of the same deployment
    token = stack.user("racer")
    answers = race(stack, token)

    created = [body for st, body in answers if st == 201]
    refused = [(st, body["error"]["code"]) for st, body in answers if st != 201]
    assert len(created) == admitted, answers
    assert refused == [(status, code)] * (UPLOADS - admitted), answers
    listed = api(token).get(f"{stack.base_url}/api/documents", timeout=10).json()["documents"]
    assert sorted(d["id"] for d in listed) == sorted(d["id"] for d in created)
    # Nothing of a refused upload stays in the bucket.
    bucket, prefix = s3_settings["STORAGE_URL"][5:].split("/", 1)
    stored = moto_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    assert sorted(o["Key"].split("/")[1] for o in stored) == sorted(d["id"] for d in created)
