"""GET /healthz (the process answers) and GET /readyz (database, Redis and schema are usable)."""

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Blueprint, jsonify

from api import services

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz():
    checks = {"database": _check(_database_at_head), "redis": _check(_redis_answers)}
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), 200 if ready else 503


def _check(probe) -> str:
    try:
        return probe()
    except Exception as e:  # any failure means "not ready", with the reason shown
        return f"error: {e.__class__.__name__}: {e}"


def _database_at_head() -> str:
    from pathlib import Path

    from alembic.config import Config

    script = ScriptDirectory.from_config(Config(str(Path(__file__).resolve().parents[1] / "alembic.ini")))
    with services().sessions() as session:
        current = MigrationContext.configure(session.connection()).get_current_heads()
    if set(current) != set(script.get_heads()):
        return f"error: schema at {list(current)}, migrations' head is {script.get_heads()}"
    return "ok"


def _redis_answers() -> str:
    with services().queue.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    return "ok"
