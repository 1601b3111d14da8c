"""Training jobs. Each task takes a job id; PostgreSQL says what to do and receives what was done."""

import contextlib
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from grocery import storage
from grocery.config import WEIGHTS_NAMES
from service import artifacts, tokens
from service.confinement import PathRefused, training_files
from service.contract import send
from service.kinds import TRAIN
from service.specs import TrainParams
from service.states import Status
from worker.celery_app import app
from worker.process import (
    database_unreachable,
    error_code,
    hard_time_limit,
    sessions,
    shutting_down,
    start,
    worker_settings,
)

log = logging.getLogger(__name__)


@app.task(name=TRAIN.start.name, bind=True)
def run_train_job(self, job_id: str) -> Status | None:
    """Returns how the attempt finished (its log line says so: worker.process.TaskOutcomeLine)."""
    started = start(self, job_id)
    if started is None:
        return None
    reporter, job = started
    files = AttemptFiles.of(worker_settings(), job_id=job_id, attempt=reporter.attempt)
    try:
        return train(self, reporter, job, files)
    finally:
        files.clean_up()


def train(task, reporter, job, files: "AttemptFiles") -> Status | None:
    from grocery.engine import fit, resumed_config
    from grocery.export import prepare_for_serving

    settings, spec, started = worker_settings(), TrainParams.of_job(job.params), time.monotonic()
    stop = StopReasons(settings.train_soft_time_limit)

    def on_hard_limit():
        message = limit_message("hard", settings.train_time_limit)
        reporter.finish(Status.FAILED, error_code="time_limit", error_message=message)

    try:
        # Confined again here (the API checked at submit): the files may have changed since, and
        # nothing outside the roots is opened, so no message can tell whether such a file exists.
        spec = training_files(spec, settings, owner_roots(job))
    except PathRefused as e:
        return reporter.finish(Status.FAILED, error_code=e.code, error_message=str(e))
    given_data_dir = TrainParams.of_job(job.params).data_dir
    try:
        # An earlier attempt's checkpoint (a warm shutdown, a lost worker) is where this one starts,
        # with the settings it was trained with: the job's params name only what the user gave.
        resume = files.latest_checkpoint()
        given = {"data_dir": str(settings.data_dir), **spec.stored()}
        if resume is not None:  # its epochs were the run's; a time budget's plan may have trained fewer
            given.pop("epochs", None)
        config = resumed_config(resume, given)
        # The settings the run uses, the defaults filled in, shown with the job from its start.
        reporter.keep_in_result(settings=effective_settings(config, given_data_dir))
        reporter.beat(done=0, total=config.epochs, force=True)

        last_confusion, steps = {}, {"total": None}

        def on_progress(event: dict) -> bool:
            if event["kind"] == "plan":  # a time budget's epochs, planned before the first step
                planned = dataclasses.replace(config, epochs=event["epochs"])
                reporter.keep_in_result(settings=effective_settings(planned, given_data_dir), plan=event)
                return reporter.beat(done=0, total=event["epochs"], force=True) or stop.check()
            if event["kind"] == "epoch":
                if not reporter.owns():
                    return True  # superseded (its worker was cut off or frozen): no late checkpoint
                last_confusion.update(event["confusion"])
                files.keep_checkpoint()
                # The next epoch's batches, none done yet.
                detail = {"batches": {"done": 0, "total": steps["total"]}} if steps["total"] else None
                cancelled = reporter.beat(done=event["epoch"], detail=detail, event=("epoch", event))
            else:
                steps["total"] = event["steps"]
                batches = {"done": event["step"], "total": event["steps"]}
                cancelled = reporter.beat(done=event["epoch"] - 1, detail={"batches": batches})
            return cancelled or stop.check()

        with hard_time_limit(settings.train_time_limit, on_hard_limit):
            result = fit(config, files.output, resume=resume, callback=on_progress)
            if result.status == "completed":
                # Exported and checked before it is registered; a failed export is recorded, not raised.
                reporter.beat(force=True)
                serving = prepare_for_serving(files.output, data_dir=config.data_dir)
                if reporter.owns():  # a superseded attempt's finish is refused: nothing of it to keep
                    files.keep_artifact()
    except Exception as e:  # the job fails with the reason; the worker lives on
        if database_unreachable(e):
            raise
        log.exception("train job %s failed", job.id)
        return reporter.finish(Status.FAILED, error_code=error_code(e), error_message=str(e))
    if result.status == "stopped":
        return finish_stopped(task, reporter, stop, result.epochs_done)
    config = result.config  # as trained: a time budget's epochs are the planned ones
    # The job's settings say what ran, as its model's card does: the planned epochs, whether it compiled.
    reporter.keep_in_result(settings=effective_settings(config, given_data_dir))
    metadata = {
        "arch": config.arch,
        "label_level": config.label_level,
        "artifact_path": str(files.destination),
        "metrics": result.metrics,
        "class_names": _class_names(files.output),
        "serving": serving,
        "lineage": lineage(config, given_data_dir, seconds=time.monotonic() - started, device=job.device),
    }
    result_json = {"metrics": result.metrics, "confusion": last_confusion or None}
    return reporter.finish(Status.SUCCEEDED, result=result_json, model=metadata)


def lineage(config, given_data_dir: str | None, *, seconds: float, device: str) -> dict:
    """Where the model comes from, for its card: photos and index, code, settings, machine, minutes."""
    from grocery import index
    from grocery import lineage as library

    data = {
        "data_dir": given_data_dir,  # None: the service's own dataset
        "splits": config.train_split,
        "index_fingerprint": index.fingerprint(config.data_dir, config.train_split),
        "photos": library.photos_fingerprint(config.data_dir, config.train_split),
    }
    return {
        "data": data,
        "code": library.code_version(),
        "settings": effective_settings(config, given_data_dir),
        "base_weights": config.weights if config.weights in WEIGHTS_NAMES else "a weights file",
        "machine": {**library.machine(), "device": device},
        "training_seconds": round(seconds, 1),
    }


