"""One document over every worker: a document longer than CHUNK_PAGES is rendered as page ranges.

The document job (the one the web watches, `jobs.job_id(doc, attempt)`) announces the page sizes,
writes a plan into Redis and queues one page-range job per chunk after the first; any RQ worker on
any host takes them (`render_chunk`). Every participant, the document job included, claims chunks
through a lease in Redis (first its own, then any still unclaimed: work is shared out until none is
left), renders the claimed range with every core (workers/pdf.py), and merges each stored page into
the document job's progress in one Redis script (livedoc/progress.merge_page: seq strictly
increasing, percent never back, `ready` = leading pages stored by anyone). The document job then
waits for the rest, taking over any chunk whose lease ran out (its worker died: only that chunk is
rendered again, never a finished one), and alone writes the manifest and the one terminal event.

A deleted document stops every chunk at its next page (the merge refuses), and the chunk removes
what it wrote; a chunk of an attempt that is no longer current stops the same way.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from redis import Redis
from rq import get_current_job

from config import Settings
from livedoc import jobs, keys, progress
from livedoc.progress import Deleted
from livedoc.storage import SOURCE_PDF, DocumentFiles, open_storage
from workers import pdf
from workers.errors import ConversionError, InternalError, TooMuchText, TransientError
from workers.pages import RENDER_END, PageSink
from workers.quota import Meter, charged

log = logging.getLogger("livedoc.worker")

CHUNK = "workers.chunks.render_chunk"
POLL_SECONDS = 0.2
CHUNK_RESULT_TTL = 3600

# A plan already removed (its document job ended) has nothing left to claim: a chunk job that read
# the plan just before would otherwise leave a lease behind it.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'done:' .. ARGV[1]) == 1 then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""

# KEYS[1]: the plan's text hash (page n -> its characters; 'total' -> their sum)
# ARGV[1]: page n; ARGV[2]: its characters
# Returns the document's characters so far, each page counted once (a chunk taken over after its
# worker died renders its pages again).
_COUNT_TEXT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  return redis.call('HINCRBY', KEYS[1], 'total', ARGV[2])
end
return tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
"""


class Abandoned(Exception):
    """This participant must stop rendering its chunk (taken over, another attempt, or ended)."""


def wanted(settings: Settings, pages: int) -> bool:
    """True when a document of this many pages is split into page-range jobs."""
    return settings.CHUNK_PAGES > 0 and pages > settings.CHUNK_PAGES


def ranges(pages: int, size: int) -> list[tuple[int, int]]:
    """The chunks of a document: (first, last) page numbers, 1-based and inclusive."""
    return [(first, min(first + size - 1, pages)) for first in range(1, pages + 1, size)]


