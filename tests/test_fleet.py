"""Network faults on a fleet of hosts with no shared disk (tests/fleet.py): a db host (PostgreSQL, Redis, the
S3 API), an api host (gunicorn) and three worker hosts, each a network namespace with its own root. Each
drill injects one fault, prints the time from the fault to recovery, and ends with the invariants
(tests/fleet_invariants.py). The last test is the two-minute chaos soak (tests/chaos.py).

Long: the fleet starts once for the module (about 20 s), each drill takes 20-60 s, the soak about 3 minutes.
Needs root, iproute2 and nftables: skipped saying why elsewhere, unless GROCERY_REQUIRE_NETNS=1 (CI)."""

import os
import random
import statistics
import time
from collections import Counter
from pathlib import Path

import chaos
import factories
import pytest
from chaos import TRAIN, Soak
from fleet import BUCKET, PHOTOS, REDIS_PORT, Fleet, fleet_unavailable, photo_folder, wait_until
from fleet_invariants import check

pytestmark = pytest.mark.fleet

FINISHED = {"succeeded", "failed", "cancelled"}
BIG_FOLDER, SMALL_FOLDER = "p3000", "p240"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_dataset, tiny_model):
    """The fleet, with the tiny model registered (its files in the bucket), the photos on each host's own
    disk and in the bucket."""
    reason = fleet_unavailable()
    if reason is not None:
        if os.environ.get("GROCERY_REQUIRE_NETNS") == "1":
            pytest.fail(f"GROCERY_REQUIRE_NETNS=1 but no fleet can be made here: {reason}")
        pytest.skip(f"no fleet of network namespaces here: {reason}")
    root = tmp_path_factory.mktemp("photos")
    photos = [photo_folder(root, tiny_dataset, name, n) for name, n in ((BIG_FOLDER, 3000), (SMALL_FOLDER, 240))]
    started = Fleet(tiny_dataset, photos, keep_files=os.environ.get("GROCERY_FLEET_KEEP") == "1")
    try:
        started.start()
        started.register_model(tiny_model)
        started.upload(photos[1], f"photos/{SMALL_FOLDER}")
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def ops(fleet):
    """A client with the ops scope: it sees every job, the workers and the queues."""
    return fleet.client(fleet.token("ops", ["jobs:read", "jobs:write", "ops"]))


@pytest.fixture
def user(fleet):
    """A token of its own for each test, which starts on a quiet fleet: the jobs of those before have ended."""
    wait_until(lambda: fleet.live_jobs() == 0, 600, "the jobs of the tests before ending", 1)
    return fleet.client(fleet.token(f"user-{time.monotonic_ns()}", factories.READ_WRITE))


def report(capsys, line: str) -> None:
    """A figure in the test's output, even when pytest captures it."""
    with capsys.disabled():
        print(f"\n[fleet] {line}", flush=True)


def finished(client, job_id: str, timeout: float = 600) -> dict:
    return wait_until(
        lambda: (job := client.job(job_id))["status"] in FINISHED and job, timeout, f"job {job_id} finished", 0.3
    )


def accepted(*clients) -> set[str]:
    """The jobs the API accepted (202, or POST /predict's answer naming its job)."""
    ids = set()
    for client in clients:
        for method, route, status, body in client.answers:
            if method == "POST" and route in ("/jobs", "/predict") and body and status in (200, 202):
                ids.add(body.get("id") or body.get("job_id"))
    return ids - {None}


def assert_invariants(fleet, capsys, *clients, deleted=frozenset()) -> None:
    findings = check(fleet, accepted=accepted(*clients), deleted=set(deleted))
    report(capsys, f"invariants: {findings.summary()}")
    assert not findings.violations, findings.summary()


def shard_of(ops, job_id: str) -> dict:
    (shard,) = ops.get(f"/jobs/{job_id}/shards").json()["shards"]
    return shard


def progress(ops, job_id: str, done: int, timeout: float = 120) -> None:
    wait_until(lambda: ops.job(job_id)["progress"]["done"] >= done, timeout, f"job {job_id} at {done}", 0.2)


def reacted(worker, reactions: tuple[str, ...], after: int, timeout: float = 60) -> str:
    """The first of ``reactions`` the worker logs past offset ``after`` of its log."""
    return wait_until(
        lambda: next((r for r in reactions if r in worker.log()[after:]), None),
        timeout,
        f"{worker.host.name} logging one of {reactions}",
        0.2,
    )


