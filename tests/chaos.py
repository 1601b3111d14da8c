"""The chaos soak (issue 31): mixed work from several tokens on a fleet (tests/fleet.py) while a fault
injector kills (SIGKILL), freezes (SIGSTOP past the lease, then SIGCONT) and cuts off worker hosts and
restarts Redis (empty) and PostgreSQL. Then the faults stop, everything is healed and restarted, the work
drains, and the end is checked: the fleet's invariants (tests/fleet_invariants.py), every POST /predict
answered (200, or 503/504 with a JSON error), and every API error one of the kinds docs/api.md lists.

Every choice (what each token does next, which fault, where, for how long, the pauses) is drawn from
random generators seeded by one printed seed: a failing run is replayed with that seed (the choices
repeat; what the machine's timing makes of them may differ). Used by tests/test_fleet.py (two minutes)
and benchmarks/bench_chaos.py (ten by default)."""

import contextlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fleet import BUCKET, Fleet, wait_until
from fleet_invariants import Findings, check

# The tiny network of the drills, from scratch: seconds an epoch.
TRAIN = {
    "arch": "mobilenet_v3_small",
    "weights": "none",
    "batch_size": 8,
    "input_size": 64,
    "freeze": 0,
    "learning_rate": 0.003,
    "mix": 0.0,
}
# A token's next action and its weight; a token keeps at most LIVE_JOBS jobs in flight (so that the work
# drains in a bounded time), and the soak at most LIVE_TRAININGS trainings.
ACTIONS = {"predict": 5, "folder": 2, "bucket": 2, "train": 1, "cancel": 1, "delete": 2, "look": 2}
LIVE_JOBS, LIVE_TRAININGS = 3, 2
FAULTS = ("kill", "freeze", "cut", "restart_redis", "restart_postgres")
# The error answers docs/api.md lists (status, code) for what the soak does: unknown (deleted) jobs 404;
# cancelling a finished job, deleting a live one 409; any route while the database is down 503
# database_unavailable; POST /predict with no worker answering in 30 s 504.
DOCUMENTED_ERRORS = {
    (404, "not_found"),
    (409, "job_finished"),
    (409, "job_not_finished"),
    (503, "database_unavailable"),
    (504, "prediction_timeout"),
}


@dataclass
class Soak:
    """One run's settings: its length, its seed, and what the workload reads."""

    seconds: float
    seed: int
    folder: Path  # a folder of photos on the photo volume
    bucket_prefix: str  # the same photos in the bucket: s3://BUCKET/<prefix>/
    photo: bytes  # what POST /predict sends
    tokens: int = 3
    fault_gap: tuple[float, float] = (4.0, 12.0)  # seconds between two faults, drawn
    drain_seconds: float = 300


@dataclass
class Outcome:
    seed: int
    seconds: float
    submitted: Counter = field(default_factory=Counter)  # by kind
    statuses: Counter = field(default_factory=Counter)  # final, by status
    predicts: Counter = field(default_factory=Counter)  # by answer
    faults: Counter = field(default_factory=Counter)  # by kind
    fault_log: list = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    drained_seconds: float | None = None

    @property
    def violations(self) -> list[str]:
        return self.findings.violations

    def summary(self) -> str:
        return (
            f"seed {self.seed}, {self.seconds:.0f}s of work and faults, drained in "
            f"{self.drained_seconds if self.drained_seconds is None else round(self.drained_seconds)}s\n"
            f"  jobs submitted: {dict(self.submitted)}; ended: {dict(self.statuses)}\n"
            f"  files: {self.findings.counts['result rows']} result rows\n"
            f"  POST /predict answers: {dict(self.predicts)}\n"
            f"  faults: {dict(self.faults)}\n"
            f"  checked: {dict(self.findings.counts)}\n"
            f"  violations: {len(self.violations)}" + "".join(f"\n    - {v}" for v in self.violations)
        )


