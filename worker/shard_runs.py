"""A shard's run: claim it (or the fairest queued one), classify its files that have no result yet in
batches, write their rows with its progress, and finish it; a failing shard is retried by the retry
policy, then its remaining files become error rows."""

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from grocery.results import Prediction
from service import attempts, crud, predictions, shards, tokens
from service.attempts import Verdict
from service.confinement import ReadScope, job_scope
from service.kinds import KINDS
from service.settings import Settings
from service.specs import PredictSpec
from service.states import Lane, Status
from service.tables import Job, JobShard, Model
from worker.finishing import finish_job_if_done
from worker.listing import send_shard
from worker.model_cache import cached_predictor
from worker.process import (
    JobError,
    device_name,
    error_code,
    hard_time_limit,
    presence,
    sessions,
    worker_name,
    worker_settings,
)

log = logging.getLogger(__name__)


class ShardTimeLimit(JobError):
    code = "time_limit"

    def __init__(self, kind: str, seconds: float):
        super().__init__(f"the shard ran past its {kind} time limit of {seconds:.0f}s")


def claim_for_run(task, shard_id: int, *, fair: bool = False) -> tuple[JobShard, Job, Model, ReadScope] | None:
    """Claim the shard (or, ``fair``, the fairest queued one) with what running it needs; None when
    there is nothing to do. A shard of a stopped job is dropped instead."""
    with sessions()() as session:
        dropped_from = shards.drop_shard_of_stopped_job(session, shard_id=shard_id)
        shard = None
        if dropped_from is None:
            claimed = None if fair else shard_id
            shard = shards.claim_shard(session, shard_id=claimed, worker=worker_name(task), device=device_name())
        if shard is None:
            session.commit()
            if dropped_from is not None:
                finish_job_if_done(dropped_from)
            return None
        job = crud.get_job(session, job_id=shard.job_id)
        model = session.get(Model, job.model_id)
        scope = read_scope(session, job, worker_settings())
        session.commit()
    return shard, job, model, scope


def run_shard(task, shard_id: int, *, fair: bool = False, pause=None) -> Status | None:
    """Claim and classify a shard, keeping its lease meanwhile; ``pause(task, shard)``, for bulk work,
    serves interactive jobs that wait between its batches."""
    claimed = claim_for_run(task, shard_id, fair=fair)
    if claimed is None:
        return None
    shard, job, model, scope = claimed
    attempt = shard.attempts
    presence.update(shard_id=shard.id)
    presence.keep_alive("shard", shard.id, attempt)
    limits = worker_settings()

    def on_hard_limit():
        finish_run(shard, attempt, *retry_or_fail(shard, attempt, ShardTimeLimit("hard", limits.predict_time_limit)))

    try:
        with hard_time_limit(limits.predict_time_limit, on_hard_limit):
            deadline = time.monotonic() + limits.predict_soft_time_limit
            between_batches = (lambda: pause(task, shard)) if pause and job.lane == Lane.BULK else None
            work = shard_work(shard, attempt, scope, spec_of(job).true_label)
            stopped = classify_shard(work, model, deadline, between_batches)
        status, message = (Status.CANCELLED if stopped else Status.SUCCEEDED), None
    except Exception as e:
        log.exception("shard %s of job %s failed (attempt %s)", shard.number, job.id, attempt)
        status, message = retry_or_fail(shard, attempt, e)
    finish_run(shard, attempt, status, message)
    return status


def finish_run(shard: JobShard, attempt: int, status: Status, message: str | None) -> None:
    """Record a shard's finish (unless it went back on the queue) and finish its job if it was the last."""
    if status == Status.QUEUED:
        return
    with sessions()() as session:
        shards.finish_shard(session, shard=shard, attempt=attempt, status=status, error_message=message)
        session.commit()
    finish_job_if_done(shard.job_id)


def retry_or_fail(shard: JobShard, attempt: int, error: Exception) -> tuple[Status, str]:
    """A failing shard is tried again, as the retry policy says; then its files without a result
    become error rows."""
    message = f"{type(error).__name__}: {error}"
    policy = worker_settings().shard_retry
    with sessions()() as session:
        if policy.retries(attempt):
            requeued = shards.requeue_shard(session, shard=shard, attempt=attempt, error_message=message)
            session.commit()
            if requeued:
                send_shard(shard.id, countdown=policy.delay(attempt))
            return Status.QUEUED, message
        if not attempts.keep_alive(session, table=JobShard, key=shard.id, attempt=attempt):
            return Status.QUEUED, message  # another attempt owns it now: leave its files alone
        shards.fail_remaining(
            session, shard=shard, code=error_code(error), message=f"shard failed {attempt} times: {message}"
        )
        session.commit()
    return Status.FAILED, message


