"""Model and upload storage in a bucket (GROCERY_MODEL_DIR and GROCERY_UPLOAD_DIR s3://...): real
PostgreSQL, Redis and worker processes, and a real S3 server (moto's, on loopback). Each worker has its
own artifact cache, as on a machine of its own."""

import dataclasses
import io
import time

import factories
import pytest
from conftest import (
    FINISHED,
    clean_store,
    new_bucket,
    stack_settings,
    start_worker,
    stop_worker,
    wait_for,
    wait_for_runtime_choice,
)

from grocery import storage
from grocery.machine_lock import LOCK_NAME, WANTED_NAME
from grocery.runtimes import CHOICES_NAME
from service.artifacts import cache_folder, training_folder

TRAIN = {"arch": "efficientnet_lite0", "weights": "imagenet", "freeze": 9, "batch_size": 8, "input_size": 64}


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory, s3_endpoint):
    store, bucket = tmp_path_factory.mktemp("buckets"), new_bucket()
    return stack_settings(
        database_url,
        redis_url,
        tiny_dataset,
        store,
        model_dir=f"s3://{bucket}/models/",
        upload_dir=f"s3://{bucket}/uploads/",
        artifact_cache=store / "api-cache",
        # The whole bucket is a root: still, a job reads only its own uploads.
        input_roots=(tiny_dataset, f"s3://{bucket}/"),
    )


@pytest.fixture(scope="module")
def stack(settings):
    clean_store(settings.database_url, settings.redis_url)


def on_machine(settings, name: str):
    """A worker's settings on a machine of its own: its own, empty, artifact cache."""
    return dataclasses.replace(settings, artifact_cache=settings.artifact_cache.parent / f"{name}-cache")


def names_under(prefix: str) -> set[str]:
    return {url[len(storage.as_prefix(prefix)) :] for url in storage.list_objects(prefix)}


