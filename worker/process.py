"""What every task of a worker process shares: its settings and database sessions, its identity and
presence, the machine lock it holds while it runs, claiming a job and reporting on it, its time limits
and error codes."""

import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from sqlalchemy.orm import Session, sessionmaker

from grocery.machine_lock import MachineLock
from service import attempts, crud, ops, registry
from service.broker import announce_job_finished
from service.contract import send_next_steps
from service.db import make_engine, make_session_factory
from service.kinds import SHARD_TASKS
from service.recovery import worker_session_name
from service.settings import Settings
from service.states import Status, WorkerStatus
from service.tables import Job, JobShard

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 5.0


def heartbeat_interval() -> float:
    """Well inside the lease, so a live worker's job is never taken for a lost one."""
    return min(HEARTBEAT_SECONDS, worker_settings().job_lease_seconds / 4)


@functools.cache
def worker_settings() -> Settings:
    """The worker process's settings: its environment, read once."""
    return Settings.from_env()


def session_name() -> str:
    """How this process's database sessions are named: by it a lost worker's are ended."""
    return worker_session_name(socket.gethostname(), os.getpid())


@functools.cache
def sessions() -> sessionmaker[Session]:
    """One engine per worker process, made on first use (after the fork)."""
    lease = worker_settings().job_lease_seconds
    engine = make_engine(
        worker_settings().database_url,
        pool_size=2,
        idle_transaction_seconds=lease,
        application_name=session_name(),
    )
    return make_session_factory(engine)


@worker_ready.connect
@worker_process_init.connect
def warm_up(**_) -> None:
    """Pay for torch's import and the database pool before the first job, not during its claim."""
    device_name()
    sessions()


class Presence:
    """This worker's row in the workers table (GET /workers, /metrics), and the lease of the job or
    shard attempt its task holds: written by a daemon thread every HEARTBEAT_SECONDS (or a quarter
    of the lease), and at once when a task starts or ends or the worker stops. So a task's long
    silent phases (filling a decode cache, validating, listing a huge folder) keep their lease, and
    only a dead, frozen or cut-off process loses it; a phase stuck forever is bounded apart, by the
    reconciler's GROCERY_JOB_STALL_SECONDS without progress."""

    def __init__(self):
        self.name, self.queues, self.status = None, [], WorkerStatus.ONLINE
        self.job_id, self.shard_id = None, None
        self.kept = None  # ("job", id, attempt) or ("shard", id, attempt): whose lease to keep alive
        self.changed = threading.Event()
        self.thread = None
        self.interval = HEARTBEAT_SECONDS

    def start(self, name: str, queues: list[str]) -> None:
        self.name, self.queues = name, queues
        self.interval = heartbeat_interval()
        # The first write is the thread's: a database down as the worker starts delays its
        # registration to a later beat instead of leaving it unregistered for good.
        self.thread = threading.Thread(target=self._beat, name="presence", daemon=True)
        self.thread.start()

    def update(self, **fields) -> None:
        for key, value in fields.items():
            setattr(self, key, value)
        self.changed.set()

    def keep_alive(self, kind: str, key, attempt: int) -> None:
        """The task claimed this attempt: keep its lease alive until the task ends."""
        self.kept = (kind, key, attempt)

    def stop(self) -> None:
        self.status, self.job_id, self.shard_id, self.kept = WorkerStatus.OFFLINE, None, None, None
        if self.name is not None:
            self.write()

    def _beat(self) -> None:
        while self.status != WorkerStatus.OFFLINE:
            try:
                self.write()
            except Exception:  # the database may be restarting: report again at the next beat
                log.warning("worker heartbeat failed", exc_info=True)
            self.changed.wait(self.interval)
            self.changed.clear()

    def write(self) -> None:
        with sessions()() as session:
            ops.report_worker(
                session,
                name=self.name,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                device=device_name(),
                queues=self.queues,
                status=self.status,
                job_id=self.job_id,
                shard_id=self.shard_id,
            )
            if self.kept is not None:
                kind, key, attempt = self.kept
                attempts.keep_alive(session, table=LEASED[kind], key=key, attempt=attempt)
            session.commit()


LEASED = {"job": Job, "shard": JobShard}
presence = Presence()
# Set by a warm shutdown (SIGTERM): training stops at its next step and hands its job back.
shutting_down = threading.Event()


