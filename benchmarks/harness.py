"""What the system benchmarks share: a throwaway database, the API under gunicorn, HTTP helpers."""

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cli import ROOT
from service.db import migrate


@contextlib.contextmanager
def scratch_database():
    """A new, migrated database on DATABASE_URL's server (default: the local one), dropped afterwards."""
    admin_url = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"grocery_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def service_env(database_url: str, data_dir: str, work: Path, model_dir: Path | None = None) -> dict[str, str]:
    """The environment of the API and workers a benchmark starts, on a flushed Redis (REDIS_URL's,
    default DB 13): jobs read the dataset and ``work``; uploads and models go under ``work``."""
    import redis

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
    redis.Redis.from_url(redis_url).flushdb()
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "GROCERY_DATA_DIR": data_dir,
        "GROCERY_INPUT_ROOTS": f"{data_dir}:{work}",
        "GROCERY_AUTH": "off",  # loopback only
        "GROCERY_UPLOAD_DIR": str(work / "uploads"),
        "GROCERY_MODEL_DIR": str((model_dir or work / "models").resolve()),
        "GROCERY_WORKER_THREADS": "1",  # one single-threaded process per core measured best
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(env: dict, port: int, workers: int) -> subprocess.Popen:
    """gunicorn serving the API, returned once it answers /healthz."""
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "api:create_app()",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if request(http.client.HTTPConnection("127.0.0.1", port), "GET", "/healthz")[0] == 200:
                return api
        time.sleep(0.2)
    raise TimeoutError("the API did not answer /healthz in 30 s")


def start_workers(env: dict, count: int, job_types: list[str]) -> list[subprocess.Popen]:
    """``count`` worker processes (bench0@host...) for ``job_types``, their output discarded."""
    from cli.worker import worker_command

    commands = [worker_command(f"bench{n}@%h", job_types) for n in range(count)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return [subprocess.Popen(command, cwd=ROOT, env=env, **quiet) for command in commands]


def start_launcher(env: dict, arguments: list[str]) -> subprocess.Popen:
    """`grocery worker ARGUMENTS`: the launcher that pins each of its processes to its device (as deployments
    run it), its output discarded. terminate() is a warm shutdown of its processes."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.Popen([sys.executable, "-m", "cli", "worker", *arguments], cwd=ROOT, env=env, **quiet)


def live_workers(conn: http.client.HTTPConnection, count: int, timeout: float = 120) -> list[dict]:
    """GET /workers once ``count`` workers are live (each has written its row), or TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = request(conn, "GET", "/workers")[1]["workers"]
        if len(workers) >= count:
            return workers
        time.sleep(0.5)
    raise TimeoutError(f"{count} worker(s) did not come up in {timeout:.0f} s")


def request(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if payload else {}
    try:
        conn.request(method, path, payload, headers)
        response = conn.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        # gunicorn closes a connection idle past its keepalive (75 s) while a baseline runs: the request
        # never reached it, so it is sent again on a new connection.
        conn.close()
        conn.request(method, path, payload, headers)
        response = conn.getresponse()
    return response.status, json.loads(response.read())


def register_model(database_url: str, model_dir: Path) -> None:
    """The artifact as the registry's latest model, as a training job would leave it."""
    from grocery.artifact import read_artifact
    from service import registry
    from service.db import make_engine, make_session_factory

    artifact = read_artifact(model_dir)
    with make_session_factory(make_engine(database_url))() as session:
        registry.register_model(
            session,
            arch=artifact.arch,
            label_level=artifact.metadata["label_level"],
            class_names=artifact.class_names,
            metrics={},
            artifact_path=str(model_dir.resolve()),
            job_id=None,
        )
        session.commit()