def test_cached_tree_copies_a_prefix_once_and_keeps_nothing_of_an_empty_one(bucket, tmp_path):
    storage.write_bytes(f"s3://{bucket}/m/a.json", b"{}")
    storage.write_bytes(f"s3://{bucket}/m/sub/b.bin", b"b")
    copy = storage.cached_tree(f"s3://{bucket}/m", tmp_path / "copy")
    assert (copy / "a.json").read_bytes() == b"{}" and (copy / "sub" / "b.bin").read_bytes() == b"b"
    storage.delete_prefix(f"s3://{bucket}/m")
    assert storage.cached_tree(f"s3://{bucket}/m", tmp_path / "copy") == copy  # not downloaded again
    with pytest.raises(storage.StorageError) as refused:
        storage.cached_tree(f"s3://{bucket}/m", tmp_path / "other")
    assert refused.value.code == "not_found" and sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_training_keeps_its_checkpoints_and_model_in_the_bucket_and_resumes_on_another_machine(
    stack, client, settings, tiny_dataset
):
    first = start_worker("bucket-a@%h", ["train"], on_machine(settings, "a"))
    params = {**TRAIN, "epochs": 4, "data_dir": str(tiny_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    deadline = time.monotonic() + 120
    while client.get(f"/jobs/{job_id}").get_json()["progress"]["done"] < 1:
        assert time.monotonic() < deadline, "no epoch trained"
        time.sleep(0.05)
    stop_worker(first)  # a warm shutdown: the job goes back on the queue
    second = start_worker("bucket-b@%h", ["train"], on_machine(settings, "b"))
    try:
        job = wait_for(client, job_id, FINISHED, timeout=180)
    finally:
        stop_worker(second)

    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    events = client.get(f"/jobs/{job_id}/events").get_json()["events"]
    epochs = [e["data"]["epoch"] for e in events if e["kind"] == "epoch"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 4  # machine b resumed from machine a's checkpoint
    model = client.get(f"/models/{job['result']['model_id']}").get_json()
    assert model["artifact"] == f"{settings.model_dir}{job_id}/attempt-2"
    assert {"model.safetensors", "metadata.json", "model.onnx", "checkpoint.pt"} <= names_under(model["artifact"])
    assert "checkpoint.pt" in names_under(f"{settings.model_dir}{job_id}/attempt-1")
    for machine in ("a", "b"):  # the local training folders go once their files are in the bucket
        assert not training_folder(on_machine(settings, machine), job_id=job_id, attempt=1).parent.exists()

    assert client.delete(f"/models/{model['id']}").status_code == 204
    assert names_under(f"{settings.model_dir}{job_id}/attempt-2") == set()
    assert "checkpoint.pt" in names_under(f"{settings.model_dir}{job_id}/attempt-1")  # not the model's


@pytest.fixture(scope="module")
def serving(stack, settings, tiny_model):
    """The tiny model, kept only in the bucket and the latest, and a prediction worker with an empty cache."""
    artifact = f"{settings.model_dir}seeded/attempt-1"
    storage.upload_tree(tiny_model, artifact)
    with factories.store_session(settings.database_url) as session:
        model_id = factories.model(session, artifact=artifact).id
    server = on_machine(settings, "c")
    worker = start_worker("bucket-c@%h", ["predict"], server)
    yield server, model_id
    stop_worker(worker)


def test_a_worker_with_an_empty_cache_serves_a_model_kept_only_in_the_bucket(serving, client, tiny_dataset):
    server, model_id = serving
    request = {"type": "predict", "model": str(model_id), "input": {"folder": str(tiny_dataset / "val")}}
    job = wait_for(client, client.post("/jobs", json=request).get_json()["id"], FINISHED)

    assert job["status"] == "succeeded" and job["result"]["total"] == 16 and job["result"]["failed"] == 0, job
    rows = client.get(f"/jobs/{job['id']}/results?limit=16").get_json()["results"]
    assert sum(r["path"].split("/")[-3] == r["label"] for r in rows) >= 12  # val/<coarse>/<fine>/<file>
    copy = cache_folder(server, model_id=model_id)
    assert (copy / "model.safetensors").is_file() and (copy / "model.onnx").is_file()
    assert not (copy / "checkpoint.pt").exists()  # serving needs no checkpoint
    wait_for_runtime_choice(client, str(model_id))  # measured in the background, on this machine's copy
    assert (copy / CHOICES_NAME).is_file()  # the runtime measured on this machine, kept with its copy
    # No partial copy left behind: the copy, and the machine lock its workers share.
    assert sorted(p.name for p in copy.parent.iterdir()) == sorted([copy.name, LOCK_NAME, WANTED_NAME])


def test_uploads_are_kept_in_the_bucket_and_read_by_their_own_job_alone(serving, client, settings, tiny_dataset):
    photos = sorted((tiny_dataset / "val").rglob("*.jpg"))[:3]
    files = [(io.BytesIO(p.read_bytes()), "same-name.jpg") for p in photos]
    submitted = client.post("/jobs", data={"files": files}, content_type="multipart/form-data")
    assert submitted.status_code == 202, submitted.get_json()
    job = wait_for(client, submitted.get_json()["id"], FINISHED, timeout=120)
    assert job["status"] == "succeeded" and job["result"]["total"] == 3 and job["result"]["failed"] == 0, job
    stored = f"{settings.upload_dir}{job['id']}/input/"
    assert job["params"]["input"]["url"] == stored
    assert names_under(stored) == {"same-name.jpg", "same-name-1.jpg", "same-name-2.jpg"}

    # Another job may not read them, by prefix, by object or by listing a prefix above them.
    for source in ({"url": stored}, {"paths": [f"{stored}same-name.jpg"]}):
        refused = client.post("/jobs", json={"type": "predict", "input": source})
        assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "path_not_allowed", source
    above = client.post("/jobs", json={"type": "predict", "input": {"url": f"{settings.upload_dir}"}})
    assert above.status_code == 400, above.get_json()
    bucket_root = settings.input_roots[-1]
    storage.write_bytes(f"{bucket_root}shelf/photo.jpg", photos[0].read_bytes())
    wide = {"type": "predict", "input": {"url": bucket_root, "pattern": "*.jpg"}}
    listed = wait_for(client, client.post("/jobs", json=wide).get_json()["id"], FINISHED, timeout=120)
    rows = client.get(f"/jobs/{listed['id']}/results?limit=100").get_json()["results"]
    assert [r["path"] for r in rows] == [f"{bucket_root}shelf/photo.jpg"]  # no upload, not even as a refused row

    answer = client.post("/predict", data={"file": (io.BytesIO(photos[0].read_bytes()), "one.jpg")})
    assert answer.status_code == 200 and answer.get_json()["prediction"] in {"Apple", "Pear", "Milk"}, answer.get_json()
    one = answer.get_json()["job_id"]
    assert names_under(f"{settings.upload_dir}{one}") == {"one.jpg"}

    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert names_under(stored) == set()