@worker_ready.connect
def announce(sender=None, **_) -> None:
    queues = sorted(q.name for q in sender.task_consumer.queues) if sender.task_consumer else []
    presence.start(sender.hostname, queues)


@worker_shutting_down.connect
def begin_shutdown(**_) -> None:
    shutting_down.set()
    presence.update(status=WorkerStatus.STOPPING)


@worker_shutdown.connect
def end_presence(**_) -> None:
    presence.stop()


@functools.cache
def machine_lock() -> MachineLock:
    """The lock of the machine's workers, in the artifact cache they share: each task holds it shared
    while it runs, and a runtime measurement exclusively, while no task runs (worker/measuring.py)."""
    return MachineLock(worker_settings().artifact_cache)


# What the running task holds of the machine lock, released as it ends.
task_hold = contextlib.ExitStack()


@task_prerun.connect
def task_started(task=None, args=(), **_) -> None:
    if task.name in {shard.name for shard in SHARD_TASKS}:
        presence.update(job_id=None, shard_id=args[0])
    else:
        presence.update(job_id=uuid.UUID(args[0]), shard_id=None)
    # Waits for one step of a measurement at most: the measurement yields to the task.
    task_hold.enter_context(machine_lock().task())


@task_postrun.connect
def task_finished(**_) -> None:
    task_hold.close()
    presence.update(job_id=None, shard_id=None, kept=None)


@contextlib.contextmanager
def hard_time_limit(seconds: float, on_expiry):
    """Past ``seconds``, ``on_expiry`` records the outcome and the process exits: the one way to
    stop code stuck where no soft limit is checked (the launcher or the orchestrator restarts it)."""

    def expire():
        log.error("hard time limit of %ss reached: recording it and exiting", seconds)
        try:
            on_expiry()
        finally:
            os._exit(70)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def worker_name(task) -> str:
    """The Celery node name (e.g. gpu0@host), as GET /workers and Flower show it."""
    return task.request.hostname or f"{os.getpid()}@{socket.gethostname()}"


def device_name() -> str:
    """The device jobs run on. is_available() asks the driver without creating a CUDA context,
    so calling this in a parent that forks is safe."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    return f"cuda:{visible}"


def claim(task, job_id: uuid.UUID) -> int | None:
    with sessions()() as session:
        attempt = crud.claim_job(session, job_id=job_id, worker=worker_name(task), device=device_name())
        session.commit()
    if attempt is None:
        log.info("job %s is not queued (duplicate delivery or cancelled): nothing to do", job_id)
    return attempt


class JobReporter:
    """Heartbeats, progress and events for one attempt; tells the job's code when to stop."""

    def __init__(self, job_id: uuid.UUID, attempt: int):
        self.job_id, self.attempt = job_id, attempt
        self.interval = heartbeat_interval()
        self.last_beat = 0.0
        self.cancelled = False
        self.kept_result: dict = {}  # shown in the job's result from now on, and kept in its final one

    def keep_in_result(self, **parts) -> None:
        self.kept_result.update(parts)

    def beat(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        detail: dict | None = None,
        event: tuple[str, dict] | None = None,
        force: bool = False,
    ) -> bool:
        """Report progress (``detail``: within the unit, e.g. an epoch's batches); returns True when the
        job should stop (cancel requested). Progress alone is written at most every heartbeat interval."""
        if not force and event is None and time.monotonic() - self.last_beat < self.interval:
            return self.cancelled
        with sessions()() as session:
            self.cancelled = crud.report_job(
                session,
                job_id=self.job_id,
                attempt=self.attempt,
                event=event,
                progress_done=done,
                progress_total=total,
                progress_detail=detail,
                result=self.kept_result or None,
            )
            session.commit()
        self.last_beat = time.monotonic()
        return self.cancelled

    def owns(self) -> bool:
        """Whether this attempt still runs the job: a superseded one writes nothing more, not even to
        the bucket (asked just before each upload; the upload itself is not fenced)."""
        with sessions()() as session:
            owned = attempts.keep_alive(session, table=Job, key=self.job_id, attempt=self.attempt)
            session.commit()
        return owned

    def requeue(self, reason: str) -> bool:
        with sessions()() as session:
            requeued = crud.requeue_job(session, job_id=self.job_id, attempt=self.attempt, reason=reason)
            session.commit()
        return requeued

    def finish(
        self,
        status: Status,
        *,
        result: dict | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        model: dict | None = None,
    ) -> Status | None:
        """The attempt's finish, with the model it registered (its id becomes the job's model_id);
        returns the status, or None when a newer attempt superseded this one."""
        result = {**self.kept_result, **(result or {})}
        with sessions()() as session:
            registered = None
            if model is not None:
                registered = registry.register_model(session, job_id=self.job_id, **model)
                result.update(model_id=str(registered.id), model_version=registered.version)
            if not crud.finish_job(
                session,
                job_id=self.job_id,
                attempt=self.attempt,
                status=status,
                result=result or None,
                error_code=error_code,
                error_message=error_message,
                **({"model_id": registered.id} if registered else {}),
            ):
                session.rollback()  # superseded by a newer attempt: register nothing, change nothing
                log.warning("job %s attempt %s was superseded; result dropped", self.job_id, self.attempt)
                return None
            session.commit()
        announce_finish(self.job_id, status)
        return status


