"""`make run`: the whole service on one machine.

With DATABASE_URL and REDIS_URL unset, PostgreSQL and Redis are embedded (started from pip
packages, every file under var/embedded/: GROCERY_EMBEDDED_DIR). Then: migrations, one worker
process per core on both queues, and the API under gunicorn. It says "up" once the API answers and
every worker is ready, and exits non-zero, saying why, when something cannot start (the port taken:
GROCERY_PORT).

Ctrl-C (or SIGTERM) stops everything: workers and API first (a training hands its job back), then
the embedded servers. The children run in process groups of their own, so Ctrl-C reaches only this
process, which stops them in order; they and the embedded servers also die with it when it is
killed outright (cli/children.py, service/embedded.py).
"""

import errno
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import requests

from cli import ROOT
from cli.children import start_child
from service.settings import Settings

# Seconds the workers get to stop: a training stops at its next step and checkpoints.
STOP_SECONDS = 60
POLL_SECONDS = 0.5


class StackFailed(Exception):
    """Something could not start or stopped on its own: the message says what, to the user."""


@dataclass
class Stack:
    settings: Settings
    embedded: object = None
    children: dict = field(default_factory=dict)  # what it is, for messages -> Popen

    def start(self) -> None:
        if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
            self.start_embedded()
        from service.db import migrate

        migrate(self.settings.database_url)
        python = sys.executable
        self.children["the workers"] = start_child(
            [python, "-m", "cli.worker", "--processes", str(worker_count())], cwd=ROOT
        )
        bind = f"{self.settings.host}:{self.settings.port}"
        self.children["the API server (gunicorn)"] = start_child(
            [python, "-m", "gunicorn", "api:create_app()", "--bind", bind, "--workers", "2", "--access-logfile", "-"],
            cwd=ROOT,
        )

    def start_embedded(self) -> None:
        from service.embedded import EmbeddedInUse, start_embedded

        try:
            self.embedded = start_embedded(self.settings.embedded_dir)
        except EmbeddedInUse as e:
            raise StackFailed(f"{e}, or set DATABASE_URL and REDIS_URL to servers of your own") from None
        os.environ.setdefault("DATABASE_URL", self.embedded.database_url)
        os.environ.setdefault("REDIS_URL", self.embedded.redis_url)
        self.settings = Settings.from_env()

    def wait_until_ready(self) -> None:
        """Until the API answers /readyz on its port and every worker answers a ping (a worker answers
        once it has loaded the serving model)."""
        from celery.utils.nodenames import host_format

        from cli.worker import plan
        from service.contract import make_celery

        expected = {host_format(slot.node) for slot in plan("auto", worker_count(), dict(os.environ))}
        celery = make_celery(self.settings)
        api_ready, told = False, time.monotonic() + 20
        while True:
            self.check_children(starting=True)
            api_ready = api_ready or answers(f"{self.url}/readyz")
            ready_workers = {node for reply in celery.control.ping(timeout=1.0) for node in reply} if api_ready else ()
            if api_ready and expected <= set(ready_workers):
                return
            if time.monotonic() > told:
                waiting = "the workers (loading the serving model)" if api_ready else "the API"
                print(f"grocery-jobs: still starting: waiting for {waiting}", flush=True)
                told = time.monotonic() + 30
            time.sleep(POLL_SECONDS)

    def supervise(self) -> None:
        while True:
            self.check_children(starting=False)
            time.sleep(POLL_SECONDS)

    def check_children(self, starting: bool) -> None:
        for name, child in self.children.items():
            code = child.poll()
            if code is None:
                continue
            if starting and "gunicorn" in name:
                raise StackFailed(
                    f"{name} stopped as it started (exit code {code}); its messages are above. If it could not "
                    f"bind to port {self.settings.port}, another program took it: choose another with GROCERY_PORT"
                )
            raise StackFailed(f"{name} exited with code {code} {'while starting' if starting else 'unasked'}")

    def stop(self) -> None:
        """Workers and API first (a second Ctrl-C: at once), then the embedded servers."""
        hurry = []
        signal.signal(signal.SIGINT, lambda *_: hurry.append(True))
        signal.signal(signal.SIGTERM, lambda *_: hurry.append(True))
        running = {name: child for name, child in self.children.items() if child.poll() is None}
        for child in running.values():
            child.send_signal(signal.SIGTERM)  # warm shutdown: a worker finishes or hands back its job
        deadline, told = time.monotonic() + STOP_SECONDS, time.monotonic() + 5
        while any(child.poll() is None for child in running.values()):
            if hurry or time.monotonic() > deadline:
                for child in running.values():
                    if child.poll() is None:
                        os.killpg(child.pid, signal.SIGKILL)
                break
            if time.monotonic() > told:
                print(
                    "grocery-jobs: waiting for the workers (a training hands its job back at its next step); "
                    "Ctrl-C again stops them at once",
                    flush=True,
                )
                told = deadline
            time.sleep(0.1)
        for child in running.values():
            child.wait()
        if self.embedded is not None:
            self.embedded.stop()

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"


