"""Small keyword-only data functions over jobs and their events: submission, listing, attempts (guarded
in service/attempts.py), cancellation. Callers own the transaction."""

import uuid
from datetime import datetime

from sqlalchemy import ARRAY, Text, and_, case, func, literal, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, defer, with_expression

from service import attempts, chains, deliveries
from service.kinds import EVALUATE, NewJob
from service.specs import EvaluateSpec
from service.states import LIVE_STATUSES, Lane, Status
from service.tables import Job, JobEvent, JobShard


def create_job(session: Session, *, new: NewJob) -> Job:
    job = Job(
        id=new.id,
        owner_token_id=new.owner_token_id,
        type=new.kind.name,
        params=new.params,
        files_named=new.files_named,
        progress_unit=new.kind.progress_unit,
        model_id=new.model_id,
        idempotency_key=new.idempotency_key,
        request_hash=new.request_hash,
        lane=new.lane,
        priority=new.priority,
        notify=new.notify,
        next_steps=new.next_steps,
        parent_id=new.parent_id,
    )
    session.add(job)
    session.flush()
    add_event(session, job_id=job.id, kind="state", data={"status": Status.QUEUED})
    return job


def get_job(session: Session, *, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def shown_job(session: Session, *, job_id: uuid.UUID, manifest_shown: int) -> Job:
    """The job read (again) with its params as lists show them (``query_expression_of_params``)."""
    query = select(Job).where(Job.id == job_id).options(query_expression_of_params(manifest_shown))
    return session.scalar(query.execution_options(populate_existing=True))


def get_job_by_idempotency_key(session: Session, *, key: str, owner: uuid.UUID | None) -> Job | None:
    """The job this owner submitted with ``key`` (another owner's key is another job)."""
    same_owner = Job.owner_token_id.is_(None) if owner is None else Job.owner_token_id == owner
    return session.scalar(select(Job).where(Job.idempotency_key == key, same_owner))


def lock_owner(session: Session, *, owner: uuid.UUID | None) -> None:
    """Serialise one owner's submissions until the transaction ends, so that two at once cannot
    both pass its quota."""
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"quota:{owner}"))))


def active_work(session: Session, *, owner: uuid.UUID | None) -> tuple[int, int]:
    """(jobs, files) of this owner's queued and running jobs. A job's files: as listed so far, else
    those its request named."""
    files = func.coalesce(Job.progress_total, Job.files_named)
    same_owner = Job.owner_token_id.is_(None) if owner is None else Job.owner_token_id == owner
    jobs, total = session.execute(
        select(func.count(), func.coalesce(func.sum(files), 0)).where(same_owner, Job.status.in_(LIVE_STATUSES))
    ).one()
    return jobs, int(total)


def list_jobs(
    session: Session,
    *,
    job_type: str | None = None,
    status: str | None = None,
    lane: str | None = None,
    limit: int = 50,
    after: tuple[datetime, uuid.UUID] | None = None,
    owner: uuid.UUID | None = None,
    manifest_shown: int = 20,
) -> list[Job]:
    """Newest first; ``after`` is the (created_at, id) of the last job of the previous page;
    ``owner``: only the jobs of that API token. A manifest's paths stay in the database: each job's
    params come with at most ``manifest_shown`` of them and their count (``paths_count``), so a page
    of 500 jobs of 100,000 paths each does not cross the wire."""
    query = (
        select(Job)
        .options(defer(Job.params), query_expression_of_params(manifest_shown))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    if owner is not None:
        query = query.where(Job.owner_token_id == owner)
    if job_type:
        query = query.where(Job.type == job_type)
    if status:
        query = query.where(Job.status == status)
    if lane:
        query = query.where(Job.lane == lane)
    if after:
        created_at, job_id = after
        query = query.where(or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id)))
    return list(session.scalars(query))


def query_expression_of_params(shown: int):
    """Load Job.params with a manifest's paths cut to ``shown`` and counted, in SQL."""
    paths = Job.params["input"]["paths"]
    count = func.jsonb_array_length(paths)
    element = func.jsonb_array_elements(paths).table_valued("value", with_ordinality="n").render_derived("element")
    first = select(func.jsonb_agg(element.c.value)).where(element.c.n <= shown).scalar_subquery()
    trimmed = func.jsonb_set(
        Job.params,
        literal("{input}").cast(ARRAY(Text)),
        Job.params["input"].op("||")(func.jsonb_build_object("paths", first, "paths_count", count)),
    )
    long_manifest = and_(func.jsonb_typeof(paths) == "array", count > shown)
    return with_expression(Job.shown_params, case((long_manifest, trimmed), else_=Job.params))


def add_event(session: Session, *, job_id: uuid.UUID, kind: str, data: dict) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def list_events(session: Session, *, job_id: uuid.UUID, limit: int = 1000, after_id: int = 0) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
    return list(session.scalars(query.order_by(JobEvent.id).limit(limit)))


def interactive_jobs_waiting(session: Session) -> bool:
    """Whether an interactive job is queued: a busy worker asks between two batches of bulk work."""
    waiting = select(Job.id).where(Job.lane == Lane.INTERACTIVE, Job.status == Status.QUEUED, ~Job.cancel_requested)
    return bool(session.scalar(select(waiting.exists())))


def waiting_interactive_jobs(session: Session, *, limit: int) -> list[uuid.UUID]:
    """The oldest queued interactive jobs (claimed by the caller, conditionally, one by one)."""
    query = select(Job.id).where(Job.lane == Lane.INTERACTIVE, Job.status == Status.QUEUED, ~Job.cancel_requested)
    return list(session.scalars(query.order_by(Job.created_at).limit(limit)))


