"""Fair scheduling: users are served in turn, not jobs in arrival order, with RQ as the engine.

Every job is an RQ job from the start (the RQ dashboard lists it, its meta holds its progress), but
it waits as a *deferred* job (RQ's DeferredJobRegistry) in a per-user list in Redis until an
admission step moves it into RQ's queue. Admission is one Lua script, so any number of web hosts and
workers share it; it keeps RQ's queue about as long as there are idle workers to take from it (at
least one job, so a worker that starts always finds work), and picks the next job of the next user
in turn. Three lanes:

- ``doc``: a document's conversion job. Users take turns (round robin over the users with work
  waiting); each user's documents go in upload order.
- ``hd``: a page's sharper rendition. It goes in its owner's turn, like a document, never ahead of
  other users' work, and at most HD_PER_USER of a user's are admitted at once.
- ``chunk``: the page-range jobs of a long document (workers/chunks.py). They are helpers: the
  document job claims every chunk no helper holds, so a helper that never runs costs time, never
  correctness (no deadlock with one worker). A helper is admitted only onto an idle worker, when no
  document or sharper page is waiting, and only while its plan has a chunk left to claim. When a
  document or sharper page is admitted and no worker is free, a running helper is asked to give way:
  the chunk it renders and the unclaimed ones are held by a 'yield:' marker in their lease keys for
  a moment (YIELD_SECONDS), so the helper loses its lease at its next page, finds nothing to claim
  (workers/chunks.py: "taken over ... go on") and its job ends; once the marker lapses the document
  job takes that chunk on, keeping the pages already stored, and the next helper admitted (when a
  worker is idle again) clears the markers at once. A big document thus holds every idle worker but
  gives one back within a page of another user's upload.

Admission runs at every enqueue, when any job ends (RQ callbacks on every job, so a stock `rq worker`
drives it too), and when a viewer asks where its waiting document stands (documents.queue_status).
The Lua scripts know RQ's key layout (rq:job:, rq:queue:, rq:deferred:, rq:workers:) and the chunk
plan's (workers/chunks.Plan); tests/test_fair.py runs them against real workers of RQ 2.12.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.utils import import_attribute, now, utcformat

from livedoc import keys, progress

log = logging.getLogger("livedoc")

PREFIX = keys.PREFIX + "fair:"
# The failure callback every conversion job had before admission existed: it still runs first.
UNRUNNABLE = "workers.unrunnable.report"
# RQ callbacks by dotted path (a stock worker imports them like the job functions).
ON_END = "livedoc.fair.job_ended"
ON_CONVERSION_FAILURE = "livedoc.fair.conversion_failed"
LANES = ("doc", "hd", "chunk")
# How long a helper's chunks stay held after it was asked to give way: long enough for the helper
# to reach its next page and find nothing to claim, short enough that the document job, done with
# its own chunk, barely waits for them.
YIELD_SECONDS = 2
DEFAULT_HD_PER_USER = 2
ANONYMOUS = "-"  # jobs enqueued without a quota (tests, tools) share one user's turn

# KEYS[1]: the user's list of the lane; KEYS[2]: the users in turn (TURNS, or the chunk lane's
# plain list); KEYS[3]: the owner hash (job id -> user); KEYS[4]: the virtual time; KEYS[5]: the
# user's finish tag
# ARGV[1]: job id; ARGV[2]: user; ARGV[3]: 1 for the chunk lane
_SUBMIT = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if ARGV[3] == '1' then
  if not redis.call('LPOS', KEYS[2], ARGV[2]) then redis.call('RPUSH', KEYS[2], ARGV[2]) end
elseif not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  local now = tonumber(redis.call('GET', KEYS[4]) or '0')
  local finish = tonumber(redis.call('GET', KEYS[5]) or '0')
  redis.call('ZADD', KEYS[2], math.max(now, finish), ARGV[2])
end
return 1
"""

# Shared by the admission and the place scripts: live and idle workers of the queue.
_WORKERS = """
local function workers(qname)
  local live, idle = 0, 0
  for _, w in ipairs(redis.call('SMEMBERS', 'rq:workers:' .. qname)) do
    local state = redis.call('HGET', w, 'state')
    if state then
      live = live + 1
      if state == 'idle' or state == 'started' then idle = idle + 1 end
    end
  end
  return live, idle
end
local function is_document(id)
  return string.sub(id, 1, 4) == 'doc-' and not string.match(id, '%-a%d+%-c%d+$')
end
"""

