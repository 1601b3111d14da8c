"""Engine and session factory: built from settings by the caller, never at import time."""

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(database_url: str, *, pool_size: int = 5) -> Engine:
    # pre_ping: a worker idle through a database restart gets a fresh connection, not an error.
    return create_engine(database_url, pool_size=pool_size, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
