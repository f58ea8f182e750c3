"""The Server-Sent Events wire format (https://html.spec.whatwg.org/#server-sent-events)."""
from __future__ import annotations

import json
from typing import Any

from livedoc.progress import State


def message(data: Any, event: str | None = None, id: int | str | None = None) -> str:
    """One SSE message; data is JSON-encoded unless it is already a str."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = []
    if event:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return "\n".join(lines) + "\n\n"


def comment(text: str = "ping") -> str:
    """A comment line: ignored by EventSource, keeps proxies and dead-peer detection busy."""
    return f": {text}\n\n"


def retry(ms: int) -> str:
    """Tell EventSource how long to wait before reconnecting."""
    return f"retry: {int(ms)}\n\n"


def event_name(progress: dict) -> str:
    """The SSE event type for a progress dict: progress, complete or error."""
    state = progress.get("state")
    if state == State.COMPLETE.value:
        return "complete"
    if state == State.FAILED.value:
        return "error"
    return "progress"


def parse_last_event_id(raw: str | None) -> int:
    """The seq a reconnecting client last saw; 0 (send everything) when absent or malformed."""
    if not raw or len(raw) > 20 or not raw.isdigit() or not raw.isascii():
        return 0
    return int(raw)
