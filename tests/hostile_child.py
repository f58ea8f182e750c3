"""Child process of tests/test_hostile.py: one conversion through a real RQ worker, measured.

Run as `python tests/hostile_child.py REDIS_URL STORAGE_DIR KIND SOURCE [SOURCE ...]`; the conversion
reads its settings from the environment like every worker. Prints one JSON line: the job's final
progress, the seconds the worker took and this process's peak RSS in MB. Further sources are
converted after the first by the same worker (`others`: their final progress). With
HOSTILE_WORKER=livedoc the worker is livedoc's own forking one (a work horse per job, as deployed;
`children_peak_mb`: the largest horse's peak RSS) instead of RQ's SimpleWorker.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis import Redis  # noqa: E402
from rq import SimpleWorker  # noqa: E402

from config import Settings  # noqa: E402
from livedoc import jobs, progress  # noqa: E402
from livedoc.ids import new_doc_id  # noqa: E402
from livedoc.storage import DocumentFiles, LocalStorage  # noqa: E402


def main(redis_url: str, storage: str, kind: str, *sources: str) -> None:
    """Convert each source as `kind` and print the outcome of the first with its cost."""
    conn = Redis.from_url(redis_url)
    settings = Settings.from_env().as_flask_config()
    job_ids = []
    for source in sources:
        doc_id = new_doc_id()
        files = DocumentFiles(LocalStorage(storage), doc_id)
        with open(source, "rb") as stream:
            files.save_original_stream(stream)
        job_ids.append(jobs.enqueue_conversion(conn, settings, doc_id, kind, seq=1, attempt=1))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    worker_class = SimpleWorker
    if os.environ.get("HOSTILE_WORKER") == "livedoc":
        from workers.rqworker import LivedocWorker

        worker_class = LivedocWorker
    worker = worker_class(
        [jobs.queue(conn, settings["QUEUE_NAME"])], connection=conn, serializer=jobs.SERIALIZER
    )
    worker.work(burst=True, with_scheduler=False)
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "progress": progress.read(conn, job_ids[0]),
                "others": [progress.read(conn, job_id) for job_id in job_ids[1:]],
                "seconds": round(seconds, 2),
                "peak_mb": round(peak / 1024, 1),
                "children_peak_mb": round(children / 1024, 1),
                "base_mb": round(base_rss / 1024, 1),
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