class Token(threading.Thread):
    """One API token's work: jobs of every kind, POST /predict, cancels, deletes, looks."""

    def __init__(self, fleet: Fleet, soak: Soak, number: int, stop: threading.Event, trainings: threading.Semaphore):
        super().__init__(name=f"token-{number}", daemon=True)
        self.fleet, self.soak, self.stop = fleet, soak, stop
        self.random = random.Random(soak.seed * 1000 + number)
        self.client = fleet.client(fleet.token(f"soak-{number}", ["jobs:read", "jobs:write"]))
        self.trainings = trainings
        self.live: dict[str, str] = {}  # job id -> kind
        self.ended: list[str] = []
        self.deleted: set[str] = set()
        self.accepted: set[str] = set()
        self.submitted = Counter()
        self.predicts = Counter()
        self.no_answer: list[str] = []

    def run(self) -> None:
        actions, weights = zip(*ACTIONS.items(), strict=True)
        while not self.stop.is_set():
            action = self.random.choices(actions, weights)[0]
            try:
                getattr(self, action)()
            except Exception as e:  # no answer at all (a timeout, a refused connection): recorded, never raised
                self.no_answer.append(f"{self.name} {action}: {type(e).__name__}: {e}")
            self.stop.wait(self.random.uniform(0.2, 1.5))

    # Actions.

    def predict(self) -> None:
        answer = self.client.post("/predict", files={"file": ("photo.jpg", self.soak.photo, "image/jpeg")})
        body = safe_json(answer)
        error = (body or {}).get("error") or {}
        if answer.status_code == 200 and body and body.get("prediction"):
            self.predicts["200"] += 1
            self.accepted.add(body["job_id"])
        elif answer.status_code in (503, 504) and error.get("code") and error.get("message"):
            self.predicts[f"{answer.status_code} {error['code']}"] += 1
        else:
            self.predicts[f"{answer.status_code} unclear"] += 1
            self.no_answer.append(f"POST /predict answered {answer.status_code}: {answer.text[:200]}")
        if error.get("details") and error["details"].get("job_id"):
            self.accepted.add(error["details"]["job_id"])

    def folder(self) -> None:
        shard_size = self.random.choice((20, 40, 80))
        self._submit(
            "folder", {"type": "predict", "input": {"folder": str(self.soak.folder)}, "shard_size": shard_size}
        )

    def bucket(self) -> None:
        shard_size = self.random.choice((20, 40, 80))
        request = {"type": "predict", "input": {"url": f"s3://{BUCKET}/{self.soak.bucket_prefix}/"}}
        self._submit("bucket", {**request, "shard_size": shard_size})

    def train(self) -> None:
        if not self.trainings.acquire(blocking=False):
            return self.predict()
        epochs = self.random.choice((2, 3))
        if not self._submit("train", {"type": "train", "params": {**TRAIN, "epochs": epochs}}):
            self.trainings.release()

    def _submit(self, kind: str, request: dict) -> bool:
        if len(self.live) >= LIVE_JOBS:
            self.look()
            return False
        answer = self.client.post("/jobs", json=request)
        if answer.status_code != 202:
            return False
        job_id = answer.json()["id"]
        self.live[job_id] = kind
        self.accepted.add(job_id)
        self.submitted[kind] += 1
        return True

    def cancel(self) -> None:
        if self.live:
            self.client.post(f"/jobs/{self.random.choice(sorted(self.live))}/cancel")

    def delete(self) -> None:
        if self.ended:
            job_id = self.ended.pop(self.random.randrange(len(self.ended)))
            if self.client.call("DELETE", f"/jobs/{job_id}").status_code == 204:
                self.deleted.add(job_id)

    def look(self) -> None:
        """Read the live jobs; those that ended may be deleted later (and free a training's place)."""
        for job_id in sorted(self.live):
            answer = self.client.get(f"/jobs/{job_id}")
            if answer.status_code == 200 and answer.json()["status"] in ("succeeded", "failed", "cancelled"):
                if self.live.pop(job_id) == "train":
                    self.trainings.release()
                self.ended.append(job_id)


def safe_json(answer) -> dict | None:
    with contextlib.suppress(ValueError):
        return answer.json()
    return None