def test_no_path_is_shared_between_hosts(fleet):
    """Every path setting of every host lies in its own root (the bucket aside, and the photo volume, which
    each host binds to its own copy), and no process of a host has a file of another host's root open."""
    from service.settings import Settings

    for name, host in fleet.hosts.items():
        others = [other.root for other in fleet.hosts.values() if other is not host]
        for pid in host.pids():
            proc = Path(f"/proc/{pid}")
            try:
                environ = dict(
                    item.split("=", 1) for item in (proc / "environ").read_bytes().decode().split("\0") if "=" in item
                )
                opened = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
                mounts = (proc / "mountinfo").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue  # it ended meanwhile
            named = [*environ.values(), *opened, *(proc / "cmdline").read_bytes().decode().split("\0")]
            for value in named:
                assert not any(str(other) in value for other in others), f"{name} pid {pid} names {value}"
            if "DATABASE_URL" in environ and name != "db":
                settings = Settings.from_env(environ)
                for field_name, value in vars(settings).items():
                    for path in value if isinstance(value, tuple) else (value,):
                        if isinstance(path, Path) and path != fleet.photos_path:
                            assert path.is_relative_to(host.root), f"{name}: {field_name} is {path}"
            # Its photo volume is its own copy.
            (volume,) = [line.split() for line in mounts.splitlines() if line.split()[4] == str(fleet.photos_path)]
            assert volume[3] == str(host.root / PHOTOS), f"{name} pid {pid} mounts {volume[3]} as the photos"


def test_a_worker_cut_off_mid_shard_loses_it_and_its_late_writes_are_refused(fleet, ops, user, capsys):
    lease = fleet.settings.job_lease_seconds
    request = {"type": "predict", "input": {"folder": str(fleet.photos_path / BIG_FOLDER)}, "shard_size": 3000}
    job_id = user.submit(request)
    progress(ops, job_id, 200)
    cut = fleet.worker_of(shard_of(ops, job_id)["worker"])
    log_offset = len(cut.log())

    fault = time.monotonic()
    fleet.network.cut(cut.host)
    try:
        taken = wait_until(
            lambda: (s := shard_of(ops, job_id))["attempts"] >= 2 and s["status"] == "running" and s, 60, "a takeover"
        )
        takeover = time.monotonic() - fault
        time.sleep(max(0.0, fault + 3 * lease - time.monotonic()))  # cut off well past its lease
    finally:
        fleet.network.heal(cut.host)
    healed = time.monotonic() - fault
    job = finished(user, job_id)
    done = time.monotonic() - fault
    assert job["status"] == "succeeded" and job["result"]["total"] == 3000 and job["result"]["failed"] == 0, job
    assert taken["worker"] != cut.node

    # Back on the network, it learns it lost the shard at its next write, and writes nothing.
    reactions = ("was taken over: stopping without writing", "failed (attempt 1)")
    reaction = reacted(cut, reactions, log_offset)
    final = shard_of(ops, job_id)
    assert final["worker"] != cut.node and final["status"] == "succeeded" and final["done"] == 3000
    time.sleep(2 * fleet.settings.reconcile_seconds)
    assert shard_of(ops, job_id) == final  # nothing of the old owner's reached the shard's record

    # And it goes back to work: it runs shards of the next job.
    request = {"type": "predict", "input": {"folder": str(fleet.photos_path / SMALL_FOLDER)}, "shard_size": 20}
    next_job = user.submit(request)
    assert finished(user, next_job)["status"] == "succeeded"
    workers = {s["worker"] for s in ops.get(f"/jobs/{next_job}/shards").json()["shards"]}
    assert cut.node in workers, workers
    report(
        capsys,
        f"shard drill: {cut.host.name} cut {healed:.1f}s (lease {lease:.0f}s); its shard taken over by "
        f"{taken['worker']} {takeover:.1f}s after the cut (fault to recovery), the job done {done:.1f}s after it; "
        f"back, {cut.host.name} logged {reaction!r} and ran shards of the next job (run by {sorted(workers)})",
    )
    assert_invariants(fleet, capsys, user)


def epochs_of(client, job_id: str) -> list[tuple[int, int]]:
    """(attempt, epoch) of each epoch event, the attempt read from the state events before it."""
    attempt, epochs = 0, []
    for event in client.get(f"/jobs/{job_id}/events").json()["events"]:
        if event["kind"] == "state" and event["data"]["status"] == "running":
            attempt = event["data"]["attempt"]
        elif event["kind"] == "epoch":
            epochs.append((attempt, event["data"]["epoch"]))
    return epochs


