"""Small keyword-only data functions for operators: the worker registry, queue ages, metrics."""

import os
import time
import uuid
from datetime import datetime
from pathlib import Path

from sqlalchemy import case, func, literal, select, text, union_all
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service.kinds import INTERACTIVE_QUEUE, KINDS, PREDICT
from service.states import Lane, Status, WorkerStatus
from service.tables import Job, JobShard, PredictionRow, Worker

# A worker that has not reported for this long is not counted as live.
WORKER_LIVE_SECONDS = 30
# Job duration histogram buckets, in seconds: a second to a day.
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


def report_worker(
    session: Session,
    *,
    name: str,
    hostname: str,
    pid: int,
    device: str,
    queues: list[str],
    status: str,
    job_id: uuid.UUID | None,
    shard_id: int | None,
) -> None:
    """Insert or refresh a worker's row (a restarted worker with the same node name takes its row over)."""
    values = dict(
        name=name,
        hostname=hostname,
        pid=pid,
        device=device,
        queues=queues,
        status=status,
        job_id=job_id,
        shard_id=shard_id,
    )
    statement = insert(Worker).values(**values, heartbeat_at=func.now())
    fresh_start = statement.excluded.pid != Worker.pid
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[Worker.name],
            set_={
                **{key: statement.excluded[key] for key in values if key != "name"},
                "heartbeat_at": func.now(),
                "started_at": case((fresh_start, func.now()), else_=Worker.started_at),
            },
        )
    )


def live_workers_query():
    recent = Worker.heartbeat_at > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, WORKER_LIVE_SECONDS)
    return select(Worker).where(Worker.status != WorkerStatus.OFFLINE, recent)


def list_workers(session: Session, *, include_offline: bool = False) -> list[Worker]:
    query = select(Worker) if include_offline else live_workers_query()
    return list(session.scalars(query.order_by(Worker.name)))


# The queue a job's first task waits on (service.contract.job_task), in SQL.
JOB_QUEUE = case(
    (Job.lane == Lane.INTERACTIVE, literal(INTERACTIVE_QUEUE)),
    *((Job.type == name, literal(kind.start.queue)) for name, kind in KINDS.items()),
)
WAIT_WINDOW_SECONDS = 300


def oldest_queued(session: Session) -> dict[str, datetime]:
    """When the oldest still-queued work of each queue was submitted: jobs, and shards of predict jobs."""
    queued_jobs = select(JOB_QUEUE.label("queue"), Job.created_at).where(Job.status == Status.QUEUED)
    shard_queue = literal(PREDICT.shard.queue).label("queue")
    queued_shards = select(shard_queue, JobShard.created_at).where(JobShard.status == Status.QUEUED)
    waiting = union_all(queued_jobs, queued_shards).subquery()
    rows = session.execute(select(waiting.c.queue, func.min(waiting.c.created_at)).group_by(waiting.c.queue))
    return dict(rows.all())


def recent_waits(session: Session) -> dict[str, dict]:
    """Per queue, over the work started in the last WAIT_WINDOW_SECONDS: how long it waited to start
    (a job from its submission, a shard from its enqueueing): count, p50 and p95 seconds."""
    since = func.now() - text(f"interval '{WAIT_WINDOW_SECONDS} seconds'")
    job_wait = func.extract("epoch", Job.started_at - Job.created_at)
    shard_wait = func.extract("epoch", JobShard.started_at - JobShard.enqueued_at)
    jobs = select(JOB_QUEUE.label("queue"), job_wait.label("wait")).where(Job.started_at > since)
    shards = select(literal(PREDICT.shard.queue).label("queue"), shard_wait).where(JobShard.started_at > since)
    started = union_all(jobs, shards).subquery()
    p50, p95 = (func.percentile_cont(q).within_group(started.c.wait) for q in (0.5, 0.95))
    rows = session.execute(select(started.c.queue, func.count(), p50, p95).group_by(started.c.queue))
    return {queue: {"count": n, "p50": float(low), "p95": float(high)} for queue, n, low, high in rows}


def job_counts(session: Session) -> list[tuple[str, str, int]]:
    return list(session.execute(select(Job.type, Job.status, func.count()).group_by(Job.type, Job.status)).all())


def job_durations(session: Session) -> dict[str, dict]:
    """Per job type: cumulative bucket counts, sum and count of finished jobs' run times (seconds)."""
    seconds = func.extract("epoch", Job.finished_at - Job.started_at)
    columns = [func.count().filter(seconds <= bound) for bound in DURATION_BUCKETS]
    query = (
        select(Job.type, func.count(), func.coalesce(func.sum(seconds), 0), *columns)
        .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
        .group_by(Job.type)
    )
    return {
        job_type: {"count": count, "sum": float(total), "buckets": dict(zip(DURATION_BUCKETS, counts, strict=True))}
        for job_type, count, total, *counts in session.execute(query)
    }


def images_classified(session: Session, *, window_seconds: int = 60) -> tuple[int, float]:
    """Files classified in all (a counter), and per second over the last ``window_seconds`` (finished shards)."""
    total = session.scalar(select(func.coalesce(func.sum(JobShard.done), 0)))
    since = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, window_seconds)
    recent = session.scalar(select(func.coalesce(func.sum(JobShard.done), 0)).where(JobShard.finished_at > since))
    return int(total), recent / window_seconds


# A folder's size is walked at most this often per process: a scrape stays cheap with a million uploads.
FOLDER_BYTES_SECONDS = 60.0
_folder_bytes: dict[Path, tuple[float, int]] = {}


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (symlinks not followed), cached FOLDER_BYTES_SECONDS."""
    cached = _folder_bytes.get(folder)
    if cached is not None and time.monotonic() - cached[0] < FOLDER_BYTES_SECONDS:
        return cached[1]
    total, pending = 0, [folder]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue  # gone, or not readable: counts nothing
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    _folder_bytes[folder] = (time.monotonic(), total)
    return total


# Above this many result rows /metrics reports PostgreSQL's estimate: an exact count costs a scan.
EXACT_ROWS_BELOW = 100_000


def result_rows(session: Session) -> int:
    """Rows of the results table: exact while small, the planner's estimate (kept by ANALYZE) beyond."""
    estimate = session.scalar(text("SELECT reltuples::bigint FROM pg_class WHERE relname = 'predictions'")) or -1
    if estimate >= EXACT_ROWS_BELOW:
        return estimate
    return session.scalar(select(func.count()).select_from(PredictionRow))