class Injector(threading.Thread):
    """One fault at a time, drawn: its kind, its target and its length."""

    def __init__(self, fleet: Fleet, soak: Soak, stop: threading.Event):
        super().__init__(name="faults", daemon=True)
        self.fleet, self.soak, self.stop = fleet, soak, stop
        self.random = random.Random(soak.seed)
        self.log: list[tuple[float, str, str, float]] = []  # at, kind, target, seconds
        self.started = time.monotonic()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(self.random.uniform(*self.soak.fault_gap)):
                kind = self.random.choice(FAULTS)
                worker = self.random.choice(sorted(self.fleet.workers))
                length = self.random.uniform(2, 3) * self.fleet.settings.job_lease_seconds
                at = time.monotonic()
                target = getattr(self, kind)(self.fleet.workers[worker], length)
                self.log.append((round(at - self.started, 1), kind, target, round(time.monotonic() - at, 1)))
        except BaseException as e:  # a fault that could not be made: the soak reports it
            self.error = e

    def kill(self, worker, _length: float) -> str:
        """SIGKILL every process of the host, then start its worker again, as a machine that reboots."""
        worker.kill()
        self.stop.wait(self.random.uniform(1, 3))
        worker.start(wait=False)
        return worker.host.name

    def freeze(self, worker, length: float) -> str:
        frozen = worker.freeze()
        try:
            time.sleep(length)
        finally:
            worker.thaw(frozen)
        return worker.host.name

    def cut(self, worker, length: float) -> str:
        self.fleet.network.cut(worker.host)
        try:
            time.sleep(length)
        finally:
            self.fleet.network.heal(worker.host)
        return worker.host.name

    def restart_redis(self, _worker, _length: float) -> str:
        self.fleet.redis.kill()
        self.fleet.redis.start()
        return "redis"

    def restart_postgres(self, _worker, _length: float) -> str:
        self.fleet.postgres.stop()
        time.sleep(self.random.uniform(1, 4))
        self.fleet.postgres.start()
        return "postgres"


def run(fleet: Fleet, soak: Soak, say=print) -> Outcome:
    """The soak: work and faults for soak.seconds, then the drain and the checks."""
    say(f"chaos soak: seed {soak.seed}, {soak.seconds:.0f}s, {soak.tokens} tokens, faults {', '.join(FAULTS)}")
    stop, trainings = threading.Event(), threading.Semaphore(LIVE_TRAININGS)
    tokens = [Token(fleet, soak, n, stop, trainings) for n in range(soak.tokens)]
    injector = Injector(fleet, soak, stop)
    started = time.monotonic()
    for thread in (*tokens, injector):
        thread.start()
    stop.wait(soak.seconds)
    stop.set()
    for thread in (*tokens, injector):
        thread.join(timeout=180)
    outcome = Outcome(seed=soak.seed, seconds=time.monotonic() - started)
    for at, kind, target, seconds in injector.log:
        outcome.faults[kind] += 1
        say(f"  fault at {at:6.1f}s: {kind} {target} ({seconds:.1f}s)")
    outcome.fault_log = injector.log

    heal(fleet)
    outcome.drained_seconds = drain(fleet, soak.drain_seconds)
    for token in tokens:
        token.look()
        outcome.submitted.update(token.submitted)
        outcome.predicts.update(token.predicts)
    accepted = set().union(*(token.accepted for token in tokens))
    deleted = set().union(*(token.deleted for token in tokens))
    outcome.findings = check(fleet, accepted=accepted, deleted=deleted)
    outcome.statuses = Counter(
        {k.removeprefix("jobs "): n for k, n in outcome.findings.counts.items() if k.startswith("jobs ")}
    )
    violations = outcome.findings.violations
    if injector.error is not None:
        violations.append(f"the fault injector failed: {injector.error!r}")
    if outcome.drained_seconds is None:
        violations.append(f"the work had not drained {soak.drain_seconds:.0f}s after the faults stopped")
    for token in tokens:
        violations.extend(token.no_answer)
        violations.extend(undocumented_errors(token.client.answers))
    return outcome


def heal(fleet: Fleet) -> None:
    """Every link up, every process running again, every worker started: the faults are over."""
    for worker in fleet.workers.values():
        with contextlib.suppress(RuntimeError):
            fleet.network.heal(worker.host)
        worker.thaw(worker.host.pids())
        if not worker.running():
            worker.start(wait=False)
    for worker in fleet.workers.values():
        wait_until(worker.ready, 180, f"worker {worker.host.name} up again", 0.5)


def drain(fleet: Fleet, timeout: float) -> float | None:
    """Seconds until no job is queued or running (None: not within ``timeout``)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(fleet.database_url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            with contextlib.suppress(Exception), engine.connect() as db:
                live = db.execute(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")).scalar()
                if live == 0:
                    return time.monotonic() - started
            time.sleep(1)
        return None
    finally:
        engine.dispose()


def undocumented_errors(answers) -> list[str]:
    """Error answers that are not JSON errors of a kind docs/api.md lists."""
    found = []
    for method, route, status, body in answers:
        if status < 400:
            continue
        error = (body or {}).get("error") or {}
        if (status, error.get("code")) not in DOCUMENTED_ERRORS or not error.get("message"):
            found.append(f"{method} {route} answered {status} {error.get('code') or body}")
    return found
