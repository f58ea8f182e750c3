"""What operators and strangers see in a real browser: the RQ dashboard, and a walk over every page.

The RQ dashboard builds its tables in the browser (underscore templates, its own JSON endpoints), so a
status code says nothing about whether an operator sees a job: these tests read what the page shows.
The walk visits every page a reader, an operator or a stranger can reach and fails on any uncaught
script error, CSP violation, console error or failed same-origin request. New pages join `walk`.
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, expect

from livedoc import jobs
from tests.live import api
from tests.pdfgen import make_pdf
from tests.support import streams
from tests.support.browser import login, screenshot

pytestmark = pytest.mark.browser

SMALL_PDF = make_pdf(["First page of the dashboard test", "Second page", "Third page"])
SLOW_PDF = make_pdf([f"Slow page {i}" for i in range(1, 41)])
CORRUPT_PDF = b"%PDF-1.7\n garbage"


def upload(stack, token: str, data: bytes, name: str) -> dict:
    return streams.upload(api(token), stack.base_url, data, name)


def wait_state(stack, token: str, doc_id: str, states: set[str], timeout: float = 60) -> dict:
    body = {"id": doc_id, "status_url": f"/api/documents/{doc_id}/status"}
    return streams.wait_status(
        api(token),
        stack.base_url,
        body,
        lambda st: st["state"] in states,
        timeout,
        0.1,
        what=f"one of {sorted(states)}",
    )


@pytest.fixture
def admin_stack(make_stack):
    """A deployment with a worker, an admin and one finished conversion."""
    stack = make_stack(RATELIMIT_STREAM="6000 per minute")
    stack.start_worker()
    token = stack.user("root", admin=True)
    doc = upload(stack, token, SMALL_PDF, "dashboard test.pdf")
    wait_state(stack, token, doc["id"], {"complete"})
    return stack, token, doc


def shoot(page: Page, name: str) -> None:
    screenshot(page, name, full_page=True)


def test_rq_dashboard_shows_queues_jobs_job_progress_and_workers(admin_stack, open_context, console):
    stack, _token, doc = admin_stack
    job_id = jobs.job_id(doc["id"], 1)
    page = open_context(stack, "root", requests=True).new_page()
    login(page, "root")

    # Queues: livedoc's queue with its counts (one finished job), not "Loading...".
    page.goto("/rq/")
    row = page.locator("#queues tbody tr[data-role=queue]", has_text="livedoc")
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(0)).to_have_text("livedoc")
    expect(row.locator("td").nth(5)).to_have_text("1")  # finished jobs
    expect(page.locator("#queues [data-role=loading-placeholder]")).to_have_count(0)
    shoot(page, "rq-queues.png")

    # The finished-jobs list names the conversion job.
    page.goto("/rq/0/view/jobs/livedoc/finished/8/asc/1")
    job_row = page.locator(f"#jobs tbody tr[data-job-id='{job_id}']")
    expect(job_row).to_have_count(1)
    expect(job_row).to_contain_text(job_id)
    shoot(page, "rq-finished.png")

    # The job's page: description, status and livedoc's progress dict in its metadata.
    page.goto(f"/rq/0/view/job/{job_id}")
    data = page.locator("#job-data")
    expect(data).to_contain_text(f"convert pdf {doc['id']} (attempt 1)")
    expect(data).to_contain_text("finished")
    expect(data).to_contain_text('"state": "complete"')
    expect(data).to_contain_text('"pages": 3')
    shoot(page, "rq-job.png")

    # Workers: the running worker, listening on livedoc.
    page.goto("/rq/0/view/workers")
    worker_row = page.locator("#workers tbody tr", has_text="livedoc")
    expect(worker_row).to_have_count(1)
    expect(worker_row).to_contain_text("test-worker-")
    shoot(page, "rq-workers.png")
    console.assert_clean()


def test_rq_dashboard_actions_work_from_its_pages_and_refuse_get_and_other_sites(
    admin_stack, open_context, console
):
    stack, token, _doc = admin_stack
    failed = upload(stack, token, CORRUPT_PDF, "broken.pdf")
    wait_state(stack, token, failed["id"], {"failed"})
    job_id = jobs.job_id(failed["id"], 1)
    page = open_context(stack, "root", requests=True).new_page()
    login(page, "root")

    # GET must change nothing: the route that accepted GET now answers 405 and leaves the job alone.
    resp = page.request.get(stack.base_url + "/rq/requeue/livedoc")
    assert resp.status == 405
    page.goto("/rq/0/view/jobs/livedoc/failed/8/asc/1")
    expect(page.locator(f"#jobs tbody tr[data-job-id='{job_id}']")).to_have_count(1)

    # A write from another site is refused even with the admin's cookie.
    cross = page.request.post(
        stack.base_url + f"/rq/job/{job_id}/delete",
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert cross.status == 403
    assert page.request.get(stack.base_url + f"/rq/0/data/job/{job_id}.json").status == 200

    # The dashboard's own Delete button (its JS POSTs same-origin) works.
    page.goto(f"/rq/0/view/job/{job_id}")
    expect(page.locator("#job-data")).to_contain_text("failed")
    page.click("#delete-job-btn")
    page.click("#confirmation-modal-yes")
    # After a delete the dashboard goes back to its queues page.
    page.wait_for_url(re.compile(r"/rq/(0/view/queues)?$"))
    gone = page.request.get(stack.base_url + f"/rq/0/data/job/{job_id}.json")
    assert gone.status == 404
    console.assert_clean()


def test_every_page_loads_without_a_script_error_or_a_failed_request(make_stack, open_context, console):
    stack = make_stack(RATELIMIT_STREAM="6000 per minute", RENDER_DPI="250")
    admin_token = stack.user("root", admin=True)
    reader_token = stack.user("reader")
    complete = None
    walked: list[str] = []

    def visit(page: Page, path: str, heading: str | None = None, status: int = 200) -> None:
        url = stack.base_url + path
        if status >= 400:
            console.expect_status(url)
        resp = page.goto(path)
        assert resp is not None and resp.status == status, f"{path}: {resp and resp.status}"
        if heading:
            expect(page.locator("h1").first).to_contain_text(heading)
        page.wait_for_load_state("networkidle")
        walked.append(path)

    # A stranger: the login page, and what any other URL sends them to.
    stranger = open_context(stack, "stranger", requests=True).new_page()
    visit(stranger, "/login", "Log in")
    visit(stranger, "/documents/" + "0" * 32)  # redirected to the login page
    assert "/login" in stranger.url
    visit(stranger, "/no-such-page", "Not found", status=404)

    # A reader: the list, the viewer while queued, converting, complete and failed; 404 and 403.
    reader = open_context(stack, "reader", requests=True).new_page()
    login(reader, "reader")
    visit(reader, "/documents", "My documents")
    queued = upload(stack, reader_token, SLOW_PDF, "slow.pdf")
    broken = upload(stack, reader_token, CORRUPT_PDF, "broken.pdf")
    visit(reader, f"/documents/{queued['id']}", "slow.pdf")
    stack.start_worker()
    wait_state(stack, reader_token, queued["id"], {"running", "complete"})
    visit(reader, f"/documents/{queued['id']}", "slow.pdf")
    complete = wait_state(stack, reader_token, queued["id"], {"complete"})
    assert complete["pages"] == 40
    visit(reader, f"/documents/{queued['id']}", "slow.pdf")
    wait_state(stack, reader_token, broken["id"], {"failed"})
    visit(reader, f"/documents/{broken['id']}", "broken.pdf")
    visit(reader, "/documents/" + "0" * 32, "Not found", status=404)
    visit(reader, "/admin/", "Not allowed", status=403)
    visit(reader, "/rq/", "Not allowed", status=403)

    # An operator: the admin page and every RQ dashboard page.
    admin = open_context(stack, "root", requests=True).new_page()
    login(admin, "root")
    visit(admin, "/documents", "My documents")
    visit(admin, "/admin/", "Admin")
    for path in ["/rq/", "/rq/0/view/queues", "/rq/0/view/workers", "/rq/0/view/jobs"]:
        visit(admin, path)
    for registry in ["queued", "started", "finished", "failed", "deferred", "scheduled", "canceled"]:
        visit(admin, f"/rq/0/view/jobs/livedoc/{registry}/8/asc/1")
        expect(admin.locator("#jobs [data-role=loading-placeholder]")).to_have_count(0)
    visit(admin, f"/rq/0/view/job/{jobs.job_id(queued['id'], 1)}")
    expect(admin.locator("#job-data")).to_contain_text('"state": "complete"')
    visit(admin, "/rq/0/view/job/doc-" + "0" * 32 + "-1", status=404)
    assert admin_token
    print(json.dumps(walked))
    console.assert_clean()
