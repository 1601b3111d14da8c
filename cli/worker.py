"""`grocery worker`: one Celery worker process per GPU (or CPU share), supervised.

Each child gets CUDA_VISIBLE_DEVICES before anything imports torch, the solo pool (one job at a
time, in the process that holds the model) and a node name that names its device (gpu0@host).
This parent imports no torch, so it never touches CUDA before it forks. It
forwards SIGTERM and SIGINT (as SIGTERM, a warm shutdown: each child finishes its shard or checkpoints
its training and hands the job back; a terminal's Ctrl-C reaches the children too, and a second SIGINT
would be Celery's cold shutdown) and restarts a child that dies. The children die with it (SIGTERM),
even when it is killed outright.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from cli import ROOT
from cli.children import start_child
from service.kinds import JOB_TYPES, worker_queues

# Seconds before restarting a child that died, growing while it keeps dying.
RESTART_DELAYS = (1, 2, 5, 10, 30)


def worker_command(node_name: str, job_types: list[str], loglevel: str = "INFO") -> list[str]:
    """One worker process: the solo pool runs one job at a time, in the process that loaded the model.
    It takes these job types' work from their queues, in the contract's order (interactive first)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        ",".join(worker_queues(job_types)),
        "--pool",
        "solo",
        "-n",
        node_name,
        "--loglevel",
        loglevel,
    ]


@dataclass
class Slot:
    """One device's worker: how to start it, and the process now running it."""

    node: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    failures: int = 0
    started_at: float = 0.0
    restart_at: float | None = None


def plan(gpus: str, processes: int, environ: dict[str, str], name: str | None = None) -> list[Slot]:
    """A slot per GPU (``0,1`` or ``all``), or ``processes`` CPU slots sharing the cores (``cpu``);
    ``auto``: every GPU nvidia-smi lists, else the CPU."""
    if gpus == "auto":
        gpus = "all" if shutil.which("nvidia-smi") and gpu_ids() else "cpu"
    if gpus == "cpu":
        threads = environ.get("GROCERY_WORKER_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // processes))
        cpu_env = {**environ, "CUDA_VISIBLE_DEVICES": "", "GROCERY_WORKER_THREADS": threads}
        return [Slot(f"{name or 'cpu'}{n}@%h", cpu_env) for n in range(processes)]
    ids = gpu_ids() if gpus == "all" else [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids):
        raise SystemExit(f"--gpus takes GPU indices such as 0,1, 'all' or 'cpu', not {gpus!r}")
    return [Slot(f"{name or 'gpu'}{g}@%h", {**environ, "CUDA_VISIBLE_DEVICES": g}) for g in ids]


def gpu_ids() -> list[str]:
    """The GPUs nvidia-smi lists; asking it, not torch, keeps CUDA out of this parent."""
    if shutil.which("nvidia-smi") is None:
        raise SystemExit("--gpus all: nvidia-smi is not on PATH; name the GPUs (--gpus 0,1) or use --gpus cpu")
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [str(n) for n, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


class Supervisor:
    def __init__(self, slots: list[Slot], queues: list[str], loglevel: str):
        self.slots, self.queues, self.loglevel = slots, queues, loglevel
        self.stopping = False

    def start(self, slot: Slot) -> None:
        command = worker_command(slot.node, self.queues, self.loglevel)
        slot.process = start_child(command, own_group=False, cwd=ROOT, env=slot.env)
        slot.started_at, slot.restart_at = time.monotonic(), None

    def stop(self, _signum, _frame) -> None:
        self.stopping = True
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for slot in self.slots:
            self.start(slot)
        while not self.stopping:
            for slot in self.slots:
                self.tend(slot)
            time.sleep(0.5)
        codes = [slot.process.wait() for slot in self.slots if slot.process is not None]
        return max(codes, default=0)

    def tend(self, slot: Slot) -> None:
        """Restart a child that exited on its own, after a delay that grows while it keeps failing."""
        if slot.restart_at is not None:
            if time.monotonic() >= slot.restart_at:
                self.start(slot)
            return
        code = slot.process.poll()
        if code is None:
            return
        # A child that ran a good while before dying starts its back-off afresh.
        slot.failures = 1 if time.monotonic() - slot.started_at > 60 else slot.failures + 1
        delay = RESTART_DELAYS[min(slot.failures, len(RESTART_DELAYS)) - 1]
        print(f"worker {slot.node} exited with {code}; restarting in {delay}s", file=sys.stderr, flush=True)
        slot.restart_at = time.monotonic() + delay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grocery worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", default="auto", help="GPU indices (0,1), 'all', 'cpu', or 'auto' (default)")
    parser.add_argument(
        "--queues",
        default=",".join(JOB_TYPES),
        help="job types to take work of: train and/or predict (default: both; predict includes the interactive lane)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="on the CPU: worker processes, sharing the cores (default: one per core, measured fastest)",
    )
    parser.add_argument("--name", help="node name prefix (default gpu or cpu: gpu0@host); unique per host")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = set(queues) - set(JOB_TYPES)
    if unknown or not queues:
        parser.error(f"--queues takes job types, some of {list(JOB_TYPES)}, not {sorted(unknown) or args.queues!r}")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    slots = plan(args.gpus, args.processes, dict(os.environ), args.name)
    print(
        f"starting {len(slots)} worker(s) on queues {','.join(queues)}: {', '.join(s.node for s in slots)}", flush=True
    )
    return Supervisor(slots, queues, args.loglevel).run()


if __name__ == "__main__":
    sys.exit(main())
