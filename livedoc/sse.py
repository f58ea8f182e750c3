"""The Server-Sent Events wire format (https://html.spec.whatwg.org/#server-sent-events)."""

from __future__ import annotations

import json
from typing import Any

from livedoc.progress import State


def json_text(data: Any) -> str:
    """Compact JSON, as every event carries it."""
    return json.dumps(data, separators=(",", ":"))


def message(data: Any, event: str | None = None, id: int | str | None = None) -> str:
    """One SSE message; data is JSON-encoded unless it is already a str."""
    text = data if isinstance(data, str) else json_text(data)
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


# A multiplexed stream's `id:` is a cursor over all its documents: "<id prefix>:<seq>,..." with the
# first CURSOR_PREFIX hex digits of each document id. EventSource sends the last one back as
# Last-Event-ID on reconnect, so one header restores every document's position (about 11 bytes per
# document: 550 for the 50-document cap). A prefix shared by two of a user's documents is ambiguous;
# both then start from 0, which costs one repeated event and loses nothing.
CURSOR_PREFIX = 8
_CURSOR_MAX = 8192


def encode_cursor(seqs: dict[str, int], order: list[str] | None = None) -> str:
    """The cursor for these documents' last sent seqs (`order`: their ids sorted, if known)."""
    ids = order if order is not None else sorted(seqs)
    return ",".join(f"{doc_id[:CURSOR_PREFIX]}:{seqs[doc_id]}" for doc_id in ids if seqs[doc_id] > 0)


def parse_cursor(raw: str | None, doc_ids: list[str]) -> dict[str, int]:
    """Each document's last seen seq from a cursor (0 where unknown, ambiguous or malformed)."""
    found: dict[str, int] = {}
    if raw and len(raw) <= _CURSOR_MAX and raw.isascii():
        for part in raw.split(","):
            prefix, _, seq = part.partition(":")
            if len(prefix) == CURSOR_PREFIX and seq.isdigit() and len(seq) <= 16:
                found[prefix] = int(seq)
    prefixes = [d[:CURSOR_PREFIX] for d in doc_ids]
    return {d: found.get(p, 0) if prefixes.count(p) == 1 else 0 for d, p in zip(doc_ids, prefixes)}
