"""Small keyword-only data functions for the reconciler: work whose worker went silent, work the
broker lost, and prediction jobs whose last step was interrupted. PostgreSQL decides; Redis is
only told again."""

import uuid

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session

from service.crud import cancel_queued_shards, finish_job, requeue_job
from service.kinds import SHARDED_TYPES
from service.retry import RetryPolicy
from service.shards import fail_remaining, finish_shard, job_stopped, requeue_shard
from service.states import LIVE_STATUSES, Status, WorkerStatus
from service.tables import Job, JobShard, Worker

# Held by the worker that reconciles, for its transaction: one reconciler at a time.
RECONCILE_LOCK = 0x67726F63  # "groc"


def take_reconcile_turn(session: Session) -> bool:
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(RECONCILE_LOCK))))


def _older_than(column, seconds: float):
    return column < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def _silent_for(column, seconds: float):
    """Not written for ``seconds``, counted from the database's start at the earliest. No worker can
    report while the database is down: counted from the last report alone, a restart longer than the
    lease took every worker for lost at once, ended all their sessions and put all their work back on
    the queue, each job an attempt the poorer, though every worker lived."""
    return _older_than(func.greatest(column, func.pg_postmaster_start_time()), seconds)


def worker_session_name(hostname: str, pid: int) -> str:
    """The application_name of a worker process's database sessions (PostgreSQL keeps 63 bytes)."""
    return f"grocery-worker {pid}@{hostname}"[:63]


def fence_lost_workers(session: Session, *, lease_seconds: float, exclude: str | None = None) -> int:
    """End the database sessions of workers silent past the lease; returns how many were ended.

    A worker frozen while its transaction holds a shard's row lock would keep that shard from its
    takeover (the reconciler skips locked rows) for as long as the session lives, and PostgreSQL's
    idle-in-transaction timeout does not fire in the middle of a pipeline. Ended, the session drops
    its locks, and the worker's late writes fail instead of landing (a lost worker is fenced off).
    ``exclude`` is the caller's own session name: a reconciler never ends itself."""
    lost = select(Worker.hostname, Worker.pid).where(
        Worker.status != WorkerStatus.OFFLINE, _silent_for(Worker.heartbeat_at, lease_seconds)
    )
    names = [worker_session_name(hostname, pid) for hostname, pid in session.execute(lost)]
    names = [name for name in names if name != exclude]
    if not names:
        return 0
    ended = text(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = ANY(:names) AND pid <> pg_backend_pid()"
    )
    return session.scalar(ended, {"names": names})


def _lost_or_stalled(table, lease_seconds: float, stall_seconds: float):
    """Running work whose worker went silent past the lease, or whose task made no progress for
    ``stall_seconds`` although its worker lives; with a flag that says which."""
    stalled = _silent_for(table.progress_at, stall_seconds)
    query = select(table, stalled).where(
        table.status == Status.RUNNING, or_(_silent_for(table.heartbeat_at, lease_seconds), stalled)
    )
    return query


FAILURES = {
    "worker_lost": "the job's worker stopped reporting {lost} times ({reason}): it may crash or hang its worker",
    "stalled": "the job stalled {lost} times ({reason}, its worker alive): a phase of it hangs",
}


def lost_reason(stalled: bool, *, lease_seconds: float, stall_seconds: float) -> tuple[str, str]:
    """(error code, reason) of work taken from its worker."""
    if stalled:
        return "stalled", f"no progress for {stall_seconds:.0f}s"
    return "worker_lost", f"no heartbeat for {lease_seconds:.0f}s"


def silent_jobs(session: Session, *, lease_seconds: float, stall_seconds: float) -> list[tuple[Job, bool]]:
    """Running jobs lost or stalled, each with whether it stalled: trainings, and sharded jobs still
    listing (a listed one lives in its shards)."""
    query = _lost_or_stalled(Job, lease_seconds, stall_seconds).where(
        or_(Job.type.not_in(SHARDED_TYPES), Job.shards_total.is_(None))
    )
    return [tuple(row) for row in session.execute(query.with_for_update(of=Job, skip_locked=True))]


