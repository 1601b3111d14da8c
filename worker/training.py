"""Training jobs. Each task takes a job id; PostgreSQL says what to do and receives what was done."""

import logging
from pathlib import Path

from service.settings import Settings
from worker.celery_app import app
from worker.runtime import error_code, start

log = logging.getLogger(__name__)


@app.task(name="worker.training.run_train_job", bind=True)
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
        reporter.finish("failed", error_code=error_code(e), error_message=str(e))
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
