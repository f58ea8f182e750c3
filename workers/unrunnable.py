"""The failure callback of every conversion job: it reports a worker that cannot run the job at all.

RQ calls it in the worker whatever made the job raise. When livedoc's job code ran, that code has
already recorded the outcome; when it never ran (the worker reads jobs with another serializer, or
cannot import the conversion code), nothing would, and RQ would retry the job on the same broken
worker while the viewer waits. So the attempt ends here, failed, with a message naming the cause.
This module imports nothing of the conversion code, so it loads where that code does not.
"""

from __future__ import annotations

import importlib
import logging
from types import TracebackType

from redis import Redis
from rq.exceptions import DeserializationError
from rq.job import Job

from livedoc import progress

log = logging.getLogger("livedoc.worker")

JOB_MODULE = "workers.convert"


def report(
    job: Job, connection: Redis, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """RQ's on_failure callback: end the job failed when the worker could not run it at all."""
    try:
        message = _unrunnable_because(job, exc, tb)
        if message is None:
            return
        log.error("job %s: this worker cannot run livedoc's jobs: %s", job.id, message)
        # No retry: every retry would meet the same worker, and the viewer must learn why now.
        job.retries_left = 0
        progress.fail_unrunnable(connection, job.id, message)
    except Exception:  # noqa: BLE001 - a failing callback would break RQ's own failure handling
        log.exception("job %s: could not check why the job failed", job.id)


def _unrunnable_because(job: Job, exc: BaseException, tb) -> str | None:
    """The cause when the worker could not load the job, else None (the job ran, or was abandoned)."""
    if isinstance(exc, DeserializationError):
        return cause(exc)
    if not isinstance(exc, ImportError | AttributeError | ValueError) or _job_code_ran(tb):
        return None
    # RQ reports a function it could not import as "Invalid attribute name" (a ValueError) and
    # drops the ImportError behind it; importing again recovers the cause.
    load_error = _import_error(job.func_name)
    return cause(load_error) if load_error is not None else None


def cause(exc: BaseException) -> str:
    """What the viewer and the operator read: the cause, without paths or traces."""
    if isinstance(exc, DeserializationError):
        return (
            "A conversion worker could not read this job (DeserializationError): it was started "
            "with a serializer other than RQ's default (-S). Start workers with scripts/worker "
            "or a plain `rq worker`."
        )
    if isinstance(exc, ImportError):
        return (
            f"A conversion worker could not load the conversion code ({type(exc).__name__}: "
            f"no module named {exc.name!r})."
        )
    if isinstance(exc, AttributeError):
        return (
            f"A conversion worker could not load the conversion code ({type(exc).__name__}: "
            f"no attribute {exc.name!r}); it runs another version of livedoc."
        )
    return f"A conversion worker could not start this job ({type(exc).__name__})."


def _import_error(func_name: str) -> ImportError | AttributeError | None:
    module_name, _, attribute = func_name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return exc
    return None if hasattr(module, attribute) else AttributeError(attribute, name=attribute)


def _job_code_ran(tb) -> bool:
    if not isinstance(tb, TracebackType):
        return True  # RQ passes a stack summary for abandoned jobs: not a load failure
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") == JOB_MODULE:
            return True
        tb = tb.tb_next
    return False
