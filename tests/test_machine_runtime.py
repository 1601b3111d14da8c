"""One runtime per model and machine, measured in the background (issue 28 item 7, issue 30 item 5):
the workers of a machine measure a newly registered model while the machine is quiet, one of them, and
record the choice with the model, where every worker finds it; a job that comes before serves on a
provisional fp32 runtime without waiting for the measurement, and names it; no measurement runs while
another measures or while a task of the machine runs. Real worker processes, real PostgreSQL, real
flock locks (the test takes the machine lock itself as a third worker of the machine would)."""

import fcntl
import importlib.util
import io
import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import combinations
from types import SimpleNamespace

import factories
import pytest
from conftest import (
    FINISHED,
    clean_store,
    stack_settings,
    start_worker,
    stop_worker,
    wait_for,
    wait_for_runtime_choice,
)

from grocery import runtimes
from grocery.machine_lock import LOCK_NAME, MachineLock
from service import registry

MEASURED = re.compile(r"measured the runtimes of model (\S+) here")
PROVISIONAL = re.compile(r"model (\S+) serves on (\S+) here provisionally")
SERVES = re.compile(r"model (\S+) serves on (\S+) here \(")
# What serves before a machine has measured a model: fp32 on OpenVINO (a dependency), else ONNX Runtime.
PROVISIONAL_RUNTIME = "openvino" if importlib.util.find_spec("openvino") else "onnx"


@pytest.fixture(scope="module")
def machine(database_url, redis_url, tiny_dataset, tiny_model, tmp_path_factory, app_for):
    """Two prediction workers of one machine (one thread each: one machine key) sharing an artifact
    cache, where the machine lock lies, on an empty registry; started at the same moment."""
    store = tmp_path_factory.mktemp("machine")
    settings = stack_settings(
        database_url, redis_url, tiny_dataset, store, worker_threads=1, artifact_cache=store / "cache"
    )
    clean_store(database_url, redis_url)
    with ThreadPoolExecutor(2) as pool:
        workers = list(pool.map(lambda n: start_worker(f"machine{n}@%h", ["predict"], settings), range(2)))
    app = app_for(settings)
    yield SimpleNamespace(
        settings=settings,
        store=store,
        tiny_model=tiny_model,
        workers=workers,
        client=app.test_client(),
        lock=MachineLock(settings.artifact_cache),
    )
    for worker in workers:
        stop_worker(worker)


def register(machine, name: str):
    """A copy of the tiny model, never measured, registered as a training job registers the model it
    trained (registry.register_model): its id and its artifact folder."""
    artifact = shutil.copytree(machine.tiny_model, machine.store / name)
    (artifact / runtimes.CHOICES_NAME).unlink(missing_ok=True)
    return str(factories.seed_model(machine.settings.database_url, artifact=artifact)), artifact


def predict(machine, model_id: str, tiny_dataset) -> dict:
    """A bulk job over the tiny set's 48 training photos, in 8 shards, finished."""
    request = {"type": "predict", "model": model_id, "input": {"folder": str(tiny_dataset / "train")}}
    submitted = machine.client.post("/jobs", json={**request, "shard_size": 6})
    return wait_for(machine.client, submitted.get_json()["id"], FINISHED)


def logged(worker, pattern: re.Pattern) -> list[tuple[str, ...]]:
    return [match.groups() for line in list(worker.log_tail) if (match := pattern.search(line))]


def logged_by(machine, pattern: re.Pattern, model_id: str, timeout: float = 60) -> list[tuple]:
    """The workers' lines about the model (their number, what the line says), waiting for one at most
    ``timeout`` (a line may follow what the test saw in the database)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [(n, *rest) for n, w in enumerate(machine.workers) for m, *rest in logged(w, pattern) if m == model_id]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def measured_by(machine, model_id: str) -> list[tuple]:
    return logged_by(machine, MEASURED, model_id)


def choice_of(model: dict) -> dict:
    (recorded,) = model["serving"]["runtimes"].values()  # one machine, one choice
    return recorded


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def shard_intervals(machine, job_id: str) -> list[list[float]]:
    """When each shard ran: from its claim to its finish, both within its task's hold of the lock."""
    shards = machine.client.get(f"/jobs/{job_id}/shards").get_json()["shards"]
    return [[datetime.fromisoformat(s[k]).timestamp() for k in ("started_at", "finished_at")] for s in shards]


def test_a_newly_registered_model_is_measured_in_the_background_by_one_worker(machine, tiny_dataset):
    model_id, artifact = register(machine, "first")
    recorded = choice_of(wait_for_runtime_choice(machine.client, model_id))
    assert machine.client.get("/jobs").get_json()["jobs"] == []  # no job asked for it
    assert len(measured_by(machine, model_id)) == 1  # one worker measured; the other found it measured

    assert recorded["variants"][recorded["runtime"]]["accepted"] and "provisional" not in recorded
    quiet = recorded["quiet"]  # how quiet the machine was while it measured
    assert quiet["exclusive"] and quiet["windows"] and all(start <= end for start, end in quiet["windows"])
    assert len(quiet["load_before"]) == len(quiet["load_after"]) == 3
    timed = [v for v in recorded["variants"].values() if "spread_by_batch" in v]
    assert {"torch", "onnx"} <= set(recorded["variants"]) and len(timed) >= 2
    assert all(set(v["spread_by_batch"]) == set(v["images_per_s_by_batch"]) for v in timed)
    assert quiet["max_spread"] == max(s for v in timed for s in v["spread_by_batch"].values())
    assert quiet["retimed"] == sum(v["retimed"] for v in timed)
    # The folder's record is the same measurement, not a second one.
    assert json.loads((artifact / runtimes.CHOICES_NAME).read_text()) == {recorded["machine"]: recorded}

    job = predict(machine, model_id, tiny_dataset)
    assert job["status"] == "succeeded" and job["result"]["runtimes"] == {recorded["runtime"]: 8}, job
    # The same photo gets the same answer from POST /predict, whichever worker takes it.
    photo = sorted((tiny_dataset / "val").rglob("*.jpg"))[0].read_bytes()
    answers = [
        machine.client.post("/predict", data={"file": (io.BytesIO(photo), "photo.jpg")}).get_json() for _ in range(4)
    ]
    assert all(a.get("prediction") for a in answers), answers
    assert len({(a["prediction"], a["confidence"]) for a in answers}) == 1, answers


