"""The RQ worker class livedoc runs (`rq worker -w workers.rqworker.LivedocWorker`)."""

from __future__ import annotations

import os
import resource
import signal

from redis.client import Pipeline
from rq import Worker
from rq.job import Job
from rq.queue import Queue

from config import Settings
from livedoc import capabilities, progress
from workers import office


class LivedocWorker(Worker):
    """An RQ worker that never rolls progress back, hands its job back when told to stop, and tells
    the web which optional kinds (Office) this host converts.

    RQ's warm shutdown waits for the running job, up to JOB_TIMEOUT: Ctrl-C seemed to hang and a
    deploy waited for the longest conversion. This worker stops at once instead: it kills its work
    horse, puts the job back at the front of the queue (no retry used up) and exits; the next
    worker converts the document from the start. A second signal is never needed.
    """

    _handing_back: str | None = None
    _kinds: list[str] | None = None

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
        aborted = os.WIFSIGNALED(ret_val) and os.WTERMSIG(ret_val) == signal.SIGABRT
        if aborted and Settings.from_env().WORKER_MEMORY_MB > 0:
            self.log.warning("job %s: the work horse aborted (out of memory?); not retrying", job.id)
            job.retries_left = 0

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None):
        """RQ's heartbeat, plus the advertisement of this host's converters with the same lifetime.

        A stock `rq worker` converts PDFs, images and text just the same; it only never offers Office.
        """
        super().heartbeat(timeout, pipeline)
        if self._kinds is None:
            self._kinds = office.local_kinds(Settings.from_env())
        try:
            capabilities.advertise(
                pipeline if pipeline is not None else self.connection,
                self._kinds,
                ttl=timeout or self.worker_ttl + 60,
            )
        except Exception:  # noqa: BLE001 - RQ's own heartbeat handles (and logs) Redis trouble
            self.log.warning("could not advertise this worker's converters")

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
        return super().handle_job_failure(
            job, queue, started_job_registry=started_job_registry, exc_string=exc_string
        )

    def _hand_back(self, job: Job, queue: Queue) -> None:
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe)
            pipe.execute()
        # enqueue_job saves the job, meta included: it must carry the handed-back progress.
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
