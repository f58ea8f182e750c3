"""SSE_COALESCE_MS: a connection watching many documents is woken at most once a slot, in one write."""

from __future__ import annotations

import json
import socket
import time

import pytest
from rq.job import Job

from livedoc import jobs
from livedoc.progress import ProgressWriter
from livedoc.redis_client import connect
from tests.live import api
from tests.pdfgen import make_pdf
from tests.support.streams import upload

pytestmark = pytest.mark.live

SLOT = 1.0  # s: long, so that "at once" and "at the next slot" cannot be confused on a loaded machine
DOCS = 5


class ChunkedStream:
    """A raw HTTP/1.1 SSE response read write by write: every chunk is one write of the server."""

    def __init__(self, port: int, path: str, token: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        self.buf = b""
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            data = self.sock.recv(65536)
            assert data, "the stream ended"
            self.buf += data
        out, self.buf = self.buf.split(sep, 1)
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            assert data, "the stream ended"
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def chunk(self) -> tuple[float, list[dict]]:
        """The next write: when it was complete here (monotonic) and its events, parsed."""
        size = int(self._until(b"\r\n"), 16)
        body = self._exactly(size + 2)[:-2].decode()
        events = []
        for block in body.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
            if "data" in fields:
                events.append(
                    {"event": fields.get("event"), "id": fields.get("id"), "data": json.loads(fields["data"])}
                )
        return time.monotonic(), events

    def close(self) -> None:
        self.sock.close()


def _slot_start(margin: float = 0.05) -> None:
    # CLOCK_MONOTONIC is one clock for every process on the host: the server's slots are these.
    while time.monotonic() % SLOT > margin:
        time.sleep(0.005)


def test_saves_in_one_slot_go_out_as_one_write(make_stack):
    stack = make_stack(SSE_COALESCE_MS=str(int(SLOT * 1000)), SSE_PING_INTERVAL="60000")
    token = stack.user("coalesce")
    s = api(token)
    ids = [upload(s, stack.base_url, make_pdf([f"doc {i}"]))["id"] for i in range(DOCS)]  # queued
    conn = connect(stack.redis_url)
    stream = ChunkedStream(stack.ports[0], "/api/events?docs=" + ",".join(ids), token)
    try:
        writers = [
            ProgressWriter(Job.fetch(jobs.job_id(d, 1), connection=conn, serializer=jobs.SERIALIZER), conn)
            for d in ids
        ]
        opening: list[dict] = []
        while len(opening) < DOCS:  # retry: first, then every document's queued state
            opening += stream.chunk()[1]
        assert sorted(e["data"]["document_id"] for e in opening) == sorted(ids)
        last = {e["data"]["document_id"]: e["data"]["seq"] for e in opening}

        _slot_start()
        slot = int(time.monotonic() / SLOT)
        saved = time.monotonic()
        for i, writer in enumerate(writers):
            writer.update("rendering", 10.0 * (i + 1), 1, 4)
        assert int(time.monotonic() / SLOT) == slot, "the saves straddled a slot: the machine stalled"

        first_at, first = stream.chunk()
        # The first save after a quiet spell is not held back: it goes out at once.
        assert first_at - saved < SLOT / 2, first_at - saved
        assert first[0]["data"]["document_id"] == ids[0]
        got = list(first)
        writes = 1
        while len(got) < DOCS:
            at, events = stream.chunk()
            writes += 1
            # The saves the first wake did not catch wait for the next slot, then go in one write.
            assert at >= (slot + 1) * SLOT, (at, slot)
            got += events
        assert writes <= 2, writes
        assert sorted(e["data"]["document_id"] for e in got) == sorted(ids)  # each document once
        for e in got:
            doc = e["data"]["document_id"]
            i = ids.index(doc)
            assert (
                e["event"],
                e["data"]["seq"],
                e["data"]["state"],
                e["data"]["stage"],
                e["data"]["percent"],
            ) == ("progress", last[doc] + 1, "running", "rendering", 10 * (i + 1))
            last[doc] += 1

        # Coalesced endings: every document still ends on its terminal event, then the stream ends.
        for writer in writers:
            writer.update("rendering", 90.0, 4, 4)
            writer.complete(4)
        ended: dict[str, dict] = {}
        while len(ended) < DOCS:
            for e in stream.chunk()[1]:
                doc = e["data"]["document_id"]
                assert doc not in ended and e["data"]["seq"] > last[doc], e  # seq only goes up
                last[doc] = e["data"]["seq"]
                if e["event"] == "complete":
                    ended[doc] = e["data"]
        assert {d: (v["state"], v["seq"]) for d, v in ended.items()} == {d: ("complete", 4) for d in ids}
        assert stream._until(b"\r\n") == b"0"  # the last chunk: the server closed the stream
    finally:
        stream.close()
        conn.connection_pool.disconnect()
