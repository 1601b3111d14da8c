"""What every task shares: the database, the worker's identity, claiming a job and reporting on it."""

import functools
import logging
import os
import socket
import time
import uuid

from celery.signals import worker_process_init, worker_ready
from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.db import make_engine, make_session_factory
from service.models import Job
from service.settings import Settings

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 5.0


@functools.cache
def sessions() -> sessionmaker[Session]:
    """One engine per worker process, made on first use (after the fork)."""
    return make_session_factory(make_engine(Settings.from_env().database_url, pool_size=2))


@worker_ready.connect
@worker_process_init.connect
def warm_up(**_) -> None:
    """Pay for torch's import and the database pool before the first job, not during its claim."""
    device_name()
    sessions()


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
        self.last_beat = 0.0
        self.cancelled = False

    def beat(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        event: tuple[str, dict] | None = None,
        force: bool = False,
    ) -> bool:
        """Returns True when the job should stop (cancel requested)."""
        if not force and event is None and time.monotonic() - self.last_beat < HEARTBEAT_SECONDS:
            return self.cancelled
        with sessions()() as session:
            self.cancelled = crud.heartbeat(
                session, job_id=self.job_id, attempt=self.attempt, progress_done=done, progress_total=total
            )
            if event is not None:
                crud.add_event(session, job_id=self.job_id, kind=event[0], data=event[1])
            session.commit()
        self.last_beat = time.monotonic()
        return self.cancelled

    def finish(
        self,
        status: str,
        *,
        result: dict | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        model: dict | None = None,
    ) -> None:
        with sessions()() as session:
            if model is not None:
                registered = crud.register_model(session, job_id=self.job_id, **model)
                result = {**(result or {}), "model_id": str(registered.id), "model_version": registered.version}
            if not crud.finish_job(
                session,
                job_id=self.job_id,
                attempt=self.attempt,
                status=status,
                result=result,
                error_code=error_code,
                error_message=error_message,
            ):
                session.rollback()  # superseded by a newer attempt: register nothing, change nothing
                log.warning("job %s attempt %s was superseded; result dropped", self.job_id, self.attempt)
                return
            session.commit()


def start(task, job_id: str) -> tuple[JobReporter, Job] | None:
    """Claim the job and read its row; None when this delivery has nothing to do."""
    job_uuid = uuid.UUID(job_id)
    attempt = claim(task, job_uuid)
    if attempt is None:
        return None
    with sessions()() as session:
        return JobReporter(job_uuid, attempt), crud.get_job(session, job_id=job_uuid)


def error_code(error: Exception) -> str:
    from grocery.artifact import ArtifactError
    from grocery.index import DatasetError
    from grocery.models import WeightsError

    for kind, code in (
        (DatasetError, "invalid_dataset"),
        (WeightsError, "weights_unavailable"),
        (ArtifactError, "invalid_model"),
        (ValueError, "invalid_parameters"),
    ):
        if isinstance(error, kind):
            return code
    return "internal_error"
