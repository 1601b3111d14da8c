"""Small keyword-only data functions over webhook deliveries: the row a job's end writes when its
notify names that end (an outbox: in the end's own transaction), claiming the deliveries that are due,
recording each attempt, listing and counting them. Callers own the transaction; the POST itself is
service/webhooks.py's, made by the workers (worker/deliveries.py)."""

import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, case, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Session

from service.states import DeliveryStatus
from service.tables import ApiToken, Delivery, Job


def seconds(amount: float):
    return func.make_interval(0, 0, 0, 0, 0, 0, amount)


def add_deliveries(session: Session, *, job_id: uuid.UUID, event: str) -> None:
    """The delivery of this end of the job, when the job's notify names it (once per job and end)."""
    wanted = select(func.gen_random_uuid(), Job.id, literal(str(event))).where(
        Job.id == job_id, Job.notify["events"].has_key(str(event))
    )
    statement = insert(Delivery).from_select(["id", "job_id", "event"], wanted)
    session.execute(statement.on_conflict_do_nothing(constraint="deliveries_job_id_event_key"))


@dataclass(frozen=True)
class Due:
    """A delivery claimed for one attempt, with what the attempt needs."""

    id: uuid.UUID
    job_id: uuid.UUID
    event: str
    attempt: int
    url: str
    secret: str | None  # the job's token's; None: a job without a token (GROCERY_WEBHOOK_SECRET signs it)


def claim_due(session: Session, *, limit: int, lease_seconds: float) -> list[Due]:
    """Up to ``limit`` due deliveries, each taken for its next attempt: its attempt number raised and
    its next attempt pushed past the lease, so that another worker takes it only once this attempt's
    worker is gone. Rows another worker is claiming are skipped, never waited for."""
    due = (
        select(Delivery.id)
        .where(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= func.now())
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()))
        .values(attempts=Delivery.attempts + 1, next_attempt_at=func.now() + seconds(lease_seconds))
        .returning(Delivery.id, Delivery.job_id, Delivery.event, Delivery.attempts)
    ).all()
    jobs = select(Job.id, Job.notify["url"].astext, ApiToken.webhook_secret).outerjoin(
        ApiToken, ApiToken.id == Job.owner_token_id
    )
    targets = {
        job_id: (url, secret)
        for job_id, url, secret in session.execute(jobs.where(Job.id.in_({row.job_id for row in claimed})))
    }
    return [Due(row.id, row.job_id, row.event, row.attempts, *targets[row.job_id]) for row in claimed]


def record_attempt(
    session: Session,
    *,
    delivery_id: uuid.UUID,
    attempt: int,
    entry: dict,
    delivered: bool,
    retry_in: float | None,
    retry_for: float,
) -> str | None:
    """Record how this attempt went (``entry``: its log line) and what comes next: delivered; another
    attempt in ``retry_in`` seconds, unless that falls more than ``retry_for`` seconds after the job's
    end (then, or with ``retry_in`` None, it is given up). Returns the delivery's status, or None when
    this attempt no longer holds it (a worker that took too long, its lease taken over)."""
    if delivered:
        status = literal(str(DeliveryStatus.DELIVERED))
    elif retry_in is None:
        status = literal(str(DeliveryStatus.FAILED))
    else:
        too_late = func.now() + seconds(retry_in) > Delivery.created_at + seconds(retry_for)
        status = case((too_late, DeliveryStatus.FAILED), else_=DeliveryStatus.PENDING)
    return session.scalar(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.attempts == attempt,
            Delivery.status == DeliveryStatus.PENDING,
        )
        .values(
            status=status,
            next_attempt_at=func.now() + seconds(retry_in or 0),
            finished_at=case((status != DeliveryStatus.PENDING, func.now()), else_=None),
            last_error=entry.get("error"),
            log=Delivery.log.op("||")(bindparam("entry", [entry], type_=JSONB)),
        )
        .returning(Delivery.status)
    )


def list_deliveries(session: Session, *, job_id: uuid.UUID) -> list[Delivery]:
    return list(session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.created_at)))


def status_counts(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all())


def attempt_counts(session: Session) -> dict[str, int]:
    """Attempts of the deliveries kept (those of deleted jobs go with them), by outcome."""
    entries = select(func.jsonb_array_elements(Delivery.log).op("->>")("outcome").label("outcome")).subquery()
    return dict(session.execute(select(entries.c.outcome, func.count()).group_by(entries.c.outcome)).all())
