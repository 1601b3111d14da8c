"""Small keyword-only data functions for bulk prediction: shards, their progress, the job's end.

A prediction job is listed into shards of about a thousand files. A worker claims a shard
(guarded by its attempt number, like a job), writes its files' results and finishes it. The
job ends when its listing is done and no shard is queued or running: whichever comes last, the
listing or a shard, ends it, under the job row's lock so that exactly one of them does.
"""

import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import NamedTuple

from sqlalchemy import Integer, case, cast, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from grocery.results import Prediction
from service import attempts
from service.attempts import Verdict
from service.crud import add_event, finish_job
from service.predictions import add_predictions
from service.specs import PredictSpec
from service.states import FINISHED_STATUSES, LIVE_STATUSES, Priority, Status
from service.tables import Job, JobShard, Model, PredictionRow


def add_shard(session: Session, *, job_id: uuid.UUID, number: int, paths: list[str]) -> int | None:
    """Record a shard; returns its id, or None when an earlier listing attempt recorded it already."""
    statement = (
        insert(JobShard)
        .values(job_id=job_id, number=number, paths=paths, total=len(paths))
        .on_conflict_do_nothing(constraint="job_shards_job_id_number_key")
        .returning(JobShard.id)
    )
    return session.scalar(statement)


def claim_shard(session: Session, *, shard_id: int | None, worker: str, device: str) -> JobShard | None:
    """queued -> running, while its job runs: this shard, or (None) the fairest queued one (next_shard);
    None when there is nothing to do (a duplicate delivery, a shard already taken, a stopped job).
    A lost worker's shard comes back through the reconciler."""
    if shard_id is None:
        shard_id = next_shard(session)
    job_runs = select(Job.id).where(Job.id == JobShard.job_id, Job.status == Status.RUNNING, ~Job.cancel_requested)
    return session.scalar(
        update(JobShard)
        .where(JobShard.id == shard_id, JobShard.status == Status.QUEUED, job_runs.exists())
        .values(**attempts.claimed(JobShard, worker=worker, device=device))
        .returning(JobShard)
    )


PRIORITY_RANK = case({priority: rank for rank, priority in enumerate(Priority)}, value=Job.priority)


def running_shards():
    """Shards running per job and per owner (subqueries with a ``shards`` column): the counts the
    fair-share order compares (next_shard, and service.waiting's place of a job in it)."""
    running = select(JobShard.job_id, func.count().label("shards")).where(JobShard.status == Status.RUNNING)
    by_job = running.group_by(JobShard.job_id).subquery()
    owner_running = (
        select(Job.owner_token_id, func.sum(by_job.c.shards).label("shards"))
        .join(by_job, by_job.c.job_id == Job.id)
        .group_by(Job.owner_token_id)
        .subquery()
    )
    return by_job, owner_running


def next_shard(session: Session) -> int | None:
    """The queued shard a free worker should run, locked: round-robin across owners, then across an
    owner's jobs (the fewest shards running first, then the oldest job), within a priority level,
    higher levels first. So a job submitted behind a million files starts at the next free worker."""
    by_job, owner_running = running_shards()
    query = (
        select(JobShard.id)
        .join(Job, Job.id == JobShard.job_id)
        .outerjoin(by_job, by_job.c.job_id == Job.id)
        .outerjoin(owner_running, owner_running.c.owner_token_id.is_not_distinct_from(Job.owner_token_id))
        .where(JobShard.status == Status.QUEUED, Job.status == Status.RUNNING, ~Job.cancel_requested)
        .order_by(
            PRIORITY_RANK,
            func.coalesce(owner_running.c.shards, 0),
            func.coalesce(by_job.c.shards, 0),
            Job.created_at,
            JobShard.number,
        )
        .limit(1)
        .with_for_update(of=JobShard, skip_locked=True)
    )
    return session.scalar(query)


def job_stopped():
    """Whether a shard's job was cancelled or has ended (a correlated condition on JobShard). Not merely
    "not running": a job whose lister was lost goes back on the queue to be listed again, and its shards,
    queued or under way, are still its work (taken for stopped, they were cancelled, and the job ended
    "succeeded" with files that have no result)."""
    return or_(Job.status.in_(FINISHED_STATUSES), Job.cancel_requested)


def drop_shard_of_stopped_job(session: Session, *, shard_id: int) -> uuid.UUID | None:
    """A queued shard whose job was cancelled or has ended is cancelled; returns its job's id if so."""
    job_stopped_now = select(Job.id).where(Job.id == JobShard.job_id, job_stopped())
    return session.scalar(
        update(JobShard)
        .where(JobShard.id == shard_id, JobShard.status == Status.QUEUED, job_stopped_now.exists())
        .values(status=Status.CANCELLED, finished_at=func.now())
        .returning(JobShard.job_id)
    )


def done_paths(session: Session, *, job_id: uuid.UUID, paths: list[str]) -> set[str]:
    """Which of ``paths`` already have a result (written by an earlier attempt)."""
    query = select(PredictionRow.path).where(PredictionRow.job_id == job_id, PredictionRow.path.in_(paths))
    return set(session.scalars(query))


