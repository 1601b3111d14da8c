"""`make run`: the whole service on one machine.

With DATABASE_URL and REDIS_URL unset, PostgreSQL and Redis are embedded (started
from pip packages, on Unix sockets under var/). Then: migrations, one worker process
per core on both queues, and the API under gunicorn. Ctrl-C stops everything.
"""

import os
import signal
import subprocess
import sys
import time

from cli import ROOT
from service.db import migrate
from service.settings import Settings


def main() -> int:
    embedded = None
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        from service.embedded import start_embedded

        embedded = start_embedded(ROOT / "var" / "embedded")
        os.environ.setdefault("DATABASE_URL", embedded.database_url)
        os.environ.setdefault("REDIS_URL", embedded.redis_url)
    # On loopback `make run` may go without tokens; anywhere else they are required.
    os.environ.setdefault("GROCERY_AUTH", "off")
    settings = Settings.from_env()
    if settings.auth == "off" and settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"refusing to serve {settings.host} without authentication: set GROCERY_AUTH=required", file=sys.stderr)
        return 2
    migrate(settings.database_url)
    python = sys.executable
    workers = os.environ.get("GROCERY_WORKERS") or str(len(os.sched_getaffinity(0)))
    children = [
        # The launcher: one worker per GPU, or (here, usually) one per core, each on both queues.
        subprocess.Popen([python, "-m", "cli.worker", "--processes", workers], cwd=ROOT),
        subprocess.Popen(
            [
                python,
                "-m",
                "gunicorn",
                "api:create_app()",
                "--bind",
                f"{settings.host}:{settings.port}",
                "--workers",
                "2",
                "--access-logfile",
                "-",
            ],
            cwd=ROOT,
        ),
    ]
    url = f"http://{settings.host}:{settings.port}"
    if settings.auth == "off":
        access = "authentication is OFF (loopback only): GROCERY_AUTH=required and `grocery tokens create` turn it on"
    else:
        access = "authentication is on: send Authorization: Bearer <token> (`grocery tokens create`)"
    web_ui = f"  web UI: {url}/ui/\n" if settings.ui else ""
    print(
        f"\ngrocery-jobs is up at {url}  (Ctrl-C stops it)\n  {access}\n{web_ui}"
        f"  curl -s -X POST {url}/jobs -H 'Content-Type: application/json' "
        f'-d \'{{"type": "train", "params": {{"epochs": 1}}}}\'\n'
        f"  curl -s {url}/jobs\n",
        flush=True,
    )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for child in children:
        child.send_signal(signal.SIGTERM)  # warm shutdown: the worker finishes or requeues its job
    for child in children:
        child.wait()
    if embedded is not None:
        embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
