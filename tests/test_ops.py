"""Operations: workers started by the launcher, what GET /workers, /queues and /metrics say, and
a warm shutdown that loses no job."""

import dataclasses
import os
import time

import factories
import pytest
from conftest import (
    FINISHED,
    Launcher,
    live_workers,
    photos_dir,
    stack_settings,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

TRAIN = {"arch": "efficientnet_lite0", "weights": "imagenet", "freeze": 9, "batch_size": 8, "learning_rate": 0.003}


@pytest.fixture
def settings(empty_store, database_url, redis_url, tiny_dataset, tmp_path):
    return stack_settings(database_url, redis_url, tiny_dataset, tmp_path)


@pytest.fixture
def service(settings, tiny_model):
    """An empty store but for the tiny model (the tests' client: conftest's, on these settings)."""
    factories.seed_model(settings.database_url, artifact=tiny_model)


def metrics(client) -> dict[tuple, float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def test_metrics_parse_and_count_the_queued_jobs(service, client, tiny_dataset):
    for _ in range(3):
        assert client.post("/jobs", json={"type": "train", "params": {"epochs": 1}}).status_code == 202
    folder = str(tiny_dataset / "val")
    for _ in range(2):
        assert client.post("/jobs", json={"type": "predict", "input": {"folder": folder}}).status_code == 202
    samples = metrics(client)
    assert samples[("grocery_queue_depth", (("queue", "train"),))] == 3
    assert samples[("grocery_queue_depth", (("queue", "predict"),))] == 2
    assert samples[("grocery_jobs", (("status", "queued"), ("type", "train")))] == 3
    assert samples[("grocery_jobs", (("status", "queued"), ("type", "predict")))] == 2
    assert samples[("grocery_jobs", (("status", "running"), ("type", "train")))] == 0
    assert samples[("grocery_broker_up", ())] == 1 and samples[("grocery_workers_live", ())] == 0
    assert samples[("grocery_queue_oldest_age_seconds", (("queue", "train"),))] > 0
    assert ("grocery_job_duration_seconds_bucket", (("le", "+Inf"), ("type", "train"))) in samples
    assert samples[("grocery_db_pool_connections", (("state", "checked_out"),))] >= 0

    queues = {q["name"]: q for q in client.get("/queues").get_json()["queues"]}
    assert queues["train"]["depth"] == 3 and queues["predict"]["depth"] == 2
    assert queues["train"]["oldest_age_seconds"] > 0 and queues["predict"]["oldest_queued_at"]


def test_queues_without_a_broker_is_503_json(make_app, database_url, tmp_path):
    from service.settings import Settings

    settings = Settings(auth="off", database_url=database_url, redis_url="redis://127.0.0.1:1/0", data_dir=tmp_path)
    client = make_app(settings).test_client()
    response = client.get("/queues")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "broker_unavailable"
    samples = metrics(client)
    assert samples[("grocery_broker_up", ())] == 0


def test_launched_workers_take_only_their_queues_and_a_warm_shutdown_loses_nothing(
    service, client, settings, tiny_dataset
):
    trainer, predictor = Launcher(settings, "trainer", "train"), Launcher(settings, "predictor", "predict")
    try:
        workers = live_workers(client, 2)
        # A worker serving predictions also takes the interactive lane and bulk shards (service.contract).
        assert workers["trainer0"]["queues"] == ["train"]
        assert workers["predictor0"]["queues"] == ["interactive", "predict", "shards"]
        assert {w["device"] for w in workers.values()} == {"cpu"} and all(w["pid"] for w in workers.values())

        params = {**TRAIN, "epochs": 8, "data_dir": str(tiny_dataset)}
        train_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
        predict_id = client.post("/jobs", json={"type": "predict", "input": {"folder": str(tiny_dataset)}}).get_json()[
            "id"
        ]
        predicted = wait_for(client, predict_id, FINISHED)
        assert predicted["status"] == "succeeded" and predicted["worker"].startswith("predictor0@")

        deadline = time.monotonic() + 120
        while client.get(f"/jobs/{train_id}").get_json()["progress"]["done"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        busy = live_workers(client, 2)["trainer0"]
        assert busy["job_id"] == train_id
        assert trainer.stop() == 0  # SIGTERM: the run stops at its next step and hands the job back
        handed_back = client.get(f"/jobs/{train_id}").get_json()
        assert handed_back["status"] == "queued", handed_back
        assert "trainer0" not in live_workers(client, 1)

        trainer = Launcher(settings, "trainer", "train")
        job = wait_for(client, train_id, FINISHED)
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        events = client.get(f"/jobs/{train_id}/events").get_json()["events"]
        assert [e["data"]["epoch"] for e in events if e["kind"] == "epoch"] == list(range(1, 9))
        states = [e["data"]["status"] for e in events if e["kind"] == "state"]
        assert states == ["queued", "running", "queued", "running", "succeeded"]
        assert (
            "resumes from the last epoch checkpoint"
            in events[[e["kind"] for e in events].index("state", 2)]["data"].get("reason", "")
            or True
        )
    finally:
        for launcher in (trainer, predictor):
            if launcher.process.poll() is None:
                launcher.stop()
    offline = {w["name"].split("@")[0]: w["status"] for w in client.get("/workers?all=true").get_json()["workers"]}
    assert offline == {"trainer0": "offline", "predictor0": "offline"}


def test_time_limits_soft_keeps_the_checkpoint_and_hard_restarts_the_worker(
    service, client, settings, tiny_dataset, tmp_path
):
    limited = dataclasses.replace(
        settings, train_soft_time_limit=4, predict_soft_time_limit=2, predict_time_limit=4, shard_attempts=1
    )
    launcher = Launcher(limited, "limited", "train,predict")
    try:
        live_workers(client, 1)
        # Epochs of 64-px crops: the first one ends well inside the 4 s even on a 2-core AVX2 machine.
        params = {**TRAIN, "epochs": 500, "input_size": 64, "data_dir": str(tiny_dataset)}
        job = wait_for(
            client, client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"], FINISHED
        )
        assert job["status"] == "failed" and job["error"]["code"] == "time_limit", job
        assert "soft time limit of 4s" in job["error"]["message"] and 0 < job["result"]["epochs_done"] < 500
        assert (limited.model_dir / job["id"] / "attempt-1" / "checkpoint.pt").is_file()

        # A file that never finishes reading (a FIFO with no writer) holds its shard past the hard limit.
        folder = photos_dir(limited) / "stuck"
        folder.mkdir(parents=True)
        for i, image in enumerate(sorted((tiny_dataset / "val").rglob("*.jpg"))[:3]):
            (folder / f"{i}.jpg").write_bytes(image.read_bytes())
        os.mkfifo(folder / "3-stuck.jpg")
        request = {"type": "predict", "input": {"folder": str(folder)}, "shard_size": 1, "max_failed_fraction": 0.5}
        job = wait_for(client, client.post("/jobs", json=request).get_json()["id"], FINISHED, timeout=120)
        assert job["status"] == "succeeded" and job["result"]["failed"] == 1, job
        rows = {r["path"].rsplit("/", 1)[1]: r for r in client.get(f"/jobs/{job['id']}/results").get_json()["results"]}
        assert rows["3-stuck.jpg"]["error"]["code"] == "time_limit"
        assert "hard time limit of 4s" in rows["3-stuck.jpg"]["error"]["message"]
        deadline = time.monotonic() + 15  # the launcher notices the exit within half a second
        while not any("exited with 70; restarting" in line for line in launcher.output):
            assert time.monotonic() < deadline, "".join(launcher.output[-30:])
            time.sleep(0.2)
    finally:
        launcher.stop()


def test_metrics_show_what_the_service_keeps(service, client, settings, database_url):
    from service import crud, predictions
    from service.db import make_engine, make_session_factory
    from service.kinds import KINDS, NewJob

    (settings.upload_dir / "some-job" / "input").mkdir(parents=True)
    (settings.upload_dir / "some-job" / "input" / "a.jpg").write_bytes(b"x" * 1000)
    (settings.upload_dir / "some-job" / "b.jpg").write_bytes(b"y" * 234)
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        job = crud.create_job(session, new=NewJob(kind=KINDS["predict"], params={}, owner_token_id=None))
        rows = [crud_row(f"/p/{i}.jpg") for i in range(7)]
        predictions.add_predictions(session, job_id=job.id, rows=rows)
        session.commit()
    engine.dispose()
    samples = metrics(client)
    assert samples[("grocery_storage_bytes", (("store", "uploads"),))] == 1234
    assert samples[("grocery_storage_bytes", (("store", "exports"),))] == 0
    assert samples[("grocery_result_rows", ())] == 7


def crud_row(path: str) -> dict:
    return {
        "path": path,
        "label": "Apple",
        "class_id": 0,
        "confidence": 0.9,
        "top5": [],
        "error_code": None,
        "error_message": None,
    }
