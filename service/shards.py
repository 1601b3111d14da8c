"""Small keyword-only data functions for bulk prediction: shards, their progress, the job's end.

A prediction job is listed into shards of about a thousand files. A worker claims a shard
(guarded by its attempt number, like a job), writes its files' results and finishes it. The
job ends when its listing is done and no shard is queued or running: whichever comes last, the
listing or a shard, ends it, under the job row's lock so that exactly one of them does.
"""

import uuid
from datetime import datetime, timezone
from typing import NamedTuple

from sqlalchemy import Integer, case, cast, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from grocery.results import Prediction
from service.crud import add_event, add_predictions
from service.tables import LIVE_STATUSES, Job, JobShard, PredictionRow


def add_shard(session: Session, *, job_id: uuid.UUID, number: int, paths: list[str]) -> int | None:
    """Record a shard; returns its id, or None when an earlier listing attempt recorded it already."""
    statement = (
        insert(JobShard)
        .values(job_id=job_id, number=number, paths=paths, total=len(paths))
        .on_conflict_do_nothing(constraint="job_shards_job_id_number_key")
        .returning(JobShard.id)
    )
    return session.scalar(statement)


def note_listing(
    session: Session, *, job_id: uuid.UUID, attempt: int, listed: int, shards_total: int | None = None
) -> bool:
    """The listing's progress (files found so far; the shard count once it ends). Returns whether to stop."""
    values = {"progress_total": listed, "heartbeat_at": func.now(), "progress_at": func.now()}
    if shards_total is not None:
        values["shards_total"] = shards_total
    running = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status == "running")
        .values(**values)
        .returning(Job.cancel_requested)
    )
    return running is None or running


def claim_shard(session: Session, *, shard_id: int | None, worker: str, device: str) -> JobShard | None:
    """queued -> running, while its job runs: this shard, or (None) the fairest queued one (next_shard);
    None when there is nothing to do (a duplicate delivery, a shard already taken, a stopped job).
    A lost worker's shard comes back through the reconciler."""
    if shard_id is None:
        shard_id = next_shard(session)
    job_runs = select(Job.id).where(Job.id == JobShard.job_id, Job.status == "running", ~Job.cancel_requested)
    return session.scalar(
        update(JobShard)
        .where(JobShard.id == shard_id, JobShard.status == "queued", job_runs.exists())
        .values(
            status="running",
            attempts=JobShard.attempts + 1,
            worker=worker,
            device=device,
            started_at=func.now(),
            heartbeat_at=func.now(),
            progress_at=func.now(),
        )
        .returning(JobShard)
    )


PRIORITY_RANK = case({"high": 0, "normal": 1, "low": 2}, value=Job.priority)


def next_shard(session: Session) -> int | None:
    """The queued shard a free worker should run, locked: round-robin across owners, then across an
    owner's jobs (the fewest shards running first, then the oldest job), within a priority level,
    higher levels first. So a job submitted behind a million files starts at the next free worker."""
    running = select(JobShard.job_id, func.count().label("shards")).where(JobShard.status == "running")
    by_job = running.group_by(JobShard.job_id).subquery()
    owner_running = (
        select(Job.owner_token_id, func.sum(by_job.c.shards).label("shards"))
        .join(by_job, by_job.c.job_id == Job.id)
        .group_by(Job.owner_token_id)
        .subquery()
    )
    query = (
        select(JobShard.id)
        .join(Job, Job.id == JobShard.job_id)
        .outerjoin(by_job, by_job.c.job_id == Job.id)
        .outerjoin(owner_running, owner_running.c.owner_token_id.is_not_distinct_from(Job.owner_token_id))
        .where(JobShard.status == "queued", Job.status == "running", ~Job.cancel_requested)
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


def drop_shard_of_stopped_job(session: Session, *, shard_id: int) -> uuid.UUID | None:
    """A queued shard whose job was cancelled or has ended is cancelled; returns its job's id if so."""
    job_stopped = select(Job.id).where(Job.id == JobShard.job_id, or_(Job.status != "running", Job.cancel_requested))
    return session.scalar(
        update(JobShard)
        .where(JobShard.id == shard_id, JobShard.status == "queued", job_stopped.exists())
        .values(status="cancelled", finished_at=func.now())
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
) -> bool | None:
    """A shard's progress, and its job's (the sum over its shards) and heartbeat. Returns whether to
    stop, or None when this attempt no longer owns the shard: then it must write nothing. The row
    lock taken here holds off a takeover until the caller's transaction ends."""
    current = session.scalar(
        update(JobShard)
        .where(JobShard.id == shard.id, JobShard.attempts == attempt, JobShard.status == "running")
        .values(
            done=done, failed=failed, labels=labels, runtime=runtime, heartbeat_at=func.now(), progress_at=func.now()
        )
        .returning(JobShard.id)
    )
    if current is None:
        return None
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
        .returning(or_(Job.cancel_requested, Job.status != "running"))
    )
    return bool(stop)


