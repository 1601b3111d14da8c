"""The machine lock: a measurement's steps run only while no task runs, and a task that arrives ends
the measurement's window at its next step (issue 30). Real flock locks on real files; threads of this
process exclude each other as processes do, since each opens the lock files anew."""

import threading
import time

import pytest

from grocery.machine_lock import MachineLock, MeasurementStopped


def test_a_measurement_takes_no_step_while_a_task_runs(tmp_path):
    lock = MachineLock(tmp_path / "cache")
    windows = lock.quiet_windows(stopping=threading.Event(), poll_seconds=0.01)
    stepped = []

    def measure():
        with windows.step():
            stepped.append(time.time())

    with lock.task():
        measuring = threading.Thread(target=measure)
        measuring.start()
        time.sleep(0.2)  # time for the measurement to try, and fail, many times
        ended = time.time()
    measuring.join()
    windows.close()
    ((start, _),) = windows.windows
    assert ended <= start <= stepped[0]  # it waited for the task's end


def test_a_measurement_waiting_for_a_quiet_moment_is_given_up_when_its_worker_stops(tmp_path):
    lock, stopping = MachineLock(tmp_path / "cache"), threading.Event()
    windows = lock.quiet_windows(stopping=stopping, poll_seconds=0.01)
    outcome = []

    def measure():
        try:
            with windows.step():
                outcome.append("stepped")
        except MeasurementStopped:
            outcome.append("stopped")

    with lock.task():
        measuring = threading.Thread(target=measure)
        measuring.start()
        stopping.set()
        measuring.join()
    assert outcome == ["stopped"] and windows.windows == []


def test_a_task_that_arrives_ends_the_measurements_window_at_its_next_step(tmp_path):
    lock, stopping = MachineLock(tmp_path / "cache"), threading.Event()
    windows = lock.quiet_windows(stopping=stopping, poll_seconds=0.01)
    with windows.step():  # the machine is quiet: the first window opens
        opened = time.time()
    assert len(windows.windows) == 1
    windows.summary()  # an open window ends when it is summed up (as a record is written)
    ((start, end),) = windows.windows
    assert start <= opened <= end

    running, done = threading.Event(), threading.Event()
    held = []

    def task():
        with lock.task():
            held.append(time.time())
            running.set()
            done.wait()

    arriving = threading.Thread(target=task)
    arriving.start()
    while not windows._task_waiting():  # it rang, and waits for the window's lock
        time.sleep(0.001)
    assert not running.is_set()

    outcome = []

    def next_step():
        try:
            with windows.step():
                outcome.append("stepped")
        except MeasurementStopped:
            outcome.append("stopped")

    measuring = threading.Thread(target=next_step)
    measuring.start()
    assert running.wait(60)  # the next step ended the window, and the task runs (a guard, not a timing)
    stopping.set()  # while it runs, the measurement waits, and is given up here
    measuring.join()
    done.set()
    arriving.join()
    assert outcome == ["stopped"]
    ((start, end),) = windows.windows
    assert start <= end <= held[0]  # the window ended before the task had the machine
    windows.close()


def test_tasks_share_the_machine(tmp_path):
    lock = MachineLock(tmp_path / "cache")
    with lock.task(), lock.task():  # two workers' tasks at once: neither waits for the other
        pass


def test_where_the_folder_cannot_hold_the_lock_steps_run_unlocked(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    lock = MachineLock(blocker / "cache")
    windows = lock.quiet_windows(stopping=threading.Event())
    with lock.task(), windows.step():
        pass
    assert windows.summary() == {"exclusive": False, "windows": [], "waited_s": 0.0}


@pytest.fixture(autouse=True)
def no_stray_threads():
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before
