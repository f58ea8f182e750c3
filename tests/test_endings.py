"""The catalogue of ending codes (livedoc/endings.py): every exception and derived ending takes its
code from it, codes are unique, and README lists exactly the catalogue."""

from __future__ import annotations

import re
from pathlib import Path

from livedoc import endings, progress
from workers import office  # noqa: F401 - registers the Office exceptions
from workers.errors import ConversionError, InternalError, PageTooLarge

ROOT = Path(__file__).resolve().parent.parent


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_conversion_error_has_its_own_ending_in_the_catalogue():
    classes = [ConversionError, *_subclasses(ConversionError)]
    codes = [c.ending.code for c in classes]
    assert len(codes) == len(set(codes)), codes
    for cls in classes:
        assert endings.CATALOGUE[cls.ending.code] is cls.ending


def test_the_derived_endings_come_from_the_catalogue():
    assert progress.lost(None)["error"] == endings.WORKER_LOST.error()
    assert progress.deleted(None)["error"] == {
        "code": "deleted",
        "message": "This document was deleted.",
        "retryable": False,
    }


def test_a_stored_error_turns_back_into_its_exception():
    raised = PageTooLarge("Page 3 is 9000 × 9000 pixels.")
    again = ConversionError.from_error(raised.error)
    assert type(again) is PageTooLarge and again.message == "Page 3 is 9000 × 9000 pixels."
    assert again.error == {
        "code": "page_too_large",
        "message": "Page 3 is 9000 × 9000 pixels.",
        "retryable": False,
    }
    hung = ConversionError.from_error({"code": "office_timeout", "message": "slow"})
    assert type(hung) is office.OfficeHung and hung.max_retries == 1 and hung.retryable is True
    assert InternalError().error == endings.INTERNAL.error()


def test_readme_lists_exactly_the_catalogue():
    readme = (ROOT / "README.md").read_text()
    listed = dict(re.findall(r"^\| `([a-z_]+)` \| (yes|no) \| .+ \|$", readme, re.M))
    assert listed == {code: "yes" if e.retryable else "no" for code, e in endings.CATALOGUE.items()}
