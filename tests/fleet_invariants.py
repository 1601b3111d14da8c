"""What must hold on a fleet after any fault, read from PostgreSQL (on its own clock) and the bucket:

- every accepted job is in the store (but the deleted), and has ended or lives: running on a live worker
  (its shards, for a listed prediction job), or queued for one;
- a finished prediction job has exactly one result row per file it listed (none missing unless it was
  cancelled, none twice, none of a file it did not list);
- a training job registered at most one model, the one of the attempt that finished it, and its epochs were
  each reported once (no epoch of a superseded attempt taken into its history), with the model's files in
  the bucket under that attempt's prefix;
- nothing of a deleted job is left: no row of it, none of its uploads or training attempts in the bucket,
  no export of it on the API host.

check() returns the counts it went through and the violations it found (the target is none)."""

import uuid
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import create_engine, text

FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Findings:
    counts: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counted = ", ".join(f"{name} {n}" for name, n in sorted(self.counts.items()))
        return f"{counted}; violations {len(self.violations)}" + "".join(f"\n  - {v}" for v in self.violations)


def check(fleet, *, accepted: set[str], deleted: set[str] = frozenset()) -> Findings:
    findings = Findings()
    engine = create_engine(fleet.database_url)
    try:
        with engine.connect() as db:
            lease = fleet.settings.job_lease_seconds + fleet.settings.reconcile_seconds
            _accepted_jobs_live(db, findings, accepted - deleted, lease)
            _one_row_per_file(db, findings)
            _one_model_per_training(db, fleet, findings)
            _nothing_left_of_deleted(db, fleet, findings, deleted)
    finally:
        engine.dispose()
    return findings


LIVE_WORKERS = text(
    "SELECT name, queues FROM workers WHERE status <> 'offline' "
    "AND heartbeat_at > now() - make_interval(secs => :seconds)"
)


def _accepted_jobs_live(db, findings: Findings, accepted: set[str], lease: float) -> None:
    jobs = {
        str(row.id): row
        for row in db.execute(text("SELECT id, type, status, worker, shards_total, error_code FROM jobs"))
    }
    live = {name for name, _ in db.execute(LIVE_WORKERS, {"seconds": lease})}
    findings.counts["jobs"] = len(jobs)
    findings.counts.update(f"jobs {row.status}" for row in jobs.values())
    # Why jobs failed, for the report: a fault may fail a job (its attempts spent), never lose one.
    findings.counts.update(f"failed {row.type}: {row.error_code}" for row in jobs.values() if row.status == "failed")
    for job_id in sorted(accepted - set(jobs)):
        findings.violations.append(f"job {job_id} was accepted but is not in the store")
    for job_id, job in jobs.items():
        if job.status in FINISHED or job.status == "queued":
            continue
        if job.shards_total is None or job.type == "train":
            if job.worker not in live:
                findings.violations.append(f"job {job_id} runs on {job.worker}, which is not live")
            continue
        shards = db.execute(
            text("SELECT id, worker FROM job_shards WHERE job_id = :id AND status = 'running'"), {"id": job_id}
        )
        for shard_id, worker in shards:
            if worker not in live:
                findings.violations.append(f"shard {shard_id} of job {job_id} runs on {worker}, which is not live")


ROWS_PER_JOB = text(
    """
    SELECT j.id, j.status, j.result->>'total' AS total,
           (SELECT count(*) FROM job_shards s, jsonb_array_elements_text(s.paths) p WHERE s.job_id = j.id) AS listed,
           (SELECT count(DISTINCT p) FROM job_shards s, jsonb_array_elements_text(s.paths) p
             WHERE s.job_id = j.id) AS listed_distinct,
           (SELECT count(*) FROM predictions r WHERE r.job_id = j.id) AS rows,
           (SELECT count(DISTINCT r.path) FROM predictions r WHERE r.job_id = j.id) AS distinct_rows,
           (SELECT count(*) FROM predictions r WHERE r.job_id = j.id AND r.path NOT IN
              (SELECT p FROM job_shards s, jsonb_array_elements_text(s.paths) p WHERE s.job_id = j.id)) AS unlisted,
           (SELECT count(*) FROM job_shards s WHERE s.job_id = j.id AND s.status IN ('queued', 'running')) AS open
      FROM jobs j
     WHERE j.shards_total IS NOT NULL AND j.status IN ('succeeded', 'failed', 'cancelled')
    """
)