def announce_finish(job_id: uuid.UUID, status: Status) -> None:
    """After the commit of a job's end: tell whoever waits on it (POST /predict) that it finished, and
    send the chain steps its end made. The rows are the record: a word lost with the broker costs the
    waiter a few seconds (it reads the row again), a lost step message the reconciler's next turn."""
    from worker.celery_app import app

    try:
        announce_job_finished(app, job_id, status)
    except Exception:
        log.warning("could not announce the finish of job %s", job_id, exc_info=True)
    with sessions()() as session:
        send_next_steps(app, session, job_id=job_id)  # a broker that is down leaves them to the reconciler


def start(task, job_id: str) -> tuple[JobReporter, Job] | None:
    """Claim the job and read its row; None when this delivery has nothing to do."""
    job_uuid = uuid.UUID(job_id)
    attempt = claim(task, job_uuid)
    if attempt is None:
        return None
    presence.keep_alive("job", job_uuid, attempt)
    with sessions()() as session:
        return JobReporter(job_uuid, attempt), crud.get_job(session, job_id=job_uuid)


class TaskOutcomeLine(logging.Filter):
    """Celery logs every task that returns as "succeeded"; a task of ours returns how its work
    finished, and its line says that: a cancelled training reads "cancelled", not "succeeded"."""

    OUTCOMES = frozenset(map(str, Status))

    def filter(self, record: logging.LogRecord) -> bool:
        outcome = str(record.args.get("return_value", "")).strip("'") if isinstance(record.args, dict) else ""
        if outcome in self.OUTCOMES:
            record.msg, record.args = (
                "Task %(name)s[%(id)s] %(outcome)s in %(runtime)ss",
                {**record.args, "outcome": outcome},
            )
        return True


@worker_init.connect
def name_task_outcomes(**_) -> None:
    logging.getLogger("celery.app.trace").addFilter(TaskOutcomeLine())


class JobError(Exception):
    """An error of the job service's own, naming its error code."""

    code = "internal_error"


def database_unreachable(error: BaseException) -> bool:
    """A lost, refused or ended database connection (PostgreSQL restarting, a cut link, a fenced
    session): no fault of the job's, so no verdict on it. The attempt ends there; its lease lapses and the
    reconciler hands the job to another attempt, which resumes (a training from its last checkpoint).
    Recorded as the job's failure instead, a restart of the database failed every training it caught."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(error, OperationalError | InterfaceError)


def error_code(error: Exception) -> str:
    if isinstance(error, JobError):
        return error.code
    from grocery.storage import StorageError

    if isinstance(error, StorageError):
        return error.code  # the object store's reason: not_found, access_denied, storage_unavailable
    from grocery.artifact import ArtifactError
    from grocery.index import DatasetError
    from grocery.networks import WeightsError

    for kind, code in (
        (DatasetError, "invalid_dataset"),
        (WeightsError, "weights_unavailable"),
        (ArtifactError, "invalid_model"),
        (ValueError, "invalid_parameters"),
    ):
        if isinstance(error, kind):
            return code
    return "internal_error"
