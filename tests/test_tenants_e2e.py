"""Tenants kept apart where files are read: a real worker process re-checks every path, with tokens
required and GROCERY_INPUT_ROOTS set the way the README invites (without the upload storage)."""

import io
import shutil
import time
from pathlib import Path

import factories
import pytest
from conftest import (
    FINISHED,
    clean_store,
    stack_settings,
    start_worker,
    stop_worker,
)

from service import contract, registry, tokens
from service.db import make_engine, make_session_factory
from service.kinds import KINDS, NewJob


def as_(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def tenants(app_for, database_url, redis_url, tiny_dataset, tiny_model, tmp_path_factory):
    """One worker on both queues; the service's only root is ``store`` (photos and the upload
    storage lie in it); tokens A and B."""
    store = tmp_path_factory.mktemp("tenants").resolve()
    settings = stack_settings(
        database_url, redis_url, tiny_dataset, store, auth="required", input_roots=(store,), worker_threads=1
    )
    clean_store(database_url, redis_url)
    with factories.store_session(database_url) as session:
        factories.model(session, artifact=tiny_model)
        made = {name: tokens.create_token(session, name=name, scopes=factories.READ_WRITE) for name in "ab"}
        owners = {name: token.id for name, (token, _) in made.items()}
    photos = store / "photos"
    photos.mkdir()
    for i, image in enumerate(sorted((tiny_dataset / "val").rglob("*.jpg"))[:3]):
        shutil.copy(image, photos / f"{i}.jpg")
    worker = start_worker("tenants@%h", ["train", "predict"], settings)
    client = app_for(settings).test_client()
    yield client, settings, {name: secret for name, (_, secret) in made.items()}, owners, photos
    stop_worker(worker)


def forged_job(settings, owner, job_type: str, params: dict) -> str:
    """A job row the API would refuse, written straight to the store and enqueued: the worker's own
    checks are all that stands between it and the files."""
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        model_id = registry.resolve_model(session, reference="latest").id if job_type == "predict" else None
        new = NewJob(kind=KINDS[job_type], params=params, owner_token_id=owner, model_id=model_id)
        job = contract.submit(session, contract.make_celery(settings), new)
        job_id = str(job.id)
    engine.dispose()
    return job_id


def results(client, job_id: str, secret: str) -> dict[str, str | None]:
    rows = client.get(f"/jobs/{job_id}/results", headers=as_(secret)).get_json()["results"]
    return {row["path"]: (row["error"] or {}).get("code") for row in rows}


def test_uploads_and_predict_work_without_the_upload_root(tenants):
    client, _, secrets, _, photos = tenants
    image = (photos / "0.jpg").read_bytes()
    answer = client.post("/predict", data={"file": (io.BytesIO(image), "shelf.jpg")}, headers=as_(secrets["a"]))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["prediction"] in {"Apple", "Pear", "Milk"}
    files = {"files": [(io.BytesIO(image), "a.jpg"), (io.BytesIO(image), "b.jpg")]}
    submitted = client.post("/jobs", data=files, content_type="multipart/form-data", headers=as_(secrets["a"]))
    job = wait_for_as(client, submitted.get_json()["id"], secrets["a"])
    assert job["status"] == "succeeded" and job["summary"]["done"] == 2, job


def wait_for_as(client, job_id: str, secret: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=as_(secret)).get_json()
        if job["status"] in FINISHED:
            return job
        time.sleep(0.2)
    raise TimeoutError(job)


def test_the_worker_reads_no_other_jobs_uploads(tenants):
    client, settings, secrets, owners, photos = tenants
    image = (photos / "1.jpg").read_bytes()
    files = {"files": [(io.BytesIO(image), "private.jpg")]}
    a_job = client.post("/jobs", data=files, content_type="multipart/form-data", headers=as_(secrets["a"])).get_json()
    assert wait_for_as(client, a_job["id"], secrets["a"])["status"] == "succeeded"
    a_file = settings.upload_dir / a_job["id"] / "input" / "private.jpg"

    manifest = forged_job(settings, owners["b"], "predict", {"input": {"paths": [str(a_file)]}})
    assert wait_for_as(client, manifest, secrets["b"])["status"] == "failed"
    assert results(client, manifest, secrets["b"]) == {str(a_file): "outside_root"}

    folder = forged_job(settings, owners["b"], "predict", {"input": {"folder": str(a_file.parent)}})
    assert wait_for_as(client, folder, secrets["b"])["status"] == "failed"
    assert results(client, folder, secrets["b"]) == {}  # not even the file names

    # A folder job over the service's root, which holds the upload storage: the uploads are not listed.
    whole = client.post(
        "/jobs", json={"type": "predict", "input": {"folder": str(photos.parent)}}, headers=as_(secrets["b"])
    )
    assert whole.status_code == 202, whole.get_json()
    assert wait_for_as(client, whole.get_json()["id"], secrets["b"])["status"] == "succeeded"
    listed = results(client, whole.get_json()["id"], secrets["b"])
    assert listed and all(Path(p).parent == photos for p in listed), listed


def test_training_files_are_confined_in_the_worker(tenants, tmp_path):
    client, settings, secrets, owners, photos = tenants
    escaping = tmp_path / "escaping"
    shutil.copytree(settings.data_dir, escaping)
    lines = (escaping / "train.txt").read_text().splitlines()
    (escaping / "train.txt").write_text("\n".join(["../../../../etc/hostname, 0, 0", *lines]) + "\n")
    inside = photos.parent / "dataset"
    shutil.copytree(escaping, inside)
    for params, field in (
        ({"weights": "/etc/passwd"}, "params.weights"),
        ({"weights": "/no/such/file.pth"}, "params.weights"),
        ({"data_dir": "/etc"}, "params.data_dir"),
        ({"data_dir": str(inside)}, "train.txt:1"),
    ):
        job = wait_for_as(client, forged_job(settings, owners["b"], "train", params), secrets["b"])
        assert job["status"] == "failed" and job["error"]["code"] == "path_not_allowed", (params, job)
        assert field in job["error"]["message"], job
        # The same at submit: a 400 naming the field.
        refused = client.post("/jobs", json={"type": "train", "params": params}, headers=as_(secrets["b"]))
        assert refused.status_code == 400 and field in refused.get_json()["error"]["message"], refused.get_json()
    # Outside the roots, a file that exists and one that does not get the same answer.
    messages = [
        client.post("/jobs", json={"type": "train", "params": {"weights": w}}, headers=as_(secrets["b"]))
        .get_json()["error"]["message"]
        .replace(w, "W")
        for w in ("/etc/passwd", "/etc/no-such-file")
    ]
    assert messages[0] == messages[1]