def report_shard(
    session: Session,
    *,
    shard: JobShard,
    attempt: int,
    done: int,
    failed: int,
    labels: dict[str, int],
    runtime: str,
) -> Verdict:
    """A shard's progress, and its job's (the sum over its shards) and heartbeat. Says whether to go
    on, stop, or (LOST) write nothing: this attempt no longer owns the shard. The row lock taken here
    holds off a takeover until the caller's transaction ends."""
    current = attempts.report(
        session,
        table=JobShard,
        key=shard.id,
        attempt=attempt,
        returning=JobShard.id,
        done=done,
        failed=failed,
        labels=labels,
        runtime=runtime,
    )
    if current is None:
        return Verdict.LOST
    summed = select(func.coalesce(func.sum(JobShard.done), 0)).where(JobShard.job_id == shard.job_id)
    stop = session.scalar(
        update(Job)
        .where(Job.id == shard.job_id)
        # GREATEST: a concurrent report may be missing from this statement's snapshot.
        .values(
            progress_done=func.greatest(Job.progress_done, summed.scalar_subquery()),
            heartbeat_at=func.now(),
            progress_at=func.now(),
        )
        .returning(job_stopped())
    )
    return Verdict.STOP if stop else Verdict.GO_ON


def fail_remaining(session: Session, *, shard: JobShard, code: str, message: str) -> None:
    """Error rows for the shard's files that have no result yet: they count as failed, not lost."""
    finished = done_paths(session, job_id=shard.job_id, paths=shard.paths)
    rows = [Prediction.failed(p, code, message).to_row() for p in shard.paths if p not in finished]
    add_predictions(session, job_id=shard.job_id, rows=rows)


def finish_shard(
    session: Session, *, shard: JobShard, attempt: int, status: Status, error_message: str | None = None
) -> bool:
    """The shard's final write, with counts taken from its result rows (so earlier attempts' rows count)."""
    done, failed, labels = tally_shard(session, shard=shard)
    counts = {"done": done, "failed": failed, "labels": labels}
    return attempts.finish(
        session,
        table=JobShard,
        key=shard.id,
        attempt=attempt,
        status=status,
        error_message=error_message,
        heartbeat_at=func.now(),
        **counts,
    )


def requeue_shard(session: Session, *, shard: JobShard, attempt: int, error_message: str) -> bool:
    """running -> queued for another attempt; the caller enqueues it again."""
    return attempts.requeue(session, table=JobShard, key=shard.id, attempt=attempt, error_message=error_message)


def tally_shard(session: Session, *, shard: JobShard) -> tuple[int, int, dict[str, int]]:
    paths = select(func.jsonb_array_elements_text(JobShard.paths)).where(JobShard.id == shard.id)
    rows = session.execute(
        select(PredictionRow.label, PredictionRow.error_code.is_not(None), func.count())
        .where(PredictionRow.job_id == shard.job_id, PredictionRow.path.in_(paths.scalar_subquery()))
        .group_by(PredictionRow.label, PredictionRow.error_code.is_not(None))
    ).all()
    done = sum(n for _, _, n in rows)
    failed = sum(n for _, is_error, n in rows if is_error)
    labels = {label: n for label, is_error, n in rows if label is not None and not is_error}
    return done, failed, labels


class Outcome(NamedTuple):
    """How a job whose work is all done finishes: its status, error and summary, and the attempt of
    its listing that the final write is guarded by."""

    status: Status
    code: str | None
    message: str | None
    summary: dict
    attempt: int


