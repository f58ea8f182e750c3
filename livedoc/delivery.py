"""The one delivery loop: what a connection has not seen yet, as events; transports only frame them.

SSE (one document or many), long-poll and WebSocket all park a hub connection and run `Delivery.loop`,
which yields batches of events (every document with news since the last batch, each progress encoded
once for all its subscribers), pings, and the reason the hub closed the connection. A new kind of
event is a change here, not in each transport.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from livedoc import progress, sse
from livedoc.hub import Connection, StreamHub


@dataclass(frozen=True, slots=True)
class Event:
    """A document's progress that the connection has not seen yet."""

    doc_id: str
    progress: progress.Progress
    encoded: str  # the progress as compact JSON, shared by every connection that sends it
    before: int = 0  # the seq the connection had seen of this document until now

    @property
    def kind(self) -> str:
        """progress, complete or error (SSE event type, WebSocket message type)."""
        return sse.event_name(self.progress)


@dataclass(frozen=True, slots=True)
class Closed:
    """The hub ended the connection: the operator switched transports (`mode`) or the process stops."""

    reason: str
    mode: str | None = None


PING = "ping"


class Delivery:
    """One connection's view of its documents: what it has seen, and what to send next."""

    __slots__ = ("hub", "conn", "seen", "transport")

    def __init__(self, hub: StreamHub, conn: Connection, transport: str):
        self.hub = hub
        self.conn = conn
        self.seen: dict[str, int] = {}
        self.transport = transport

    def start(self, doc_id: str, job_id: str | None, current: progress.Progress,
              seen: int = 0) -> Event | None:
        """Follow a document from `seen` on; returns its current state when that is news."""
        # A seq from the future is not ours (another deployment, a forged header): start over.
        seen = seen if seen <= current["seq"] else 0
        self.seen[doc_id] = seen
        if job_id and not progress.is_terminal(current):
            self.conn.watch(job_id, doc_id, current)
        if current["seq"] > seen:
            self.seen[doc_id] = current["seq"]
            return Event(doc_id, current, sse.json_text(current), seen)
        return None

    def stop(self, doc_id: str) -> None:
        """Stop following a document."""
        self.conn.unwatch(doc_id)
        self.seen.pop(doc_id, None)

    def pending(self) -> list[Event]:
        """Every watched document's news since the last call; ended documents are let go."""
        batch = []
        for doc_id, sub in list(self.conn.subs.items()):
            prog = sub.progress
            before = self.seen.get(doc_id, 0)
            if prog is None or prog["seq"] <= before:
                continue
            self.seen[doc_id] = prog["seq"]
            batch.append(Event(doc_id, prog, sub.encoded, before))
            self.hub.note_sent(prog, self.transport)
            if progress.is_terminal(prog):
                self.conn.unwatch(doc_id)
        return batch

    def loop(self, ping: float, deadline: float | None = None, stay_open: bool = False,
             drain: Callable[[], None] | None = None) -> Iterator[list[Event] | str | Closed]:
        """Batches of events, PING when the line has been quiet for `ping` seconds, then the end:
        a Closed when the hub ends the connection, or nothing once every document has ended
        (unless `stay_open`, for sockets that subscribe more) or `deadline` (monotonic) passed.
        `drain` runs after every wake, before the news: a socket reads its peer's messages there."""
        next_ping = time.monotonic() + ping
        while True:
            if drain is not None:
                drain()
            batch = self.pending()
            if batch:
                yield batch
            if self.conn.closed:
                mode = self.hub.flags.transport if self.conn.closed == "mode" else None
                yield Closed(self.conn.closed, mode)
                return
            if not self.conn.subs and not stay_open:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if now >= next_ping:
                yield PING
                next_ping = time.monotonic() + ping
                continue
            self.conn.wait(min(next_ping, deadline if deadline is not None else next_ping) - now)
