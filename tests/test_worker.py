"""Jobs end to end: the API, real PostgreSQL and Redis, and a real Celery worker process."""

import io
import shutil
import time
from collections import Counter
from pathlib import Path

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


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory):
    return stack_settings(database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def stack(settings):
    """A clean store and one worker process on both queues (the tests' client: conftest's)."""
    clean_store(settings.database_url, settings.redis_url)
    worker = start_worker("test@%h", ["train", "predict"], settings)
    yield worker
    stop_worker(worker)


TRAIN = {
    "arch": "efficientnet_lite0",
    "weights": "imagenet",
    "freeze": 9,
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 0.003,
}


def test_train_then_predict(stack, client, tiny_dataset, tmp_path):
    submitted = client.post("/jobs", json={"type": "train", "params": {**TRAIN, "data_dir": str(tiny_dataset)}})
    assert submitted.status_code == 202
    job = wait_for(client, submitted.get_json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["worker"].startswith("test@") and job["device"] == "cpu"
    assert job["progress"] == {"done": 2, "total": 2, "unit": "epochs"}
    assert job["started_at"] and job["finished_at"] >= job["started_at"]
    # The job leads to its model, and says the settings it ran with, defaults filled in.
    assert job["model_id"] == job["result"]["model_id"]
    settings = job["result"]["settings"]
    assert settings["epochs"] == 2 and settings["label_level"] == "coarse" and settings["input_size"] > 0
    assert settings["compile"] == "off"  # what ran, not the "auto" asked for: a run this short is not compiled
    assert settings["precision"] in ("bf16", "fp32")  # the same
    # Its card says where it comes from: the photos, the code, the settings and the machine.
    card = client.get(f"/models/{job['model_id']}/card").get_json()
    lineage = card["lineage"]
    photos = len(list((tiny_dataset / "train").rglob("*.jpg"))) + len(list((tiny_dataset / "val").rglob("*.jpg")))
    assert lineage["data"]["photos"]["files"] == photos and lineage["data"]["splits"] == "train+val"
    assert lineage["code"]["version"] and lineage["settings"] == settings and lineage["base_weights"] == "imagenet"
    assert lineage["machine"]["device"] == "cpu" and lineage["training_seconds"] > 0
    assert card["training_job"] == job["id"] and card["evaluations"] == []
    written = client.get(f"/models/{job['model_id']}/card?format=markdown")
    assert written.mimetype == "text/markdown" and f"{photos} photos" in written.get_data(as_text=True)
    events = client.get(f"/jobs/{job['id']}/events").get_json()["events"]
    assert [e["data"]["status"] for e in events if e["kind"] == "state"] == ["queued", "running", "succeeded"]
    assert [e["data"]["epoch"] for e in events if e["kind"] == "epoch"] == [1, 2]
    model = client.get(f"/models/{job['result']['model_id']}").get_json()
    assert model["classes"] == ["Apple", "Pear", "Milk"] and model["job_id"] == job["id"]
    assert client.get("/models/latest").get_json()["id"] == model["id"]
    # Exported and checked inside the job, before it was registered.
    exports = model["serving"]["exports"]
    assert exports["onnx"]["ok"] and exports["onnx"]["max_abs_diff"] <= 1e-3 and exports["onnx-int8"]["ok"]
    assert model["serving"]["check_images"] == 16
    assert (Path(model["artifact"]) / "model.onnx").is_file()

    folder = tiny_dataset / "val"
    prediction = {"type": "predict", "model": "latest", "input": {"folder": str(folder)}}
    predicted = client.post("/jobs", json=prediction)
    job = wait_for(client, predicted.get_json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["total"] == 16 and job["result"]["failed"] == 0
    assert sum(job["result"]["labels"].values()) == 16
    page = client.get(f"/jobs/{job['id']}/results?limit=10").get_json()
    rest = client.get(f"/jobs/{job['id']}/results?limit=10&cursor={page['next_cursor']}").get_json()
    rows = page["results"] + rest["results"]
    assert rest["next_cursor"] is None and len(rows) == 16
    correct = sum(r["path"].split("/")[-3] == r["label"] for r in rows)  # val/<coarse>/<fine>/<file>
    assert correct >= 12
    # Its folders name the classes: the job says its accuracy, as counted here.
    assert job["result"]["accuracy"] == {"labelled": 16, "correct": correct, "top1": round(correct / 16, 4)}
    # Each shard names the runtime it ran on: the machine's choice, or fp32 (OpenVINO) before it was measured.
    shards = client.get(f"/jobs/{job['id']}/shards").get_json()["shards"]
    assert job["result"]["runtimes"] == dict(Counter(s["runtime"] for s in shards))
    # The workers measure the runtimes in the background, and serve with the fastest accepted one.
    (choice,) = wait_for_runtime_choice(client, model["id"])["serving"]["runtimes"].values()
    assert choice["variants"][choice["runtime"]]["accepted"] and choice["check_images"] == 16
    assert set(job["result"]["runtimes"]) <= {"openvino", choice["runtime"]}
    again = wait_for(client, client.post("/jobs", json=prediction).get_json()["id"], FINISHED)
    assert again["status"] == "succeeded" and again["result"]["runtimes"] == {
        choice["runtime"]: again["result"]["shards"]
    }
    downloaded_model_answers_in_its_own_labels(client, model["id"], rows, tmp_path)


def downloaded_model_answers_in_its_own_labels(client, model_id: str, rows: list[dict], folder: Path) -> None:
    """The ONNX file a user downloads, run with ONNX Runtime as its metadata says, gives the service's
    labels (not fine-class ids); the download resumes (Range) and is cached (ETag)."""
    import json

    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    response = client.get(f"/models/{model_id}/download")
    assert response.status_code == 200 and response.headers["ETag"]
    (folder / "model.onnx").write_bytes(response.data)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    names, size = json.loads(meta["class_names"]), session.get_inputs()[0].shape[2]
    mean, std = np.array(json.loads(meta["mean"])), np.array(json.loads(meta["std"]))
    agree = 0
    for row in rows:
        pixels = np.asarray(Image.open(row["path"]).convert("RGB").resize((size, size), Image.BILINEAR)) / 255.0
        batch = ((pixels - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        (scores,) = session.run(None, {"input": batch})
        agree += names[int(scores.argmax())] == row["label"]
    # PIL's resize is not the service's antialiased one: a borderline photo may tip, not the labels' meaning.
    assert agree >= len(rows) - 2, f"{agree} of {len(rows)}"
    part = client.get(f"/models/{model_id}/download", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.data == response.data[:100]
    unchanged = client.get(f"/models/{model_id}/download", headers={"If-None-Match": response.headers["ETag"]})
    assert unchanged.status_code == 304
    weights = client.get(f"/models/{model_id}/download?format=safetensors")
    assert weights.status_code == 200 and weights.data[:8] and len(weights.data) > 100_000


def test_a_model_whose_export_failed_is_served_by_torch(
    stack, client, tiny_model, tiny_dataset, database_url, tmp_path
):
    artifact = shutil.copytree(tiny_model, tmp_path / "no-export")
    for name in ("model.onnx", "runtimes.json"):
        (artifact / name).unlink(missing_ok=True)
    failed = {"exports": {"onnx": {"ok": False, "reason": "UnsupportedOperatorError: aten::cummax"}}}
    with factories.store_session(database_url) as session:
        model_id = str(factories.model(session, artifact=artifact, serving=failed).id)
    submitted = client.post(
        "/jobs", json={"type": "predict", "model": model_id, "input": {"folder": str(tiny_dataset / "val")}}
    )
    job = wait_for(client, submitted.get_json()["id"], FINISHED)
    shards = client.get(f"/jobs/{job['id']}/shards").get_json()["shards"]
    assert {s["runtime"] for s in shards} == {"torch"}
    served = wait_for_runtime_choice(client, model_id)["serving"]
    assert served["exports"] == failed["exports"]  # the reason stays beside the choice
    (choice,) = served["runtimes"].values()
    assert choice["runtime"] == "torch" and set(choice["variants"]) == {"torch"}


def test_train_on_a_subset_of_the_shared_dataset(stack, client, shared_dataset):
    params = {**TRAIN, "data_dir": str(shared_dataset), "train_limit": 96, "val_limit": 48, "input_size": 128}
    job = wait_for(client, client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["metrics"]["val_top1"] > 0 and job["result"]["metrics"]["epoch"] == 2
    events = client.get(f"/jobs/{job['id']}/events").get_json()["events"]
    assert [e["data"]["epoch"] for e in events if e["kind"] == "epoch"] == [1, 2]
    model = client.get(f"/models/{job['result']['model_id']}").get_json()
    assert len(model["classes"]) == 43 and model["classes"][0] == "Apple"

    folder = shared_dataset / "val" / "Fruit" / "Apple" / "Golden-Delicious"
    job_id = client.post("/jobs", json={"type": "predict", "model": model["id"], "input": {"folder": str(folder)}})
    job = wait_for(client, job_id.get_json()["id"], FINISHED)
    assert job["status"] == "succeeded" and job["model_id"] == model["id"]
    assert job["result"]["total"] == len(list(folder.glob("*.jpg"))) and job["result"]["failed"] == 0


def test_cancel_a_running_training(stack, client, tiny_dataset):
    params = {**TRAIN, "epochs": 200, "data_dir": str(tiny_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    wait_for(client, job_id, {"running"})
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202
    job = wait_for(client, job_id, FINISHED, timeout=60)
    assert job["status"] == "cancelled" and job["progress"]["done"] < 200
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_workshop_endpoints_and_the_production_alias(stack, client, tiny_dataset):
    assert client.post("/predict", data={}).get_json()["error"]["code"] in ("missing_file", "no_model")
    first = wait_for(client, client.post("/jobs", json={"type": "train", "params": TRAIN}).get_json()["id"], FINISHED)
    assert first["status"] == "succeeded", first["error"]
    first_model = first["result"]["model_id"]

    image = (tiny_dataset / "val" / "Milk" / "Blue-Milk" / "Blue-Milk_000.jpg").read_bytes()
    answer = client.post("/predict", data={"file": (io.BytesIO(image), "milk.jpg")})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["prediction"] in ["Apple", "Pear", "Milk"] and 0 < body["confidence"] <= 1
    assert body["model_id"] == client.get("/models/latest").get_json()["id"]

    moved = client.put("/models/aliases/production", json={"model_id": first_model})
    assert moved.status_code == 200 and "production" in moved.get_json()["aliases"]
    assert client.post("/predict", data={"file": (io.BytesIO(image), "milk.jpg")}).get_json()["model_id"] == first_model
    assert client.get("/class-names").get_json() == {"classes": ["Apple", "Pear", "Milk"], "model_id": first_model}

    broken = client.post("/predict", data={"file": (io.BytesIO(b"not an image"), "x.jpg")})
    assert broken.status_code == 422 and broken.get_json()["error"]["code"] == "not_an_image"
    assert client.post("/predict", data={"other": "x"}).get_json()["error"]["code"] == "missing_file"

    picture = client.get("/random-image")
    assert picture.status_code == 200 and picture.mimetype == "image/jpeg" and picture.data[:2] == b"\xff\xd8"


def test_a_time_budget_plans_a_training_jobs_epochs_and_says_so(stack, client, tiny_dataset):
    params = {**TRAIN, "epochs": 1000, "time_budget": 0.5, "min_input_size": 32, "data_dir": str(tiny_dataset)}
    job = wait_for(client, client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"], FINISHED)
    assert job["status"] == "succeeded", job["error"]
    plan = job["result"]["plan"]
    assert 1 <= plan["epochs"] < 1000 and plan["seconds"] <= plan["seconds_left"] < 30
    # What it ran: the planned epochs, in its settings, its progress, its events and its model's card.
    assert job["result"]["settings"]["epochs"] == plan["epochs"] == job["progress"]["total"]
    events = client.get(f"/jobs/{job['id']}/events").get_json()["events"]
    assert [e["data"]["epoch"] for e in events if e["kind"] == "epoch"] == list(range(1, plan["epochs"] + 1))
    card = client.get(f"/models/{job['model_id']}/card").get_json()
    assert card["lineage"]["settings"]["epochs"] == plan["epochs"] and card["lineage"]["settings"]["time_budget"] == 0.5


def test_a_running_training_shows_its_batches_and_time_and_a_cancel_says_so(stack, client, tiny_dataset):
    params = {**TRAIN, "epochs": 400, "data_dir": str(tiny_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    deadline = time.monotonic() + 120
    while "batches" not in (job := client.get(f"/jobs/{job_id}").get_json())["progress"]:
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.2)
    progress = job["progress"]
    assert progress["unit"] == "epochs" and progress["total"] == 400
    assert 0 <= progress["batches"]["done"] <= progress["batches"]["total"] and progress["batches"]["total"] > 1
    assert progress["elapsed_seconds"] > 0 and progress["remaining_seconds"] > 0
    assert job["result"]["settings"]["epochs"] == 400  # shown from the start
    cancelled = client.post(f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.get_json()["status"] == "running" and cancelled.get_json()["cancel_requested"] is True
    job = wait_for(client, job_id, FINISHED)
    assert job["status"] == "cancelled" and job["cancel_requested"] and "batches" not in job["progress"]
    # Celery's line for the task says how it finished.
    deadline = time.monotonic() + 10
    while not any(job_id in line and " cancelled in " in line for line in list(stack.log_tail)):
        assert time.monotonic() < deadline, "".join(list(stack.log_tail)[-20:])
        time.sleep(0.2)
    assert not any(job_id in line and " succeeded in " in line for line in list(stack.log_tail))
    refused = client.get(f"/jobs/{job_id}/results")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "no_results"
