"""The ``grocery`` command: the library's commands (train, evaluate, predict, export: grocery.cli)
and the job service's, one module each here: worker, tokens, jobs and models (client.py), and
`make run` (stack.py).

The service's commands are dispatched before anything imports torch: ``grocery worker`` forks
workers and must hold no CUDA, and ``grocery jobs`` only speaks HTTP.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICE_COMMANDS = {
    "worker": "start job-service workers, one per GPU or CPU share (grocery worker --help)",
    "tokens": "create, list and revoke the job service's API tokens (grocery tokens --help)",
    "jobs": "the job service over HTTP: submit, watch, list, cancel, results (GROCERY_URL)",
    "models": "the job service's model registry: list, alias",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    if command == "worker":
        from cli.worker import main as launch_workers

        return launch_workers(argv[1:])
    if command == "tokens":
        from cli.tokens import main as manage_tokens

        return manage_tokens(argv[1:])
    if command in ("jobs", "models"):
        from cli.client import main as use_the_service

        return use_the_service(argv)
    from grocery.cli import main as run_library_command

    return run_library_command(argv, also=SERVICE_COMMANDS)