# No KEYS (the keys it touches depend on what it finds: standalone Redis, not Cluster).
# ARGV[1]: PREFIX; ARGV[2]: queue name; ARGV[3]: now as RQ writes it (enqueued_at); ARGV[4]: now in
# seconds; ARGV[5]: HD_PER_USER; ARGV[6]: the id of the job whose end calls it, or '' (its worker is
# about to be idle, and it no longer counts as running); ARGV[7]: YIELD_SECONDS; ARGV[8]: the chunk
# plans' key prefix; ARGV[9]: the deleted marks' key prefix; ARGV[10]: at most this many admissions
# Returns the ids of waiting jobs it dropped because they can no longer run (to be canceled).
_ADMIT = (
    _WORKERS
    + """
local P, qname, stamp, clock = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local hd_cap, ending, yield_ttl = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local CH, DEL, budget = ARGV[8], ARGV[9], tonumber(ARGV[10])
local qkey, deferred = 'rq:queue:' .. qname, 'rq:deferred:' .. qname
local turns, chunkring, owner = P .. 'turns', P .. 'chunkring', P .. 'owner'
local vtime = P .. 'vtime'
local helpers, yielding = P .. 'helpers', P .. 'yielding'
local dropped = {}

local function status(id) return redis.call('HGET', 'rq:job:' .. id, 'status') end

local function drop(id)
  redis.call('HDEL', owner, id)
  redis.call('ZREM', deferred, id)
  if status(id) == 'deferred' then table.insert(dropped, id) end
end

local function runnable(id)
  if status(id) ~= 'deferred' or redis.call('EXISTS', DEL .. id) == 1 then
    drop(id)
    return false
  end
  return true
end

local function admit(id)
  redis.call('ZREM', deferred, id)
  redis.call('HDEL', owner, id)
  redis.call('HSET', 'rq:job:' .. id, 'status', 'queued', 'enqueued_at', stamp)
  redis.call('RPUSH', qkey, id)
end

-- Members of an admitted set that still hold (or wait for) a worker; the rest are forgotten.
local function in_flight(set)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    local st = status(id)
    if id ~= ending and (st == 'queued' or st == 'started' or st == 'scheduled') then n = n + 1
    else redis.call('SREM', set, id); redis.call('ZREM', yielding, id) end
  end
  return n
end

local function plan_of(id)
  local job, attempt = string.match(id, '^(.*)%-a(%d+)%-c%d+$')
  if not job then return nil end
  return job, CH .. job .. ':' .. attempt .. ':'
end

-- The plan's chunks nobody finished, with their lease keys and holders (false: none).
local function unfinished(base)
  local t = redis.call('HMGET', base .. 'table', 'pages', 'chunk')
  local pages, size = tonumber(t[1]), tonumber(t[2])
  local out = {}
  if not pages or not size or size < 1 then return out end
  for i = 0, math.ceil(pages / size) - 1 do
    if redis.call('HEXISTS', base .. 'table', 'done:' .. i) == 0 then
      local lease = base .. 'lease:' .. i
      table.insert(out, {lease, redis.call('GET', lease)})
    end
  end
  return out
end

local function yielded(holder) return holder and string.sub(holder, 1, 6) == 'yield:' end

-- Chunks a helper admitted now could claim: unheld, or kept from a helper that gave way (the
-- admission frees those, below).
local function claimable(base)
  local n = 0
  for _, c in ipairs(unfinished(base)) do
    if not c[2] or yielded(c[2]) then n = n + 1 end
  end
  return n
end

local function release_yields(base)
  for _, c in ipairs(unfinished(base)) do
    if yielded(c[2]) then redis.call('DEL', c[1]) end
  end
end

local function helper_queued(job)
  for _, id in ipairs(redis.call('SMEMBERS', helpers)) do
    if string.sub(id, 1, #job + 2) == job .. '-a' and status(id) == 'queued' then return true end
  end
  return false
end

-- The next document or sharper page in turn (start-time fair queuing, each job costing one): the
-- user with the smallest start tag gives one (a sharper page first while under the cap); the virtual
-- time moves to that tag and the user's next tag is one more. A user who joins starts at the virtual
-- time, so neither a newcomer nor one back after a pause gets a burst of turns it did not use.
local function next_in_turn()
  for _, user in ipairs(redis.call('ZRANGE', turns, 0, -1)) do
    local hdq, docq = P .. 'q:' .. user .. ':hd', P .. 'q:' .. user .. ':doc'
    local picked = nil
    if redis.call('LLEN', hdq) > 0 and in_flight(P .. 'hd:' .. user) < hd_cap then
      while not picked and redis.call('LLEN', hdq) > 0 do
        local id = redis.call('LPOP', hdq)
        if runnable(id) then
          picked = id
          redis.call('SADD', P .. 'hd:' .. user, id)
          redis.call('EXPIRE', P .. 'hd:' .. user, 86400)
        end
      end
    end
    while not picked and redis.call('LLEN', docq) > 0 do
      local id = redis.call('LPOP', docq)
      if runnable(id) then picked = id end
    end
    local left = redis.call('LLEN', hdq) + redis.call('LLEN', docq)
    if picked then
      local start = tonumber(redis.call('ZSCORE', turns, user))
      start = math.max(tonumber(redis.call('GET', vtime) or '0'), start)
      redis.call('SET', vtime, start)
      redis.call('SET', P .. 'finish:' .. user, start + 1, 'EX', 86400)
      if left > 0 then redis.call('ZADD', turns, start + 1, user) else redis.call('ZREM', turns, user) end
      return picked
    end
    if left == 0 then redis.call('ZREM', turns, user) end
  end
  return nil
end

-- The next helper in turn whose plan has a chunk to claim; stale helpers (their document job ended
-- and removed its plan) are dropped on the way.
local function next_helper()
  in_flight(helpers)  -- forget helpers that ended, so helper_queued reads only live ones
  for _ = 1, redis.call('LLEN', chunkring) do
    local user = redis.call('LPOP', chunkring)
    if not user then return nil end
    local cq = P .. 'q:' .. user .. ':chunk'
    local picked = nil
    for _, id in ipairs(redis.call('LRANGE', cq, 0, -1)) do
      local job, base = plan_of(id)
      if not job or redis.call('EXISTS', base .. 'table') == 0 then
        redis.call('LREM', cq, 1, id)
        drop(id)
      elseif not runnable(id) then
        redis.call('LREM', cq, 1, id)
      elseif not picked and claimable(base) > 0 and not helper_queued(job) then
        picked = id
        redis.call('LREM', cq, 1, id)
        release_yields(base)
      end
    end
    if redis.call('LLEN', cq) > 0 then redis.call('RPUSH', chunkring, user) end
    if picked then return picked end
  end
  return nil
end

-- Ask a running helper to give way: the chunk it holds and every unclaimed one are held by a
-- 'yield:' marker for a moment (see the module's docstring).
local function give_way(id)
  local job, base = plan_of(id)
  if not job then return end
  for _, c in ipairs(unfinished(base)) do
    if not c[2] or c[2] == id then redis.call('SET', c[1], 'yield:' .. id, 'EX', yield_ttl) end
  end
  redis.call('ZADD', yielding, clock, id)
end

local live, idle = workers(qname)
if ending ~= '' then idle = math.min(live, idle + 1) end
local admitted = 0
while admitted < budget and redis.call('LLEN', qkey) < math.max(1, idle) do
  local id = next_in_turn()
  if not id then break end
  admit(id)
  admitted = admitted + 1
end
while admitted < budget and redis.call('LLEN', qkey) < idle do
  local id = next_helper()
  if not id then break end
  admit(id)
  redis.call('SADD', helpers, id)
  admitted = admitted + 1
end

-- Jobs admitted with no worker to take them: free workers from helpers, one per job, counting
-- those already asked (a helper that did not give way within a few seconds is asked again).
local short = redis.call('LLEN', qkey) - idle
if short > 0 and redis.call('SCARD', helpers) > 0 then
  in_flight(helpers)
  redis.call('ZREMRANGEBYSCORE', yielding, '-inf', clock - 3 * yield_ttl)
  short = short - redis.call('ZCARD', yielding)
  for _, id in ipairs(redis.call('SMEMBERS', helpers)) do
    if short <= 0 then break end
    if status(id) == 'started' and not redis.call('ZSCORE', yielding, id) then
      give_way(id)
      short = short - 1
    end
  end
end
return dropped
"""
)

