"""The stream hub: one per web process, shared by every open stream in it.

Streams subscribe to a job and park on a gevent Event. The hub, not the streams, talks to Redis:
- one poll loop reads the progress of every watched job (and the real-time flags) in one pipelined
  round trip every SSE_POLL_INTERVAL, so Redis work grows with jobs watched, not with viewers;
- one pub/sub connection (pattern subscription) wakes the subscribers of a job the moment the worker
  publishes a save, so latency is not bounded by the poll interval; polling stays the safety net;
- every tick it publishes this process's connection stats to Redis with a short TTL, so stats cover
  all hosts and a dead host drops out by itself.
It needs a gevent hub (gunicorn -k gevent); no Redis connection is held per stream.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections import Counter

import gevent
from gevent.event import Event
from redis import Redis
from redis.exceptions import RedisError

from livedoc import flags as flagmod
from livedoc import keys, metrics, progress
from livedoc.flags import RealtimeFlags

log = logging.getLogger("livedoc.hub")


class Subscription:
    """One stream's interest in one job."""

    __slots__ = ("hub", "job_id", "doc_id", "user_id", "transport", "opened", "_event", "closed")

    def __init__(self, hub: StreamHub, job_id: str, doc_id: str, user_id: int, transport: str):
        self.hub = hub
        self.job_id = job_id
        self.doc_id = doc_id
        self.user_id = user_id
        self.transport = transport
        self.opened = time.monotonic()
        self._event = Event()
        self.closed: str | None = None  # why the hub wants this stream to end, if it does

    @property
    def progress(self) -> progress.Progress | None:
        """The newest progress the hub knows for the job."""
        watch = self.hub._watches.get(self.job_id)
        return watch.progress if watch else None

    @property
    def encoded(self) -> str | None:
        """The newest progress as compact JSON, encoded once for all subscribers."""
        watch = self.hub._watches.get(self.job_id)
        return watch.encoded() if watch else None

    def wait(self, timeout: float) -> bool:
        """Park until the job changes or the hub closes the stream; False on timeout."""
        woke = self._event.wait(timeout)
        self._event.clear()
        return bool(woke)

    def wake(self) -> None:
        """Make wait() return."""
        self._event.set()


class _Watch:
    __slots__ = ("progress", "subscribers", "_encoded")

    def __init__(self) -> None:
        self.progress: progress.Progress | None = None
        self.subscribers: set[Subscription] = set()
        self._encoded: str | None = None

    def offer(self, candidate: progress.Progress | None) -> bool:
        """Keep the candidate if it is newer; True when subscribers should be woken."""
        if candidate is None:
            return False
        if self.progress is not None and candidate.get("seq", 0) <= self.progress.get("seq", 0):
            return False
        self.progress = candidate
        self._encoded = None
        return True

    def encoded(self) -> str | None:
        if self._encoded is None and self.progress is not None:
            self._encoded = json.dumps(self.progress, separators=(",", ":"))
        return self._encoded


