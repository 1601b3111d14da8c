"""`grocery jobs` and `grocery models` against a running service: a real HTTP server, a real worker."""

import csv
import io
import json
import os
import subprocess
import sys
import threading

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
    job_id, result = done.stdout.splitlines()[0], json.loads(done.stdout.splitlines()[-1])
    assert "succeeded" in done.stderr and result["metrics"]["epoch"] == 2
    listed = grocery(service_url, "models", "list")
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
    uploaded = grocery(service_url, "jobs", "submit", "predict", str(bad / "a.jpg"), "--watch")
    assert uploaded.returncode == 1 and "too_many_failures" in uploaded.stderr

    refused = grocery(service_url, "jobs", "submit", "predict", "--folder", "/etc")
    assert refused.returncode == 2 and "path_not_allowed" in refused.stderr

    long = grocery(service_url, "jobs", "submit", "train", *TRAIN, "--epochs", "500", "--data-dir", str(tiny_dataset))
    job_id = long.stdout.strip()
    assert grocery(service_url, "jobs", "cancel", job_id).returncode == 0
    assert grocery(service_url, "jobs", "watch", job_id).returncode == 3

    unreachable = grocery("http://127.0.0.1:9", "jobs", "list")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
