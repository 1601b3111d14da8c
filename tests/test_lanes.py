"""Interactive work beside bulk work, and fair shares between jobs and owners (issue 16), with two
real worker processes. The assertions are about order (which started before which ended), not about
seconds: these machines are shared."""

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import factories
import pytest
from conftest import FINISHED, clean_store, photos_dir, stack_settings, start_worker, stop_worker

USER = ["jobs:read", "jobs:write"]


@pytest.fixture(scope="module")
def fleet(database_url, redis_url, tiny_dataset, tiny_model, tmp_path_factory, app_for):
    """Two prediction workers, the API with tokens required, and three owners: alice, bob and ops."""
    store = tmp_path_factory.mktemp("lanes")
    # A free worker waits up to 300 ms for more interactive jobs to batch with (the default is 5 ms).
    settings = stack_settings(
        database_url, redis_url, tiny_dataset, store, auth="required", worker_threads=1, interactive_batch_delay_ms=300
    )
    clean_store(database_url, redis_url)
    factories.seed_model(database_url, artifact=tiny_model)
    with factories.store_session(database_url) as session:
        secrets = {
            name: factories.token(session, name=name, scopes=scopes)
            for name, scopes in (("alice", USER), ("bob", USER), ("ops", [*USER, "ops"]))
        }
    workers = [start_worker(f"lanes{i}@%h", ["predict"], settings) for i in range(2)]
    app = app_for(settings)
    yield SimpleNamespace(app=app, client=app.test_client(), settings=settings, secrets=secrets)
    for worker in workers:
        stop_worker(worker)


def photo_folder(settings, tiny_dataset: Path, name: str, count: int) -> Path:
    """``count`` photos (links to the tiny dataset's) in a folder inside the input roots."""
    folder = photos_dir(settings) / name
    folder.mkdir(parents=True)
    sources = sorted((tiny_dataset / "train").rglob("*.jpg"))
    for n in range(count):
        os.link(sources[n % len(sources)], folder / f"{n:05d}.jpg")
    return folder


def submit(fleet, owner: str, folder: Path, shard_size: int, **extra) -> str:
    body = {"type": "predict", "input": {"folder": str(folder)}, "shard_size": shard_size, **extra}
    response = fleet.client.post("/jobs", json=body, headers=as_(fleet, owner))
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def as_(fleet, owner: str) -> dict:
    return {"Authorization": f"Bearer {fleet.secrets[owner]}"}


def job(fleet, job_id: str) -> dict:
    return fleet.client.get(f"/jobs/{job_id}", headers=as_(fleet, "ops")).get_json()


def shards(fleet, job_id: str) -> list[dict]:
    return fleet.client.get(f"/jobs/{job_id}/shards", headers=as_(fleet, "ops")).get_json()["shards"]


def until(condition, what: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"not within {timeout}s: {what}")


NEVER = datetime.max.replace(tzinfo=timezone.utc)


def at(moment: str | None) -> datetime:
    return datetime.fromisoformat(moment) if moment else NEVER


def finished(fleet, job_id: str) -> dict:
    return until(lambda: (j := job(fleet, job_id))["status"] in FINISHED and j, f"job {job_id} ends")


def both_workers_early_in_a_shard(fleet, job_id: str) -> list[int]:
    """The numbers of two running shards of the job, each under a third done: each has well over a
    batch left, so whoever waits behind them would wait for most of a shard."""

    def early():
        running = [s for s in shards(fleet, job_id) if s["status"] == "running" and s["done"] < s["total"] / 3]
        return [s["number"] for s in running] if len(running) == 2 else None

    return until(early, f"two shards of {job_id} early in their run")