def outcome(session: Session, *, job_id: uuid.UUID, max_failed_fraction: float) -> Outcome | None:
    """How the job ends now that its listing is done and no shard is left (its row locked until the
    transaction ends); None while work is left, or once it has ended. The one place that decides."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.status != Status.RUNNING or job.shards_total is None:
        return None
    still_open = select(func.count()).where(JobShard.job_id == job_id, JobShard.status.in_(LIVE_STATUSES))
    if session.scalar(still_open):
        return None
    summary = job_summary(session, job=job)
    accuracy = labelled_accuracy(session, job=job)
    if accuracy is not None:
        summary["accuracy"] = accuracy
    if job.cancel_requested:
        return Outcome(Status.CANCELLED, None, None, summary, job.attempts)
    if summary["total"] == 0:
        return Outcome(Status.FAILED, "no_images", "the job's input holds no image files", summary, job.attempts)
    if summary["failed"] > max_failed_fraction * summary["total"]:
        message = (
            f"{summary['failed']} of {summary['total']} files failed ({summary['failed'] / summary['total']:.1%}), "
            f"above the limit of {max_failed_fraction:.0%} (max_failed_fraction)"
        )
        return Outcome(Status.FAILED, "too_many_failures", message, summary, job.attempts)
    return Outcome(Status.SUCCEEDED, None, None, summary, job.attempts)


def finish_if_done(
    session: Session,
    *,
    job_id: uuid.UUID,
    max_failed_fraction: float,
    output: dict | None = None,
    summarize: Callable[[Session, Job], dict] | None = None,
) -> Status | None:
    """Finish the job if its listing is done and no shard is left, as ``outcome`` decides under the
    row's lock, through the attempt-guarded path every job finishes by; returns the status it finished
    with. A job with an output object finishes only with ``output`` (what became of the object) in
    hand, so that its finish says where its results are: the caller writes the object first.
    ``summarize`` adds what the job's kind reports from its complete results (an evaluation's metrics)."""
    ended = outcome(session, job_id=job_id, max_failed_fraction=max_failed_fraction)
    if ended is None or (output is None and wants_output(session, job_id, ended.status)):
        return None
    result = {**ended.summary, "results": f"/jobs/{job_id}/results", **({"output": output} if output else {})}
    if summarize is not None and ended.status != Status.CANCELLED:
        result.update(summarize(session, session.get(Job, job_id)))
    if output:
        add_event(session, job_id=job_id, kind="output", data=output)
    finished = finish_job(
        session,
        job_id=job_id,
        attempt=ended.attempt,
        status=ended.status,
        result=result,
        error_code=ended.code,
        error_message=ended.message,
        progress_done=ended.summary["done"],
    )
    return ended.status if finished else None


def wants_output(session: Session, job_id: uuid.UUID, status: Status) -> bool:
    """A job that asked for an output object writes it before it finishes, unless it was cancelled."""
    return PredictSpec.output_of(session.get(Job, job_id).params) is not None and status != Status.CANCELLED


def job_summary(session: Session, *, job: Job) -> dict:
    """Counts over the job's shards: files, failures, results per label, throughput."""
    total, done, failed, last_finished = session.execute(
        select(
            func.coalesce(func.sum(JobShard.total), 0),
            func.coalesce(func.sum(JobShard.done), 0),
            func.coalesce(func.sum(JobShard.failed), 0),
            func.max(JobShard.finished_at),
        ).where(JobShard.job_id == job.id)
    ).one()
    entries = func.jsonb_each_text(JobShard.labels).table_valued("key", "value").render_derived()
    labels = session.execute(
        select(entries.c.key, func.sum(cast(entries.c.value, Integer)))
        .select_from(JobShard)
        .join(entries, true())
        .where(JobShard.job_id == job.id)
        .group_by(entries.c.key)
        .order_by(entries.c.key)
    ).all()
    runtimes = session.execute(
        select(JobShard.runtime, func.count())
        .where(JobShard.job_id == job.id, JobShard.runtime.is_not(None))
        .group_by(JobShard.runtime)
        .order_by(JobShard.runtime)
    ).all()
    ended = last_finished if job.status != Status.RUNNING else datetime.now(timezone.utc)
    seconds = (ended - job.started_at).total_seconds() if job.started_at and ended else None
    return {
        "total": total,
        "done": done,
        "succeeded": done - failed,
        "failed": failed,
        "labels": dict(labels),
        "shards": job.shards_total,
        "runtimes": dict(runtimes),  # the inference engine each shard ran on (grocery.runtimes), shards each
        "seconds": round(seconds, 3) if seconds else None,
        "images_per_s": round(done / seconds, 1) if seconds else None,
    }


def labelled_accuracy(session: Session, *, job: Job) -> dict | None:
    """Top-1 over the files whose path names a class of the model (a folder such as val/Fruit/Apple/,
    or a file named Apple_003.jpg, below the job's input folder or prefix); None when none does."""
    model = session.get(Model, job.model_id) if job.model_id else None
    source = PredictSpec.input_of(job.params)
    if model is None or source is None:
        return None
    classes = {name.casefold(): name for name in model.class_names}
    root = source.folder or source.url or ""
    labelled = correct = 0
    rows = select(PredictionRow.path, PredictionRow.label).where(
        PredictionRow.job_id == job.id, PredictionRow.error_code.is_(None)
    )
    for path, predicted in session.execute(rows.execution_options(yield_per=10_000)):
        truth = class_named_by(path.removeprefix(root), classes)
        if truth is not None:
            labelled += 1
            correct += predicted == truth
    return {"labelled": labelled, "correct": correct, "top1": round(correct / labelled, 4)} if labelled else None


def class_named_by(path: str, classes: dict[str, str]) -> str | None:
    """The deepest folder (or the file's name before its last "_") that is a class name."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        return None
    stem = parts[-1].rsplit(".", 1)[0].rsplit("_", 1)[0]
    for name in reversed([*parts[:-1], stem]):
        if name.casefold() in classes:
            return classes[name.casefold()]
    return None


def list_shards(session: Session, *, job_id: uuid.UUID, limit: int, after_number: int = -1) -> list[JobShard]:
    query = select(JobShard).where(JobShard.job_id == job_id, JobShard.number > after_number)
    return list(session.scalars(query.order_by(JobShard.number).limit(limit)))
