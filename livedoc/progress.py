"""The progress contract: the one module that writes and reads a conversion's progress.

Progress lives in the RQ job's meta under ``META_KEY`` (so the RQ dashboard shows it) as one dict:
``seq`` (+1 on every write), ``state``, ``stage``, ``percent`` (never goes back, across attempts
too), ``page``, ``pages``, ``ready`` (pages 1..ready are servable now; never goes back, across
attempts too, since an attempt keeps the pages stored before it; equals ``pages`` at complete),
``message``, ``error`` ({code, message, retryable}) when failed, ``attempt``, ``updated_at``
(epoch seconds). After each save the worker PUBLISHes the saved dict as JSON on
``channel(job_id)`` so streams wake at once; readers still poll, because a missed message
is normal for pub/sub. Jobs use RQ's default serializer (``SERIALIZER``), so a stock ``rq worker``
runs them and the RQ dashboard reads their meta; meta written as JSON by earlier versions is still
read.

A deleted document's job is marked (``keys.DELETED_JOB``); from then on a save refuses to write
and raises ``Deleted``, so a conversion that is still running can never resurrect it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from rq.serializers import DefaultSerializer

from livedoc import endings, keys
from livedoc.storage import json_object

META_KEY = "progress"
# The progress is kept twice in the job's hash: as JSON in its own field, which readers read and
# Redis scripts can merge into (cjson), and in RQ's meta (pickled), which the RQ dashboard shows.
# RQ never writes the field: a retry or a hand-back that saves the job cannot roll it back.
FIELD = "livedoc_progress"
READ_FIELDS = (FIELD, "status", "meta")
# The serializer of livedoc's jobs, their meta included: RQ's default, what `rq worker` expects.
SERIALIZER = DefaultSerializer
CHANNEL_PATTERN = keys.PROGRESS_PATTERN


class State(StrEnum):
    """Where a conversion is; the last two are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


TERMINAL = frozenset({State.COMPLETE.value, State.FAILED.value})

# RQ statuses that mean "no worker will touch this job again".
_RQ_DEAD = frozenset({b"failed", b"stopped", b"canceled"})

Progress = dict[str, Any]


def channel(job_id: str) -> str:
    """The pub/sub channel on which a job's progress is announced."""
    return keys.PROGRESS_CHANNEL + job_id


def job_id_from_channel(name: bytes | str) -> str:
    """The job id named by a progress channel."""
    if isinstance(name, bytes):
        name = name.decode()
    return name[len(keys.PROGRESS_CHANNEL) :]


def is_terminal(progress: Progress | None) -> bool:
    """True when the progress is complete or failed."""
    return bool(progress) and progress.get("state") in TERMINAL


def initial(seq: int, attempt: int) -> Progress:
    """The progress stored with a freshly enqueued job."""
    return {
        "seq": seq,
        "state": State.QUEUED.value,
        "stage": "queued",
        "percent": 0,
        "page": 0,
        "pages": 0,
        "ready": 0,
        "message": "Waiting for a worker",
        "error": None,
        "attempt": attempt,
        "updated_at": round(time.time(), 4),
    }


# Percent bands: rendering dominates the time, so it gets most of the bar.
RENDER_START = 5
RENDER_END = 95


def resumed(seq: int, attempt: int, ready: int, pages: int, message: str) -> Progress:
    """The progress stored with an attempt queued by the web (a retry, a recovery) that keeps the
    `ready` pages stored before it (moved under its number already); its percent is what those pages
    are worth in the render band, so it does not fall back to 0 either."""
    prog = initial(seq, attempt)
    percent = int(RENDER_START + (RENDER_END - RENDER_START) * ready / pages) if pages and ready else 0
    prog.update(
        ready=ready, pages=pages, page=min(ready + 1, pages) if pages else 0, percent=percent, message=message
    )
    return prog


def failure(ending: endings.Ending, message: str | None = None) -> dict[str, Any]:
    """The fields of a progress that ended in failure with `ending` (and a more precise message)."""
    return {
        "state": State.FAILED.value,
        "stage": "failed",
        "message": message or ending.message,
        "error": ending.error(message),
    }