def test_a_worker_cut_off_mid_training_is_resumed_elsewhere_from_the_bucket(fleet, ops, user, capsys):
    lease = fleet.settings.job_lease_seconds
    job_id = user.submit({"type": "train", "params": {**TRAIN, "epochs": 5}})
    progress(ops, job_id, 2)
    cut = fleet.worker_of(ops.job(job_id)["worker"])
    log_offset = len(cut.log())

    fault = time.monotonic()
    fleet.network.cut(cut.host)
    try:
        wait_until(lambda: (j := ops.job(job_id))["attempts"] >= 2 and j["status"] == "running", 60, "a takeover")
        takeover = time.monotonic() - fault
        time.sleep(max(0.0, fault + 3 * lease - time.monotonic()))
    finally:
        fleet.network.heal(cut.host)
    job = finished(user, job_id)
    done = time.monotonic() - fault
    assert job["status"] == "succeeded" and job["worker"] != cut.node, job

    epochs = epochs_of(ops, job_id)
    first_attempt = [epoch for attempt, epoch in epochs if attempt == 1]
    resumed = [epoch for attempt, epoch in epochs if attempt > 1]
    # The next attempt started after the last epoch the first had reported (and kept in the bucket).
    assert first_attempt and resumed and resumed[0] == first_attempt[-1] + 1 and resumed[-1] == 5, epochs
    assert fleet.objects(f"models/{job_id}/attempt-1/checkpoint.pt")
    reactions = ("was superseded; result dropped", "raised unexpected: OperationalError")
    reaction = reacted(cut, reactions, log_offset)
    # Deleted, the job leaves its model (the registry's) and nothing else: not the first attempt's checkpoint.
    assert user.call("DELETE", f"/jobs/{job_id}").status_code == 204
    assert fleet.objects(f"models/{job_id}/attempt-{job['attempts']}/") and not fleet.objects(
        f"models/{job_id}/attempt-1/"
    )
    report(
        capsys,
        f"training drill: {cut.host.name} cut after epoch {first_attempt[-1]}; the job was taken over "
        f"{takeover:.1f}s after the cut and resumed at epoch {resumed[0]} on {job['worker']} from the bucket's "
        f"checkpoint, done {done:.1f}s after it; epochs by attempt {epochs}; back, {cut.host.name} logged {reaction!r}",
    )
    assert_invariants(fleet, capsys, user, deleted={job_id})


def test_the_api_cut_off_from_redis_accepts_jobs_that_run_once(fleet, ops, user, capsys):
    fleet.network.block(fleet.api_host, fleet.db, REDIS_PORT)
    fault = time.monotonic()
    seconds, job_ids = [], []
    try:
        requests = [
            {"type": "predict", "input": {"folder": str(fleet.photos_path / SMALL_FOLDER)}, "shard_size": 60},
            {"type": "predict", "input": {"url": f"s3://{BUCKET}/photos/{SMALL_FOLDER}/"}, "shard_size": 60},
            {"type": "train", "params": {**TRAIN, "epochs": 2}},
        ]
        for request in requests:
            started = time.monotonic()
            job_ids.append(user.submit(request))
            seconds.append(time.monotonic() - started)
        started = time.monotonic()
        predicted = user.post("/predict", files={"file": ("one.jpg", factories.jpeg(), "image/jpeg")})
        predict_seconds = time.monotonic() - started
        assert predicted.status_code == 200 or (
            predicted.status_code in (503, 504) and predicted.json()["error"]["code"]
        ), predicted.text
        time.sleep(3 * fleet.settings.reconcile_seconds)
    finally:
        fleet.network.unblock(fleet.api_host)
    healed = time.monotonic() - fault
    jobs = [finished(user, job_id) for job_id in job_ids]
    done = time.monotonic() - fault
    for job in jobs:
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        states = [
            e["data"]["status"] for e in ops.get(f"/jobs/{job['id']}/events").json()["events"] if e["kind"] == "state"
        ]
        assert states == ["queued", "running", "succeeded"], (job["id"], states)
    report(
        capsys,
        f"API cut off from Redis {healed:.1f}s: {len(job_ids)} jobs answered 202 in "
        f"{statistics.median(seconds):.2f}s median, {max(seconds):.2f}s at most; POST /predict answered "
        f"{predicted.status_code} in {predict_seconds:.2f}s; every job ran once, all done {done:.1f}s after the cut",
    )
    assert_invariants(fleet, capsys, user)


