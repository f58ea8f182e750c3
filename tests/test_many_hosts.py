"""Many hosts, no shared disk: 2 web servers and 2 workers that share only Redis, the database and S3.

Each process runs in a working directory of its own with its own STORAGE_DIR, SCRATCH_DIR and
INSTANCE_DIR (only SECRET_KEY is shared): whatever one host writes locally, no other host can see.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import requests
from redis import Redis

from livedoc.redis_client import connect
from tests.live import Stack, api
from tests.support import wait_for
from tests.support.streams import Viewer, settled_status, slow_pdf, upload

# Four processes on one document, one of them stopped halfway: viewers may take up to 150 s.
pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]


def host(base: Path, name: str) -> tuple[Path, dict[str, str]]:
    """An empty working directory and the host-local settings of one process."""
    root = base / name
    for sub in ("cwd", "storage", "scratch", "instance"):
        (root / sub).mkdir(parents=True)
    return root / "cwd", {
        "STORAGE_DIR": str(root / "storage"),
        "SCRATCH_DIR": str(root / "scratch"),
        "INSTANCE_DIR": str(root / "instance"),
    }


def local_files(base: Path) -> list[str]:
    """Files any process left in its own directories (none may hold document data)."""
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def test_two_web_hosts_and_two_workers_share_only_redis_database_and_s3(
    redis_url, tmp_path, moto_server, s3_settings, shared_database_url
):
    url = redis_url.rsplit("/", 1)[0] + "/3"
    conn = connect(url)
    conn.flushdb()
    hosts = tmp_path / "hosts"
    stack = Stack(url, tmp_path / "logs", RENDER_DPI="300", DATABASE_URL=shared_database_url, **s3_settings)
    try:
        for name in ("web1", "web2"):
            cwd, env = host(hosts, name)
            stack.start_web(cwd=cwd, **env)
        for name in ("worker1", "worker2"):
            cwd, env = host(hosts, name)
            stack.start_worker(cwd=cwd, env=env)
        web1, web2 = stack.url(0), stack.url(1)
        token = stack.user("roamer")
        s = api(token)
        body = upload(s, web1, slow_pdf(60))
        other = upload(s, web1, slow_pdf(30))

        # One viewer on each host; the first follows its load balancer to web 2 once web 1 is gone.
        target = [web1]
        on_web1 = Viewer("on-web1", token, lambda: target[0], body["events_url"], deadline=150)
        on_web2 = Viewer("on-web2", token, web2, body["events_url"], deadline=150)
        on_web1.start()
        on_web2.start()
        wait_for(lambda: on_web1.latest and on_web1.latest["ready"] >= 3, 60, what="3 pages ready")

        # Page 1 through either host: a presigned URL of the same object.
        pages = []
        for base in (web1, web2):
            resp = s.get(
                f"{base}/documents/{body['id']}/files/1/page-0001.jpg", allow_redirects=False, timeout=5
            )
            assert resp.status_code == 302
            assert resp.headers["Location"].startswith(moto_server.url + "/")
            pages.append(requests.get(resp.headers["Location"], timeout=5).content)
        assert pages[0] == pages[1] and pages[0][:3] == b"\xff\xd8\xff"

        # Web 1 dies mid-conversion with its streams open (no goodbye to anyone).
        running = s.get(web2 + body["status_url"], timeout=5).json()
        assert running["state"] == "running", running
        os.killpg(stack.webs[0].popen.pid, signal.SIGKILL)
        stack.webs[0].popen.wait(5)
        target[0] = web2
        final1, final2 = on_web1.finish(150), on_web2.finish(150)
        truth = settled_status(s, web2, body, 30)
        assert final1 is not None, f"{on_web1.failures}\n{stack.logs()}"
        assert final2 is not None, f"{on_web2.failures}\n{stack.logs()}"
        assert (final1["state"], final1["ready"], final1["seq"]) == ("complete", 60, truth["seq"])
        assert (final2["state"], final2["ready"], final2["seq"]) == ("complete", 60, truth["seq"])
        assert on_web1.connects >= 2  # it reconnected, through web 2, with its Last-Event-ID
        assert on_web2.connects == 1

        # The other document was converted by the other worker; web 2 serves all of both.
        assert settled_status(s, web2, other, 60)["state"] == "complete"
        workers = {Redis.from_url(url).hget(f"rq:job:doc-{d['id']}-1", "worker_name") for d in (body, other)}
        assert len(workers) == 2, workers
        for doc, n in ((body, 60), (other, 30)):
            resp = s.get(
                f"{web2}/documents/{doc['id']}/files/1/page-{n:04d}.jpg", allow_redirects=False, timeout=5
            )
            assert resp.status_code == 302
            assert requests.get(resp.headers["Location"], timeout=5).content[:3] == b"\xff\xd8\xff"

        # No host kept anything of the documents: working, storage and scratch directories are empty
        # (a worker's scratch is removed after each job); instance dirs hold nothing either, as
        # SECRET_KEY is set.
        assert local_files(hosts) == []
        # ...though each worker did render into its own scratch directory.
        assert sorted(p.parent.parent.name for p in hosts.glob("*/scratch/livedoc-scratch")) == [
            "worker1",
            "worker2",
        ]
    finally:
        stack.stop()
        conn.flushdb()
        conn.connection_pool.disconnect()
