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
import math
import os
import socket
import time
import uuid
from collections import Counter

import gevent
from gevent import monkey
from gevent.event import Event
from redis import Redis
from redis.exceptions import RedisError

from livedoc import flags as flagmod
from livedoc import keys, metrics, progress
from livedoc.flags import RealtimeFlags, Transport

log = logging.getLogger("livedoc.hub")

TIMER_TICK = 0.25  # s: resolution of the hub's timer wheel (ping and long-poll deadlines)
TIMER_MIN = 2.0  # s: shorter waits use their own gevent timeout


# Why the hub ends a connection whose job's record vanished from Redis (see StreamHub._vanished).
VANISHED = "vanished"


class Connection:
    """One client connection (an SSE stream, a long-poll, a WebSocket) and the jobs it watches."""

    __slots__ = ("hub", "user_id", "transport", "label", "opened", "_event", "closed", "subs", "woken")

    def __init__(self, hub: StreamHub, user_id: int, transport: Transport, label: str | None = None):
        self.hub = hub
        self.user_id = user_id
        self.transport = Transport(transport)  # what the flags allow or close
        self.label = label or self.transport.value  # its name in the stats and metrics ("sse-multi")
        self.opened = time.monotonic()
        self._event = Event()
        self.closed: str | None = None  # why the hub wants this connection to end, if it does
        self.subs: dict[str, Subscription] = {}  # by document id
        self.woken = -1  # the coalescing slot of the last news wake (see StreamHub._wake_watchers)

    def watch(self, job_id: str, doc_id: str, current: progress.Progress | None = None) -> Subscription:
        """Follow a document's job; `current` is the progress the caller just read itself."""
        old = self.subs.get(doc_id)
        if old is not None:
            if old.job_id == job_id:
                old.offer(current)
                return old
            self.unwatch(doc_id)
        sub = Subscription(self, job_id, doc_id)
        self.subs[doc_id] = sub
        self.hub._add(sub, current)
        return sub

    def unwatch(self, doc_id: str) -> None:
        """Stop following a document."""
        sub = self.subs.pop(doc_id, None)
        if sub is not None:
            self.hub._remove(sub)

    def wait(self, timeout: float) -> None:
        """Park until a watched job changes, the hub closes the connection, or about `timeout` passed
        (long timeouts end on the hub's timer wheel, up to TIMER_TICK late)."""
        if timeout < TIMER_MIN:
            self._event.wait(timeout)
        else:
            # No gevent Timeout per parked connection (an object and a libev timer each, made and
            # cancelled on every wake): the hub's one timer greenlet wakes the connections due.
            slot = self.hub._park(self, timeout)
            try:
                self._event.wait()
            finally:
                self.hub._unpark(self, slot)
        self._event.clear()

    def wake(self) -> None:
        """Make wait() return."""
        self._event.set()

    def end(self, reason: str) -> None:
        """Ask the connection's delivery loop to finish (its peer is gone, say)."""
        self.closed = self.closed or reason
        self._event.set()


class Subscription:
    """One connection's interest in one job."""

    __slots__ = ("conn", "job_id", "doc_id", "watch")

    def __init__(self, conn: Connection, job_id: str, doc_id: str):
        self.conn = conn
        self.job_id = job_id
        self.doc_id = doc_id
        self.watch: _Watch | None = None  # set by the hub; lives as long as it has subscribers

    @property
    def progress(self) -> progress.Progress | None:
        """The newest progress the hub knows for the job."""
        return self.watch.progress if self.watch is not None else None

    @property
    def encoded(self) -> str | None:
        """The newest progress as compact JSON, encoded once for all subscribers."""
        return self.watch.encoded() if self.watch is not None else None

    def offer(self, current: progress.Progress | None) -> None:
        """Hand the hub a progress the caller read itself (kept if newer)."""
        if self.watch is not None:
            self.watch.offer(current)


class _Watch:
    __slots__ = ("progress", "subscribers", "_encoded", "frames", "seen_missing")

    def __init__(self) -> None:
        self.progress: progress.Progress | None = None
        self.subscribers: set[Subscription] = set()
        self._encoded: str | None = None
        # The current progress as each transport frames it (by transport and document), made by the
        # first connection that sends it and written as is by the others: encoded once per save, not
        # once per watcher. A new dict per progress, so a batch holding the old one stays right.
        self.frames: dict = {}
        self.seen_missing = False  # this hub found the job's record missing (the grace clock is in Redis)

    def offer(self, candidate: progress.Progress | None) -> bool:
        """Keep the candidate if it is newer; True when subscribers should be woken."""
        if candidate is None:
            return False
        if self.progress is not None and candidate.get("seq", 0) <= self.progress.get("seq", 0):
            return False
        self.progress = candidate
        self._encoded = None
        self.frames = {}
        return True

    def encoded(self) -> str | None:
        if self._encoded is None and self.progress is not None:
            self._encoded = json.dumps(self.progress, separators=(",", ":"))
        return self._encoded


