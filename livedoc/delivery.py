"""The one delivery loop: what a connection has not seen yet, as events; transports only frame them.

SSE (one document or many), long-poll and WebSocket all park a hub connection and run `Delivery.loop`,
which yields batches of events (every document with news since the last batch, each progress encoded
once for all its subscribers), pings, and the reason the hub closed the connection. A new kind of
event is a change here, not in each transport.
"""

from __future__ import annotations

import sys
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
    # The hub's frames of this progress, shared by every connection that sends it (_Watch.frames);
    # None for an event made for one connection only (its opening state).
    frames: dict | None = None

    def framed(self, key: str, make: Callable[[Event], bytes | str]) -> bytes | str:
        """This event as one transport frames it: made once, then shared by every watcher."""
        frames = self.frames
        if frames is None:
            return make(self)
        key = (key, self.doc_id)
        out = frames.get(key)
        if out is None:
            out = frames[key] = make(self)
        return out

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

    __slots__ = ("hub", "conn", "seen", "next_ping", "done")

    def __init__(self, hub: StreamHub, conn: Connection):
        self.hub = hub
        self.conn = conn
        self.seen: dict[str, int] = {}
        self.next_ping: float | None = None
        self.done = False

    def start(
        self, doc_id: str, job_id: str | None, current: progress.Progress, seen: int = 0
    ) -> Event | None:
        """Follow a document from `seen` on; returns its current state when that is news."""
        # A seq from the future is not ours (another deployment, a forged header): start over.
        seen = seen if seen <= current["seq"] else 0
        # Interned: every connection watching the document keys its dicts with one shared string,
        # not with its own copy parsed from its request (10 per multiplexed stream).
        doc_id = sys.intern(doc_id)
        job_id = sys.intern(job_id) if job_id else job_id
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
        seen = self.seen
        for doc_id, sub in self.conn.subs.items():
            watch = sub.watch
            prog = watch.progress if watch is not None else None
            if prog is None:
                continue
            before = seen.get(doc_id, 0)
            if prog["seq"] <= before:
                continue
            seen[doc_id] = prog["seq"]
            batch.append(Event(doc_id, prog, watch.encoded(), before, watch.frames))
        if batch:
            self.hub.note_sent([e.progress for e in batch], self.conn.label)
            for e in batch:
                if progress.is_terminal(e.progress):
                    self.conn.unwatch(e.doc_id)
        return batch

    def loop(
        self,
        ping: float,
        deadline: float | None = None,
        stay_open: bool = False,
        drain: Callable[[], None] | None = None,
    ) -> Iterator[list[Event] | str | Closed]:
        """Every item next() returns, until it returns None."""
        while (item := self.next(ping, deadline, stay_open, drain)) is not None:
            yield item

    def next(
        self,
        ping: float,
        deadline: float | None = None,
        stay_open: bool = False,
        drain: Callable[[], None] | None = None,
    ) -> list[Event] | str | Closed | None:
        """Wait for what to send next: a batch of events, PING when the line has been quiet for
        `ping` seconds, a Closed when the hub ends the connection; None at the end: every document
        has ended (unless `stay_open`, for sockets that subscribe more), `deadline` (monotonic)
        passed, or a Closed was returned. `drain` runs after every wake, before the news: a socket
        reads its peer's messages there.

        A plain call, not a generator, so a parked SSE stream's saved C stack holds one generator
        frame (the response) instead of two: that stack is most of what a parked stream costs."""
        if self.done:
            return None
        if self.next_ping is None:
            self.next_ping = time.monotonic() + ping
        while True:
            if drain is not None:
                drain()
            batch = self.pending()
            if batch:
                return batch
            if self.conn.closed:
                self.done = True
                mode = self.hub.flags.transport if self.conn.closed == "mode" else None
                return Closed(self.conn.closed, mode)
            if not self.conn.subs and not stay_open:
                self.done = True
                return None
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.done = True
                return None
            if now >= self.next_ping:
                self.next_ping = now + ping
                return PING
            self.conn.wait(min(self.next_ping, deadline if deadline is not None else self.next_ping) - now)
