"""The job contract: which task runs each job type on which queue, the one Celery configuration
that the API and the workers share, how a job is submitted and how every task is sent, and which
model serves when none is named. Torch-free.

A task's one argument is a job or shard id: PostgreSQL holds everything else, and a message only
tells a worker to look. A result row's shape is the library's (grocery/results.py: the library
writes it and imports nothing of the service); job types and statuses are the tables' (service/tables.py).
"""

import logging
import uuid
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import crud
from service.settings import Settings
from service.tables import Job, Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    name: str
    queue: str


# Each job type's first task; a prediction job's listing task fans its files out as shard tasks.
JOB_TASKS = {
    "train": Task("worker.training.run_train_job", queue="train"),
    "predict": Task("worker.prediction.run_predict_job", queue="predict"),
}
# Interactive prediction jobs (POST /predict, small jobs) run the same task from a queue of their own.
INTERACTIVE_TASK = Task(JOB_TASKS["predict"].name, queue="interactive")
SHARD_TASK = Task("worker.prediction.run_predict_shard", queue="shards")
# What a worker that serves each job type runs.
TASKS_OF = {"train": (JOB_TASKS["train"],), "predict": (INTERACTIVE_TASK, JOB_TASKS["predict"], SHARD_TASK)}
TASKS = tuple(task for tasks in TASKS_OF.values() for task in tasks)
# The order a worker takes work in (Redis is asked in this order): interactive work first; then the
# start of a job (a listing, a training), so that a job submitted behind a million queued shards is
# listed at once and its shards share the workers (service.shards.next_shard); then bulk shards.
QUEUES = ("interactive", "predict", "train", "shards")
# The modules that define the tasks (a worker imports them as it starts) and the reconciler.
WORKER_MODULES = ("worker.training", "worker.prediction", "worker.reconciler")
PROGRESS_UNITS = {"train": "epochs", "predict": "files"}
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
        broker_transport_options={"queue_order_strategy": "priority"},
        broker_connection_retry_on_startup=True,
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


def job_task(job_type: str, lane: str) -> Task:
    """The task, and so the queue, that starts a job of this type in this lane."""
    return INTERACTIVE_TASK if lane == "interactive" else JOB_TASKS[job_type]


def worker_queues(job_types: list[str]) -> list[str]:
    """The queues a worker serving these job types takes work from, in QUEUES' order: a worker that
    serves predictions serves the interactive lane too."""
    wanted = {task.queue for job_type in job_types for task in TASKS_OF[job_type]}
    return [queue for queue in QUEUES if queue in wanted]


def enqueue(celery: Celery, job: Job) -> bool:
    """Send a committed job's first task. With the broker down the job stays queued: the workers'
    reconciler sends it once the broker is back."""
    try:
        send(celery, job_task(job.type, job.lane), str(job.id), task_id=str(job.id), retry=False)
    except Exception:
        log.warning("broker unreachable: job %s stays queued for the reconciler", job.id, exc_info=True)
        return False
    return True


def submit(
    session: Session,
    celery: Celery,
    *,
    job_type: str,
    params: dict,
    owner_token_id: uuid.UUID | None,
    model_id: uuid.UUID | None = None,
    job_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    lane: str = "bulk",
    priority: str = "normal",
) -> Job | None:
    """Write the job, commit, then enqueue it. None (rolled back) when a concurrent request with the
    same idempotency key committed first."""
    try:
        job = crud.create_job(
            session,
            job_type=job_type,
            job_id=job_id,
            params=params,
            model_id=model_id,
            progress_unit=PROGRESS_UNITS[job_type],
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            owner_token_id=owner_token_id,
            lane=lane,
            priority=priority,
        )
        session.commit()
    except IntegrityError:
        session.rollback()
        return None
    enqueue(celery, job)
    return job


def serving_model(session: Session) -> Model | None:
    """The model that serves when none is named: the production alias, else the latest."""
    return crud.resolve_model(session, reference="production") or crud.resolve_model(session, reference="latest")
