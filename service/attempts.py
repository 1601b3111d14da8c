"""The attempt lifecycle that jobs and shards share. Work is claimed (queued -> running, its attempt
number raised), kept alive by its worker, reported on, put back on the queue or finished: every write
after the claim is guarded here, by the attempt number, so a stale or duplicate delivery, or a worker
whose work was taken over, changes nothing. The callers (service/crud.py for jobs, service/shards.py
for shards) add what each kind of row records beside."""

from enum import Enum

from sqlalchemy import and_, func, update
from sqlalchemy.orm import Session

from service.states import FINISHED_STATUSES, Status
from service.tables import Job, JobShard

Work = type[Job] | type[JobShard]


class Verdict(Enum):
    """What a report tells the work's code."""

    GO_ON = "go on"
    STOP = "stop"  # cancelled, or its job ended
    LOST = "lost"  # this attempt no longer owns the work (taken over): write nothing


def owned(table: Work, key, attempt: int):
    """The attempt guard: this row, still running this attempt."""
    return and_(table.id == key, table.attempts == attempt, table.status == Status.RUNNING)


def claimed(table: Work, *, worker: str, device: str) -> dict:
    """What a claim writes: running, the next attempt, by this worker, alive and advancing now."""
    now = func.now()
    return {
        "status": Status.RUNNING,
        "attempts": table.attempts + 1,
        "worker": worker,
        "device": device,
        "started_at": now,
        "heartbeat_at": now,
        "progress_at": now,
    }


def write(session: Session, table: Work, key, attempt: int, returning, **values):
    """Write ``values`` if this attempt still owns the row; returns ``returning``'s value, else None.
    The row stays locked until the caller's transaction ends, which holds off a takeover."""
    return session.scalar(update(table).where(owned(table, key, attempt)).values(**values).returning(returning))


def keep_alive(session: Session, *, table: Work, key, attempt: int) -> bool:
    """Liveness only (the worker's presence thread, while its task holds this attempt); False when
    the attempt no longer runs (finished, or taken over)."""
    return write(session, table, key, attempt, table.id, heartbeat_at=func.now()) is not None


def report(session: Session, *, table: Work, key, attempt: int, returning, **progress):
    """Progress from the work's own code: liveness and advance, with what it reports."""
    return write(session, table, key, attempt, returning, heartbeat_at=func.now(), progress_at=func.now(), **progress)


def requeue(session: Session, *, table: Work, key, attempt: int, **values) -> bool:
    """running -> queued, for another attempt to claim; the caller sends its message again."""
    requeued = write(session, table, key, attempt, table.id, status=Status.QUEUED, enqueued_at=func.now(), **values)
    return requeued is not None


def finish(session: Session, *, table: Work, key, attempt: int, status: Status, **values) -> bool:
    """The final write of this attempt."""
    assert status in FINISHED_STATUSES
    return write(session, table, key, attempt, table.id, status=status, finished_at=func.now(), **values) is not None
