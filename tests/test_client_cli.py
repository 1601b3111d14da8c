"""`grocery jobs` and `grocery models` against a running service: a real HTTP server, a real worker."""

import csv
import io
import json
import os
import subprocess
import sys
import threading
import urllib.request

import factories
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, clean_store, stack_settings, start_worker, stop_worker
from werkzeug.serving import make_server

TRAIN = ["--arch", "efficientnet_lite0", "--weights", "imagenet", "--freeze", "9", "--input-size", "64"]


@pytest.fixture(scope="module")
def service_url(app_for, database_url, redis_url, tiny_dataset, tiny_model, tmp_path_factory):
    """A real HTTP server for the API and one worker on both queues, over a store holding the tiny model."""
    settings = stack_settings(database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("client"))
    clean_store(database_url, redis_url)
    factories.seed_model(database_url, artifact=tiny_model)
    server = make_server("127.0.0.1", 0, app_for(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker = start_worker("client@%h", ["train", "predict"], settings)
    yield f"http://127.0.0.1:{server.server_port}"
    stop_worker(worker)
    server.shutdown()


def grocery(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GROCERY_URL": url}
    command = [sys.executable, "-m", "cli", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_train_and_watch_then_the_registry(service_url, tiny_dataset):
    done = grocery(
        service_url, "jobs", "submit", "train", *TRAIN, "--epochs", "2", "--data-dir", str(tiny_dataset), "--watch"
    )
    assert done.returncode == 0, done.stderr
    job_id, summary = done.stdout.splitlines()[0], done.stdout.splitlines()[-1]
    # --watch ends on one line about the model, not the job's whole result (its confusion matrix).
    result = json.loads(urllib.request.urlopen(f"{service_url}/jobs/{job_id}").read())["result"]
    assert "succeeded" in done.stderr and result["metrics"]["epoch"] == 2
    assert summary.startswith(f"model {result['model_id']} (version ") and "val top-1" in summary
    assert len(summary) < 200
    listed = grocery(service_url, "models", "list")
    assert grocery(service_url, "models").stdout == listed.stdout  # `grocery models` alone lists them
    assert result["model_id"] in listed.stdout and "efficientnet_lite0" in listed.stdout
    moved = grocery(service_url, "models", "alias", "production", result["model_id"])
    assert moved.returncode == 0 and result["model_id"] in moved.stdout
    assert job_id in grocery(service_url, "jobs", "list", "--type", "train").stdout


def test_predict_a_folder_and_uploads_then_results(service_url, tiny_dataset, tmp_path):
    folder = tiny_dataset / "val"
    done = grocery(service_url, "jobs", "submit", "predict", "--folder", str(folder), "--watch")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    exported = grocery(service_url, "jobs", "results", job_id, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert exported.returncode == 0 and len(rows) == 16 and all(r["label"] for r in rows)
    saved = grocery(service_url, "jobs", "results", job_id, "--format", "parquet", "--output", str(tmp_path / "r.pq"))
    assert saved.returncode == 0, saved.stderr
    assert [r["path"] for r in pq.read_table(tmp_path / "r.pq").to_pylist()] == [r["path"] for r in rows]
    refused = grocery(service_url, "jobs", "results", job_id, "--format", "parquet")
    assert refused.returncode != 0 and "--output" in refused.stderr

    images = sorted(folder.rglob("*.jpg"))[:2]
    uploaded = grocery(service_url, "jobs", "submit", "predict", *map(str, images), "--watch")
    assert uploaded.returncode == 0, uploaded.stderr
    lines = grocery(service_url, "jobs", "results", uploaded.stdout.splitlines()[0]).stdout.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["label"] for line in lines)


def test_exit_codes_say_how_a_job_ended(service_url, tiny_dataset, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("not an image")
    (bad / "b.jpg").write_bytes(factories.jpeg())
    # One of two files fails: above the default 10% the job fails.
    uploaded = grocery(service_url, "jobs", "submit", "predict", str(bad / "a.jpg"), str(bad / "b.jpg"), "--watch")
    assert uploaded.returncode == 1 and "too_many_failures" in uploaded.stderr
    # No image at all is refused before any job exists.
    nothing = grocery(service_url, "jobs", "submit", "predict", str(bad / "a.jpg"))
    assert nothing.returncode == 2 and "no_images" in nothing.stderr and not nothing.stdout

    refused = grocery(service_url, "jobs", "submit", "predict", "--folder", "/etc")
    assert refused.returncode == 2 and "path_not_allowed" in refused.stderr

    long = grocery(service_url, "jobs", "submit", "train", *TRAIN, "--epochs", "500", "--data-dir", str(tiny_dataset))
    job_id = long.stdout.strip()
    assert grocery(service_url, "jobs", "cancel", job_id).returncode == 0
    assert grocery(service_url, "jobs", "watch", job_id).returncode == 3

    unreachable = grocery("http://127.0.0.1:9", "jobs", "list")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def test_the_cli_speaks_to_users(service_url, tiny_dataset):
    empty = grocery("", "jobs", "list")
    assert empty.returncode == 2 and "GROCERY_URL is set but empty" in empty.stderr and "Traceback" not in empty.stderr
    done = grocery(service_url, "jobs", "submit", "predict", "--folder", str(tiny_dataset / "val"), "--watch")
    job_id = done.stdout.splitlines()[0]
    # A reader that goes away (`| head`; here one that reads nothing) is no error of the download's.
    piped = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m cli jobs results {job_id} --format csv | true"],
        cwd=ROOT,
        env={**os.environ, "GROCERY_URL": service_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    helped = grocery(service_url, "jobs", "submit", "train", "--help").stdout
    assert (
        "{efficientnet_lite0,mobilenet_v3_small,efficientnet_lite1,efficientnet_lite2}" in helped
        and "(default: 16)" in helped
    )
    assert "cli/" not in grocery(service_url, "--help").stdout
    none = grocery(service_url, "jobs", "list", "--type", "train", "--status", "queued")
    assert none.returncode == 0 and not none.stdout and "no jobs" in none.stderr
