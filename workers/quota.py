"""The storage quota while converting: every byte a conversion stores is charged to its owner first.

The web keeps, per user, a hash in Redis (keys.QUOTA_USAGE + user id): `settled`, what the database
says the user stores (written under the user's admission lock), and one field per document whose
bytes the database does not count yet: the running conversion's (QUOTA_CONVERTING + id), its sharper
pages (QUOTA_HD + id). A worker charges a file in one script before it writes it: refused when
settled + every field + the file would pass the limit. So conversions of one user on any number of
hosts never pass QUOTA_MB together, and what a refused conversion stored before stays within it.

The owner and the limit come with the job (`quota` keyword, set at enqueue by the web); a job
without it (queued before this existed) is not charged. Neither is one whose owner's hash Redis
lost: without `settled` the total is unknown, and failing the document for that would punish the
user for Redis; the web writes `settled` again at the user's next admission.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from redis import Redis
from redis.commands.core import Script

from livedoc import keys
from workers.errors import QuotaExceeded

# KEYS[1]: the user's usage hash (keys.QUOTA_USAGE + user id)
# ARGV[1]: the field to charge; ARGV[2]: bytes; ARGV[3]: the limit in bytes
# Returns 1 (charged), 0 (refused: the total would pass the limit) or -1 (no `settled`: not charged).
_CHARGE = """
if not redis.call('HGET', KEYS[1], 'settled') then return -1 end
local total = tonumber(ARGV[2])
local held = redis.call('HVALS', KEYS[1])
for i = 1, #held do total = total + (tonumber(held[i]) or 0) end
if total > tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def usage_key(user_id: int | str) -> str:
    """The Redis hash of one user's stored bytes."""
    return f"{keys.QUOTA_USAGE}{user_id}"


class Meter:
    """Charges one document's writes (its conversion's, or its sharper pages') to its owner's quota."""

    def __init__(self, connection: Redis, user_id: int, doc_id: str, limit: int, field_prefix: str):
        self.connection = connection
        self.key = usage_key(user_id)
        self.doc_id = doc_id
        self.field = field_prefix + doc_id
        self.limit = limit
        self._script: Script = connection.register_script(_CHARGE)

    @classmethod
    def of_job(
        cls, connection: Redis, quota: Mapping[str, Any] | None, doc_id: str, field_prefix: str
    ) -> Meter | None:
        """The meter a job's `quota` keyword ({"user", "limit"}) asks for; None for a job without one."""
        if not quota or "user" not in quota or "limit" not in quota:
            return None
        return cls(connection, int(quota["user"]), doc_id, int(quota["limit"]), field_prefix)

    def charge(self, size: int) -> None:
        """Count `size` bytes about to be stored; QuotaExceeded (nothing counted) when they do not fit."""
        if self._script(keys=[self.key], args=[self.field, int(size), self.limit]) == 0:
            raise QuotaExceeded()

    def restart(self, kept: int = 0) -> None:
        """Count, for a new attempt, only the `kept` bytes of pages earlier attempts stored and this
        one keeps (sharper pages included in what is forgotten). (The database may count them too
        until this attempt ends: too much, never too little.)"""
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.hdel(self.key, keys.QUOTA_CONVERTING + self.doc_id, keys.QUOTA_HD + self.doc_id)
            if kept:
                pipe.hincrby(self.key, keys.QUOTA_CONVERTING + self.doc_id, int(kept))
            pipe.execute()


class ChargedStorage:
    """A storage whose writes are charged to a Meter before they happen; the rest passes through.

    A render process forked from the job inherits it with the document's files, so pages stored in
    parallel are charged one by one too (the Redis client reconnects in a forked process).
    """

    def __init__(self, inner: Any, meter: Meter):
        self.inner = inner
        self.meter = meter

    def put_file(self, key: str, path: Path) -> int:
        """Charge the file's size, then store it."""
        self.meter.charge(path.stat().st_size)
        return self.inner.put_file(key, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Charge the bytes, then store them."""
        self.meter.charge(len(data))
        self.inner.put_bytes(key, data)

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        """Not for conversions: a stream's size is known only once it is written."""
        raise NotImplementedError("a conversion stores files and bytes, not streams")

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "meter"):
            raise AttributeError(name)  # not set yet (an unpickled copy): no endless lookup
        return getattr(self.inner, name)


def charged(storage: Any, meter: Meter | None) -> Any:
    """The storage, charging its writes to `meter` when there is one."""
    return storage if meter is None else ChargedStorage(storage, meter)