def read_scope(session, job: Job, settings: Settings) -> ReadScope:
    """What this job's files may resolve to: checked again here, at the moment they are read (a
    symlink may have changed since the submission was checked)."""
    owner = tokens.get_token(session, token_id=job.owner_token_id)
    source = PredictSpec.input_of(job.params)
    return job_scope(settings, job_id=job.id, source=source, token_roots=owner.roots if owner else None)


@dataclass
class ShardWork:
    """A claimed shard attempt's files still without a result, and its counts so far."""

    shard: JobShard
    attempt: int
    todo: list[str]  # to classify
    first_rows: list[dict]  # refused without reading (outside the job's roots)
    done: int
    failed: int
    labels: Counter
    true_label: Callable[[str], str | None]  # the file's label where the job knows it (an evaluation)


def spec_of(job: Job):
    """The job's spec, as its kind reads it."""
    return KINDS[job.type].spec.of_job(job.params)


def shard_work(shard: JobShard, attempt: int, scope: ReadScope, true_label: Callable) -> ShardWork:
    """What is left of the shard: a retried shard resumes after the rows its earlier attempts wrote."""
    with sessions()() as session:
        finished = shards.done_paths(session, job_id=shard.job_id, paths=shard.paths)
        done, failed, labels = shards.tally_shard(session, shard=shard)
    todo = [p for p in shard.paths if p not in finished]
    escaping = {p for p in todo if not scope.allows(p)}
    outside = "the file resolves outside the job's input roots"
    refused = [Prediction.failed(p, "outside_root", outside).to_row() for p in todo if p in escaping]
    kept = [p for p in todo if p not in escaping]
    return ShardWork(shard, attempt, kept, refused, done, failed, Counter(labels), true_label)


def write_rows(
    work: ShardWork, rows: list[dict], runtime: str, *, look_for_interactive: bool = False, batched_with: int = 1
) -> tuple[Verdict, bool]:
    """Write a batch of the shard's rows and its progress. Returns (verdict, interactive_waiting); on
    Verdict.LOST (this attempt no longer owns the shard) nothing was written."""
    for row in rows:
        row["true_label"] = work.true_label(row["path"])
    work.done += len(rows)
    work.failed += sum(row["error_code"] is not None for row in rows)
    work.labels.update(row["label"] for row in rows if row["label"] is not None)
    shard, attempt = work.shard, work.attempt
    with sessions()() as session:
        # Ownership first: its row lock keeps a takeover out until these rows are committed.
        verdict = shards.report_shard(
            session,
            shard=shard,
            attempt=attempt,
            done=work.done,
            failed=work.failed,
            labels=dict(work.labels),
            runtime=runtime,
        )
        if verdict is Verdict.LOST:
            session.rollback()
            log.warning("shard %s attempt %s was taken over: stopping without writing", shard.id, attempt)
            return verdict, False
        predictions.add_predictions(session, job_id=shard.job_id, rows=rows)
        if batched_with > 1:
            crud.add_event(session, job_id=shard.job_id, kind="batched", data={"jobs": batched_with})
        interactive_waiting = look_for_interactive and crud.interactive_jobs_waiting(session)
        session.commit()
    return verdict, interactive_waiting


def classify_shard(work: ShardWork, model: Model, deadline: float, pause=None) -> bool:
    """Classify the shard's files that have no result yet; returns True when told to stop. Between
    batches, ``pause`` serves interactive jobs waiting meanwhile. Past ``deadline`` (the soft time
    limit) it raises, and the retry resumes after the rows written."""
    predictor = cached_predictor(str(model.id), model.artifact_path)
    for batch in batches(work.first_rows, predictor.predict_files(work.todo), predictor.batch_size):
        verdict, interactive_waiting = write_rows(
            work, batch, predictor.runtime, look_for_interactive=pause is not None
        )
        if verdict is not Verdict.GO_ON:
            return True
        if interactive_waiting:
            pause()
        if time.monotonic() > deadline:
            raise ShardTimeLimit("soft", worker_settings().predict_soft_time_limit)
    return False


def batches(first_rows: list[dict], results, size: int):
    if first_rows:
        yield first_rows
    batch = []
    for result in results:
        batch.append(result.to_row())
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
