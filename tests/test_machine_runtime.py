"""One runtime per model and machine: the workers of a machine serve a model on the runtime measured
once there, whichever worker takes a request (issue 28 item 7, issue 30). Real worker processes, real
PostgreSQL."""

import io
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import factories
import pytest
from conftest import FINISHED, clean_store, stack_settings, start_worker, stop_worker, wait_for

from grocery import runtimes
from service import registry

MEASURED = re.compile(r"measured the runtimes of model (\S+) here")
SERVES = re.compile(r"model (\S+) serves on (\S+) here")


@pytest.fixture(scope="module")
def machine(database_url, redis_url, tiny_dataset, tiny_model, tmp_path_factory, app_for):
    """Two prediction workers of one machine (one thread each: one machine key), started at the same
    moment, and the latest model, never measured on this machine: both load it as they start."""
    store = tmp_path_factory.mktemp("machine")
    artifact = shutil.copytree(tiny_model, store / "model")
    (artifact / runtimes.CHOICES_NAME).unlink(missing_ok=True)
    settings = stack_settings(database_url, redis_url, tiny_dataset, store, worker_threads=1)
    clean_store(database_url, redis_url)
    model_id = str(factories.seed_model(database_url, artifact=artifact))
    with ThreadPoolExecutor(2) as pool:
        workers = list(pool.map(lambda n: start_worker(f"machine{n}@%h", ["predict"], settings), range(2)))
    app = app_for(settings)
    yield SimpleNamespace(
        settings=settings, artifact=artifact, model_id=model_id, workers=workers, client=app.test_client()
    )
    for worker in workers:
        stop_worker(worker)


def logged(worker, pattern: re.Pattern) -> list[tuple[str, ...]]:
    return [match.groups() for line in list(worker.log_tail) if (match := pattern.search(line))]


def test_the_workers_of_a_machine_serve_a_model_on_the_runtime_measured_once(machine, tiny_dataset):
    # Both preloaded the model as they started; one measured, the other waited and took its choice.
    measurements = [logged(worker, MEASURED) for worker in machine.workers]
    assert sorted(map(len, measurements)) == [0, 1], measurements
    served = [logged(worker, SERVES) for worker in machine.workers]
    assert all(len(each) == 1 for each in served), served
    ((_, runtime),) = set(served[0] + served[1])

    model = machine.client.get(f"/models/{machine.model_id}").get_json()
    (recorded,) = model["serving"]["runtimes"].values()  # one machine, one choice
    assert recorded["runtime"] == runtime and recorded["variants"][runtime]["accepted"]
    # The folder's record is the same measurement (same variants' speeds, same moment), not a second one.
    assert json.loads((machine.artifact / runtimes.CHOICES_NAME).read_text()) == {recorded["machine"]: recorded}

    request = {"type": "predict", "model": machine.model_id, "input": {"folder": str(tiny_dataset / "train")}}
    submitted = machine.client.post("/jobs", json={**request, "shard_size": 6})
    job = wait_for(machine.client, submitted.get_json()["id"], FINISHED)
    assert job["status"] == "succeeded" and job["result"]["total"] == 48, job
    shards = machine.client.get(f"/jobs/{job['id']}/shards").get_json()["shards"]
    assert len(shards) == 8 and {s["runtime"] for s in shards} == {runtime}

    # The same photo gets the same answer from POST /predict, whichever worker takes it.
    photo = sorted((tiny_dataset / "val").rglob("*.jpg"))[0].read_bytes()
    answers = [
        machine.client.post("/predict", data={"file": (io.BytesIO(photo), "photo.jpg")}).get_json() for _ in range(4)
    ]
    assert all(a.get("prediction") for a in answers), answers
    assert len({(a["prediction"], a["confidence"]) for a in answers}) == 1, answers


def test_a_worker_whose_copy_lost_the_choice_serves_on_the_recorded_one_without_measuring(machine):
    (recorded,) = machine.client.get(f"/models/{machine.model_id}").get_json()["serving"]["runtimes"].values()
    (machine.artifact / runtimes.CHOICES_NAME).unlink()
    third = start_worker("machine2@%h", ["predict"], machine.settings)
    try:
        assert logged(third, MEASURED) == [] and logged(third, SERVES) == [(machine.model_id, recorded["runtime"])]
        assert not (machine.artifact / runtimes.CHOICES_NAME).exists()  # read from the database, not measured
        model = machine.client.get(f"/models/{machine.model_id}").get_json()
        assert model["serving"]["runtimes"] == {recorded["machine"]: recorded}
    finally:
        stop_worker(third)


def test_the_first_choice_recorded_for_a_machine_wins(database_url, tmp_path):
    first, second = {"runtime": "onnx", "inference_batch": 8}, {"runtime": "openvino", "inference_batch": 4}
    with factories.store_session(database_url) as session:
        model_id = factories.model(session, artifact=tmp_path).id
        kept = registry.record_runtime_choice(session, model_id=model_id, machine="cpu:a", choice=first)
        assert kept == first
        assert registry.record_runtime_choice(session, model_id=model_id, machine="cpu:a", choice=second) == first
        # Another machine records its own; a stale record named by the caller is replaced once.
        assert registry.record_runtime_choice(session, model_id=model_id, machine="cpu:b", choice=second) == second
        renewed = {**first, "inference_batch": 16}
        assert (
            registry.record_runtime_choice(session, model_id=model_id, machine="cpu:a", choice=renewed, replacing=first)
            == renewed
        )
        again = registry.record_runtime_choice(
            session, model_id=model_id, machine="cpu:a", choice=second, replacing=first
        )
        assert again == renewed  # the stale one was replaced by another worker already
        assert registry.runtime_choice(session, model_id=model_id, machine="cpu:a") == renewed
        assert registry.runtime_choice(session, model_id=model_id, machine="cpu:c") is None