class StreamHub:
    """Per-process fan-out of job progress to streams."""

    def __init__(
        self,
        connection: Redis,
        defaults: RealtimeFlags,
        poll_interval: float,
        stats_ttl: float = 15.0,
        host_id: str | None = None,
        vanish_grace: float = 45.0,
        coalesce: float = 0.0,
    ):
        self.connection = connection
        self.coalesce = coalesce  # s: a connection is woken for news at most once per slot this long
        self._later: set[Connection] = set()  # woken already in this slot: woken at the next one
        self._flush: object | None = None  # the libev timer that wakes them
        self.defaults = defaults
        self.flags = defaults
        self.poll_interval = poll_interval
        self.stats_ttl = stats_ttl
        self.vanish_grace = vanish_grace
        self.host_id = host_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._watches: dict[str, _Watch] = {}
        self._conns: set[Connection] = set()
        self._closing: str | None = None  # set once the process is shutting down
        self._per_user: Counter = Counter()
        # Kept as connections and subscriptions come and go: the stats snapshot of every poll reads
        # them instead of walking every subscription (50,000 at 5,000 streams of 10 documents).
        self._by_transport: Counter = Counter()
        self._by_doc: Counter = Counter()
        self._others_by_user: Counter = Counter()
        self._poller: gevent.Greenlet | None = None
        self._pusher: gevent.Greenlet | None = None
        self._sent_counters: dict = {}
        self._due: dict[int, set[Connection]] = {}  # timer wheel: tick number -> connections due then
        self._timer: gevent.Greenlet | None = None

    # -- connections -----------------------------------------------------------------------------
    def connect(self, user_id: int, transport: Transport, label: str | None = None) -> Connection:
        """Open a connection (label: its stats name, when not the transport's); watch documents with
        conn.watch(), end it with disconnect()."""
        self._ensure_running()
        conn = Connection(self, user_id, transport, label)
        # A worker that is stopping still finishes requests it accepted: a stream opened now must
        # end at once too, or it would hold the shutdown until the graceful timeout cuts it.
        conn.closed = self._closing
        self._conns.add(conn)
        self._per_user[user_id] += 1
        self._by_transport[conn.label] += 1
        metrics.OPEN_STREAMS.labels(conn.label).inc()
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection and its watches; a job stops being watched with its last watcher."""
        if conn not in self._conns:
            return
        for doc_id in list(conn.subs):
            conn.unwatch(doc_id)
        self._conns.discard(conn)
        _decrement(self._per_user, conn.user_id)
        _decrement(self._by_transport, conn.label)
        metrics.OPEN_STREAMS.labels(conn.label).dec()

    def _add(self, sub: Subscription, current: progress.Progress | None) -> None:
        watch = self._watches.get(sub.job_id)
        if watch is None:
            watch = self._watches[sub.job_id] = _Watch()
        watch.offer(current)
        watch.subscribers.add(sub)
        sub.watch = watch
        self._by_doc[sub.doc_id] += 1

    def _remove(self, sub: Subscription) -> None:
        watch = self._watches.get(sub.job_id)
        sub.watch = None
        _decrement(self._by_doc, sub.doc_id)
        if watch is not None:
            watch.subscribers.discard(sub)
            if not watch.subscribers:
                del self._watches[sub.job_id]

    def user_streams(self, user_id: int) -> int:
        """The user's open streams on every host: live here, as of the last tick elsewhere."""
        return self._per_user.get(user_id, 0) + self._others_by_user.get(str(user_id), 0)

    def close_all(self, reason: str) -> None:
        """Ask every open connection, and any opened from now on, to end (the process is stopping)."""
        self._closing = reason
        for conn in list(self._conns):
            conn.closed = reason
            conn.wake()
        # Drop this process from the shared stats now: its users' streams reconnect elsewhere and
        # would otherwise count twice against their cap until the snapshot expired.
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.delete(keys.STATS_HOSTS + self.host_id)
                pipe.zrem(keys.STATS_INDEX, self.host_id)
                pipe.execute()
        except RedisError:
            pass  # the snapshot expires by itself within STATS_TTL

    def note_sent(self, progs: list[progress.Progress], transport: str) -> None:
        """Record that progress events went out (for the save→send latency metric)."""
        sent = self._sent_counters.get(transport)
        if sent is None:  # labels() is a locked dict lookup: once per transport, not per event
            sent = self._sent_counters[transport] = metrics.EVENTS_SENT.labels(transport)
        sent.inc(len(progs))
        now = time.time()
        for prog in progs:
            if prog.get("updated_at"):
                metrics.SAVE_TO_SEND.observe(max(0.0, now - float(prog["updated_at"])))

    # -- stats -----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """This process's connection stats."""
        return {
            "host": self.host_id,
            "totalConnections": len(self._conns),
            "documentSubscriptions": len(self._by_doc),
            "connectionsByDocument": dict(self._by_doc),
            "connectionsByTransport": dict(self._by_transport),
            "connectionsByUser": {str(user): n for user, n in self._per_user.items()},
            "watchedJobs": len(self._watches),
            "at": round(time.time(), 3),
        }

    # -- loops -----------------------------------------------------------------------------------
    def _park(self, conn: Connection, timeout: float) -> int:
        slot = math.ceil((time.monotonic() + timeout) / TIMER_TICK)
        self._due.setdefault(slot, set()).add(conn)
        return slot

    def _unpark(self, conn: Connection, slot: int) -> None:
        due = self._due.get(slot)
        if due is not None:
            due.discard(conn)
            if not due:
                del self._due[slot]

    def _timer_loop(self) -> None:
        while True:
            gevent.sleep(TIMER_TICK)
            now = time.monotonic() / TIMER_TICK
            for slot in [s for s in self._due if s <= now]:
                for conn in self._due.pop(slot):
                    conn.wake()

    def _ensure_running(self) -> None:
        if self._poller is None or self._poller.dead:
            self._poller = gevent.spawn(self._poll_loop)
        if self._timer is None or self._timer.dead:
            self._timer = gevent.spawn(self._timer_loop)
        self._sync_push()

    def _sync_push(self) -> None:
        # Pub/sub is a read that blocks until a message comes: only where sockets are gevent's does
        # it let other greenlets run. Anywhere else (a test client, a CLI) a switch into it would hang
        # the whole process, so there the hub relies on its poll alone.
        want = self.flags.enabled and self.flags.push and monkey.is_module_patched("socket")
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
                pipe.hmget(progress.job_key(job_id), *progress.READ_FIELDS)
            if not self._closing:  # a stopping process no longer counts (see close_all)
                pipe.set(keys.STATS_HOSTS + self.host_id, snap, ex=max(1, int(self.stats_ttl)))
                pipe.zadd(keys.STATS_INDEX, {self.host_id: now + self.stats_ttl})
            pipe.zremrangebyscore(keys.STATS_INDEX, 0, now)
            pipe.zrangebyscore(keys.STATS_INDEX, now, "+inf")
            rows = pipe.execute()
        metrics.HUB_POLLS.inc()
        self._apply_flags(flagmod.from_raw(self.defaults, rows[0]))
        missing = []
        for job_id, row in zip(job_ids, rows[1 : 1 + len(job_ids)]):
            if all(value is None for value in row):
                missing.append(job_id)
            else:
                self._found(job_id)
                self._offer(job_id, progress.decode(*row))
        self._vanished(missing)
        self._read_other_hosts([h.decode() for h in rows[-1] if h.decode() != self.host_id])

    def _read_other_hosts(self, hosts: list[str]) -> None:
        # The per-user stream cap needs other hosts' counts on every connect; reading them here,
        # once per tick, keeps connects free of Redis round trips (at most one tick stale).
        others: Counter = Counter()
        for raw in self.connection.mget([keys.STATS_HOSTS + h for h in hosts]) if hosts else []:
            if raw is not None:
                others.update(json.loads(raw).get("connectionsByUser", {}))
        self._others_by_user = others

    def _vanished(self, job_ids: list[str]) -> None:
        # The jobs' records are gone from Redis (restarted empty, flushed). If no worker writes them
        # again within vanish_grace (JOB_VANISH_GRACE, on the clock all hosts share), their streams
        # end (no event: the hub cannot know what follows) rather than stay on "running" forever.
        # The client's reconnect settles against the database: the document is queued again from
        # it as a new job (livedoc/documents.py), or, past its last recovery, ends "lost" there.
        missing = {}
        for job_id in job_ids:
            watch = self._watches.get(job_id)
            if watch is not None and watch.progress is not None and not progress.is_terminal(watch.progress):
                watch.seen_missing = True
                missing[job_id] = watch.progress
        for job_id in progress.vanished_endings(self.connection, missing, self.vanish_grace):
            for sub in list(self._watches[job_id].subscribers):
                sub.conn.end(VANISHED)

    def _found(self, job_id: str) -> None:
        # A record seen missing is back (a worker rode out the restart): its next loss gets a new grace.
        watch = self._watches.get(job_id)
        if watch is not None and watch.seen_missing:
            watch.seen_missing = False
            progress.found_again(self.connection, job_id)

    def _offer(self, job_id: str, candidate: progress.Progress | None) -> None:
        watch = self._watches.get(job_id)
        if watch is not None and watch.offer(candidate):
            self._wake_watchers(watch)

    def _wake_watchers(self, watch: _Watch) -> None:
        # Coalescing: time is cut into slots of SSE_COALESCE_MS. A connection not yet woken in the
        # current slot is woken at once (so the first save after a quiet spell arrives without
        # delay); one woken already waits for the next slot's start, and whatever its documents saved
        # meanwhile goes out in one batch, one write. A connection watching 10 busy documents is then
        # woken at most once a slot, not once per save of each.
        if not self.coalesce:
            for sub in watch.subscribers:  # set() only schedules the switch: the set cannot change
                sub.conn.wake()
            return
        slot = int(time.monotonic() / self.coalesce)
        later = self._later
        for sub in watch.subscribers:
            conn = sub.conn
            if conn.woken < slot:
                conn.woken = slot
                conn.wake()
            else:
                later.add(conn)
        if later and self._flush is None:
            delay = max(0.0, (slot + 1) * self.coalesce - time.monotonic())
            self._flush = gevent.get_hub().loop.timer(delay)
            self._flush.start(self._wake_later, slot + 1)

    def _wake_later(self, slot: int) -> None:
        # Runs in the gevent hub (a libev timer callback): only sets events, never blocks.
        self._flush.close()
        self._flush = None
        later, self._later = self._later, set()
        for conn in later:
            conn.woken = slot
            conn.wake()

    def _apply_flags(self, new: RealtimeFlags) -> None:
        old, self.flags = self.flags, new
        if new == old:
            return
        log.info("realtime flags now %s", new.as_dict())
        self._sync_push()
        for conn in list(self._conns):
            if not new.allows(conn.transport):
                conn.closed = "mode"
                conn.wake()

    def _poll_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.tick()
            except RedisError as exc:
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
                        metrics.PUSH_MESSAGES.inc()
                        self._offer(job_id, progress.parse_published(msg["data"]))
            except RedisError as exc:
                metrics.REDIS_ERRORS.labels("pubsub").inc()
                log.warning("hub pub/sub lost: %s; reconnecting", exc.__class__.__name__)
            finally:
                try:
                    pubsub.close()
                except RedisError:
                    pass
            gevent.sleep(backoff)
            backoff = min(backoff * 2, 10)


def host_snapshots(connection: Redis) -> list[dict]:
    """The last published stats of every live web process."""
    hosts = [h.decode() for h in connection.zrangebyscore(keys.STATS_INDEX, time.time(), "+inf")]
    raws = connection.mget([keys.STATS_HOSTS + h for h in hosts]) if hosts else []
    return [json.loads(raw) for raw in raws if raw is not None]


def collect_stats(connection: Redis) -> dict:
    """Connection stats summed over every live web process on every host."""
    total = {
        "totalConnections": 0,
        "documentSubscriptions": 0,
        "connectionsByDocument": Counter(),
        "connectionsByTransport": Counter(),
        "hosts": [],
    }
    for snap in host_snapshots(connection):
        total["totalConnections"] += snap["totalConnections"]
        total["connectionsByDocument"].update(snap["connectionsByDocument"])
        total["connectionsByTransport"].update(snap["connectionsByTransport"])
        total["hosts"].append(snap)
    total["documentSubscriptions"] = len(total["connectionsByDocument"])
    total["connectionsByDocument"] = dict(total["connectionsByDocument"])
    total["connectionsByTransport"] = dict(total["connectionsByTransport"])
    return total


def _decrement(counts: Counter, key) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
