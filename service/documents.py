"""A job as JSON: what GET /jobs and GET /jobs/<id> answer and what a job's webhook carries, one
rendering for both. Torch-free."""

from datetime import datetime, timezone

from sqlalchemy.orm import Session

from service import chains, crud, shards
from service.kinds import KINDS
from service.states import Status
from service.tables import Job

# A manifest's paths a job's params show (the rest are counted: crud.query_expression_of_params).
MANIFEST_SHOWN = 20


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def job_json(job: Job) -> dict:
    return {
        "id": str(job.id),
        "type": job.type,
        "status": job.status,
        "cancel_requested": job.cancel_requested,
        "progress": progress_json(job),
        # Loaded as shown (crud.list_jobs, crud.shown_job): a long manifest cut short in SQL.
        "params": job.shown_params,
        "model_id": str(job.model_id) if job.model_id else None,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "lane": job.lane,
        "priority": job.priority,
        "attempts": job.attempts,
        "worker": job.worker,
        "device": job.device,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "result": job.result,
        "notify": job.notify,
        "parent_id": str(job.parent_id) if job.parent_id else None,
    }


def progress_json(job: Job) -> dict:
    """Done of total units; while the job runs, also what its kind reports within a unit (a training's
    batches), the seconds since this attempt started and an estimate of those left at its pace."""
    progress = {"done": job.progress_done, "total": job.progress_total, "unit": job.progress_unit}
    if job.status != Status.RUNNING or job.started_at is None:
        return progress
    elapsed = (datetime.now(timezone.utc) - job.started_at).total_seconds()
    fraction = done_fraction(job)
    remaining = elapsed * (1 - fraction) / fraction if fraction else None
    return {
        **progress,
        **(job.progress_detail or {}),
        "elapsed_seconds": round(elapsed, 1),
        "remaining_seconds": round(remaining, 1) if remaining is not None else None,
    }


def done_fraction(job: Job) -> float | None:
    if not job.progress_total:
        return None
    batches = (job.progress_detail or {}).get("batches") or {}
    within = batches["done"] / batches["total"] if batches.get("total") else 0.0
    return min(1.0, (job.progress_done + within) / job.progress_total)


def shown(session: Session, job: Job) -> Job:
    """The job read again with its params as lists show them."""
    return crud.shown_job(session, job_id=job.id, manifest_shown=MANIFEST_SHOWN)


def job_document(session: Session, job: Job) -> dict:
    """GET /jobs/<id>'s answer: the job, and a sharded job's summary of its shards."""
    job = shown(session, job)
    document = job_json(job)
    if KINDS[job.type].shard is not None and job.status == Status.RUNNING:
        document["summary"] = shards.job_summary(session, job=job)
    elif KINDS[job.type].shard is not None and job.result and "labels" in job.result:
        # An ended job's summary was taken when it ended: no need to count again at every poll.
        document["summary"] = {k: v for k, v in job.result.items() if k not in ("results", "output")}
    if (chain := chains.chain_of(session, job=job)) is not None:
        document["chain"] = chain
    return document