def lost(previous: Progress | None) -> Progress:
    """What a reader reports when RQ gave up on a job whose progress never reached an end."""
    base = dict(previous) if previous else initial(0, 1)
    base.update(seq=base["seq"] + 1, **failure(endings.WORKER_LOST))
    return base


def deleted(previous: Progress | None) -> Progress:
    """The terminal event of a document its owner deleted (every open stream shows it and ends)."""
    base = dict(previous) if previous else initial(0, 1)
    base.update(
        seq=vanished_seq(base["seq"]),
        state=State.FAILED.value,
        stage=endings.DELETED.code,
        message=endings.DELETED.message,
        updated_at=round(time.time(), 4),
        error=endings.DELETED.error(),
    )
    return base


def mark_deleted(connection: Redis, job: Job, previous: Progress | None, ttl: int = 3600) -> Progress:
    """Stop every writer of this job, then store and announce the `deleted` ending; returns it.

    The job's record is kept for `ttl` seconds with the ending in its meta, so hubs on other hosts
    that missed the announcement still read it on their next poll.
    """
    ending = deleted(previous)
    job.meta[META_KEY] = ending
    with connection.pipeline(transaction=True) as pipe:
        pipe.set(keys.DELETED_JOB + job.id, 1, ex=ttl)
        pipe.hset(job.key, mapping={"meta": job.serializer.dumps(job.meta), FIELD: json.dumps(ending)})
        pipe.expire(job.key, ttl)
        pipe.publish(channel(job.id), json.dumps(ending))
        pipe.execute()
    return ending


def vanished_seq(floor: int) -> int:
    """A seq for an ending derived after the job's record vanished from Redis (restarted empty,
    flushed, expired): the seq the job had reached is unknowable, so take one above any a job can
    reach by writing (milliseconds since the epoch) and every viewer applies the ending."""
    return max(floor + 1, int(time.time() * 1000))


# How long a "first found missing" mark outlives its job: far beyond any grace, short of forever.
MISSING_TTL = 7 * 24 * 3600


def vanished(previous: Progress | None) -> Progress:
    """The `lost` ending of a job whose record vanished from Redis, with a seq every viewer applies."""
    ending = lost(previous)
    ending["seq"] = vanished_seq(previous["seq"] if previous else 0)
    return ending


def vanished_endings(
    connection: Redis, missing: Mapping[str, Progress | None], grace: float
) -> dict[str, Progress]:
    """The endings of the jobs (id -> last progress known) whose record has been missing `grace`
    seconds or more, in one pipelined round trip.

    The clock is a Redis key per job that the first reader to find the record missing sets, so
    every host and every request counts from the same moment, and Redis's own clock measures it
    (the time gone by is what the key's TTL has lost), so the hosts' clocks need not agree. A
    worker that rode out a Redis restart writes the record again within the grace, and its job
    goes on (see `found_again`).
    """
    if not missing:
        return {}
    with connection.pipeline(transaction=False) as pipe:
        for job_id in missing:
            pipe.set(keys.MISSING_JOB + job_id, 1, nx=True, ex=MISSING_TTL)
            pipe.pttl(keys.MISSING_JOB + job_id)
        rows = pipe.execute()
    out = {}
    for (job_id, previous), left_ms in zip(missing.items(), rows[1::2]):
        if left_ms > 0 and MISSING_TTL - left_ms / 1000 >= grace:
            out[job_id] = vanished(previous)
    return out


def found_again(connection: Redis, job_id: str) -> None:
    """Forget that a job's record was missing: it is back, and a later loss starts a new grace."""
    connection.delete(keys.MISSING_JOB + job_id)


def job_key(job_id: str) -> bytes:
    """The Redis hash in which RQ keeps the job (and so its meta)."""
    return Job.key_for(job_id)


