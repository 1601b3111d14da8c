"""A sharded job's finish: once its listing is done and no shard is left, whoever did the last of its
work (the listing, a shard, the reconciler) finishes it, as service.shards.finish_if_done decides
under the job row's lock, through the attempt-guarded path every job finishes by."""

import logging
import uuid
from collections.abc import Callable

from service import crud, exports, shards
from service.kinds import KINDS
from worker.process import announce_finish, sessions, worker_settings

log = logging.getLogger(__name__)


# What a kind adds to its result as it finishes (an evaluation's metrics), by kind: its worker module
# declares it with @summary_of, as its tasks with @app.task.
SUMMARIES: dict[str, Callable] = {}


def summary_of(kind: str):
    def declare(summarize: Callable) -> Callable:
        SUMMARIES[kind] = summarize
        return summarize

    return declare


def finish_job_if_done(job_id: uuid.UUID) -> None:
    """Finish the job if its work is all done. One that asked for an output object has it written
    first, outside the row's lock, so that a client who sees the job finished finds the object in
    place (two workers finishing the last shards at once may both write it: the same rows, the same
    file; the attempt guard lets one of them finish the job)."""
    with sessions()() as session:
        job = crud.get_job(session, job_id=job_id)
        spec = KINDS[job.type].spec.of_job(job.params)
        limit = worker_settings().max_failed_fraction if spec.max_failed_fraction is None else spec.max_failed_fraction
        ended = shards.outcome(session, job_id=job_id, max_failed_fraction=limit) if spec.output else None
        with_output = ended is not None and shards.wants_output(session, job_id, ended.status)
    output = deliver_output(job_id, spec.output.url) if with_output else None
    with sessions()() as session:
        status = shards.finish_if_done(
            session, job_id=job_id, max_failed_fraction=limit, output=output, summarize=SUMMARIES.get(job.type)
        )
        session.commit()
    if status is not None:
        log.info("prediction job %s %s", job_id, status)
        announce_finish(job_id, status)


def deliver_output(job_id: uuid.UUID, url: str) -> dict:
    """Write the job's results as Parquet and upload them to the object its request named; returns
    what became of it ({url, bytes, rows}, or {url, error}): a failed upload is recorded with the
    job, never a lost job."""
    from grocery import storage

    path = exports.private_path(worker_settings(), job_id=job_id, purpose="output", output="parquet")
    try:
        with sessions()() as session:
            rows = exports.write_parquet(session, job_id=job_id, path=path)
        return {"url": url, "bytes": storage.upload_file(path, url), "rows": rows}
    except Exception as e:  # StorageError names the object and the reason, never the credentials
        log.warning("prediction job %s: its results were not written to %s: %s", job_id, url, e)
        if isinstance(e, storage.StorageError):
            return {"url": url, "error": {"code": e.code, "message": str(e)}}
        return {"url": url, "error": {"code": "output_failed", "message": f"{type(e).__name__}: {e}"}}
    finally:
        path.unlink(missing_ok=True)