def test_a_job_before_the_measurement_serves_provisionally_without_waiting_for_it(machine, tiny_dataset):
    # A third worker of the machine runs a task all along: the machine is never quiet enough to measure.
    with machine.lock.task():
        held_from = time.time()
        model_id, _ = register(machine, "second")
        job = predict(machine, model_id, tiny_dataset)
        assert job["status"] == "succeeded" and job["result"]["total"] == 48, job
        # Every shard names the runtime it ran on: fp32 on the model's checked export.
        assert job["result"]["runtimes"] == {PROVISIONAL_RUNTIME: 8}, job
        model = machine.client.get(f"/models/{model_id}").get_json()
        assert model["serving"].get("runtimes", {}) == {}  # finished, and nothing measured meanwhile
        held_until = time.time()
    served = {runtime for worker in machine.workers for m, runtime in logged(worker, PROVISIONAL) if m == model_id}
    assert served == {PROVISIONAL_RUNTIME}

    recorded = choice_of(wait_for_runtime_choice(machine.client, model_id))
    assert len(measured_by(machine, model_id)) == 1
    windows = recorded["quiet"]["windows"]
    assert windows and not any(overlaps(window, [held_from, held_until]) for window in windows)
    assert min(start for start, _ in windows) >= held_until  # it waited for the machine to be quiet
    # The workers that served it provisionally serve the measured choice from their next shard on.
    later = predict(machine, model_id, tiny_dataset)
    assert later["status"] == "succeeded" and later["result"]["runtimes"] == {recorded["runtime"]: 8}, later
    assert {runtime for _, runtime in logged_by(machine, SERVES, model_id)} == {recorded["runtime"]}


def measuring_now(machine, timeout: float = 120) -> None:
    """Until a measurement holds the machine lock: it is taken exclusively, so shared it cannot be had."""
    deadline = time.monotonic() + timeout
    machine.settings.artifact_cache.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(machine.settings.artifact_cache / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(descriptor, fcntl.LOCK_UN)
            except BlockingIOError:
                return
            time.sleep(0.01)
    finally:
        os.close(descriptor)
    raise TimeoutError("no measurement began")


def test_no_measurement_overlaps_another_or_a_job_of_the_machine(machine, tiny_dataset):
    # Two models registered at once, and a job on one of them submitted while the workers measure.
    (first, _), (second, _) = register(machine, "third"), register(machine, "fourth")
    measuring_now(machine)
    job = predict(machine, first, tiny_dataset)
    assert job["status"] == "succeeded" and job["result"]["total"] == 48, job
    records = [choice_of(wait_for_runtime_choice(machine.client, m)) for m in (first, second)]
    assert [len(measured_by(machine, m)) for m in (first, second)] == [1, 1]  # each by one worker

    windows = [window for record in records for window in record["quiet"]["windows"]]
    assert not any(overlaps(a, b) for a, b in combinations(windows, 2))  # never two measuring at once
    shards = shard_intervals(machine, job["id"])
    assert len(shards) == 8
    assert not any(overlaps(window, shard) for window in windows for shard in shards)


def test_a_worker_whose_copy_lost_the_choice_serves_on_the_recorded_one_without_measuring(machine):
    latest = machine.client.get("/models/latest").get_json()
    recorded = choice_of(latest)
    folder = machine.store / "fourth"
    (folder / runtimes.CHOICES_NAME).unlink()
    third = start_worker("machine2@%h", ["predict"], machine.settings)
    try:
        deadline = time.monotonic() + 60
        while not logged(third, SERVES) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert logged(third, SERVES) == [(latest["id"], recorded["runtime"])]  # it preloaded the serving model
        assert logged(third, MEASURED) == [] and logged(third, PROVISIONAL) == []
        assert not (folder / runtimes.CHOICES_NAME).exists()  # read from the database, not measured
        model = machine.client.get(f"/models/{latest['id']}").get_json()
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


def test_a_machine_measures_the_newest_and_the_aliased_models_and_those_it_serves_provisionally(
    database_url, tmp_path, empty_store
):
    with factories.store_session(database_url) as session:
        models = [factories.model(session, artifact=tmp_path / str(n)) for n in range(5)]  # oldest first
        registry.set_alias(session, name="production", model_id=models[0].id)
        registry.record_runtime_choice(session, model_id=models[4].id, machine="cpu:a", choice={"runtime": "onnx"})
    with factories.store_session(database_url) as session:

        def measured(**kwargs):
            return [m.id for m in registry.models_to_measure(session, machine="cpu:a", **kwargs)]

        # The newest two, less the one measured here, and the aliased one; newest first.
        assert measured(newest=2) == [models[3].id, models[0].id]
        assert measured(newest=2, including={models[1].id}) == [models[3].id, models[1].id, models[0].id]
        # One served provisionally is listed whatever is recorded (a stale record is measured again).
        assert measured(newest=1, including={models[4].id}) == [models[4].id, models[0].id]
        assert [m.id for m in registry.models_to_measure(session, machine="cpu:b", newest=2)] == [
            models[4].id,
            models[3].id,
            models[0].id,
        ]