def parse_published(data: bytes | str) -> Progress | None:
    """The progress dict carried by a pub/sub message, or None when it is not one."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("seq"), int) else None


def decode(
    field_raw: bytes | None, status_raw: bytes | None, meta_raw: bytes | None = None
) -> Progress | None:
    """The progress held in a job's raw READ_FIELDS (the JSON field; RQ's meta when it has none yet)."""
    progress = json_object(field_raw)
    if progress is None:
        meta = _load_meta(meta_raw)
        progress = meta.get(META_KEY) if isinstance(meta, dict) else None
    if not isinstance(progress, dict):
        return None
    if status_raw in _RQ_DEAD and not is_terminal(progress):
        # The work horse died (SIGKILL, OOM) or RQ gave up after its retries: derive the ending
        # instead of leaving viewers on "running" forever. Derived the same way on every host.
        return lost(progress)
    return progress


def _load_meta(meta_raw: bytes | None) -> dict | None:
    if not meta_raw:
        return None
    try:
        # Jobs queued before livedoc used RQ's default serializer kept their meta as JSON.
        return json.loads(meta_raw) if meta_raw[:1] == b"{" else SERIALIZER.loads(meta_raw)
    except Exception:  # noqa: BLE001 - pickle raises anything on bytes that are not its own
        return None


def _rewrite(connection: Redis, job_id: str, changes: dict[str, Any]) -> Progress:
    """Apply changes to a job's stored progress outside a ProgressWriter, and announce it.

    Written with livedoc's own serializer whatever the caller's worker uses, because the worker
    that calls it may be a misconfigured one.
    """
    key = job_key(job_id)
    field_raw, _status, meta_raw = connection.hmget(key, *READ_FIELDS)
    meta = _load_meta(meta_raw)
    meta = meta if isinstance(meta, dict) else {}
    previous = json_object(field_raw) or (
        meta.get(META_KEY) if isinstance(meta.get(META_KEY), dict) else initial(0, 1)
    )
    updated = {**previous, **changes, "seq": previous.get("seq", 0) + 1, "updated_at": round(time.time(), 4)}
    meta[META_KEY] = updated
    with connection.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"meta": SERIALIZER.dumps(meta), FIELD: json.dumps(updated)})
        pipe.publish(channel(job_id), json.dumps(updated))
        pipe.execute()
    return updated


def fail_unrunnable(connection: Redis, job_id: str, message: str) -> Progress:
    """Record that no attempt could start (the worker could not load the job) and announce it."""
    return _rewrite(connection, job_id, failure(endings.WORKER_MISCONFIGURED, message))


def handed_back(connection: Redis, job_id: str) -> Progress:
    """Record that a stopping worker put its running job back at the front of the queue."""
    return _rewrite(
        connection,
        job_id,
        {
            "state": State.QUEUED.value,
            "stage": "requeued",
            "error": None,
            "message": "The worker stopped; the conversion starts again on the next worker.",
        },
    )


def read(connection: Redis, job_id: str) -> Progress | None:
    """The job's current progress, or None when the job is unknown."""
    return decode(*connection.hmget(job_key(job_id), *READ_FIELDS))


def read_many(connection: Redis, job_ids: list[str]) -> dict[str, Progress | None]:
    """The progress of many jobs in one pipelined round trip."""
    if not job_ids:
        return {}
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(job_key(job_id), *READ_FIELDS)
        rows = pipe.execute()
    return {job_id: decode(*row) for job_id, row in zip(job_ids, rows)}


