"""A prediction job's listing: its input's files streamed into shards recorded in PostgreSQL, each
sent to the shards queue as it is recorded."""

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

from service import confinement, crud, shards
from service.contract import send
from service.kinds import KINDS, PREDICT
from service.settings import Settings
from service.specs import EvaluateSpec, PredictSpec
from service.states import Status
from worker.celery_app import app
from worker.finishing import finish_job_if_done
from worker.process import database_unreachable, error_code, sessions, start, worker_settings

log = logging.getLogger(__name__)
# The specs of the kinds whose input is listed into shards: each has input, shard_size and true_label.
ShardedSpec = PredictSpec | EvaluateSpec
# An input smaller than SPREAD full shards is cut into SPREAD smaller ones (of at least
# MIN_SHARD files), so that a few thousand images still keep every worker busy to the end.
SPREAD, MIN_SHARD = 8, 64


def list_job(task, job_id: str) -> int | None:
    """Claim the job and list it into shards, sending them; returns the shard of a job of one shard,
    left for the caller to run here: a single image does not pay for a second trip through the queue."""
    started = start(task, job_id)
    if started is None:
        return None
    reporter, job = started
    spec = KINDS[job.type].spec.of_job(job.params)
    settings = worker_settings()
    try:
        outcome, single = list_into_shards(job.id, spec, reporter.attempt, settings)
    except Exception as e:
        if database_unreachable(e):
            raise
        log.exception("listing prediction job %s failed", job_id)
        reporter.finish(Status.FAILED, error_code=error_code(e), error_message=f"listing the input failed: {e}")
        return None
    if outcome == "too_many_files":
        reporter.finish(
            Status.FAILED,
            error_code="too_many_files",
            error_message=f"the input holds more than {settings.max_job_files} files (GROCERY_MAX_JOB_FILES)",
        )
    elif outcome == "too_many_shards":
        reporter.finish(
            Status.FAILED,
            error_code="too_many_shards",
            error_message=f"the input needs more than {settings.max_job_shards} shards of "
            f"{spec.shard_size} files (GROCERY_MAX_JOB_SHARDS): give a larger shard_size",
        )
    return single


def list_into_shards(job_id, spec: ShardedSpec, attempt: int, settings: Settings) -> tuple[str, int | None]:
    """Stream the input's files into shards, enqueuing each as it is recorded, but for a job of one
    shard: that shard's id is returned, to run at once."""
    files = input_files(job_id, spec, settings)
    listed, numbers, kept = 0, 0, None
    # Default shards grow with the input so that even the largest job stays within max_job_shards.
    default_size = max(settings.shard_size, -(-settings.max_job_files // settings.max_job_shards))
    for number, paths in enumerate(shard_chunks(files, spec.shard_size, default_size)):
        listed += len(paths)
        if listed > settings.max_job_files:
            return "too_many_files", None
        if number >= settings.max_job_shards:
            return "too_many_shards", None
        with sessions()() as session:
            shard_id = shards.add_shard(session, job_id=job_id, number=number, paths=paths)
            stop = crud.report_job(session, job_id=job_id, attempt=attempt, progress_total=listed)
            session.commit()
        numbers = number + 1
        if kept is not None:
            send_shard(kept)
        kept = shard_id  # None when an earlier listing attempt recorded this shard already
        if stop:
            break
    with sessions()() as session:
        crud.report_job(session, job_id=job_id, attempt=attempt, progress_total=listed, shards_total=numbers)
        session.commit()
    single = kept if numbers == 1 else None
    if kept is not None and single is None:
        send_shard(kept)
    finish_job_if_done(job_id)  # a job without files ends here
    return "listed", single


def shard_chunks(files: Iterator[str], size: int | None, default: int) -> Iterator[list[str]]:
    """The job's shard_size as given; else ``default``-file shards, or smaller ones for small inputs.
    Reads ahead at most SPREAD shards' worth, so listing still streams."""
    from grocery.listing import chunked

    if size:
        yield from chunked(files, size)
        return
    head = list(itertools.islice(files, default * SPREAD))
    if len(head) < default * SPREAD:
        yield from chunked(head, max(MIN_SHARD, -(-len(head) // SPREAD)))
        return
    yield from chunked(itertools.chain(head, files), default)


def input_files(job_id, spec: ShardedSpec, settings: Settings) -> Iterator[str]:
    from grocery import storage
    from grocery.listing import name_matcher, walk_files

    source = spec.input
    if source.paths is not None:
        return iter(source.paths)
    hidden = confinement.others_uploads(settings, job_id=job_id)
    if source.url is not None:
        matches = name_matcher(source.pattern)
        listed = storage.list_objects(source.url, recursive=source.recursive, matches=matches)
        return (url for url in listed if not hidden(url))
    # The walk enters no symlinked folder, so a path's folders are as real as the job's folder.
    files = walk_files(Path(source.folder), recursive=source.recursive, pattern=source.pattern)
    return (path for path in files if not hidden(Path(path)))


def send_shard(shard_id: int, countdown: float | None = None) -> None:
    send(app, PREDICT.shard, shard_id, countdown=countdown)
