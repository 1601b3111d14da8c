"""`make run` (cli/stack.py) as a user starts it, with GROCERY_INPUT_ROOTS set to a photo folder as
the README invites (issue #14): uploads and POST /predict still work. Its own module: no other
module's workers may be listening on the test queues while it runs."""

import signal
import socket
import subprocess
import sys
import time

import factories
import pytest
import requests
from conftest import FINISHED, ROOT, clean_store, settings_env, stack_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_run_with_custom_input_roots_serves_predict_and_uploads(
    database_url, redis_url, tiny_dataset, tiny_model, tmp_path
):
    """`make run` (cli/stack.py: workers and gunicorn) with GROCERY_INPUT_ROOTS naming only a photo
    folder, the README's own example: uploads and POST /predict still work."""
    clean_store(database_url, redis_url)
    factories.seed_model(database_url, artifact=tiny_model)
    photos = tmp_path / "photos"
    photos.mkdir()
    settings = stack_settings(database_url, redis_url, tiny_dataset, tmp_path, input_roots=(photos,), worker_threads=1)
    port = free_port()
    env = {
        **settings_env(settings),
        "GROCERY_PORT": str(port),
        "GROCERY_WORKERS": "1",
        "GROCERY_AUTH": "off",
        "GROCERY_UI": "off",
    }
    log = (tmp_path / "stack.log").open("w")
    stack = subprocess.Popen([sys.executable, "-m", "cli.stack"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still starting
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"make run did not get ready: {(tmp_path / 'stack.log').read_text()[-3000:]}")
        image = sorted((tiny_dataset / "val").rglob("*.jpg"))[0].read_bytes()
        answer = None
        while time.monotonic() < deadline + 60:  # the worker may still be starting: 504 until it is
            answer = requests.post(f"{url}/predict", files={"file": ("shelf.jpg", image)}, timeout=40)
            if answer.status_code != 504:
                break
        assert answer.status_code == 200, answer.text
        job = requests.post(f"{url}/jobs", files=[("files", ("a.jpg", image))], timeout=10).json()
        deadline = time.monotonic() + 120
        while job["status"] not in FINISHED and time.monotonic() < deadline:
            time.sleep(0.3)
            job = requests.get(f"{url}/jobs/{job['id']}", timeout=5).json()
        assert job["status"] == "succeeded", job
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=90)
        except subprocess.TimeoutExpired:
            stack.kill()
            raise
