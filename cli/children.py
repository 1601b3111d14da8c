"""Child processes that die with the process that started them, and that a terminal's Ctrl-C does not
reach (their parent decides how and in which order they stop)."""

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def start_child(command: list[str], own_group: bool = True, **popen) -> subprocess.Popen:
    """``command``, sent SIGTERM (a warm shutdown) if this process dies: even a SIGKILLed parent
    leaves no child behind. In a process group of its own unless ``own_group`` is false (then a
    kill of this process's group takes it too)."""
    group = {"process_group": 0} if own_group else {}
    return subprocess.Popen(command, preexec_fn=_terminate_with(os.getpid()), **group, **popen)


def _terminate_with(parent: int):
    def set_parent_death_signal() -> None:
        """Runs in the child between fork and exec."""
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was set
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal
