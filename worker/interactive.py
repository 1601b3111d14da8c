"""The interactive lane: one-file jobs (POST /predict, small manifests) classified together in one
batch (dynamic batching), ahead of bulk work; a worker in the middle of a bulk shard serves them
between two of its batches."""

import functools
import logging
import time
from collections.abc import Callable

from service import crud
from service.attempts import Verdict
from service.confinement import ReadScope
from service.states import Status
from service.tables import JobShard, Model
from worker.listing import list_job
from worker.model_cache import cached_predictor
from worker.process import hard_time_limit, presence, sessions, worker_settings
from worker.shard_runs import (
    ShardTimeLimit,
    claim_for_run,
    finish_run,
    retry_or_fail,
    shard_work,
    spec_of,
    write_rows,
)

log = logging.getLogger(__name__)


def companions(job_id: str) -> list[str]:
    """Other interactive jobs to classify with this one: those waiting now, and if fewer than a batch,
    those that arrive within GROCERY_INTERACTIVE_BATCH_DELAY_MS (TorchServe's max_batch_delay)."""
    settings = worker_settings()
    others = waiting(settings.interactive_batch_size, but=job_id)
    if len(others) < settings.interactive_batch_size - 1 and settings.interactive_batch_delay_ms > 0:
        time.sleep(settings.interactive_batch_delay_ms / 1000)
        others = waiting(settings.interactive_batch_size, but=job_id)
    return others[: settings.interactive_batch_size - 1]


def waiting(limit: int, but: str | None = None) -> list[str]:
    with sessions()() as session:
        queued = crud.waiting_interactive_jobs(session, limit=limit)
    return [str(job_id) for job_id in queued if str(job_id) != but]


def serve_waiting(task, shard: JobShard) -> None:
    """Run the interactive jobs waiting now, with the model already loaded, then hand this worker back
    to the bulk shard it paused: a request waits for one batch at most, not for a whole shard."""
    kept = presence.kept
    try:
        run_interactive(task, waiting(worker_settings().interactive_batch_size))
    finally:
        presence.update(job_id=None, shard_id=shard.id)
        presence.keep_alive(*kept)


def run_interactive(task, job_ids: list[str]) -> None:
    """Interactive jobs classified together: each is claimed and listed into its one shard as any job
    is; then their files share the model's batches, and each job finishes on its own."""
    singles = [shard_id for shard_id in map(functools.partial(list_job, task), job_ids) if shard_id is not None]
    claimed = [c for c in (claim_for_run(task, shard_id) for shard_id in singles) if c is not None]
    by_model = {}
    for shard, job, model, scope in claimed:
        by_model.setdefault(model.id, (model, []))[1].append((shard, scope, spec_of(job).true_label))
    for model, group in by_model.values():
        classify_together(model, group)


def classify_together(model: Model, group: list[tuple[JobShard, ReadScope, Callable]]) -> None:
    works = [shard_work(shard, shard.attempts, scope, true_label) for shard, scope, true_label in group]
    finished = set()
    limit = worker_settings().predict_time_limit

    def fail_the_rest(error: Exception) -> None:
        for work in works:
            if work.shard.id not in finished:
                finish_run(work.shard, work.attempt, *retry_or_fail(work.shard, work.attempt, error))

    try:
        with hard_time_limit(limit, lambda: fail_the_rest(ShardTimeLimit("hard", limit))):
            predictor = cached_predictor(str(model.id), model.artifact_path)
            results = iter(predictor.predict_files([path for work in works for path in work.todo]))
            for work in works:
                rows = work.first_rows + [next(results).to_row() for _ in work.todo]
                verdict, _ = write_rows(work, rows, predictor.runtime, batched_with=len(works))
                finished.add(work.shard.id)
                status = Status.SUCCEEDED if verdict is Verdict.GO_ON else Status.CANCELLED
                finish_run(work.shard, work.attempt, status, None)
    except Exception as e:
        log.exception("interactive shards %s failed", [work.shard.id for work in works])
        fail_the_rest(e)