class ProgressWriter:
    """The worker's side of the contract: keeps seq increasing and percent from going back."""

    def __init__(self, job: Job, connection: Redis):
        self.job = job
        self.connection = connection
        # The JSON field is ahead of RQ's meta when page-range jobs merged into it (they write the
        # field only): an attempt run again must go on from the newer of the two.
        try:
            stored = json_object(connection.hget(job.key, FIELD))
        except RedisError:
            stored = None  # the save will find Redis down too, and say so
        candidates = [
            p
            for p in (stored, job.meta.get(META_KEY))
            if isinstance(p, dict) and isinstance(p.get("seq"), int)
        ]
        previous = max(candidates, key=lambda p: p["seq"]) if candidates else initial(0, 1)
        # An attempt that never started keeps its number; anything else (an RQ retry, a job
        # re-run after its worker died) is a new attempt. It keeps the pages stored before it
        # (workers/convert.py), so `ready` and percent go on from where they were, never back.
        started_before = previous.get("stage") != "queued"
        self.progress: Progress = dict(previous)
        self.progress["attempt"] = previous.get("attempt", 1) + (1 if started_before else 0)
        self.progress.setdefault("percent", 0)
        self.progress.setdefault("ready", 0)
        self.progress["error"] = None
        self._save_script = connection.register_script(_GUARDED_SAVE)
        self._deleted_key = keys.DELETED_JOB + job.id
        # Set once page-range jobs merge into this job's progress too (workers/chunks.py): each save
        # then continues from the stored seq, percent and ready instead of this writer's own copy.
        # So is the first save of an attempt after another: the earlier attempt's page-range jobs
        # may still be merging pages until that save makes them stale.
        self.merge = started_before
        self._merge_first = started_before

    @property
    def attempt(self) -> int:
        """The number of the attempt being written."""
        return self.progress["attempt"]

    def update(
        self,
        stage: str,
        percent: float | None = None,
        page: int | None = None,
        pages: int | None = None,
        message: str | None = None,
        ready: int | None = None,
    ) -> Progress:
        """Record that the conversion is running at this stage (and page, and pages ready)."""
        changes: dict[str, Any] = {"state": State.RUNNING.value, "stage": stage}
        if percent is not None:
            changes["percent"] = max(self.progress["percent"], min(100, int(percent)))
        if page is not None:
            changes["page"] = page
        if pages is not None:
            changes["pages"] = pages
        if ready is not None:
            changes["ready"] = max(self.progress.get("ready", 0), ready)
        if message is not None:
            changes["message"] = message
        return self._save(changes)

    def complete(self, pages: int, message: str = "Ready") -> Progress:
        """Record the successful end of the conversion: every page is ready."""
        return self._save(
            {
                "state": State.COMPLETE.value,
                "stage": "complete",
                "percent": 100,
                "page": pages,
                "pages": pages,
                "ready": pages,
                "message": message,
            }
        )

    def fail(self, ending: endings.Ending, message: str | None = None) -> Progress:
        """Record the end of a conversion that failed for good with `ending`."""
        return self._save(failure(ending, message))

    def will_retry(self, message: str) -> Progress:
        """Record a transient failure after which RQ will run the job again."""
        return self._save({"state": State.QUEUED.value, "stage": "retrying", "message": message})

    def _save(self, changes: dict[str, Any]) -> Progress:
        if self.merge:
            return self._merged_save(changes)
        self.progress.update(changes)
        self.progress["seq"] += 1
        self.progress["updated_at"] = round(time.time(), 4)
        self.job.meta[META_KEY] = dict(self.progress)
        payload = json.dumps(self.progress)
        written = self._save_script(
            keys=[self.job.key, self._deleted_key],
            args=[self.job.serializer.dumps(self.job.meta), channel(self.job.id), payload],
        )
        if not written:
            raise Deleted(self.job.id)
        return dict(self.progress)

    def _merged_save(self, changes: dict[str, Any]) -> Progress:
        self.progress.update(changes)
        self.progress["updated_at"] = round(time.time(), 4)
        script = self.connection.register_script(_MERGED_SAVE)
        saved = script(
            keys=[self.job.key, self._deleted_key], args=[json.dumps(self.progress), channel(self.job.id)]
        )
        if not saved:
            raise Deleted(self.job.id)
        self.progress = json.loads(saved)
        self.job.meta[META_KEY] = dict(self.progress)
        if self._merge_first:
            self._merge_first = self.merge = False
        return dict(self.progress)


class Deleted(Exception):
    """The document was deleted while its conversion ran: stop, write nothing more."""


