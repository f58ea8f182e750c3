"""The conversion fleet as readers see it: how many workers are alive, and a job's place in its queue.

Read from RQ's own records, so it counts any worker on the queue, stock `rq worker` or
scripts/worker: RQ's worker registry (a set per queue) names every worker that started, and each
worker's hash lives only while its heartbeats renew it (RQ's worker TTL), so a worker that died
without unregistering stops counting once its hash expires.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from redis import Redis
from rq.queue import Queue
from rq.worker_registration import WORKERS_BY_QUEUE_KEY


@dataclass(frozen=True)
class QueueInfo:
    """Where a queued job stands: its 1-based place in the queue (None: not in it) and live workers."""

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
    """The job's place in the queue and the number of live workers, in two round trips."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.smembers(WORKERS_BY_QUEUE_KEY % queue_name)
        if job_id is not None:
            pipe.lpos(queue_key(queue_name), job_id)
        rows = pipe.execute()
    keys = sorted(rows[0])
    alive = 0
    if keys:
        with connection.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            alive = sum(pipe.execute())
    index = rows[1] if job_id is not None else None
    return QueueInfo(position=None if index is None else index + 1, workers=alive)


def queue_length(connection: Redis, queue_name: str) -> int:
    """Jobs waiting in the queue (not counting those scheduled for a retry)."""
    return connection.llen(queue_key(queue_name))
