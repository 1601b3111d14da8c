"""The reconciler: every worker runs one in a thread, and one at a time (a PostgreSQL advisory
lock) it makes the queue agree with the database:

- a worker silent past GROCERY_JOB_LEASE_SECONDS has its database sessions ended, so that row locks
  it held frozen mid-write are released and its late writes fail;
- a running job or shard whose worker has not reported for GROCERY_JOB_LEASE_SECONDS (its presence
  thread keeps the lease of the attempt it holds, so only a dead, frozen or cut-off worker loses it),
  or whose task made no progress for GROCERY_JOB_STALL_SECONDS, goes back on the queue (its next
  attempt resumes: a training from its checkpoint, a shard after its rows), or fails once it has lost
  too many attempts (a job that crashes or hangs its worker every time);
- queued work the broker no longer holds (Redis restarted empty, or down when the API committed
  a job) is sent again; a duplicate message is harmless, since claims are conditional;
- a listed prediction job whose last shard ended without ending the job is ended.
"""

import logging
import threading
import uuid

from celery.signals import worker_ready

from service import lifecycle, recovery
from service.broker import queue_depths
from service.contract import send
from service.kinds import KINDS, QUEUES, SHARD_TASKS, Task
from service.settings import Settings
from service.states import Status
from worker.celery_app import app
from worker.process import session_name, sessions

log = logging.getLogger(__name__)


def reconcile(settings: Settings) -> None:
    """One pass; does nothing when another worker holds the turn."""
    from worker.finishing import finish_job_if_done

    limits = {"lease_seconds": settings.job_lease_seconds, "stall_seconds": settings.job_stall_seconds}
    to_send, to_end = [], set()
    with sessions()() as session:
        if not recovery.take_reconcile_turn(session):
            return
        fenced = recovery.fence_lost_workers(session, lease_seconds=settings.job_lease_seconds, exclude=session_name())
        if fenced:
            log.warning("ended %d database sessions of workers silent past the lease", fenced)
        for job, stalled in recovery.silent_jobs(session, **limits):
            code, reason = recovery.lost_reason(stalled, **limits)
            outcome = recovery.recover_job(session, job=job, code=code, reason=reason, policy=settings.job_retry)
            log.warning("job %s: %s; %s", job.id, reason, outcome)
            if outcome == Status.QUEUED:
                to_send.append((KINDS[job.type].task(job.lane), str(job.id)))
        silent = recovery.silent_shards(session, **limits)
        types = recovery.job_types(session, job_ids={shard.job_id for shard, _ in silent})
        for shard, stalled in silent:
            code, reason = recovery.lost_reason(stalled, **limits)
            outcome = recovery.recover_shard(
                session, shard=shard, code=code, reason=reason, policy=settings.shard_retry
            )
            log.warning("shard %s of job %s: %s; %s", shard.id, shard.job_id, reason, outcome)
            if outcome == Status.QUEUED:
                to_send.append((KINDS[types[shard.job_id]].shard, shard.id))
            to_end.add(shard.job_id)
        to_send += lost_messages(session, settings.reconcile_seconds, already={item[1] for item in to_send})
        to_end.update(recovery.stranded_jobs(session))
        session.commit()
    for task, argument in to_send:
        send(app, task, argument)
    for job_id in to_end:
        finish_job_if_done(job_id)
    delete_expired(settings)


def delete_expired(settings: Settings) -> None:
    """Finished jobs past GROCERY_JOB_RETENTION (or GROCERY_PREDICT_RETENTION), a batch a round."""
    with sessions()() as session:
        expired = lifecycle.expired_jobs(
            session,
            retention_seconds=settings.job_retention_seconds,
            predict_retention_seconds=settings.predict_retention_seconds,
        )
        files = lifecycle.delete_jobs(session, job_ids=expired, settings=settings)
        session.commit()
    lifecycle.remove_files(files)
    if expired:
        log.info("deleted %d finished jobs past their retention", len(expired))


def lost_messages(session, older_than: float, already: set) -> list[tuple[Task, object]]:
    """Queued work to send again: all of a queue's waiting work, when the broker holds fewer
    messages for that queue than PostgreSQL has work waiting on it."""
    jobs = recovery.waiting_jobs(session, older_than=older_than)
    shards = recovery.waiting_shards(session, older_than=older_than)
    work = [(KINDS[kind].task(lane), str(job_id)) for job_id, kind, lane in jobs]
    work += [(KINDS[kind].shard, shard_id) for shard_id, kind in shards]
    waiting = {queue: [item for item in work if item[0].queue == queue] for queue in QUEUES}
    depths = queue_depths(app, list(waiting))
    resend = [item for queue, items in waiting.items() if depths[queue] < len(items) for item in items]
    resend = [item for item in resend if item[1] not in already]
    if resend:
        log.warning("re-sending %d queued jobs and shards the broker does not hold", len(resend))
        recovery.mark_enqueued(
            session,
            job_ids=[uuid.UUID(item[1]) for item in resend if item[0] not in SHARD_TASKS],
            shard_ids=[item[1] for item in resend if item[0] in SHARD_TASKS],
        )
    return resend


class Reconciler(threading.Thread):
    def __init__(self, settings: Settings):
        super().__init__(name="reconciler", daemon=True)
        self.settings = settings

    def run(self) -> None:
        while True:
            try:
                reconcile(self.settings)
            except Exception:  # the database or the broker may be down: try again next round
                log.warning("reconciling failed; retrying in %ss", self.settings.reconcile_seconds, exc_info=True)
            threading.Event().wait(self.settings.reconcile_seconds)


@worker_ready.connect
def start_reconciler(**_) -> None:
    Reconciler(Settings.from_env()).start()
