"""The job contract: the one Celery configuration that the API and the workers share, how a job is
submitted and how every task is sent, and which model serves when none is named. Torch-free.

A task's one argument is a job or shard id: PostgreSQL holds everything else, and a message only
tells a worker to look. Which task runs each kind of job on which queue is the registry's
(service/kinds.py); a result row's shape is the library's (grocery/results.py: the library writes it
and imports nothing of the service); statuses are service/states.py's.
"""

import logging

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import chains, crud, registry
from service.broker import BROKER_CONNECT_SECONDS, BROKER_SOCKET_SECONDS
from service.kinds import KINDS, NewJob, Task
from service.settings import Settings
from service.tables import Job, Model

log = logging.getLogger(__name__)


# The modules that define the tasks (a worker imports them as it starts): each kind's, the reconciler,
# the webhook courier and the background runtime measurement.
WORKER_MODULES = (
    *dict.fromkeys(kind.module for kind in KINDS.values()),
    "worker.reconciler",
    "worker.deliveries",
    "worker.measuring",
)
# The unique index two submissions with one Idempotency-Key meet at (service/tables.py).
IDEMPOTENCY_INDEX = "jobs_owner_token_id_idempotency_key"
# An export's record count, sent before its body so a client can tell a cut download from a whole one.
ROW_COUNT_HEADER = "X-Row-Count"


def make_celery(settings: Settings) -> Celery:
    """The Celery app of both sides: the API sends with it, workers run it. Connects to nothing yet."""
    app = Celery("grocery", broker=settings.redis_url, include=list(WORKER_MODULES))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        # A job is acknowledged only when its task returns: a worker killed mid-job leaves it
        # on the queue for another worker, and the attempt guard makes the redelivery safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # status and results live in PostgreSQL
        # The first of a worker's queues that holds a message is served first (QUEUES' order).
        broker_transport_options={
            "queue_order_strategy": "priority",
            "socket_connect_timeout": BROKER_CONNECT_SECONDS,
            "socket_timeout": BROKER_SOCKET_SECONDS,
        },
        broker_connection_retry_on_startup=True,
        # A send's connecting, retries included, as long as one try: the API answers 202 in seconds
        # while the broker is cut off (Celery's default 4 s let a second 3-s try start).
        broker_connection_timeout=BROKER_CONNECT_SECONDS,
        worker_hijack_root_logger=False,
    )
    return app


def send(
    celery: Celery,
    task: Task,
    argument: str | int,
    *,
    countdown: float | None = None,
    task_id: str | None = None,
    retry: bool = True,
) -> None:
    """Every message goes out here: the task's name and queue come from the table above."""
    celery.send_task(task.name, args=[argument], queue=task.queue, countdown=countdown, task_id=task_id, retry=retry)


def enqueue(celery: Celery, job: Job) -> bool:
    """Send a committed job's first task. With the broker down the job stays queued: the workers'
    reconciler sends it once the broker is back."""
    try:
        send(celery, KINDS[job.type].task(job.lane), str(job.id), task_id=str(job.id), retry=False)
    except Exception:
        log.warning("broker unreachable: job %s stays queued for the reconciler", job.id, exc_info=True)
        return False
    return True


def send_next_steps(celery: Celery, session: Session, *, job_id) -> None:
    """After the commit of a job's end: the messages of the chain steps it made (service/chains.py)."""
    for step in chains.queued_steps(session, job_id=job_id):
        enqueue(celery, step)


def submit(session: Session, celery: Celery, new: NewJob) -> Job | None:
    """Write the job, commit, then enqueue it. None (rolled back) when a concurrent request with the
    same idempotency key committed first."""
    try:
        job = crud.create_job(session, new=new)
        session.commit()
    except IntegrityError as e:
        session.rollback()
        if getattr(e.orig.diag, "constraint_name", None) != IDEMPOTENCY_INDEX:
            raise
        return None
    enqueue(celery, job)
    return job


def serving_model(session: Session) -> Model | None:
    """The model that serves when none is named: the production alias, else the latest."""
    return registry.resolve_model(session, reference="production") or registry.resolve_model(
        session, reference="latest"
    )
