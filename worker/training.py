"""Training jobs. Each task takes a job id; PostgreSQL says what to do and receives what was done."""

import logging
import time
from pathlib import Path

from service import tokens
from service.confinement import PathRefused, training_files
from service.contract import JOB_TASKS, send
from worker.celery_app import app
from worker.runtime import error_code, hard_time_limit, sessions, shutting_down, start, worker_settings

log = logging.getLogger(__name__)


@app.task(name=JOB_TASKS["train"].name, bind=True)
def run_train_job(self, job_id: str) -> None:
    from grocery.engine import CHECKPOINT_NAME, TrainConfig, fit
    from grocery.export import prepare_for_serving

    started = start(self, job_id)
    if started is None:
        return
    reporter, job = started
    settings, params = worker_settings(), dict(job.params)
    # Each attempt writes its own folder, so a frozen worker that wakes up after losing the job
    # cannot overwrite the files of the attempt that took over.
    output = Path(settings.model_dir) / job_id / f"attempt-{reporter.attempt}"
    checkpoint = output / CHECKPOINT_NAME
    stop = StopReasons(settings.train_soft_time_limit)

    def on_hard_limit():
        message = limit_message("hard", settings.train_time_limit, checkpoint)
        reporter.finish("failed", error_code="time_limit", error_message=message)

    try:
        # Confined again here (the API checked at submit): the files may have changed since, and
        # nothing outside the roots is opened, so no message can tell whether such a file exists.
        params = training_files(params, settings, owner_roots(job))
    except PathRefused as e:
        reporter.finish("failed", error_code=e.code, error_message=str(e))
        return
    try:
        config = TrainConfig.from_dict({"data_dir": str(settings.data_dir), **params})
        reporter.beat(done=0, total=config.epochs, force=True)

        last_confusion = {}

        def on_progress(event: dict) -> bool:
            if event["kind"] == "epoch":
                last_confusion.update(event["confusion"])
                cancelled = reporter.beat(done=event["epoch"], event=("epoch", event))
            else:
                cancelled = reporter.beat()
            return cancelled or stop.check()

        # An earlier attempt's checkpoint (a warm shutdown, a lost worker) is where this one starts.
        resume = latest_checkpoint(output.parent)
        with hard_time_limit(settings.train_time_limit, on_hard_limit):
            result = fit(config, output, resume=resume, callback=on_progress)
            if result.status == "completed":
                # Exported and checked before it is registered; a failed export is recorded, not raised.
                reporter.beat(force=True)
                serving = prepare_for_serving(output, data_dir=config.data_dir)
    except Exception as e:  # the job fails with the reason; the worker lives on
        log.exception("train job %s failed", job_id)
        reporter.finish("failed", error_code=error_code(e), error_message=str(e))
        return
    if result.status == "stopped":
        end_stopped(self, reporter, stop, result.epochs_done, checkpoint)
        return
    metadata = {
        "arch": config.arch,
        "label_level": config.label_level,
        "artifact_path": str(output),
        "metrics": result.metrics,
        "class_names": _class_names(output),
        "serving": serving,
    }
    result_json = {"metrics": result.metrics, "confusion": last_confusion or None}
    reporter.finish("succeeded", result=result_json, model=metadata)


def owner_roots(job) -> list[str] | None:
    with sessions()() as session:
        owner = tokens.get_token(session, token_id=job.owner_token_id)
        return owner.roots if owner else None


def latest_checkpoint(job_dir: Path) -> Path | None:
    from grocery.engine import CHECKPOINT_NAME

    checkpoints = sorted(job_dir.glob(f"attempt-*/{CHECKPOINT_NAME}"), key=lambda p: p.stat().st_mtime)
    return checkpoints[-1] if checkpoints else None


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


def limit_message(kind: str, seconds: float, checkpoint: Path) -> str:
    return f"stopped at the {kind} time limit of {seconds:.0f}s; the last epoch checkpoint is {checkpoint}"


def end_stopped(task, reporter, stop: StopReasons, epochs_done: int, checkpoint: Path) -> None:
    """A run that stopped early: handed back (shutdown), failed (time limit) or cancelled."""
    if stop.reason == "shutdown":
        if reporter.requeue("the worker shut down; the next attempt resumes from the last epoch checkpoint"):
            send(task.app, JOB_TASKS["train"], str(reporter.job_id))
        return
    if stop.reason == "time_limit":
        reporter.finish(
            "failed",
            error_code="time_limit",
            error_message=limit_message("soft", stop.soft_limit, checkpoint),
            result={"epochs_done": epochs_done},
        )
        return
    reporter.finish("cancelled", result={"epochs_done": epochs_done})


def _class_names(artifact_dir: Path) -> list[str]:
    from grocery.artifact import read_artifact

    return read_artifact(artifact_dir).class_names
