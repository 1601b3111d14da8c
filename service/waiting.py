"""Why a job waits (GET /jobs/<id>): its queue, the work ahead of it there, the live workers that
take that queue, the reason it is not running, an estimated start from recent throughput, and its
owner's quota. Small keyword-only data functions, one query each; ``why_waiting`` puts them together.

A job waits while it is queued, and a sharded job also once it is listed while none of its shards
runs: then it waits on the shard queue, in the fair-share order of service.shards.next_shard.

The quota is checked when a job is submitted (api/deps.check_quota): a queued job already holds its
place within it, so a token at its quota holds back its next submissions, not this job. It is
reported beside the reason, never as the reason."""

import uuid

from sqlalchemy import func, or_, select, tuple_
from sqlalchemy.orm import Session

from service import crud, ops, shards, tokens
from service.kinds import KINDS
from service.settings import Settings
from service.states import Status, WorkerStatus
from service.tables import Job, JobShard, Worker


def why_waiting(session: Session, *, job: Job, settings: Settings) -> dict | None:
    """Where a waiting job stands and why, as GET /jobs/<id> shows it; None for a job that does not wait."""
    kind = KINDS[job.type]
    if job.status == Status.QUEUED:
        queue, ahead = kind.task(job.lane).queue, {"jobs": jobs_ahead(session, job=job)}
        said = f"{counted(ahead['jobs'], 'job')} ahead of it"
    elif job.status == Status.RUNNING and kind.shard is not None:
        standing = shard_standing(session, job=job)
        if standing is None:
            return None
        queue, ahead = kind.shard.queue, {"higher_priority_shards": standing[0], "fairer_share_jobs": standing[1]}
        said = (
            f"{counted(standing[0], 'shard')} of higher priority and {counted(standing[1], 'job')} with a fairer share"
        )
    else:
        return None
    position = sum(ahead.values())
    live, busy = queue_workers(session, queue=queue)
    reason = waiting_reason(job_type=job.type, queue=queue, position=position, ahead=said, live=live, busy=busy)
    starts = ops.recent_waits(session).get(queue, {}).get("count", 0)
    return {
        "queue": queue,
        "position": position,  # the work that goes before it: the sum of "ahead"
        "ahead": ahead,
        "workers": {"live": live, "busy": busy},
        "reason": reason,
        "estimated_start_seconds": estimated_start(reason=reason["code"], position=position, starts=starts),
        # Work that started on this queue lately: the pace the estimate goes by.
        "recent_starts": {"count": starts, "window_seconds": ops.WAIT_WINDOW_SECONDS},
        "quota": owner_quota(session, owner=job.owner_token_id, settings=settings),
    }


def jobs_ahead(session: Session, *, job: Job) -> int:
    """Queued jobs on the job's queue that were sent before it: the broker hands them out first (a
    re-sent job goes to the back, and enqueued_at says when it was last sent)."""
    sent_before = tuple_(Job.enqueued_at, Job.created_at, Job.id) < tuple_(job.enqueued_at, job.created_at, job.id)
    queue_of = ops.JOB_QUEUE  # in SQL: the queue a job waits on
    same_queue = queue_of == KINDS[job.type].task(job.lane).queue
    return session.scalar(select(func.count()).where(Job.status == Status.QUEUED, same_queue, sent_before))


def shard_standing(session: Session, *, job: Job) -> tuple[int, int] | None:
    """Where a listed job whose shards all wait stands in the fair-share order (service.shards.next_shard):
    (queued shards of higher priority, which all go first; jobs of its priority that a free worker serves
    before it, each at least one shard, as their owners run fewer shards or they are older). None when
    the job has no queued shard or one of its shards runs: it does not wait."""
    by_job, owner_running = shards.running_shards()
    queued = (
        select(JobShard.job_id, func.count().label("shards"))
        .where(JobShard.status == Status.QUEUED)
        .group_by(JobShard.job_id)
        .subquery()
    )
    rows = session.execute(
        select(
            Job.id,
            shards.PRIORITY_RANK,
            func.coalesce(owner_running.c.shards, 0),
            func.coalesce(by_job.c.shards, 0),
            Job.created_at,
            queued.c.shards,
        )
        .join(queued, queued.c.job_id == Job.id)
        .outerjoin(by_job, by_job.c.job_id == Job.id)
        .outerjoin(owner_running, owner_running.c.owner_token_id.is_not_distinct_from(Job.owner_token_id))
        .where(Job.status == Status.RUNNING, ~Job.cancel_requested)
    ).all()
    mine = next((row for row in rows if row[0] == job.id), None)
    if mine is None or mine[3] > 0:
        return None
    higher = sum(row[5] for row in rows if row[1] < mine[1])
    fairer = sum(1 for row in rows if row[1] == mine[1] and row[0] != job.id and tuple(row[2:5]) < tuple(mine[2:5]))
    return higher, fairer


def queue_workers(session: Session, *, queue: str) -> tuple[int, int]:
    """(live workers that take work from the queue, those of them busy with a job or a shard). A
    stopping worker takes nothing new: it is not counted."""
    takers = ops.live_workers_query().where(Worker.status == WorkerStatus.ONLINE, Worker.queues.contains([queue]))
    working = or_(Worker.job_id.is_not(None), Worker.shard_id.is_not(None))
    live, busy = session.execute(takers.with_only_columns(func.count(), func.count().filter(working))).one()
    return live, busy


def waiting_reason(*, job_type: str, queue: str, position: int, ahead: str, live: int, busy: int) -> dict:
    """Why the job is not running, as a code and a sentence: no worker takes its queue; work goes
    before it, or every worker that takes it is busy; or nothing holds it back."""
    if live == 0:
        message = f"no live worker takes the '{queue}' queue: start one with `grocery worker --queues {job_type}`"
        return {"code": "no_worker", "message": message}
    workers = counted(live, "live worker")
    if position > 0:
        return {"code": "busy", "message": f"{ahead} on the '{queue}' queue, served by {workers}"}
    if busy >= live:
        message = f"it is next on the '{queue}' queue, and the {workers} that take it are all busy"
        return {"code": "busy", "message": message}
    message = f"nothing is ahead of it and a worker that takes the '{queue}' queue is free: it should start in seconds"
    return {"code": "starting", "message": message}


def estimated_start(*, reason: str, position: int, starts: int) -> float | None:
    """Seconds until it starts if work keeps starting on its queue at the recent pace: the work ahead
    of it, and itself, at ``starts`` per WAIT_WINDOW_SECONDS. None where there is no pace to go by
    (nothing started there lately, or no worker takes the queue) or nothing holds it back."""
    if reason != "busy" or starts == 0:
        return None
    return round((position + 1) * ops.WAIT_WINDOW_SECONDS / starts, 1)


def owner_quota(session: Session, *, owner: uuid.UUID | None, settings: Settings) -> dict:
    """The owner's queued and running jobs and their files, against its token's quota."""
    jobs_limit, files_limit = tokens.quotas_of(
        tokens.get_token(session, token_id=owner),
        default_jobs=settings.token_max_active_jobs,
        default_files=settings.token_max_active_files,
    )
    jobs, files = crud.active_work(session, owner=owner)
    at_limit = jobs >= jobs_limit or files >= files_limit
    message = (
        f"its token has {jobs} of its {jobs_limit} jobs and {files} of its {files_limit} files queued or running "
        "(its quota): new submissions are refused (429) until some end; this job keeps its place"
    )
    return {
        "jobs": jobs,
        "jobs_limit": jobs_limit,
        "files": files,
        "files_limit": files_limit,
        "at_limit": at_limit,
        "message": message if at_limit else None,
    }


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
