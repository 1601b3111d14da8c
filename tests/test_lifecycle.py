"""Data that can be deleted: jobs with their rows and files, models with their artifacts, retention.
Real PostgreSQL, Redis and worker processes; what is deleted is checked on disk and in the tables."""

import io
import time
import uuid

import factories
import pytest
from conftest import FINISHED, clean_store, stack_settings, start_worker, stop_worker, wait_for
from sqlalchemy import create_engine, text

TRAIN = {"arch": "efficientnet_lite0", "weights": "imagenet", "freeze": 9, "epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory):
    return stack_settings(database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("lifecycle"))


@pytest.fixture(scope="module")
def stack(settings, tiny_model):
    """A clean store with the tiny model and one worker process on both queues."""
    clean_store(settings.database_url, settings.redis_url)
    factories.seed_model(settings.database_url, artifact=tiny_model)
    worker = start_worker("lifecycle@%h", ["train", "predict"], settings)
    yield
    stop_worker(worker)


def rows_of(database_url: str, job_id: str) -> dict[str, int]:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        counts = {
            table: connection.execute(text(f"SELECT count(*) FROM {table} WHERE {key} = :id"), {"id": job_id}).scalar()
            for table, key in (
                ("jobs", "id"),
                ("predictions", "job_id"),
                ("job_shards", "job_id"),
                ("job_events", "job_id"),
            )
        }
    engine.dispose()
    return counts


# These two run first: they clean the store and start their own worker, before the module's stack exists.
def test_a_read_token_cannot_delete(empty_store, make_app, database_url, redis_url, tmp_path):
    with factories.store_session(database_url) as session:
        reader = factories.token(session, name="reader", scopes=["jobs:read"])
        writer = factories.token(session, name="writer", scopes=["jobs:read", "jobs:write"])
    client = make_app(stack_settings(database_url, redis_url, tmp_path, tmp_path, auth="required")).test_client()
    job, model = uuid.uuid4(), uuid.uuid4()
    assert client.delete(f"/jobs/{job}", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    assert client.delete(f"/jobs/{job}", headers={"Authorization": f"Bearer {writer}"}).status_code == 404
    assert client.delete(f"/models/{model}", headers={"Authorization": f"Bearer {writer}"}).status_code == 403


def test_retention_removes_old_predict_jobs_and_keeps_the_rest(
    empty_store, make_app, database_url, redis_url, tiny_dataset, tiny_model, tmp_path
):
    limits = {"predict_retention_seconds": 2, "reconcile_seconds": 1}
    settings = stack_settings(database_url, redis_url, tiny_dataset, tmp_path, **limits)
    factories.seed_model(database_url, artifact=tiny_model)
    client = make_app(settings).test_client()
    worker = start_worker("retention@%h", ["predict"], settings)
    try:
        photo = next((tiny_dataset / "val").glob("*/*/*.jpg")).read_bytes()
        answer = client.post("/predict", data={"file": (io.BytesIO(photo), "shelf.jpg")}).get_json()
        predicted = answer["job_id"]
        folder = client.post("/jobs", json={"type": "predict", "input": {"folder": str(tiny_dataset / "val")}})
        kept = wait_for(client, folder.get_json()["id"], FINISHED)["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/jobs/{predicted}").status_code != 404:
            assert time.monotonic() < deadline, "the /predict job outlived its retention"
            time.sleep(0.5)
        assert not (settings.upload_dir / predicted).exists()
        assert client.get(f"/jobs/{kept}").status_code == 200  # no GROCERY_JOB_RETENTION: kept
    finally:
        stop_worker(worker)


def test_deleting_a_finished_job_removes_its_rows_and_files(stack, client, settings, tiny_dataset, database_url):
    photos = sorted((tiny_dataset / "val").glob("*/*/*.jpg"))[:4]
    files = [(io.BytesIO(p.read_bytes()), p.name) for p in photos]
    job_id = client.post("/jobs", data={"files": files}, content_type="multipart/form-data").get_json()["id"]
    assert wait_for(client, job_id, FINISHED)["status"] == "succeeded"
    assert client.get(f"/jobs/{job_id}/results/file?format=csv").status_code == 200  # an export file too
    uploads, exports = settings.upload_dir / job_id, settings.export_dir / job_id
    assert uploads.is_dir() and exports.is_dir()
    assert rows_of(database_url, job_id) == {"jobs": 1, "predictions": 4, "job_shards": 1, "job_events": 3}

    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert rows_of(database_url, job_id) == {"jobs": 0, "predictions": 0, "job_shards": 0, "job_events": 0}
    assert not uploads.exists() and not exports.exists()
    assert client.delete(f"/jobs/{job_id}").status_code == 404


def test_a_running_job_is_409_until_cancelled(stack, client, settings, tiny_dataset):
    params = {**TRAIN, "epochs": 200, "data_dir": str(tiny_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/jobs/{job_id}").get_json()["progress"]["done"] < 1:  # an epoch and its checkpoint
        assert time.monotonic() < deadline
        time.sleep(0.2)
    refused = client.delete(f"/jobs/{job_id}")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "job_not_finished"
    client.post(f"/jobs/{job_id}/cancel")
    assert wait_for(client, job_id, FINISHED)["status"] == "cancelled"
    attempt = settings.model_dir / job_id / "attempt-1"
    assert (attempt / "checkpoint.pt").is_file()  # no model was registered from it
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert not attempt.exists()  # nothing of the deleted job is left


def test_models_outlive_their_job_and_are_deleted_when_unused(stack, client, settings, tiny_dataset):
    params = {**TRAIN, "data_dir": str(tiny_dataset)}
    job = wait_for(client, client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    model_id = job["result"]["model_id"]
    artifact = settings.model_dir / job["id"] / "attempt-1"
    assert (artifact / "model.safetensors").is_file()
    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    kept = client.get(f"/models/{model_id}").get_json()
    assert kept["job_id"] is None and (artifact / "model.safetensors").is_file()  # the registry keeps it

    client.put("/models/aliases/staging", json={"model_id": model_id})
    refused = client.delete(f"/models/{model_id}")
    assert refused.status_code == 409 and "alias 'staging'" in refused.get_json()["error"]["message"]
    other = client.get("/models").get_json()["models"][-1]["id"]  # the seeded model
    client.put("/models/aliases/staging", json={"model_id": other})
    assert client.delete(f"/models/{model_id}").status_code == 204
    assert client.get(f"/models/{model_id}").status_code == 404 and not artifact.exists()
    assert client.delete(f"/models/{uuid.uuid4()}").status_code == 404
