"""Browser-test support shared by the Playwright modules: Debian chromium, console watching, contexts.

tests/conftest.py loads this module as a pytest plugin, so its fixtures (browser, console,
open_context, signed_in) are there for every test module. Without Debian chromium the `browser`
fixture skips the test; being module-scoped it is set up first, before the test starts any process.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.live import password_for
from tests.support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
# A test run leaves the worktree as it found it; to refresh the README's pictures on purpose:
# `SCREENSHOT_DIR=docs scripts/test tests/test_*browser.py`.
SCREENSHOTS = ROOT / os.environ.get("SCREENSHOT_DIR", f"{tempfile.gettempdir()}/livedoc-screenshots")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def screenshot(page: Page, name: str, **options) -> Path:
    """Save a screenshot of the page as `name` in SCREENSHOTS; returns its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), **options)
    return path


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    """One headless Debian chromium for the module (Playwright never downloads a browser here)."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM}")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


class Console:
    """Console errors and uncaught exceptions of every page in the contexts it watches."""

    def __init__(self):
        self.errors: list[str] = []
        self.base_url = "http://127.0.0.1:"
        self.allowed: list[re.Pattern] = []
        self.tolerated: list[str] = []
        self.expected_pages: set[str] = set()

    def watch(self, context: BrowserContext, who: str, requests: bool = False) -> None:
        """Record console errors and uncaught exceptions; with `requests`, failed same-origin
        requests too (a 4xx/5xx answer to anything but the page itself, or no answer at all)."""
        context.on("console", lambda msg: self._console(who, msg))
        context.on("weberror", lambda err: self.errors.append(f"[{who}] uncaught: {err.error}"))
        if requests:
            context.on("response", lambda resp: self._response(who, resp))
            context.on("requestfailed", lambda req: self._request_failed(who, req))

    @staticmethod
    def _own(context_url: str, url: str) -> bool:
        return url.startswith(context_url)

    def _response(self, who: str, resp) -> None:
        req = resp.request
        if resp.status >= 400 and not req.is_navigation_request() and self._own(self.base_url, resp.url):
            self.errors.append(f"[{who}] {req.method} {resp.url} answered {resp.status}")

    def _request_failed(self, who: str, req) -> None:
        # ERR_ABORTED is the browser cancelling requests of a page it navigates away from.
        failure = req.failure or ""
        if self._own(self.base_url, req.url) and "ERR_ABORTED" not in failure:
            self.errors.append(f"[{who}] {req.method} {req.url} failed: {failure}")

    def _console(self, who: str, msg) -> None:
        if msg.type != "error":
            return
        text = f"[{who}] console.error: {msg.text} ({msg.location.get('url', '')})"
        if msg.text.startswith("Failed to load resource") and self._navigation_status(msg):
            return  # the page itself answered its expected error status (a 404 or 403 page)
        csp = "Content Security Policy" in msg.text
        if not csp and any(p.search(msg.text) for p in self.allowed):
            self.tolerated.append(text)
        else:
            self.errors.append(text)

    def expect_status(self, url: str) -> None:
        """The next navigation to url answers an error status on purpose (the 404 and 403 pages)."""
        self.expected_pages.add(url)

    def _navigation_status(self, msg) -> bool:
        return msg.location.get("url", "") in self.expected_pages

    def allow(self, pattern: str) -> None:
        """Tolerate console errors matching pattern (never CSP violations or uncaught exceptions)."""
        self.allowed.append(re.compile(pattern))

    def assert_clean(self) -> None:
        assert not self.errors, "\n".join(self.errors)


@pytest.fixture
def console():
    c = Console()
    yield c
    for line in c.errors:
        print("console error:", line)
    for line in c.tolerated:
        print("tolerated network error:", line)


@pytest.fixture
def open_context(browser: Browser, console: Console):
    """Factory of fresh browser contexts (separate cookies) on a stack, watched by `console`."""
    contexts = []

    def make(stack, who: str, requests: bool = False, **options) -> BrowserContext:
        ctx = browser.new_context(base_url=stack.base_url, viewport={"width": 1280, "height": 900}, **options)
        ctx.set_default_timeout(15_000)
        console.base_url = stack.base_url
        console.watch(ctx, who, requests=requests)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def signed_in(open_context):
    """Factory: create a user on a stack, open a fresh context and a page, and log in through the form."""

    def make(stack, name: str, admin: bool = False, requests: bool = False, **options) -> Page:
        stack.user(name, admin=admin)
        page = open_context(stack, name, requests=requests, **options).new_page()
        login(page, name)
        return page

    return make


# Set in a page by mark_page: a reload or a navigation starts a new window object without it.
MARKER = "() => { window.__livedocTestMarker = 1; }"


def mark_page(page: Page) -> None:
    """Mark the page's window, so that assert_not_reloaded can tell it is still the same document."""
    page.evaluate(MARKER)


def assert_not_reloaded(page: Page) -> None:
    """The page has not reloaded or navigated since mark_page."""
    assert page.evaluate("() => window.__livedocTestMarker") == 1, "the page reloaded or navigated"


def login(page: Page, name: str) -> None:
    """Log in through the real form."""
    page.goto("/login")
    page.fill("#username", name)
    page.fill("#password", password_for(name))
    page.click("form.stack button[type=submit]")
    page.wait_for_url("**/documents")
