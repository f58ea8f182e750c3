"""Real-time transports, one thin module each over the one delivery loop (livedoc.delivery):
SSE for one document or many (events), long-poll and poll (status), WebSocket (websocket), and the
connection stats (stats). None of them holds a Redis or database connection while it waits: the
process's stream hub (livedoc.hub) reads Redis for all of them.
"""

from __future__ import annotations

# Importing the transport modules registers their routes on `bp`.
from blueprints.realtime import events, stats, status, websocket
from blueprints.realtime.shared import bp, user_key

__all__ = ["bp", "events", "stats", "status", "user_key", "websocket"]