def claim_job(session: Session, *, job_id: uuid.UUID, worker: str, device: str) -> int | None:
    """queued -> running in one conditional UPDATE; returns the attempt number, or None if not claimable."""
    attempt = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == Status.QUEUED, Job.cancel_requested.is_(False))
        .values(**attempts.claimed(Job, worker=worker, device=device))
        .returning(Job.attempts)
    )
    if attempt is not None:
        state = {"status": Status.RUNNING, "worker": worker, "attempt": attempt}
        add_event(session, job_id=job_id, kind="state", data=state)
    return attempt


def report_job(
    session: Session, *, job_id: uuid.UUID, attempt: int, event: tuple[str, dict] | None = None, **progress
) -> bool:
    """Record progress (``progress_done``, ``progress_total``, ``shards_total`` as given; liveness too)
    and ``event`` (kind, data), if this attempt still owns the job; returns whether to stop: cancellation
    was requested, or this attempt no longer owns the job (another attempt took it over, and a late
    attempt's event, an epoch the next attempt trains again, stays out of the job's history)."""
    given = {name: value for name, value in progress.items() if value is not None}
    cancel = attempts.report(session, table=Job, key=job_id, attempt=attempt, returning=Job.cancel_requested, **given)
    if cancel is not None and event is not None:
        add_event(session, job_id=job_id, kind=event[0], data=event[1])
    return cancel is None or cancel


def finish_job(
    session: Session,
    *,
    job_id: uuid.UUID,
    attempt: int,
    status: Status,
    result: dict | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    **values,
) -> bool:
    """The job's final write, guarded by the attempt, with its state event: a stale or duplicate
    message changes nothing. Its webhook's delivery, and its chain's next step, are written in the same
    transaction, so a committed end always has them (service/deliveries.py, service/chains.py).
    ``values``: other columns the end sets (a prediction job's count)."""
    error = {"error_code": error_code, "error_message": error_message}
    if not attempts.finish(
        session, table=Job, key=job_id, attempt=attempt, status=status, result=result, **error, **values
    ):
        return False
    data = {"status": status, **({"error": {"code": error_code, "message": error_message}} if error_code else {})}
    add_event(session, job_id=job_id, kind="state", data=data)
    deliveries.add_deliveries(session, job_id=job_id, event=status)
    chains.advance(session, job_id=job_id)
    return True


def requeue_job(session: Session, *, job_id: uuid.UUID, attempt: int, reason: str) -> bool:
    """running -> queued, for another worker to claim (a warm shutdown hands its job back)."""
    if not attempts.requeue(session, table=Job, key=job_id, attempt=attempt, worker=None):
        return False
    add_event(session, job_id=job_id, kind="state", data={"status": Status.QUEUED, "reason": reason})
    return True


def request_cancel(session: Session, *, job_id: uuid.UUID) -> str | None:
    """Cancel: a queued job ends now, a running one is flagged to stop. Returns the new status, or None if finished."""
    cancelled = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == Status.QUEUED)
        .values(status=Status.CANCELLED, cancel_requested=True, finished_at=func.now())
        .returning(Job.id)
    )
    if cancelled is not None:
        add_event(session, job_id=job_id, kind="state", data={"status": Status.CANCELLED})
        deliveries.add_deliveries(session, job_id=job_id, event=Status.CANCELLED)
        cancel_queued_shards(session, job_id=job_id)  # a job queued to be listed again may have some
        chains.advance(session, job_id=job_id)
        return Status.CANCELLED
    flagged = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == Status.RUNNING)
        .values(cancel_requested=True)
        .returning(Job.id)
    )
    if flagged is not None:
        add_event(session, job_id=job_id, kind="cancel_requested", data={})
        return Status.RUNNING
    return None


def cancel_queued_shards(session: Session, *, job_id: uuid.UUID) -> None:
    """The queued shards of a job that has ended: nothing would run them (the reconciler sends again
    only the shards of running jobs), and left queued they would stay so for ever."""
    session.execute(
        update(JobShard)
        .where(JobShard.job_id == job_id, JobShard.status == Status.QUEUED)
        .values(status=Status.CANCELLED, finished_at=func.now())
    )


def evaluation_on_the_same_set(session: Session, *, evaluation: Job, model_id: uuid.UUID) -> Job | None:
    """The newest succeeded evaluation of ``model_id`` on the files, labels and label level that
    ``evaluation`` evaluated (itself, when it is that model's)."""
    labelled_set = EvaluateSpec.of_job(evaluation.params).labelled_set
    return evaluation_of_set(session, labelled_set=labelled_set, model_id=model_id)


def evaluation_of_set(session: Session, *, labelled_set: dict, model_id: uuid.UUID) -> Job | None:
    """The newest succeeded evaluation of ``model_id`` on a set (EvaluateSpec.labelled_set)."""

    def same(key: str):
        # A key the spec leaves out is JSON null on both sides (the row's is missing, SQL NULL).
        return func.coalesce(Job.params[key], JSONB_NULL) == literal(labelled_set[key], JSONB)

    query = select(Job).where(
        Job.type == EVALUATE.name,
        Job.status == Status.SUCCEEDED,
        Job.model_id == model_id,
        *(same(key) for key in labelled_set),
    )
    return session.scalar(query.order_by(Job.finished_at.desc()).limit(1))


JSONB_NULL = literal_column("'null'::jsonb")


def evaluations_of(session: Session, *, model_id: uuid.UUID, kind: str) -> list[Job]:
    """The model's succeeded jobs of an evaluating ``kind``, newest first (its card lists them)."""
    query = select(Job).where(Job.type == kind, Job.model_id == model_id, Job.status == Status.SUCCEEDED)
    return list(session.scalars(query.order_by(Job.finished_at.desc())))
