"""The Flask API: validates, writes the row, commits, then enqueues by task name. Never imports torch."""

from dataclasses import dataclass, field

from celery import Celery
from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from api.errors import register_error_handlers
from service.confinement import configuration_problems
from service.db import make_engine, make_session_factory
from service.settings import Settings

TASK_QUEUES = {"train": "train", "predict": "predict"}
TASK_NAMES = {"train": "worker.training.run_train_job", "predict": "worker.prediction.run_predict_job"}


@dataclass
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    queue: Celery
    # What is wrong with the settings, found at start: /readyz is not ready while any is listed.
    problems: list[str] = field(default_factory=list)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    # One part a file, plus the form fields: each part costs memory while the form is parsed.
    app.config["MAX_FORM_PARTS"] = min(settings.max_upload_files, settings.max_job_files) + 16
    engine = make_engine(settings.database_url)
    queue = Celery("grocery", broker=settings.redis_url)
    queue.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
    problems = configuration_problems(settings)
    for problem in problems:
        app.logger.error("misconfigured: %s", problem)
    app.extensions["grocery"] = Services(settings, make_session_factory(engine), queue, problems)
    register_error_handlers(app)
    from api.auth import register_auth

    register_auth(app)

    from api import health, jobs, openapi, ops, registry, results, workshop

    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(results.blueprint)
    app.register_blueprint(registry.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(ops.blueprint)
    app.register_blueprint(workshop.blueprint)
    app.register_blueprint(openapi.blueprint)
    if settings.ui:
        from api.ui import mount_ui

        mount_ui(app)
    return app


def services() -> Services:
    return current_app.extensions["grocery"]


def enqueue(job_type: str, job_id: str) -> bool:
    """Tell a worker to look: the row, committed already, is the source of truth. With the broker
    down the job stays queued and the workers' reconciler sends it once the broker is back."""
    try:
        services().queue.send_task(
            TASK_NAMES[job_type], args=[job_id], task_id=job_id, queue=TASK_QUEUES[job_type], retry=False
        )
    except Exception:
        current_app.logger.warning("broker unreachable: job %s stays queued for the reconciler", job_id, exc_info=True)
        return False
    return True