def test_predictions_beside_a_bulk_job_wait_for_a_batch_not_a_shard(fleet, tiny_dataset):
    bulk = submit(fleet, "alice", photo_folder(fleet.settings, tiny_dataset, "bulk", 12_000), shard_size=2000)
    photo = sorted((tiny_dataset / "val").rglob("*.jpg"))[0].read_bytes()
    answered = []
    for _ in range(3):
        running = both_workers_early_in_a_shard(fleet, bulk)
        response = fleet.client.post(
            "/predict",
            data={"file": (io.BytesIO(photo), "photo.jpg")},
            headers=as_(fleet, "bob"),
            content_type="multipart/form-data",
        )
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["prediction"]
        answered.append((response.get_json()["job_id"], running))
    assert job(fleet, bulk)["status"] == "running"  # every answer came while bulk work held both workers
    ended = finished(fleet, bulk)
    assert ended["status"] == "succeeded" and ended["result"]["done"] == 12_000
    ends = {s["number"]: at(s["finished_at"]) for s in shards(fleet, bulk)}
    for job_id, running in answered:
        interactive = job(fleet, job_id)
        assert interactive["lane"] == "interactive"
        # Served in the middle of a bulk shard (between two of its batches), not after one ended.
        assert at(interactive["started_at"]) < min(ends[n] for n in running), (interactive, running)


def test_concurrent_predictions_share_a_batch(fleet, tiny_dataset):
    photo = sorted((tiny_dataset / "val").rglob("*.jpg"))[1].read_bytes()

    def predict(_):
        response = fleet.app.test_client().post(
            "/predict",
            data={"file": (io.BytesIO(photo), "photo.jpg")},
            headers=as_(fleet, "bob"),
            content_type="multipart/form-data",
        )
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(predict, range(8)))
    assert all(status == 200 and body["prediction"] for status, body in answers), answers
    batched = [
        event["data"]["jobs"]
        for _, body in answers
        for event in fleet.client.get(f"/jobs/{body['job_id']}/events", headers=as_(fleet, "bob")).get_json()["events"]
        if event["kind"] == "batched"
    ]
    # Jobs that waited together went through the model together, in batches of several jobs.
    assert batched and max(batched) >= 2 and max(batched) <= fleet.settings.interactive_batch_size


def test_a_later_owners_job_runs_beside_an_earlier_owners_big_one(fleet, tiny_dataset):
    big = submit(fleet, "alice", photo_folder(fleet.settings, tiny_dataset, "big", 12_000), shard_size=1000)
    until(lambda: any(s["status"] == "running" for s in shards(fleet, big)), "the big job runs")
    small = submit(fleet, "bob", photo_folder(fleet.settings, tiny_dataset, "small", 900), shard_size=300)
    assert finished(fleet, small)["status"] == "succeeded"
    # Bob's three shards took turns with Alice's twelve instead of waiting behind them.
    started = sum(s["status"] != "queued" for s in shards(fleet, big))
    assert job(fleet, big)["status"] == "running" and started < 12
    assert finished(fleet, big)["status"] == "succeeded"


def test_a_high_priority_job_overtakes_an_earlier_one(fleet, tiny_dataset):
    normal = submit(fleet, "alice", photo_folder(fleet.settings, tiny_dataset, "normal", 9000), shard_size=1500)
    both_workers_early_in_a_shard(fleet, normal)
    refused = fleet.client.post(
        "/jobs",
        json={"type": "predict", "input": {"folder": str(tiny_dataset / "val")}, "priority": "high"},
        headers=as_(fleet, "bob"),
    )
    assert refused.status_code == 403 and refused.get_json()["error"]["details"] == {"field": "priority"}
    urgent_folder = photo_folder(fleet.settings, tiny_dataset, "urgent", 2000)
    urgent = submit(fleet, "ops", urgent_folder, shard_size=500, priority="high")
    assert finished(fleet, urgent)["status"] == "succeeded" and job(fleet, urgent)["priority"] == "high"
    first = min(at(s["started_at"]) for s in shards(fleet, urgent))
    last = max(at(s["started_at"]) for s in shards(fleet, urgent))
    # Once the urgent job had a worker, every free worker took its shards until none was left:
    # owner fairness alone would have given alice's job its turn in between.
    overtaken = [s for s in shards(fleet, normal) if first < at(s["started_at"]) < last]
    assert overtaken == [] and job(fleet, normal)["status"] == "running"
    assert finished(fleet, normal)["status"] == "succeeded"
