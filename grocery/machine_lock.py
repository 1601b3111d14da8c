"""The lock that lets a runtime measurement time a machine alone: the processes that serve on one
machine share a folder (a worker's artifact cache), and in it two lock files.

- ``machine.lock``: every task holds it shared while it runs (inference, decoding, a training); a
  measurement holds it exclusively, for a window of its steps, and takes it only without waiting
  (``LOCK_NB``), so it waits for a quiet moment instead of timing a busy machine.
- ``machine.wanted``, a doorbell: a task takes it shared before it asks for ``machine.lock`` and keeps
  it until it ends. Between two steps the measurement tries it exclusively and lets go at once: when
  that fails a task runs or waits, and the measurement ends its window, so a task waits for one step
  at most. (flock cannot say whether anyone waits for a lock, and a measurement that let go between
  its steps and took the lock again would starve a task on a loaded machine, where the waiter may not
  be scheduled in the gap.)

flock locks belong to an open file, so two threads of one process exclude each other as two
processes do, and the kernel releases them when a process dies: a killed worker leaves nothing held.
"""

import contextlib
import fcntl
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "machine.lock"
WANTED_NAME = "machine.wanted"


class MeasurementStopped(Exception):
    """A measurement given up before its end (its worker is stopping): nothing of it is recorded."""


class MachineLock:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _open(self, name: str) -> int | None:
        """A new open file of the lock (its own flock); None where the folder cannot hold one."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.open(self.folder / name, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            return None

    @contextlib.contextmanager
    def task(self) -> Iterator[None]:
        """Held while a task runs: it rings first, then waits for a measurement's current step to end."""
        with contextlib.ExitStack() as held:
            for name in (WANTED_NAME, LOCK_NAME):
                descriptor = self._open(name)
                if descriptor is not None:
                    held.callback(os.close, descriptor)  # closing releases the lock
                    fcntl.flock(descriptor, fcntl.LOCK_SH)
            yield

    def quiet_windows(self, *, stopping: threading.Event, poll_seconds: float = 0.5) -> "QuietWindows":
        return QuietWindows(self, stopping, poll_seconds)


class QuietWindows:
    """A measurement's steps (runtimes.choose's ``steps``), each run while no task runs on the machine:
    the machine's lock held exclusively for a window of consecutive steps, which ends as soon as a task
    rings. ``windows`` (wall-clock seconds, start and end) and the seconds spent waiting go in the record."""

    def __init__(self, lock: MachineLock, stopping: threading.Event, poll_seconds: float):
        self.lock, self.stopping, self.poll_seconds = lock, stopping, poll_seconds
        self.windows: list[list[float]] = []
        self.waited_s = 0.0
        self._held: int | None = None  # the open file of machine.lock, held exclusively
        self._unlocked = False  # the folder cannot hold the lock: steps run as they come

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if self.stopping.is_set():
            self._end_window()
            raise MeasurementStopped("the worker is stopping")
        if self._held is not None and self._task_waiting():
            self._end_window()
        if self._held is None and not self._unlocked:
            self._begin_window()
        yield

    def close(self) -> None:
        self._end_window()

    def summary(self) -> dict:
        """What the record keeps; a window still open (its measurement is being recorded) ends now."""
        if self._held is not None:
            self.windows[-1][1] = time.time()
        return {
            "exclusive": not self._unlocked,
            # To the millisecond, rounded inwards: still within the hold.
            "windows": [[math.ceil(start * 1000) / 1000, math.floor(end * 1000) / 1000] for start, end in self.windows],
            "waited_s": round(self.waited_s, 1),
        }

    def _begin_window(self) -> None:
        """Wait until the machine is quiet (no task runs or waits), then hold its lock exclusively."""
        started = time.monotonic()
        while not self.stopping.is_set():
            descriptor = self.lock._open(LOCK_NAME)
            if descriptor is None:
                self._unlocked = True
                return
            if _try_lock(descriptor, fcntl.LOCK_EX) and not self._task_waiting():
                self._held = descriptor
                self.waited_s += time.monotonic() - started
                now = time.time()  # a window's recorded times lie within its hold of the lock
                self.windows.append([now, now])
                return
            os.close(descriptor)
            self.stopping.wait(self.poll_seconds)
        raise MeasurementStopped("the worker is stopping")

    def _end_window(self) -> None:
        if self._held is not None:
            self.windows[-1][1] = time.time()
            os.close(self._held)  # and with it the lock
            self._held = None

    def _task_waiting(self) -> bool:
        """Whether a task holds the doorbell: tried exclusively, and let go at once."""
        descriptor = self.lock._open(WANTED_NAME)
        if descriptor is None:
            return False
        try:
            return not _try_lock(descriptor, fcntl.LOCK_EX)
        finally:
            os.close(descriptor)


def _try_lock(descriptor: int, operation: int) -> bool:
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