# ARGV[1]: PREFIX; ARGV[2]: queue name; ARGV[3]: the job id
# Returns {place, live workers}: place is the job's 1-based place among the *documents* that will
# start before it (chunk jobs and sharper pages not counted), or -1 when it is not waiting.
_PLACE = (
    _WORKERS
    + """
local P, qname, id = ARGV[1], ARGV[2], ARGV[3]
local qkey = 'rq:queue:' .. qname
local live = workers(qname)
local ahead, index = 0, redis.call('LPOS', qkey, id)
if index == 0 then return {1, live} end
for _, other in ipairs(redis.call('LRANGE', qkey, 0, index and index - 1 or -1)) do
  if is_document(other) then ahead = ahead + 1 end
end
if index then return {ahead + 1, live} end
local user = redis.call('HGET', P .. 'owner', id)
if not user then return {-1, live} end
local k = redis.call('LPOS', P .. 'q:' .. user .. ':doc', id)
local mine = redis.call('ZSCORE', P .. 'turns', user)
if not k or not mine then return {-1, live} end
-- In turn: this document starts at tag (its user's tag + k); another user's j-th waiting document
-- at (that user's tag + j); on equal tags the user first in the order of the turns goes first.
local now = tonumber(redis.call('GET', P .. 'vtime') or '0')
local tag = math.max(now, tonumber(mine)) + k
ahead = ahead + k
local list = redis.call('ZRANGE', P .. 'turns', 0, -1, 'WITHSCORES')
for i = 1, #list, 2 do
  local other, score = list[i], math.max(now, tonumber(list[i + 1]))
  if other ~= user then
    local n = tag - score + ((other < user) and 1 or 0)
    local waiting = redis.call('LLEN', P .. 'q:' .. other .. ':doc')
    ahead = ahead + math.max(0, math.min(n, waiting))
  end
end
return {ahead + 1, live}
"""
)


