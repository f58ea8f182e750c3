"""The RQ worker class livedoc runs (`rq worker -w workers.rqworker.LivedocWorker`)."""
from __future__ import annotations

from redis.client import Pipeline
from rq import Worker
from rq.job import Job
from rq.queue import Queue

from config import Settings
from livedoc import capabilities
from workers import office


class LivedocWorker(Worker):
    """An RQ worker that never rolls a job's progress back when it handles a failure itself, and
    that tells the web which optional kinds (Office) this host converts."""

    _kinds: list[str] | None = None

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None):
        """RQ's heartbeat, plus the advertisement of this host's converters with the same lifetime.

        A stock `rq worker` converts PDFs, images and text just the same; it only never offers Office.
        """
        super().heartbeat(timeout, pipeline)
        if self._kinds is None:
            self._kinds = office.local_kinds(Settings.from_env())
        try:
            capabilities.advertise(pipeline if pipeline is not None else self.connection, self._kinds,
                                   ttl=timeout or self.worker_ttl + 60)
        except Exception:  # noqa: BLE001 - RQ's own heartbeat handles (and logs) Redis trouble
            self.log.warning("could not advertise this worker's converters")

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry=None, exc_string: str = ""):
        """Refresh the job's meta before RQ saves the job for a retry.

        When the work horse dies (SIGKILL, OOM) the parent handles the failure with the job as it
        was dequeued; RQ's retry path saves the whole job, meta included, which would put the
        enqueue-time progress (seq 1, "queued") back over what the horse wrote.
        """
        try:
            job.meta = job.get_meta(refresh=True)
        except Exception:  # noqa: BLE001 - Redis may be the failure; RQ's own handling goes on
            self.log.warning("could not refresh the meta of job %s", job.id)
        return super().handle_job_failure(job, queue, started_job_registry=started_job_registry,
                                          exc_string=exc_string)
