"""Document ids: made by the server, checked for shape before any lookup."""

from __future__ import annotations

import re
import uuid

_DOC_ID = re.compile(r"[0-9a-f]{32}\Z")


def new_doc_id() -> str:
    """A fresh, unguessable document id."""
    return uuid.uuid4().hex


def valid_doc_id(value: object) -> bool:
    """True when the value has the shape of a document id."""
    return isinstance(value, str) and _DOC_ID.match(value) is not None
