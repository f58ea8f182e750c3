"""The conversion fleet as readers see it: how many workers are alive, and a document's place in line.

Read from RQ's own records, so it counts any worker on the queue, stock `rq worker` or
scripts/worker: RQ's worker registry (a set per queue) names every worker that started, and each
worker's hash lives only while its heartbeats renew it (RQ's worker TTL), so a worker that died
without unregistering stops counting once its hash expires. A job waits first in its owner's turn
(livedoc/fair.py), then in RQ's queue: its place counts the documents that start before it in both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from redis import Redis
from rq.queue import Queue
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from livedoc import fair


@dataclass(frozen=True)
class QueueInfo:
    """Where a waiting document stands: its 1-based place among the documents that start before it
    (None: not waiting), and the live workers."""

    position: int | None
    workers: int

    def as_dict(self) -> dict:
        """The JSON form (`"queue"` in the document API)."""
        return asdict(self)


def queue_key(queue_name: str) -> str:
    """The Redis list RQ keeps the queue's job ids in."""
    return Queue.redis_queue_namespace_prefix + queue_name


def workers_alive(connection: Redis, queue_name: str) -> int:
    """How many workers listening on the queue are alive (their heartbeat has not expired)."""
    return queue_info(connection, queue_name, None).workers


def queue_info(connection: Redis, queue_name: str, job_id: str | None) -> QueueInfo:
    """The job's place among documents waiting (page ranges and sharper pages not counted) and the
    number of live workers."""
    if job_id is None:
        return QueueInfo(position=None, workers=_alive(connection, queue_name))
    found = fair.place(connection, queue_name, job_id)
    return QueueInfo(position=found.position, workers=found.workers)


def waiting_place(connection: Redis, queue_name: str, job_id: str, hd_per_user: int) -> QueueInfo:
    """`queue_info` for a reader of a waiting document, after an admission step: readers of waiting
    documents are the admission's periodic check, so no job waits for a turn nothing else gives it."""
    fair.admit(connection, queue_name, hd_per_user)
    return queue_info(connection, queue_name, job_id)


def _alive(connection: Redis, queue_name: str) -> int:
    keys = sorted(connection.smembers(WORKERS_BY_QUEUE_KEY % queue_name))
    if not keys:
        return 0
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        return sum(pipe.execute())


def queue_length(connection: Redis, queue_name: str) -> int:
    """Jobs waiting: in RQ's queue and for their turn (not counting those scheduled for a retry)."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(queue_key(queue_name))
        pipe.hlen(fair.PREFIX + "owner")
        queued, waiting = pipe.execute()
    return int(queued) + int(waiting)