@dataclass(frozen=True)
class Place:
    """Where a job stands: its place among the documents before it (None: not waiting) and live workers."""

    position: int | None
    workers: int


def user_of(quota: dict | None) -> str:
    """The user whose turn a job takes: the owner named in its `quota` kwarg."""
    if quota and quota.get("user") is not None:
        return str(quota["user"])
    return ANONYMOUS


def _key(user: str, lane: str) -> str:
    return f"{PREFIX}q:{user}:{lane}"


def submit(connection: Redis, queue: Queue, job: Job, user: str, lane: str) -> None:
    """Store a job created with status DEFERRED and put it in its owner's waiting list of `lane`."""
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}")
    chunk = lane == "chunk"
    with connection.pipeline(transaction=True) as pipe:
        job.save(pipeline=pipe)
        queue.deferred_job_registry.add(job, pipeline=pipe)
        pipe.sadd(queue.redis_queues_keys, queue.key)  # RQ's list of queues (the dashboard's)
        connection.register_script(_SUBMIT)(
            keys=[
                _key(user, lane),
                PREFIX + ("chunkring" if chunk else "turns"),
                PREFIX + "owner",
                PREFIX + "vtime",
                PREFIX + "finish:" + user,
            ],
            args=[job.id, user, 1 if chunk else 0],
            client=pipe,
        )
        pipe.execute()


def admit(
    connection: Redis, queue_name: str, hd_per_user: int = DEFAULT_HD_PER_USER, ending: str = ""
) -> int:
    """Move waiting jobs into RQ's queue, users in turn, as far as workers can take them; returns
    how many waiting jobs were dropped (their document was deleted or their plan ended)."""
    dropped = connection.register_script(_ADMIT)(
        args=[
            PREFIX,
            queue_name,
            utcformat(now()),
            round(time.time(), 3),
            hd_per_user,
            ending,
            YIELD_SECONDS,
            keys.CHUNKS,
            keys.DELETED_JOB,
            100,
        ]
    )
    for raw in dropped:
        _cancel(connection, raw.decode() if isinstance(raw, bytes) else raw)
    return len(dropped)


def _cancel(connection: Redis, job_id: str) -> None:
    # Canceled, so the dashboard says why it never ran; a job already gone needs nothing.
    try:
        Job.fetch(job_id, connection=connection, serializer=progress.SERIALIZER).cancel()
    except Exception as exc:  # noqa: BLE001 - the job was only ever optional work
        log.info("could not cancel dropped job %s (%s)", job_id, exc.__class__.__name__)


def place(connection: Redis, queue_name: str, job_id: str) -> Place:
    """The job's place among the documents that start before it, and the live workers."""
    position, workers = connection.register_script(_PLACE)(args=[PREFIX, queue_name, job_id])
    return Place(position=None if int(position) < 0 else int(position), workers=int(workers))


def waiting(connection: Redis) -> int:
    """Jobs waiting for admission (not yet in RQ's queue)."""
    return int(connection.hlen(PREFIX + "owner"))


def job_ended(job: Job, connection: Redis, *args, **kwargs) -> None:
    """RQ callback (success, failure, stopped) of every job: its worker is about to be free."""
    try:
        from config import Settings

        admit(connection, job.origin, Settings.from_env().HD_PER_USER, ending=job.id)
    except Exception:  # noqa: BLE001 - a raising callback would fail the job that just ended
        log.exception("job %s: could not admit the next jobs", job.id)


def conversion_failed(job: Job, connection: Redis, *exc_info) -> None:
    """RQ failure callback of conversion jobs: report a worker that could not run it, then admit."""
    # By name, as RQ calls callbacks: livedoc/ imports no worker module, and that one loads where
    # the conversion code does not.
    import_attribute(UNRUNNABLE)(job, connection, *exc_info)
    job_ended(job, connection)