def merge_page(
    connection: Redis,
    job_id: str,
    attempt: int,
    n: int,
    pages: int,
    render_start: float,
    render_end: float,
    entry: dict | None,
    size: int,
    owner: str,
    lease_key: str,
    lease_ttl: int,
    stored_key: str,
    entries_key: str,
    announce: bool = True,
) -> str:
    """Record that page n of a page-range job is stored, in the document job's progress, atomically.

    `ready` becomes the number of leading pages stored by any chunk, `percent` follows the count of
    stored pages (never back), `seq` goes on from the stored one. Without `announce` the page is
    recorded but the progress is left for a later call (unless it makes every page ready); n = 0
    records no page and announces what the pages recorded so far make of it. Answers "ok", or why
    the page was not recorded: "deleted" (the document was), "lost" (another worker took this chunk over),
    "stale" (another attempt runs now) or "ended" (the document job already ended).
    """
    script = connection.register_script(_MERGE_PAGE)
    status = script(
        keys=[job_key(job_id), keys.DELETED_JOB + job_id, stored_key, entries_key, lease_key],
        args=[
            n,
            json.dumps(entry, separators=(",", ":")),
            size,
            owner,
            lease_ttl,
            channel(job_id),
            pages,
            render_start,
            render_end,
            round(time.time(), 4),
            attempt,
            1 if announce else 0,
        ],
    )
    return status.decode() if isinstance(status, bytes) else str(status)


# Save and announce in one step, unless the document was deleted: checked inside Redis, so no save
# can slip in between the delete and the writer noticing it.
_GUARDED_SAVE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'livedoc_progress', ARGV[3])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# A save of a job whose progress page-range jobs merge into: seq, percent and ready go on from what
# is stored (they may have moved since this writer last looked), in one step inside Redis.
_MERGED_SAVE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local raw = redis.call('HGET', KEYS[1], 'livedoc_progress')
local old = raw and cjson.decode(raw) or nil
local new = cjson.decode(ARGV[1])
if type(old) == 'table' and tonumber(old['seq']) then
  -- Across attempts too: a new attempt keeps the pages stored before it (workers/convert.py).
  new['seq'] = math.max(tonumber(new['seq']), tonumber(old['seq'])) + 1
  if tonumber(old['percent'] or 0) > tonumber(new['percent']) then new['percent'] = old['percent'] end
  if tonumber(old['ready'] or 0) > tonumber(new['ready']) then new['ready'] = old['ready'] end
else
  new['seq'] = tonumber(new['seq']) + 1
end
local encoded = cjson.encode(new)
redis.call('HSET', KEYS[1], 'livedoc_progress', encoded)
redis.call('PUBLISH', ARGV[2], encoded)
return encoded
"""

# One stored page of a page-range job, merged into the document job's progress (see merge_page).
_MERGE_PAGE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'deleted' end
if redis.call('GET', KEYS[5]) ~= ARGV[4] then return 'lost' end
local raw = redis.call('HGET', KEYS[1], 'livedoc_progress')
if not raw then return 'stale' end
local p = cjson.decode(raw)
if type(p) ~= 'table' or tonumber(p['attempt']) ~= tonumber(ARGV[11]) then return 'stale' end
if p['state'] == 'complete' or p['state'] == 'failed' then return 'ended' end
redis.call('EXPIRE', KEYS[5], ARGV[5])
if tonumber(ARGV[1]) > 0 then
  redis.call('SETBIT', KEYS[3], tonumber(ARGV[1]), 1)
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'bytes', ARGV[3])
end
local pages = tonumber(ARGV[7])
local ready = tonumber(p['ready']) or 0
while ready < pages and redis.call('GETBIT', KEYS[3], ready + 1) == 1 do ready = ready + 1 end
if ARGV[12] == '0' and ready < pages then return 'ok' end
local stored = redis.call('BITCOUNT', KEYS[3])
local first, last = tonumber(ARGV[8]), tonumber(ARGV[9])
local percent = math.floor(first + (last - first) * stored / pages)
if percent < tonumber(p['percent']) then percent = p['percent'] end
p['seq'] = tonumber(p['seq']) + 1
p['state'] = 'running'
p['ready'] = ready
p['percent'] = percent
p['pages'] = pages
p['page'] = math.min(ready + 1, pages)
if ready < pages then
  p['stage'] = 'rendering'
  p['message'] = 'Rendering: ' .. stored .. ' of ' .. pages .. ' pages done'
else
  p['stage'] = 'finalizing'
  p['message'] = 'Finishing up'
end
p['updated_at'] = tonumber(ARGV[10])
local encoded = cjson.encode(p)
redis.call('HSET', KEYS[1], 'livedoc_progress', encoded)
redis.call('PUBLISH', ARGV[6], encoded)
return 'ok'
"""
