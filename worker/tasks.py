"""Job tasks. Each takes a job id; PostgreSQL says what to do and receives what was done."""

import functools
import logging
import os
import socket
import time
import uuid
from pathlib import Path

from celery.signals import worker_process_init, worker_ready
from sqlalchemy.orm import Session, sessionmaker

from service import crud
from service.db import make_engine, make_session_factory
from service.models import Job
from service.settings import Settings
from worker.celery_app import app

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


@app.task(name="worker.tasks.run_train_job", bind=True)
def run_train_job(self, job_id: str) -> None:
    from grocery.engine import TrainConfig, fit

    started = start(self, job_id)
    if started is None:
        return
    reporter, job = started
    settings, params = Settings.from_env(), dict(job.params)
    try:
        config = TrainConfig.from_dict({"data_dir": str(settings.data_dir), **params})
        reporter.beat(done=0, total=config.epochs, force=True)

        def on_progress(event: dict) -> bool:
            if event["kind"] == "epoch":
                return reporter.beat(done=event["epoch"], event=("epoch", event))
            return reporter.beat()

        output = Path(settings.model_dir) / job_id
        result = fit(config, output, callback=on_progress)
    except Exception as e:  # the job fails with the reason; the worker lives on
        log.exception("train job %s failed", job_id)
        reporter.finish("failed", error_code=_error_code(e), error_message=str(e))
        return
    if result.status == "stopped":
        reporter.finish("cancelled", result={"epochs_done": result.epochs_done})
        return
    metadata = {
        "arch": config.arch,
        "label_level": config.label_level,
        "artifact_path": str(output),
        "metrics": result.metrics,
        "class_names": _class_names(output),
    }
    reporter.finish("succeeded", result={"metrics": result.metrics}, model=metadata)


def _class_names(artifact_dir: Path) -> list[str]:
    from grocery.artifact import read_artifact

    return read_artifact(artifact_dir).class_names


def _error_code(error: Exception) -> str:
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


@functools.lru_cache(maxsize=2)
def cached_predictor(artifact_path: str):
    """Each worker process loads a model once and keeps it for the next jobs on the same model."""
    from grocery.predict import Predictor

    return Predictor.from_path(artifact_path)


@app.task(name="worker.tasks.run_predict_job", bind=True)
def run_predict_job(self, job_id: str) -> None:
    from grocery.predict import iter_image_files

    started = start(self, job_id)
    if started is None:
        return
    reporter, job = started
    source = job.params["input"]
    with sessions()() as session:
        model = crud.resolve_model(session, reference=str(job.model_id))
    try:
        predictor = cached_predictor(model.artifact_path)
        recursive = source.get("recursive", True)
        files = list(iter_image_files([source["folder"]] if "folder" in source else source["paths"], recursive))
        summary = classify(job.id, predictor, files, reporter)
    except Exception as e:
        log.exception("predict job %s failed", job_id)
        reporter.finish("failed", error_code=_error_code(e), error_message=str(e))
        return
    if summary is None:
        reporter.finish("cancelled")
        return
    reporter.finish("succeeded", result={**summary, "results": f"/jobs/{job_id}/results"})


def classify(job_id: uuid.UUID, predictor, files: list[Path], reporter: JobReporter) -> dict | None:
    """Predict every file, writing rows as batches finish; None when cancelled part-way."""
    from collections import Counter

    reporter.beat(done=0, total=len(files), force=True)
    labels, failed, batch = Counter(), 0, []
    start = time.perf_counter()
    for done, row in enumerate(predictor.predict_files(files), start=1):
        failed += row.error is not None
        labels.update([row.label] if row.label else [])
        batch.append(
            {
                "path": row.path,
                "label": row.label,
                "class_id": row.class_id,
                "confidence": row.confidence,
                "top5": row.top5,
                "error_code": row.error and row.error["code"],
                "error_message": row.error and row.error["message"],
            }
        )
        if len(batch) == predictor.batch_size or done == len(files):
            with sessions()() as session:
                crud.add_predictions(session, job_id=job_id, rows=batch)
                session.commit()
            batch = []
            if reporter.beat(done=done, force=done == len(files)):
                return None
    seconds = time.perf_counter() - start
    return {
        "total": len(files),
        "succeeded": len(files) - failed,
        "failed": failed,
        "labels": dict(labels),
        "images_per_s": round(len(files) / seconds, 1) if seconds > 0 else None,
    }
