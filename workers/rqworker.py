"""The RQ worker class livedoc runs (`rq worker -w workers.rqworker.LivedocWorker`)."""
from __future__ import annotations

from rq import Worker
from rq.job import Job
from rq.queue import Queue


class LivedocWorker(Worker):
    """An RQ worker that never rolls a job's progress back when it handles a failure itself."""

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
