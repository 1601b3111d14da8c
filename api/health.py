"""GET /healthz (the process answers) and GET /readyz (database, Redis and schema are usable)."""

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Blueprint, current_app, jsonify

from api.auth import presented_secret
from api.resources import resources
from service import tokens
from service.db import alembic_config

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz():
    checks = {"database": _check(_database_at_head), "redis": _check(_redis_answers)}
    configuration = _configuration()
    ready = configuration == "ok" and all(v == "ok" for v in checks.values())
    if not ready:
        current_app.logger.warning("not ready: configuration %s, checks %s", configuration, checks)
        if not _may_see_reasons():
            # Drivers' messages name hosts, ports and users: only operators see them (and the log).
            hidden = "error (the reason is in the API's log)"
            checks = {name: "ok" if v == "ok" else hidden for name, v in checks.items()}
            configuration = "ok" if configuration == "ok" else hidden
    body = {"status": "ready" if ready else "not_ready", "checks": checks, "configuration": configuration}
    return jsonify(body), 200 if ready else 503


def _configuration() -> str:
    problems = resources().problems
    return "ok" if not problems else "error: " + "; ".join(problems)


def _may_see_reasons() -> bool:
    """With authentication off (loopback), or for an ops token; a lookup that fails (the database
    is down) shows nothing."""
    if resources().settings.auth == "off":
        return True
    secret = presented_secret()
    if not secret:
        return False
    try:
        with resources().sessions() as session:
            token = tokens.find_token(session, secret=secret)
    except Exception:
        return False
    return token is not None and "ops" in token.scopes


def _check(probe) -> str:
    try:
        return probe()
    except Exception as e:  # any failure means "not ready"
        return f"error: {e.__class__.__name__}: {e}"


def _database_at_head() -> str:
    script = ScriptDirectory.from_config(alembic_config(resources().settings.database_url))
    with resources().sessions() as session:
        current = MigrationContext.configure(session.connection()).get_current_heads()
    if set(current) != set(script.get_heads()):
        return f"error: schema at {list(current)}, migrations' head is {script.get_heads()}"
    return "ok"


def _redis_answers() -> str:
    with resources().celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    return "ok"
