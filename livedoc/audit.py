"""The audit log: one JSON line per security-relevant event, on the `livedoc.audit` logger.

Lines carry ids, names, counts and reasons only: no secrets, no file paths, no document contents.
"""

from __future__ import annotations

import json
import logging
import time

from flask import has_request_context, request
from flask_login import current_user

log = logging.getLogger("livedoc.audit")


def audit(event: str, **fields) -> None:
    """Write one audit line for `event` with the given fields."""
    record = {"ts": round(time.time(), 3), "event": event}
    if has_request_context():
        record["ip"] = request.remote_addr
        if "user" not in fields and current_user and current_user.is_authenticated:
            record["user"] = current_user.username
    record.update(fields)
    log.info(json.dumps(record, default=str, separators=(",", ":")))