def worker_count() -> int:
    return int(os.environ.get("GROCERY_WORKERS") or len(os.sched_getaffinity(0)))


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet
        return False


def bind_error(host: str, port: int) -> OSError | None:
    """Why the API could not listen there (bound as gunicorn binds: SO_REUSEADDR), or None."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        return e
    return None


def refusal(settings: Settings) -> str | None:
    """Why the stack must not start, checked before anything starts."""
    if settings.auth == "off" and settings.host not in ("127.0.0.1", "localhost", "::1"):
        return f"refusing to serve {settings.host} without authentication: set GROCERY_AUTH=required"
    error = bind_error(settings.host, settings.port)
    if error is not None and error.errno == errno.EADDRINUSE:
        return (
            f"port {settings.port} on {settings.host} is taken by another program: choose a free one with "
            f"GROCERY_PORT (e.g. GROCERY_PORT={settings.port + 1} make run)"
        )
    if error is not None:
        return f"cannot listen on {settings.host}:{settings.port} ({error.strerror}): see GROCERY_HOST and GROCERY_PORT"
    return None


def banner(settings: Settings, url: str) -> str:
    if settings.auth == "off":
        access = "authentication is OFF (loopback only): GROCERY_AUTH=required and `grocery tokens create` turn it on"
    else:
        access = "authentication is on: send Authorization: Bearer <token> (`grocery tokens create`)"
    web_ui = f"  web UI: {url}/ui/\n" if settings.ui else ""
    return (
        f"\ngrocery-jobs is up at {url}  (Ctrl-C stops it)\n  {access}\n{web_ui}"
        '  next: train a first model in a few minutes, README.md "A tour"\n'
    )


def interrupt(*_) -> None:
    raise KeyboardInterrupt  # a supervisor's SIGTERM stops the stack as Ctrl-C does


def main() -> int:
    # On loopback `make run` may go without tokens; anywhere else they are required.
    os.environ.setdefault("GROCERY_AUTH", "off")
    signal.signal(signal.SIGTERM, interrupt)
    # A shell that starts a command in the background without job control ignores SIGINT in it; kill -INT
    # still stops make run, as Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        settings = Settings.from_env()
    except ValueError as e:
        print(f"grocery-jobs: {e}", file=sys.stderr)
        return 2
    refused = refusal(settings)
    if refused:
        print(f"grocery-jobs: {refused}", file=sys.stderr)
        return 2
    stack = Stack(settings)
    code = 0
    try:
        stack.start()
        stack.wait_until_ready()
        print(banner(stack.settings, stack.url), flush=True)
        stack.supervise()
    except KeyboardInterrupt:
        print("\ngrocery-jobs: stopping", flush=True)
    except StackFailed as e:
        print(f"grocery-jobs: {e}; stopping", file=sys.stderr, flush=True)
        code = 1
    finally:
        stack.stop()
    print("grocery-jobs: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
