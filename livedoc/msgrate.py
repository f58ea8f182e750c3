"""A per-connection message rate limit (WebSocket messages in, WS_MESSAGE_RATE per 10 s)."""

from __future__ import annotations

import time


class MessageRate:
    """At most `limit` messages per `per` seconds (a fixed window), for one connection."""

    def __init__(self, limit: int, per: float = 10.0):
        self.limit, self.per = limit, per
        self.window_start = time.monotonic()
        self.count = 0

    def hit(self) -> bool:
        """Count one message; False when it is over the limit."""
        now = time.monotonic()
        if now - self.window_start >= self.per:
            self.window_start, self.count = now, 0
        self.count += 1
        return self.count <= self.limit