def test_a_slow_lossy_link_to_one_worker_host(fleet, ops, user, capsys):
    slow = fleet.workers["w1"]
    log_offset = len(slow.log())

    def took() -> int:
        lines = slow.log()[log_offset:].splitlines()
        return sum("run_predict_shard[" in line and line.endswith("received") for line in lines)

    how = fleet.network.slow(slow.host, rate_kbit=2000, loss_percent=5, delay_ms=40)
    # The other hosts wait, frozen, until the slow one has a shard: on a fast machine they would
    # otherwise finish the job before a message crossed the slow link, and the drill would test nothing.
    others = {worker: worker.freeze() for name, worker in fleet.workers.items() if worker is not slow}
    try:
        started = time.monotonic()
        request = {"type": "predict", "input": {"url": f"s3://{BUCKET}/photos/{SMALL_FOLDER}/"}, "shard_size": 20}
        job_id = user.submit(request)
        wait_until(took, 120, f"{slow.host.name} taking a shard over its slow link")
        for worker, pids in others.items():
            worker.thaw(pids)
        others = {}
        job = finished(user, job_id)
        seconds = time.monotonic() - started
    finally:
        for worker, pids in others.items():
            worker.thaw(pids)
        fleet.network.clear(slow.host)
    assert job["status"] == "succeeded" and job["result"]["total"] == 240 and job["result"]["failed"] == 0, job
    shards = ops.get(f"/jobs/{job_id}/shards").json()["shards"]
    finished_by = dict(Counter(shard["worker"] for shard in shards))
    retried = sum(shard["attempts"] > 1 for shard in shards)
    report(
        capsys,
        f"slow link to {slow.host.name} ({how}): the 240-file bucket job in 12 shards done in {seconds:.1f}s "
        f"({240 / seconds:.1f} files/s; the job's own figure {job['summary']['images_per_s']} img/s); "
        f"shards finished by worker {finished_by}, {retried} taken over; {slow.host.name} took {took()} shard messages",
    )
    assert_invariants(fleet, capsys, user)


def requeues(ops, job_id: str) -> list[str]:
    """Why the job went back on the queue, each time it did."""
    events = ops.get(f"/jobs/{job_id}/events").json()["events"]
    return [e["data"].get("reason", "") for e in events if e["kind"] == "state" and e["data"]["status"] == "queued"][1:]


def test_the_database_and_redis_restart_while_work_runs(fleet, ops, user, capsys):
    request = {"type": "predict", "input": {"folder": str(fleet.photos_path / BIG_FOLDER)}, "shard_size": 250}
    bulk = user.submit(request)
    training = user.submit({"type": "train", "params": {**TRAIN, "epochs": 4}})
    progress(ops, bulk, 300)
    wait_until(lambda: ops.job(training)["status"] == "running", 60, "the training running")
    before = ops.job(bulk)["progress"]["done"]

    fault = time.monotonic()
    fleet.postgres.stop()
    time.sleep(3)
    fleet.postgres.start()
    fleet.redis.kill()
    fleet.redis.start()  # empty: the queued messages are gone
    restarted = time.monotonic() - fault

    def advancing() -> bool:
        answer = ops.get(f"/jobs/{bulk}")
        return answer.status_code == 200 and answer.json()["progress"]["done"] > before

    wait_until(advancing, 300, "the bulk job advancing again", 0.2)
    recovered = time.monotonic() - fault
    jobs = [finished(user, job_id) for job_id in (bulk, training)]
    done = time.monotonic() - fault
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], jobs
    assert jobs[0]["result"]["total"] == 3000 and jobs[0]["result"]["failed"] == 0
    epochs = epochs_of(ops, training)
    assert [epoch for _, epoch in epochs] == list(range(1, 5)), epochs
    shards = ops.get(f"/jobs/{bulk}/shards?limit=100").json()["shards"]
    report(
        capsys,
        f"PostgreSQL stopped 3 s and restarted, Redis restarted empty ({restarted:.1f}s in all) under a 3,000-file "
        f"job and a training: the bulk job advanced again {recovered:.1f}s after the fault (fault to recovery), "
        f"both done {done:.1f}s after it; shard attempts {sorted(s['attempts'] for s in shards)}, "
        f"training attempts {jobs[1]['attempts']} (requeued: {requeues(ops, training) or 'never'})",
    )
    assert_invariants(fleet, capsys, user)


def test_chaos_soak(fleet, capsys):
    """Two minutes of mixed work and random faults (tests/chaos.py); GROCERY_SOAK_SEED replays a run's
    choices, GROCERY_SOAK_SECONDS makes it longer."""
    seed = int(os.environ.get("GROCERY_SOAK_SEED") or random.SystemRandom().randrange(2**31))
    report(capsys, f"chaos soak, seed {seed}: replay with GROCERY_SOAK_SEED={seed}")
    soak = Soak(
        seconds=float(os.environ.get("GROCERY_SOAK_SECONDS", 120)),
        seed=seed,
        folder=fleet.photos_path / SMALL_FOLDER,
        bucket_prefix=f"photos/{SMALL_FOLDER}",
        photo=next((fleet.photos_path.parent / "api" / PHOTOS / SMALL_FOLDER).glob("*.jpg")).read_bytes(),
    )
    outcome = chaos.run(fleet, soak, say=lambda line: report(capsys, line))
    report(capsys, outcome.summary())
    assert not outcome.violations, outcome.summary()