def effective_settings(config, given_data_dir: str | None) -> dict:
    """Every setting of the run; the dataset as the job named it (None: the service's own)."""
    return {**dataclasses.asdict(config), "data_dir": given_data_dir}


@dataclass(frozen=True)
class AttemptFiles:
    """Where a training attempt writes (``output``, a local folder) and where its files are kept
    (``destination``: that same folder, or with the model storage in a bucket, its prefix there, to
    which the checkpoint goes at each epoch, so that an attempt on another machine resumes from it,
    and the artifact at the end)."""

    output: Path
    destination: Path | str

    @classmethod
    def of(cls, settings, *, job_id: str, attempt: int) -> "AttemptFiles":
        destination = artifacts.attempt_location(settings, job_id=job_id, attempt=attempt)
        if not storage.is_url(destination):
            return cls(destination, destination)
        return cls(artifacts.training_folder(settings, job_id=job_id, attempt=attempt), destination)

    @property
    def in_bucket(self) -> bool:
        return storage.is_url(self.destination)

    @property
    def checkpoint(self) -> Path | str:
        from grocery.engine import CHECKPOINT_NAME

        return storage.join(self.destination, CHECKPOINT_NAME)

    def keep_checkpoint(self) -> None:
        """The epoch's checkpoint to the bucket. One that cannot go up costs a later attempt the epochs
        since the last that did, not this attempt its run: logged, and training goes on."""
        from grocery.engine import CHECKPOINT_NAME

        if self.in_bucket:
            try:
                storage.upload_file(self.output / CHECKPOINT_NAME, str(self.checkpoint))
            except storage.StorageError as e:
                log.warning("could not keep the checkpoint in the bucket: %s", e)

    def keep_artifact(self) -> None:
        if self.in_bucket:
            storage.upload_tree(self.output, str(self.destination))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint of the job's attempts to resume from (a local file): in a folder, the newest;
        in a bucket, the latest attempt's (attempts are numbered in the order they start), downloaded."""
        from grocery.engine import CHECKPOINT_NAME

        if not self.in_bucket:
            checkpoints = sorted(
                self.output.parent.glob(f"attempt-*/{CHECKPOINT_NAME}"), key=lambda p: p.stat().st_mtime
            )
            return checkpoints[-1] if checkpoints else None
        job_prefix = str(self.destination).rsplit("/", 1)[0]
        urls = [
            url
            for url in storage.list_objects(job_prefix, matches=lambda name: name == CHECKPOINT_NAME)
            if _attempt_of(url) is not None
        ]
        if not urls:
            return None
        local = self.output.with_name(f"{self.output.name}-resume") / CHECKPOINT_NAME
        local.parent.mkdir(parents=True, exist_ok=True)
        storage.download_file(max(urls, key=_attempt_of), local)
        return local

    def clean_up(self) -> None:
        """The local files of an attempt whose files are in the bucket: kept there, or not to be kept."""
        if self.in_bucket:
            for folder in (self.output, self.output.with_name(f"{self.output.name}-resume")):
                shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # the job's folder, unless another attempt here still uses it
                self.output.parent.rmdir()


def _attempt_of(url: str) -> int | None:
    """N, for an object of .../<job id>/attempt-N/<name>."""
    folder = url.rsplit("/", 2)[-2]
    number = folder.removeprefix("attempt-")
    return int(number) if folder.startswith("attempt-") and number.isdigit() else None


def owner_roots(job) -> list[str] | None:
    with sessions()() as session:
        owner = tokens.get_token(session, token_id=job.owner_token_id)
        return owner.roots if owner else None


class StopReasons:
    """Why a training run should stop at its next step, other than a cancel: shutdown or the soft limit."""

    def __init__(self, soft_limit: float):
        self.soft_limit, self.started, self.reason = soft_limit, time.monotonic(), None

    def check(self) -> bool:
        if shutting_down.is_set():
            self.reason = "shutdown"
        elif time.monotonic() - self.started > self.soft_limit:
            self.reason = "time_limit"
        return self.reason is not None


LIMITS = {"soft": "GROCERY_TRAIN_SOFT_TIME_LIMIT", "hard": "GROCERY_TRAIN_TIME_LIMIT"}


def limit_message(kind: str, seconds: float) -> str:
    return f"stopped at the {kind} time limit of {seconds:.0f}s ({LIMITS[kind]}); its last epoch checkpoint is kept"


def finish_stopped(task, reporter, stop: StopReasons, epochs_done: int) -> Status | None:
    """A run that stopped early: handed back (shutdown), failed (time limit) or cancelled."""
    if stop.reason == "shutdown":
        if reporter.requeue("the worker shut down; the next attempt resumes from the last epoch checkpoint"):
            send(task.app, TRAIN.start, str(reporter.job_id))
            return Status.QUEUED
        return None
    if stop.reason == "time_limit":
        return reporter.finish(
            Status.FAILED,
            error_code="time_limit",
            error_message=limit_message("soft", stop.soft_limit),
            result={"epochs_done": epochs_done},
        )
        return
    return reporter.finish(Status.CANCELLED, result={"epochs_done": epochs_done})


def _class_names(artifact_dir: Path) -> list[str]:
    from grocery.artifact import read_artifact

    return read_artifact(artifact_dir).class_names
