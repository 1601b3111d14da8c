"""Engine and session factory: built from settings by the caller, never at import time."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    database_url: str,
    *,
    pool_size: int = 5,
    idle_transaction_seconds: float | None = None,
    application_name: str | None = None,
) -> Engine:
    # pre_ping: a worker idle through a database restart gets a fresh connection, not an error.
    connect_args = {"application_name": application_name} if application_name else {}
    if idle_transaction_seconds:
        # A process frozen between statements of a transaction (SIGSTOP, a stalled VM) loses its
        # session and its row locks after this long, so the work it held can be taken over. Frozen
        # inside a pipeline (psycopg's executemany) PostgreSQL does not count it idle: the
        # reconciler ends such sessions by their application_name (service.recovery.fence_lost_workers).
        timeout_ms = int(idle_transaction_seconds * 1000)
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={timeout_ms}"
    return create_engine(database_url, pool_size=pool_size, pool_pre_ping=True, connect_args=connect_args)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    """The migrations (migrations/, by alembic.ini) against this database."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))  # ini files interpolate %
    return config


def migrate(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")