def hold_shard(session: Session, *, shard: JobShard, attempt: int) -> bool:
    """Whether this attempt still owns the shard; if so, its row stays locked until the transaction ends."""
    held = session.scalar(
        update(JobShard)
        .where(JobShard.id == shard.id, JobShard.attempts == attempt, JobShard.status == "running")
        .values(heartbeat_at=func.now())
        .returning(JobShard.id)
    )
    return held is not None


def keep_shard_alive(session: Session, *, shard_id: int, attempt: int) -> bool:
    """Liveness only, from the worker's presence thread while its task holds this attempt."""
    alive = session.scalar(
        update(JobShard)
        .where(JobShard.id == shard_id, JobShard.attempts == attempt, JobShard.status == "running")
        .values(heartbeat_at=func.now())
        .returning(JobShard.id)
    )
    return alive is not None


def fail_remaining(session: Session, *, shard: JobShard, code: str, message: str) -> None:
    """Error rows for the shard's files that have no result yet: they count as failed, not lost."""
    finished = done_paths(session, job_id=shard.job_id, paths=shard.paths)
    rows = [Prediction.failed(p, code, message).to_row() for p in shard.paths if p not in finished]
    add_predictions(session, job_id=shard.job_id, rows=rows)


def finish_shard(
    session: Session, *, shard: JobShard, attempt: int, status: str, error_message: str | None = None
) -> bool:
    """The shard's final write, with counts taken from its result rows (so earlier attempts' rows count)."""
    done, failed, labels = tally_shard(session, shard=shard)
    finished = session.scalar(
        update(JobShard)
        .where(JobShard.id == shard.id, JobShard.attempts == attempt, JobShard.status == "running")
        .values(
            status=status,
            done=done,
            failed=failed,
            labels=labels,
            error_message=error_message,
            finished_at=func.now(),
            heartbeat_at=func.now(),
        )
        .returning(JobShard.id)
    )
    return finished is not None


def requeue_shard(session: Session, *, shard: JobShard, attempt: int, error_message: str) -> bool:
    """running -> queued for another attempt; the caller enqueues it again."""
    requeued = session.scalar(
        update(JobShard)
        .where(JobShard.id == shard.id, JobShard.attempts == attempt, JobShard.status == "running")
        .values(status="queued", error_message=error_message, enqueued_at=func.now())
        .returning(JobShard.id)
    )
    return requeued is not None


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


class Ending(NamedTuple):
    """How a job whose work is all done would end: its status, error and summary."""

    status: str
    code: str | None
    message: str | None
    summary: dict


def ending(session: Session, *, job_id: uuid.UUID, max_failed_fraction: float) -> Ending | None:
    """How the job ends now that its listing is done and no shard is left (its row locked until the
    transaction ends); None while work is left, or once it has ended."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.status != "running" or job.shards_total is None:
        return None
    still_open = select(func.count()).where(JobShard.job_id == job_id, JobShard.status.in_(LIVE_STATUSES))
    if session.scalar(still_open):
        return None
    summary = job_summary(session, job=job)
    if job.cancel_requested:
        return Ending("cancelled", None, None, summary)
    if summary["total"] == 0:
        return Ending("failed", "no_images", "the job's input holds no image files", summary)
    if summary["failed"] > max_failed_fraction * summary["total"]:
        message = (
            f"{summary['failed']} of {summary['total']} files failed ({summary['failed'] / summary['total']:.1%}), "
            f"above the limit of {max_failed_fraction:.0%} (max_failed_fraction)"
        )
        return Ending("failed", "too_many_failures", message, summary)
    return Ending("succeeded", None, None, summary)


def needs_output(job: Job, status: str) -> bool:
    """A job that asked for an output object writes it before it ends, unless it was cancelled."""
    return "output" in job.params and status != "cancelled"


def complete_job(
    session: Session, *, job_id: uuid.UUID, max_failed_fraction: float, output: dict | None = None
) -> str | None:
    """End the job when its listing is done and no shard is left; returns the status it ended with.
    A job with an output object ends only with ``output`` (what became of the object) in hand, so
    that its end says where its results are: the caller writes the object first."""
    ended = ending(session, job_id=job_id, max_failed_fraction=max_failed_fraction)
    job = session.get(Job, job_id)
    if ended is None or (output is None and needs_output(job, ended.status)):
        return None
    result = {**ended.summary, "results": f"/jobs/{job_id}/results", **({"output": output} if output else {})}
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status=ended.status,
            result=result,
            progress_done=ended.summary["done"],
            error_code=ended.code,
            error_message=ended.message,
            finished_at=func.now(),
        )
    )
    if output:
        add_event(session, job_id=job_id, kind="output", data=output)
    error = {"error": {"code": ended.code, "message": ended.message}} if ended.code else {}
    add_event(session, job_id=job_id, kind="state", data={"status": ended.status, **error})
    return ended.status


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
    ended = last_finished if job.status != "running" else datetime.now(timezone.utc)
    seconds = (ended - job.started_at).total_seconds() if job.started_at and ended else None
    return {
        "total": total,
        "done": done,
        "succeeded": done - failed,
        "failed": failed,
        "labels": dict(labels),
        "shards": job.shards_total,
        "seconds": round(seconds, 3) if seconds else None,
        "images_per_s": round(done / seconds, 1) if seconds else None,
    }