def recover_job(session: Session, *, job: Job, code: str, reason: str, policy: RetryPolicy) -> Status:
    """Back on the queue, or failed once it has lost as many attempts this way as the policy allows;
    cancelled, when a cancel was asked (put back on the queue, it could never be claimed again: it
    stayed queued for ever)."""
    if job.cancel_requested:
        finish_job(session, job_id=job.id, attempt=job.attempts, status=Status.CANCELLED)
        cancel_queued_shards(session, job_id=job.id)
        return Status.CANCELLED
    lost = job.lost_attempts + 1
    session.execute(update(Job).where(Job.id == job.id).values(lost_attempts=lost))
    if not policy.retries(lost):
        message = FAILURES[code].format(lost=lost, reason=reason)
        finish_job(
            session, job_id=job.id, attempt=job.attempts, status=Status.FAILED, error_code=code, error_message=message
        )
        return Status.FAILED
    requeue_job(session, job_id=job.id, attempt=job.attempts, reason=reason)
    return Status.QUEUED


def silent_shards(session: Session, *, lease_seconds: float, stall_seconds: float) -> list[tuple[JobShard, bool]]:
    query = _lost_or_stalled(JobShard, lease_seconds, stall_seconds)
    return [tuple(row) for row in session.execute(query.with_for_update(of=JobShard, skip_locked=True))]


def recover_shard(session: Session, *, shard: JobShard, code: str, reason: str, policy: RetryPolicy) -> Status:
    """Back on the queue (the next attempt resumes after the rows written), or its files fail; cancelled,
    when its job was cancelled or has ended."""
    if session.scalar(select(job_stopped()).where(Job.id == shard.job_id)):
        finish_shard(session, shard=shard, attempt=shard.attempts, status=Status.CANCELLED, error_message=reason)
        return Status.CANCELLED
    if policy.retries(shard.attempts):
        requeue_shard(session, shard=shard, attempt=shard.attempts, error_message=reason)
        return Status.QUEUED
    fail_remaining(session, shard=shard, code=code, message=f"{reason}, {shard.attempts} times")
    finish_shard(session, shard=shard, attempt=shard.attempts, status=Status.FAILED, error_message=reason)
    return Status.FAILED


def stranded_jobs(session: Session) -> list[uuid.UUID]:
    """Listed prediction jobs still running with no shard left to run: whoever finished last died
    before ending the job."""
    still_open = select(JobShard.id).where(JobShard.job_id == Job.id, JobShard.status.in_(LIVE_STATUSES))
    query = select(Job.id).where(
        Job.type.in_(SHARDED_TYPES), Job.status == Status.RUNNING, Job.shards_total.is_not(None), ~still_open.exists()
    )
    return list(session.scalars(query))


def waiting_jobs(session: Session, *, older_than: float) -> list[tuple[uuid.UUID, str, str]]:
    """(id, type, lane) of jobs queued longer than ``older_than``: ids only, never their params."""
    query = select(Job.id, Job.type, Job.lane).where(
        Job.status == Status.QUEUED, _older_than(Job.enqueued_at, older_than)
    )
    return [tuple(row) for row in session.execute(query.order_by(Job.enqueued_at))]


def waiting_shards(session: Session, *, older_than: float) -> list[tuple[int, str]]:
    """(id, job type) of shards queued longer than ``older_than`` in running jobs: not their thousand
    paths each."""
    query = (
        select(JobShard.id, Job.type)
        .join(Job, Job.id == JobShard.job_id)
        .where(JobShard.status == Status.QUEUED, _older_than(JobShard.enqueued_at, older_than))
        .where(Job.status == Status.RUNNING)
    )
    return [tuple(row) for row in session.execute(query.order_by(JobShard.enqueued_at))]


def job_types(session: Session, *, job_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each job's type (its kind says which task runs its shards)."""
    return dict(session.execute(select(Job.id, Job.type).where(Job.id.in_(job_ids))).all()) if job_ids else {}


def mark_enqueued(session: Session, *, job_ids: list[uuid.UUID], shard_ids: list[int]) -> None:
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=func.now()))
    if shard_ids:
        session.execute(update(JobShard).where(JobShard.id.in_(shard_ids)).values(enqueued_at=func.now()))
