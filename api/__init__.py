"""The Flask API: validates, writes the row, commits, then enqueues (service/contract.py). Never imports torch."""

from flask import Flask

from api.errors import register_error_handlers
from api.resources import Resources
from service.confinement import configuration_problems
from service.contract import make_celery
from service.db import make_engine, make_session_factory
from service.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    # One part a file, plus the form fields: each part costs memory while the form is parsed.
    app.config["MAX_FORM_PARTS"] = min(settings.max_upload_files, settings.max_job_files) + 16
    problems = configuration_problems(settings)
    for problem in problems:
        app.logger.error("misconfigured: %s", problem)
    sessions = make_session_factory(make_engine(settings.database_url))
    app.extensions["grocery"] = Resources(settings, sessions, make_celery(settings), problems)
    register_error_handlers(app)
    from api.auth import register_auth

    register_auth(app)

    from api import cards, deliveries, health, jobs, openapi, ops, registry, results, workshop

    for module in (jobs, deliveries, results, registry, cards, health, ops, workshop, openapi):
        app.register_blueprint(module.blueprint)
    if settings.ui:
        from api.ui import mount_ui

        mount_ui(app)
    return app