def _one_row_per_file(db, findings: Findings) -> None:
    for job in db.execute(ROWS_PER_JOB):
        findings.counts["prediction jobs checked"] += 1
        findings.counts["result rows"] += job.rows
        problems = []
        if job.rows != job.distinct_rows:
            problems.append(f"{job.rows - job.distinct_rows} files have two rows")
        if job.listed != job.listed_distinct:
            problems.append(f"{job.listed - job.listed_distinct} files listed twice")
        if job.unlisted:
            problems.append(f"{job.unlisted} rows of files it did not list")
        if job.status != "cancelled" and job.rows != job.listed:
            problems.append(f"{job.listed - job.rows} of its {job.listed} files have no row")
        if job.status != "cancelled" and job.total is not None and int(job.total) != job.listed:
            problems.append(f"its result counts {job.total} files, it listed {job.listed}")
        if job.open:
            problems.append(f"{job.open} of its shards still queued or running")
        for problem in problems:
            findings.violations.append(f"{job.status} job {job.id}: {problem}")


def _one_model_per_training(db, fleet, findings: Findings) -> None:
    trainings = db.execute(text("SELECT id, status, attempts FROM jobs WHERE type = 'train'")).all()
    for job_id, status, attempts in trainings:
        findings.counts["training jobs checked"] += 1
        models = db.execute(text("SELECT artifact_path FROM models WHERE job_id = :id"), {"id": job_id}).scalars()
        models = list(models)
        epochs = [
            int(e)
            for e in db.execute(
                text("SELECT data->>'epoch' FROM job_events WHERE job_id = :id AND kind = 'epoch' ORDER BY id"),
                {"id": job_id},
            ).scalars()
        ]
        findings.counts["epochs reported"] += len(epochs)
        if epochs != sorted(set(epochs)):
            findings.violations.append(f"training {job_id} reported its epochs {epochs}: some twice or out of order")
        expected = 1 if status == "succeeded" else 0
        if len(models) != expected:
            findings.violations.append(f"{status} training {job_id} registered {len(models)} models")
            continue
        if not models:
            continue
        final = f"/{job_id}/attempt-{attempts}"
        if not models[0].rstrip("/").endswith(final):
            findings.violations.append(f"training {job_id}'s model is {models[0]}, not its final attempt's {final}")
        elif not fleet.objects(models[0].split("/", 3)[3].rstrip("/") + "/"):
            findings.violations.append(f"training {job_id}'s model has no files in the bucket")


TABLES_OF_A_JOB = (
    "jobs WHERE id",
    "job_shards WHERE job_id",
    "predictions WHERE job_id",
    "job_events WHERE job_id",
    "deliveries WHERE job_id",
)


def _nothing_left_of_deleted(db, fleet, findings: Findings, deleted: set[str]) -> None:
    kept_models = {
        path.split("/", 3)[3].rstrip("/") + "/"
        for path in db.execute(text("SELECT artifact_path FROM models")).scalars()
        if path.startswith("s3://")
    }
    for job_id in sorted(deleted):
        findings.counts["deleted jobs checked"] += 1
        for table in TABLES_OF_A_JOB:
            left = db.execute(text(f"SELECT count(*) FROM {table} = :id"), {"id": uuid.UUID(job_id)}).scalar()
            if left:
                findings.violations.append(f"deleted job {job_id}: {left} rows left in {table.split()[0]}")
        objects = fleet.objects(f"uploads/{job_id}/")
        objects += [key for key in fleet.objects(f"models/{job_id}/") if not any(map(key.startswith, kept_models))]
        if objects:
            findings.violations.append(f"deleted job {job_id}: {len(objects)} objects left, e.g. {objects[0]}")
        if (fleet.api_host.root / "exports" / job_id).exists():
            findings.violations.append(f"deleted job {job_id}: its export is left on the API host")