class Plan:
    """The Redis keys and fields of one chunked attempt."""

    def __init__(self, connection: Redis, job_id: str, attempt: int):
        self.connection = connection
        self.job_id = job_id
        self.attempt = attempt
        base = f"{keys.CHUNKS}{job_id}:{attempt}:"
        self.table = base + "table"  # hash: pages, chunk, source, render_start, done:<i>, error
        self.stored = base + "stored"  # bitmap: bit n set once page n is stored
        self.entries = base + "entries"  # hash: page n -> its manifest entry; "bytes" stored so far
        self.text = base + "text"  # hash: page n -> its characters; "total" their sum (_COUNT_TEXT)
        self._lease = base + "lease:"

    def lease(self, index: int) -> str:
        """The key whose value names the holder of chunk `index`'s lease."""
        return f"{self._lease}{index}"

    def all_keys(self, chunks: int) -> list[str]:
        """Every key of the plan."""
        return [self.table, self.stored, self.entries, self.text, *(self.lease(i) for i in range(chunks))]

    def read(self) -> dict[str, str]:
        """The plan's table."""
        return {k.decode(): v.decode() for k, v in self.connection.hgetall(self.table).items()}

    def claim(self, index: int, owner: str, ttl: int) -> bool:
        """Take (or keep) chunk `index` for `owner`, unless it is done or someone else holds it."""
        return bool(
            self.connection.register_script(_CLAIM)(
                keys=[self.table, self.lease(index)], args=[index, owner, ttl]
            )
        )

    def done(self, index: int) -> None:
        """Mark chunk `index` rendered and stored."""
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.hset(self.table, f"done:{index}", 1)
            pipe.delete(self.lease(index))
            pipe.execute()

    def stored_among(self, first: int, last: int) -> set[int]:
        """The pages of first..last already stored for this attempt (one read of the bitmap)."""
        bits = self.connection.get(self.stored) or b""
        return {n for n in range(first, last + 1) if n // 8 < len(bits) and bits[n // 8] & (0x80 >> (n % 8))}

    def keep(self, entries: dict[int, dict], chunks: list[tuple[int, int]]) -> None:
        """Record pages an earlier attempt stored as stored for this one, and the chunks they fill as
        done, before any participant claims a chunk."""
        if not entries:
            return
        with self.connection.pipeline(transaction=True) as pipe:
            for n, entry in entries.items():
                pipe.setbit(self.stored, n, 1)
                pipe.hset(self.entries, n, json.dumps(entry, separators=(",", ":")))
                pipe.hset(self.text, n, entry.get("chars", 0))
            pipe.hincrby(self.text, "total", sum(e.get("chars", 0) for e in entries.values()))
            for index, (first, last) in enumerate(chunks):
                if all(n in entries for n in range(first, last + 1)):
                    pipe.hset(self.table, f"done:{index}", 1)
            pipe.execute()

    def count_text(self, n: int, chars: int) -> int:
        """Count page n's characters (once); returns the document's so far."""
        return int(self.connection.register_script(_COUNT_TEXT)(keys=[self.text], args=[n, chars]))

    def record_error(self, error: ConversionError) -> None:
        """Remember the first permanent failure of any chunk, for the document job to report."""
        self.connection.hsetnx(self.table, "error", json.dumps(error.error))


class _Chunking:
    """What a participant needs to render chunks of one attempt."""

    def __init__(self, plan: Plan, files: DocumentFiles, settings: Settings, table: dict[str, str]):
        self.plan = plan
        self.files = files
        self.settings = settings
        self.pages = int(table["pages"])
        self.size = int(table["chunk"])
        self.render_start = float(table["render_start"])
        self.chunks = ranges(self.pages, self.size)

    def pending(self, table: dict[str, str]) -> list[int]:
        return [i for i in range(len(self.chunks)) if f"done:{i}" not in table]

    def work(self, source: Path, scratch: Path, owner: str, first_choice: int = 0) -> None:
        """Claim and render chunks, starting with `first_choice`, until none can be claimed."""
        count = len(self.chunks)
        order = [(first_choice + k) % count for k in range(count)]
        while True:
            table = self.plan.read()
            pending = set(self.pending(table))
            index = next(
                (i for i in order if i in pending and self.plan.claim(i, owner, self.settings.CHUNK_LEASE)),
                None,
            )
            if index is None:
                return
            try:
                self.render(index, source, scratch, owner)
            except Abandoned as exc:
                if str(exc) != "lost":
                    raise
                # Too slow to keep the lease: another participant renders this chunk now; go on.
                log.info("%s: chunk %d of %s was taken over", owner, index, self.plan.job_id)

    def render(self, index: int, source: Path, scratch: Path, owner: str) -> None:
        first, last = self.chunks[index]
        log.info("%s: rendering pages %d-%d of %s", owner, first, last, self.plan.job_id)

        def stored(entry: dict | None, size: int, announce: bool) -> None:
            if entry is not None:
                cap = self.settings.MAX_DOCUMENT_TEXT
                if self.plan.count_text(entry["n"], entry.get("chars", 0)) > cap:
                    raise TooMuchText(f"The document holds more than {cap:,} characters of text.")
            # Each page is recorded at once (the manifest, the lease); its event maybe later.
            status = progress.merge_page(
                self.plan.connection,
                self.plan.job_id,
                self.plan.attempt,
                entry["n"] if entry else 0,
                self.pages,
                self.render_start,
                RENDER_END,
                entry,
                size,
                owner,
                self.plan.lease(index),
                self.settings.CHUNK_LEASE,
                self.plan.stored,
                self.plan.entries,
                announce=announce,
            )
            if status == "deleted":
                raise Deleted(self.plan.job_id)
            if status != "ok":
                raise Abandoned(status)

        # Pages stored already (kept from an earlier attempt, or by a participant whose lease ran out)
        # are not rendered again.
        skip = self.plan.stored_among(first, last)
        pdf.render_pages(
            source, self.settings, scratch, self.files, self.plan.attempt, first, last, stored, skip=skip
        )
        self.plan.done(index)


def run(source: Path, settings: Settings, sink: PageSink) -> None:
    """The document job's side: plan, queue the other chunks, render with them, then collect."""
    writer = sink.writer
    job, connection = writer.job, writer.connection
    writer.merge = True
    plan = Plan(connection, job.id, sink.attempt)
    files = sink.files
    # Chunks on other hosts read the same PDF (a converter that made one stored it already).
    source_key = files.pdf_key(sink.kind, sink.attempt)
    chunk_list = ranges(sink.pages, settings.CHUNK_PAGES)
    ttl = max(settings.JOB_TIMEOUT * 4, 3600)
    with connection.pipeline(transaction=True) as pipe:
        pipe.delete(*plan.all_keys(len(chunk_list)))
        pipe.hset(
            plan.table,
            mapping={
                "pages": sink.pages,
                "chunk": settings.CHUNK_PAGES,
                "source": source_key,
                "render_start": sink.render_start,
                "doc": files.doc_id,
            },
        )
        pipe.expire(plan.table, ttl)
        pipe.setbit(plan.stored, 0, 0)
        pipe.expire(plan.stored, ttl)
        pipe.hset(plan.entries, "bytes", 0)
        pipe.expire(plan.entries, ttl)
        pipe.hset(plan.text, "total", 0)
        pipe.expire(plan.text, ttl)
        pipe.execute()
    plan.keep({n: sink.entries[n] for n in sink.kept}, chunk_list)
    _enqueue_chunks(connection, settings, files.doc_id, job.id, sink.attempt, len(chunk_list), sink.quota)
    chunking = _Chunking(plan, files, settings, plan.read())
    try:
        while True:
            chunking.work(source, sink.scratch, job.id)
            table = plan.read()
            if not table:
                # Redis lost the plan (restarted empty): nothing can be claimed or merged any more, and
                # waiting for the other chunks would hold this worker until JOB_TIMEOUT.
                raise TransientError("The conversion's plan was lost; it starts again.")
            if "error" in table:
                raise ConversionError.from_error(json.loads(table["error"]))
            if not chunking.pending(table):
                break
            if connection.exists(keys.DELETED_JOB + job.id):
                raise Deleted(job.id)
            time.sleep(POLL_SECONDS)  # the rest are held by live leases: wait, or take over when one lapses
        raw = connection.hgetall(plan.entries)
        sink.stored += int(raw.pop(b"bytes", 0))
        sink.entries = {int(n): json.loads(v) for n, v in raw.items()}
        sink.ready = sink.pages
    except Abandoned as exc:
        raise InternalError("The conversion was interrupted.") from exc
    finally:
        connection.delete(*plan.all_keys(len(chunk_list)))


def _enqueue_chunks(
    connection: Redis,
    settings: Settings,
    doc_id: str,
    job_id: str,
    attempt: int,
    count: int,
    quota: dict | None = None,
) -> None:
    # Helpers, not prerequisites: this job claims every chunk no helper holds, so they wait in the
    # owner's chunk lane and run only on workers no other user's document needs (livedoc/fair.py).
    args = (doc_id, job_id, attempt)
    jobs.enqueue_chunks(connection, settings, CHUNK, args, job_id, attempt, count, quota, CHUNK_RESULT_TTL)


def render_chunk(doc_id: str, job_id: str, attempt: int, index: int, quota: dict | None = None) -> dict:
    """The RQ job of one page range: render it (and any chunk still unclaimed) into the document,
    charging its pages to the owner's quota like the document job does."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("render_chunk runs only inside an RQ job")
    connection = job.connection
    settings = Settings.from_env()
    plan = Plan(connection, job_id, attempt)
    current = progress.read(connection, job_id)
    table = plan.read()
    if not table or current is None or current.get("attempt") != attempt or progress.is_terminal(current):
        return {"skipped": True}  # that attempt is over, or this chunk's work was already shared out
    meter = Meter.of_job(connection, quota, doc_id, keys.QUOTA_CONVERTING)
    files = DocumentFiles(charged(open_storage(settings), meter), doc_id)
    root = files.storage.scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{doc_id}-a{attempt}-c{index}-", dir=root))
    try:
        chunking = _Chunking(plan, files, settings, table)
        source = files.storage.local_path(table["source"])
        if source is None:
            source = scratch / SOURCE_PDF
            files.storage.fetch(table["source"], source)
        chunking.work(source, scratch, job.id, first_choice=index)
        return {"chunk": index}
    except Deleted:
        job.retries_left = 0
        files.delete()
        return {"deleted": True}
    except Abandoned as exc:
        return {"abandoned": str(exc)}
    except ConversionError as exc:
        if not exc.retryable:
            plan.record_error(exc)
            job.retries_left = 0
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
