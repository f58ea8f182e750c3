"""The RQ worker class livedoc runs (`rq worker -w workers.rqworker.LivedocWorker`)."""

from __future__ import annotations

import os
import resource
import signal

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Worker, worker_registration
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import clean_registries
from rq.utils import as_text, current_timestamp, now, parse_composite_key
from rq.worker import WorkerStatus

from config import Settings
from livedoc import capabilities, fair, progress
from workers import office

# Seconds a heartbeat outlives the next one at least: a busy worker beats every
# JOB_MONITORING_INTERVAL, an idle one every WORKER_TTL - 15 (RQ's dequeue timeout).
HEARTBEAT_MARGIN = 15


class LivedocWorker(Worker):
    """An RQ worker that never rolls progress back, hands its job back when told to stop, tells
    the web which optional kinds (Office) this host converts, and notices dead workers quickly.

    RQ's warm shutdown waits for the running job, up to JOB_TIMEOUT: Ctrl-C seemed to hang and a
    deploy waited for the longest conversion. This worker stops at once instead: it kills its work
    horse, puts the job back at the front of the queue (no retry used up) and exits; the next
    worker converts the document from the start. A second signal is never needed.

    A worker that dies without a word (its host lost, SIGKILL) is noticed within a minute: its
    heartbeats (its hash, its job's StartedJobRegistry entry, its Office advertisement) last
    WORKER_TTL seconds instead of RQ's 60 s more, and whichever worker next runs maintenance hands
    the dead worker's job to the front of the queue at once (RQ's own cleanup schedules it for a
    retry, which waits for a scheduler: the dead worker's lock on it lives 61 s more).
    """

    _handing_back: str | None = None
    _horse_died = False
    _kinds: list[str] | None = None

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """RQ's wait for the next job, after giving waiting jobs a turn (livedoc/fair.py): turns are
        given as jobs end, so a worker that comes up, or frees up, while documents wait in their
        owners' turns would otherwise sit idle beside them."""
        self.set_state(WorkerStatus.IDLE)  # counted as free by the admission
        try:
            hd_per_user = Settings.from_env().HD_PER_USER
            for queue in self.queues:
                fair.admit(self.connection, queue.name, hd_per_user)
        except Exception:  # noqa: BLE001 - the web's sweep admits within RECOVERY_INTERVAL anyway
            self.log.warning("could not admit waiting jobs")
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def work(self, *args, **kwargs):
        """RQ's work loop, at WORKER_NICE: the work horse and its render processes inherit it."""
        yield_cpu(Settings.from_env().WORKER_NICE)
        return super().work(*args, **kwargs)

    def main_work_horse(self, job: Job, queue: Queue):
        """RQ's work horse, its address space bounded by WORKER_MEMORY_MB (its render processes inherit
        the bound): a hostile file takes at most that much of the host's memory, and the long-lived
        worker that forked the horse keeps no limit of its own."""
        limit_memory(Settings.from_env().WORKER_MEMORY_MB)
        return super().main_work_horse(job, queue)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage) -> None:
        """A horse that aborted under WORKER_MEMORY_MB is not run again: pdfium aborts the process when
        an allocation is refused, and the same file would be refused again on every retry."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        self._horse_died = True
        aborted = os.WIFSIGNALED(ret_val) and os.WTERMSIG(ret_val) == signal.SIGABRT
        if aborted and Settings.from_env().WORKER_MEMORY_MB > 0:
            self.log.warning("job %s: the work horse aborted (out of memory?); not retrying", job.id)
            job.retries_left = 0

    @property
    def heartbeat_ttl(self) -> int:
        """Seconds this worker's heartbeat lasts: WORKER_TTL (RQ's worker_ttl), or longer when
        JOB_MONITORING_INTERVAL leaves a busy worker's beats further apart than that allows."""
        return max(self.worker_ttl, self.job_monitoring_interval + HEARTBEAT_MARGIN)

    def get_heartbeat_ttl(self, job: Job) -> int:
        """Lifetime of the running job's StartedJobRegistry entry: RQ's, with the heartbeat's margin
        instead of RQ's fixed 60 s, so a dead worker's job is found within WORKER_TTL."""
        margin = self.heartbeat_ttl - self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            remaining = max(0, job.timeout - self.current_job_working_time)
            return int(min(remaining, self.job_monitoring_interval)) + margin
        return self.job_monitoring_interval + margin

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None):
        """RQ's heartbeat lasting `heartbeat_ttl` (whatever RQ asks), plus, in the same round trip,
        this worker's place in RQ's worker registry and the advertisement of its converters.

        Registering again on every beat is what brings a worker back into the live count (and the
        RQ dashboard) after Redis lost it (an empty restart, a flush) or dropped it (a hash that
        expired while Redis was unreachable): RQ registers a worker only when it starts. A stock
        `rq worker` converts PDFs, images and text just the same; it only never offers Office.
        """
        ttl = self.heartbeat_ttl
        if self._kinds is None:
            self._kinds = office.local_kinds(Settings.from_env())
        if pipeline is not None:
            self._beat(ttl, pipeline)
            return
        with self.connection.pipeline() as pipe:
            self._beat(ttl, pipe)
            created = pipe.execute()[0]
        # HSET added last_heartbeat as a new field: the hash was gone, write it whole again (RQ does
        # the same for a busy worker's beats, in maintain_heartbeats).
        if created == 1 and self.birth_date is not None:
            self.connection.hset(self.key, mapping=self.serialize())

    def _beat(self, ttl: int, pipe: Pipeline) -> None:
        super().heartbeat(ttl, pipe)  # first: its HSET is result 0 (maintain_heartbeats relies on it)
        # RQ writes the state only when it changes, and its rewrite of a lost hash leaves it out:
        # the admission (livedoc/fair.py) counts a worker as live by it.
        pipe.hsetnx(self.key, "state", self.get_state())
        worker_registration.register(self, pipe)
        capabilities.advertise(pipe, self._kinds, ttl=ttl)

    def clean_registries(self):
        """RQ's registry maintenance, run by one worker per MAINTENANCE_INTERVAL across the fleet,
        first handing the jobs of dead workers back to their queue.

        RQ's per-queue lock is taken for the interval and left to expire instead of released: every
        idle worker wakes every WORKER_TTL - 15 s, and one of them cleaning is enough.
        """
        for queue in self.queues:
            if self._lock_maintenance(queue):
                self.requeue_abandoned(queue)
                clean_registries(queue, self._exc_handlers)
                worker_registration.clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
        self.last_cleaned_at = now()

    def maintain_heartbeats(self, job: Job):
        """RQ's heartbeats of a busy worker, and on the maintenance schedule the hand-back of dead
        workers' jobs: a fleet whose idle workers are all gone still notices a dead one.

        Only that part of the maintenance: the rest of RQ's (the intermediate queue's) may fail a
        job through this worker's own bookkeeping, which belongs to the job it is running.
        """
        super().maintain_heartbeats(job)
        if not self.should_run_maintenance_tasks:
            return
        self.last_cleaned_at = now()
        try:
            for queue in self.queues:
                if self._lock_maintenance(queue):
                    self.requeue_abandoned(queue)
                    # Released: the next idle worker runs the whole of RQ's maintenance.
                    queue.release_maintenance_lock()
        except RedisError:  # the next check on the horse tries again; the horse must be watched
            self.log.warning("could not look for the jobs of dead workers", exc_info=True)

    def _lock_maintenance(self, queue: Queue) -> bool:
        ttl = max(1, self.maintenance_interval)
        return bool(self.connection.set(queue.registry_cleaning_key, 1, nx=True, ex=ttl))

    def requeue_abandoned(self, queue: Queue) -> list[str]:
        """Put each job whose worker died (its StartedJobRegistry entry expired) back at the front of
        the queue, using up one of its retries; returns their ids.

        A job with no retry left, or one that already ended, is left to RQ's cleanup, which fails it
        (AbandonedJobError) as before. One round trip when no worker died.
        """
        registry = queue.started_job_registry
        requeued = []
        for entry in self.connection.zrangebyscore(registry.key, 0, current_timestamp()):
            job_id, _execution = parse_composite_key(as_text(entry))
            job = queue.fetch_job(job_id)
            if job is None or not job.retries_left or job.get_status(refresh=False) != JobStatus.STARTED:
                continue
            if progress.is_terminal(job.meta.get(progress.META_KEY)):
                continue  # the horse recorded the ending before it died
            if not self.connection.zrem(registry.key, entry):
                continue  # another worker handed it on meanwhile
            job.retries_left -= 1
            self.log.warning(
                "job %s: its worker %s died; back at the front of the queue (%d retries left)",
                job.id,
                job.worker_name,
                job.retries_left,
            )
            self._requeue(job, queue)
            requeued.append(job.id)
        return requeued

    def request_stop(self, signum, frame):
        """SIGTERM / SIGINT: hand the running job back, then stop (RQ's stop, minus the wait)."""
        job_id = self.get_current_job_id() if self.horse_pid else None
        self._handing_back = job_id
        try:
            super().request_stop(signum, frame)  # raises StopRequested at once when idle
        finally:
            if job_id is not None:
                self.log.info("Worker %s: stopping; handing job %s back to the queue", self.name, job_id)
                self.kill_horse()

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string: str = ""):
        """Refresh the job's meta before RQ saves the job for a retry; requeue a handed-back job.

        When the work horse dies (SIGKILL, OOM) the parent handles the failure with the job as it
        was dequeued; RQ's retry path saves the whole job, meta included, which would put the
        enqueue-time progress (seq 1, "queued") back over what the horse wrote.
        """
        try:
            job.meta = job.get_meta(refresh=True)
        except Exception:  # noqa: BLE001 - Redis may be the failure; RQ's own handling goes on
            self.log.warning("could not refresh the meta of job %s", job.id)
        # A horse killed after it recorded the ending has nothing left to hand back.
        if job.id == self._handing_back and not progress.is_terminal(job.meta.get(progress.META_KEY)):
            self._handing_back = None
            self._hand_back(job, queue)
            return None
        result = super().handle_job_failure(
            job, queue, started_job_registry=started_job_registry, exc_string=exc_string
        )
        if self._horse_died:
            # RQ runs a job's callbacks in its work horse; a horse that died ran none, so the turn
            # the job's end gives the next waiting job (livedoc/fair.py) is given here.
            self._horse_died = False
            fair.job_ended(job, self.connection)
        return result

    def _hand_back(self, job: Job, queue: Queue) -> None:
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe)
            pipe.execute()
        self._requeue(job, queue)

    def _requeue(self, job: Job, queue: Queue) -> None:
        # enqueue_job saves the job, meta included: it must carry the handed-back progress. Page-range
        # jobs carry none (their document job's is the one viewers follow).
        if progress.META_KEY in job.meta:
            job.meta[progress.META_KEY] = progress.handed_back(self.connection, job.id)
        queue.enqueue_job(job, at_front=True)


def yield_cpu(niceness: int) -> None:
    """Run this process (and what it starts) at least at `niceness`; 0 leaves it as it is.

    Conversions are CPU-bound for seconds; on a host shared with the web they would take the cores
    from the streams that report their progress (save→viewer p99 ~200 ms in bench/burst.py)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > current:
        os.nice(niceness - current)  # relative: an already nicer process (nice -n 15 ...) stays so


def limit_memory(megabytes: int) -> None:
    """Bound this process's address space (RLIMIT_AS, inherited by what it forks) to `megabytes`;
    0 leaves it as it is.

    Why 3072 MB by default: a horse forked from the worker starts at ~0.3 GB of address space (the
    interpreter, its libraries, glibc's arenas), and its largest need is a page at MAX_PAGE_PIXELS:
    a 160 MB RGBX bitmap, its thumbnail and the JPEG encoder's buffers; a 300-page PDF peaks at a few
    hundred MB per process (BENCHMARKS.md, "Text layer"). A refused allocation raises MemoryError in
    Python (the page ends `page_too_large`); inside pdfium it aborts the process, which the horse
    (render processes) or RQ (the horse itself) reports as a failed attempt.
    """
    if megabytes <= 0:
        return
    wanted = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
