"""The README's tour ("## A tour"), run as a user runs it: its `sh` blocks, extracted from README.md
and run verbatim by bash, against `make run` (cli/stack.py as a subprocess), so the README and this
test cannot drift apart.

What differs from a user's machine, so that `make test` stays short and needs no ../shared:
- The commands run in a directory of this test's, beside which ``../shared/grocery-store-dataset`` is
  a small dataset it writes (4 classes of solid-colour photos in the real layout; the service's
  GROCERY_DATA_DIR). The training command runs verbatim, on those photos: the tour's minutes and
  accuracy on the real dataset are measured by hand and written in the README.
- ``.venv`` there is a link to the virtual environment running the tests, and PYTHONPATH names this
  checkout, so ``.venv/bin/grocery`` runs this checkout's code.
- GROCERY_RUNTIME=onnx: the worker serves without first timing every runtime (about a minute on two
  cores; tests/test_runtimes.py and tests/test_make_run.py cover the timing).
Its own module: no other module's workers may be listening on the test queues while it runs.
"""

import csv
import os
import re
import signal
import subprocess
import sys

import requests
from conftest import ROOT, clean_store, free_port, settings_env, stack_settings, write_tiny_dataset
from test_make_run import start_stack, wait_for_output

TOUR_HEADING = "## A tour"


def tour_commands(readme: str) -> str:
    """The `sh` blocks of the README's tour section, in order, as one script."""
    section = readme.split(f"\n{TOUR_HEADING}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"^```sh\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE))


def test_the_tour_section_holds_the_tour():
    """What the tour test runs: the training, the prediction job, its results and POST /predict."""
    script = tour_commands((ROOT / "README.md").read_text())
    for step in ("jobs submit train", "jobs submit predict", "/results", "jobs results", "/predict"):
        assert step in script, step


def test_the_readme_tour_runs_verbatim_against_make_run(database_url, redis_url, tmp_path):
    clean_store(database_url, redis_url)
    dataset = write_tiny_dataset(tmp_path / "shared" / "grocery-store-dataset", {"train": 12, "val": 4})
    user_dir = tmp_path / "checkout"
    user_dir.mkdir()
    (user_dir / ".venv").symlink_to(sys.prefix)
    settings = stack_settings(
        database_url, redis_url, dataset, tmp_path / "store", input_roots=(dataset,), runtime="onnx"
    )
    port = free_port()
    env = {**settings_env(settings), "GROCERY_PORT": str(port), "GROCERY_AUTH": "off", "GROCERY_WORKERS": "1"}
    log_path = tmp_path / "stack.log"
    stack = start_stack(env, log_path)
    try:
        wait_for_output(stack, log_path, "is up")
        user_env = {**os.environ, "GROCERY_PORT": str(port), "PYTHONPATH": str(ROOT)}
        user_env.pop("GROCERY_URL", None)
        tour = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", tour_commands((ROOT / "README.md").read_text())],
            cwd=user_dir,
            env=user_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert tour.returncode == 0, f"{tour.stdout[-3000:]}\n{tour.stderr[-3000:]}"
        assert re.search(r"job \S+ succeeded", tour.stderr), tour.stderr[-3000:]
        with (user_dir / "runs" / "tour" / "results.csv").open() as results:
            rows = list(csv.DictReader(results))
        assert len(rows) == len(list((dataset / "val").rglob("*.jpg")))
        assert all(row["label"] and not row["error_code"] for row in rows), rows
        assert '"prediction"' in tour.stdout
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/ui/", timeout=30).status_code == 200
    finally:
        stack.send_signal(signal.SIGINT)
        stack.wait(timeout=120)