class StreamHub:
    """Per-process fan-out of job progress to streams."""

    def __init__(self, connection: Redis, defaults: RealtimeFlags, poll_interval: float,
                 stats_ttl: float = 15.0, host_id: str | None = None):
        self.connection = connection
        self.defaults = defaults
        self.flags = defaults
        self.poll_interval = poll_interval
        self.stats_ttl = stats_ttl
        self.host_id = host_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._watches: dict[str, _Watch] = {}
        self._subs: set[Subscription] = set()
        self._per_user: Counter = Counter()
        self._poller: gevent.Greenlet | None = None
        self._pusher: gevent.Greenlet | None = None
        self.counters: Counter = Counter()

    # -- streams ---------------------------------------------------------------------------------
    def subscribe(self, job_id: str, doc_id: str, user_id: int, transport: str,
                  current: progress.Progress | None = None) -> Subscription:
        """Watch a job for one stream; `current` is the progress the stream just read itself."""
        self._ensure_running()
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = _Watch()
        watch.offer(current)
        sub = Subscription(self, job_id, doc_id, user_id, transport)
        watch.subscribers.add(sub)
        self._subs.add(sub)
        self._per_user[user_id] += 1
        self.counters["opened"] += 1
        metrics.OPEN_STREAMS.labels(transport).inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a stream; the job stops being watched when its last stream goes."""
        if sub not in self._subs:
            return
        self._subs.discard(sub)
        self._per_user[sub.user_id] -= 1
        if self._per_user[sub.user_id] <= 0:
            del self._per_user[sub.user_id]
        self.counters["closed"] += 1
        metrics.OPEN_STREAMS.labels(sub.transport).dec()
        watch = self._watches.get(sub.job_id)
        if watch is not None:
            watch.subscribers.discard(sub)
            if not watch.subscribers:
                del self._watches[sub.job_id]

    def user_streams(self, user_id: int) -> int:
        """The user's open streams on every host: live here, from the last snapshots elsewhere."""
        total = self._per_user.get(user_id, 0)
        for snap in host_snapshots(self.connection):
            if snap["host"] != self.host_id:
                total += snap.get("connectionsByUser", {}).get(str(user_id), 0)
        return total

    def close_all(self, reason: str) -> None:
        """Ask every open stream to end (server shutting down, so browsers reconnect elsewhere)."""
        for sub in list(self._subs):
            sub.closed = reason
            sub.wake()

    def note_sent(self, prog: progress.Progress, transport: str) -> None:
        """Record that a progress event went out (for the save→send latency metric)."""
        self.counters["events_sent"] += 1
        metrics.EVENTS_SENT.labels(transport).inc()
        if prog.get("updated_at"):
            metrics.SAVE_TO_SEND.observe(max(0.0, time.time() - float(prog["updated_at"])))

    # -- stats -----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """This process's connection stats."""
        by_doc: Counter = Counter()
        by_transport: Counter = Counter()
        by_user: Counter = Counter()
        for sub in self._subs:
            by_doc[sub.doc_id] += 1
            by_transport[sub.transport] += 1
            by_user[str(sub.user_id)] += 1
        return {
            "host": self.host_id,
            "totalConnections": len(self._subs),
            "documentSubscriptions": len(by_doc),
            "connectionsByDocument": dict(by_doc),
            "connectionsByTransport": dict(by_transport),
            "connectionsByUser": dict(by_user),
            "watchedJobs": len(self._watches),
            "at": round(time.time(), 3),
        }

    # -- loops -----------------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._poller is None or self._poller.dead:
            self._poller = gevent.spawn(self._poll_loop)
        self._sync_push()

    def _sync_push(self) -> None:
        want = self.flags.enabled and self.flags.push
        running = self._pusher is not None and not self._pusher.dead
        if want and not running:
            self._pusher = gevent.spawn(self._push_loop)
        elif running and not want:
            self._pusher.kill(block=False)
            self._pusher = None

    def tick(self) -> None:
        """One poll round trip: flags, every watched job's progress, and this host's stats."""
        job_ids = list(self._watches)
        snap = json.dumps(self.snapshot())
        now = time.time()
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.FLAGS)
            for job_id in job_ids:
                pipe.hmget(progress.job_key(job_id), "meta", "status")
            pipe.set(keys.STATS_HOSTS + self.host_id, snap, ex=max(1, int(self.stats_ttl)))
            pipe.zadd(keys.STATS_INDEX, {self.host_id: now + self.stats_ttl})
            pipe.zremrangebyscore(keys.STATS_INDEX, 0, now)
            rows = pipe.execute()
        self.counters["polls"] += 1
        metrics.HUB_POLLS.inc()
        self._apply_flags(flagmod.from_raw(self.defaults, rows[0]))
        for job_id, (meta, status) in zip(job_ids, rows[1:1 + len(job_ids)]):
            self._offer(job_id, progress.decode(meta, status))

    def _offer(self, job_id: str, candidate: progress.Progress | None) -> None:
        watch = self._watches.get(job_id)
        if watch is not None and watch.offer(candidate):
            for sub in list(watch.subscribers):
                sub.wake()

    def _apply_flags(self, new: RealtimeFlags) -> None:
        old, self.flags = self.flags, new
        if new == old:
            return
        log.info("realtime flags now %s", new.as_dict())
        self._sync_push()
        for sub in list(self._subs):
            if not transport_allowed(new, sub.transport):
                sub.closed = "mode"
                sub.wake()

    def _poll_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.tick()
            except RedisError as exc:
                self.counters["redis_errors"] += 1
                metrics.REDIS_ERRORS.labels("poll").inc()
                log.warning("hub poll failed: %s", exc.__class__.__name__)
            gevent.sleep(max(0.05, self.poll_interval - (time.monotonic() - started)))

    def _push_loop(self) -> None:
        backoff = 0.5
        while True:
            pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(progress.CHANNEL_PATTERN)
                backoff = 0.5
                for msg in pubsub.listen():
                    if msg.get("type") != "pmessage":
                        continue
                    job_id = progress.job_id_from_channel(msg["channel"])
                    if job_id in self._watches:
                        self.counters["push_messages"] += 1
                        metrics.PUSH_MESSAGES.inc()
                        self._offer(job_id, progress.parse_published(msg["data"]))
            except RedisError as exc:
                self.counters["redis_errors"] += 1
                metrics.REDIS_ERRORS.labels("pubsub").inc()
                log.warning("hub pub/sub lost: %s; reconnecting", exc.__class__.__name__)
            finally:
                try:
                    pubsub.close()
                except RedisError:
                    pass
            gevent.sleep(backoff)
            backoff = min(backoff * 2, 10)


def transport_allowed(flags: RealtimeFlags, transport: str) -> bool:
    """Whether streams of this transport may stay open under these flags."""
    if transport == "ws":
        return flags.enabled and flags.websocket
    if transport == "sse-multi":
        return flags.enabled and flags.mode == "sse"
    return flags.transport == transport


def host_snapshots(connection: Redis) -> list[dict]:
    """The last published stats of every live web process."""
    hosts = [h.decode() for h in connection.zrangebyscore(keys.STATS_INDEX, time.time(), "+inf")]
    raws = connection.mget([keys.STATS_HOSTS + h for h in hosts]) if hosts else []
    return [json.loads(raw) for raw in raws if raw is not None]


def collect_stats(connection: Redis) -> dict:
    """Connection stats summed over every live web process on every host."""
    total = {"totalConnections": 0, "documentSubscriptions": 0, "connectionsByDocument": Counter(),
             "connectionsByTransport": Counter(), "hosts": []}
    for snap in host_snapshots(connection):
        total["totalConnections"] += snap["totalConnections"]
        total["connectionsByDocument"].update(snap["connectionsByDocument"])
        total["connectionsByTransport"].update(snap["connectionsByTransport"])
        total["hosts"].append(snap)
    total["documentSubscriptions"] = len(total["connectionsByDocument"])
    total["connectionsByDocument"] = dict(total["connectionsByDocument"])
    total["connectionsByTransport"] = dict(total["connectionsByTransport"])
    return total
