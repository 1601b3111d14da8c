"""POST /jobs, GET /jobs, GET /jobs/<id>, cancel and events."""

import base64
import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path

from flask import Blueprint, jsonify, request
from pydantic import TypeAdapter
from sqlalchemy.exc import IntegrityError

from api import enqueue, services
from api.errors import APIError
from api.schemas import JobRequest, PredictJobRequest
from service import crud
from service.models import JOB_STATUSES, JOB_TYPES, Job

blueprint = Blueprint("jobs", __name__)
job_request = TypeAdapter(JobRequest)


def job_json(job: Job) -> dict:
    return {
        "id": str(job.id),
        "type": job.type,
        "status": job.status,
        "progress": {"done": job.progress_done, "total": job.progress_total, "unit": job.progress_unit},
        "params": job.params,
        "model_id": str(job.model_id) if job.model_id else None,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempts": job.attempts,
        "worker": job.worker,
        "device": job.device,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "result": job.result,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def parse_job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise APIError(404, "not_found", f"no job {text!r}: job ids are UUIDs") from None


def json_body() -> object:
    body = request.get_json(silent=True)
    if body is None:
        raise APIError(400, "invalid_json", "the request body must be JSON (Content-Type: application/json)")
    return body


@blueprint.post("/jobs")
def submit_job():
    body = json_body()
    spec = job_request.validate_python(body)
    key = request.headers.get("Idempotency-Key")
    body_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    with services().sessions() as session:
        if key and (existing := crud.get_job_by_idempotency_key(session, key=key)) is not None:
            return replay(existing, body_hash)
        model_id = _resolve_model_id(session, spec) if isinstance(spec, PredictJobRequest) else None
        params = _checked_params(spec)
        try:
            job = crud.create_job(
                session,
                job_type=spec.type,
                params=params,
                model_id=model_id,
                progress_unit="epochs" if spec.type == "train" else "files",
                idempotency_key=key,
                request_hash=body_hash,
            )
            session.commit()
        except IntegrityError:
            # A concurrent request with the same key committed first: answer as its retry.
            session.rollback()
            return replay(crud.get_job_by_idempotency_key(session, key=key), body_hash)
        payload = job_json(job)
    enqueue(spec.type, payload["id"])
    return jsonify(payload), 202, {"Location": f"/jobs/{payload['id']}"}


def replay(existing: Job, body_hash: str):
    """The answer to a retried submission: the same job, or 409 when the key came with another body."""
    if existing.request_hash != body_hash:
        raise APIError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different request body")
    return jsonify(job_json(existing)), 200, {"Location": f"/jobs/{existing.id}"}


def _checked_params(spec) -> dict:
    """The job's params with every path resolved and checked against the allowed roots."""
    if spec.type == "train":
        params = spec.params.model_dump(exclude_none=True)
        if "data_dir" in params:
            params["data_dir"] = str(inside_roots(params["data_dir"], "params.data_dir", want_dir=True))
        return params
    source = spec.input.model_dump(exclude_none=True)
    if "folder" in source:
        source["folder"] = str(inside_roots(source["folder"], "input.folder", want_dir=True))
    else:
        source["paths"] = [str(inside_roots(p, "input.paths", want_dir=False)) for p in source["paths"]]
    return {"model": spec.model, "input": source}


def inside_roots(path: str, field: str, *, want_dir: bool) -> Path:
    """The real path, if it lies inside an allowed input root; symlinks and '..' are resolved first."""
    roots = services().settings.input_roots
    real = Path(path).resolve()
    if not any(real.is_relative_to(root) for root in roots):
        raise APIError(
            400,
            "path_not_allowed",
            f"{field}: {path!r} is outside the allowed input roots (GROCERY_INPUT_ROOTS: {':'.join(map(str, roots))})",
        )
    if want_dir and not real.is_dir():
        raise APIError(400, "path_not_found", f"{field}: {path!r} is not a directory")
    return real


def _resolve_model_id(session, spec: PredictJobRequest) -> uuid.UUID:
    model = crud.resolve_model(session, reference=spec.model)
    if model is None:
        raise APIError(404, "model_not_found", f"no model {spec.model!r} (a model id, 'latest' or an alias)")
    return model.id


def existing_job(session, job_id: str) -> Job:
    job = crud.get_job(session, job_id=parse_job_id(job_id))
    if job is None:
        raise APIError(404, "not_found", f"no job {job_id}")
    return job


@blueprint.get("/jobs/<job_id>")
def get_job(job_id: str):
    with services().sessions() as session:
        return jsonify(job_json(existing_job(session, job_id)))


@blueprint.get("/jobs")
def list_jobs():
    job_type, status = request.args.get("type"), request.args.get("status")
    if job_type and job_type not in JOB_TYPES:
        raise APIError(400, "invalid_parameter", f"type must be one of {list(JOB_TYPES)}")
    if status and status not in JOB_STATUSES:
        raise APIError(400, "invalid_parameter", f"status must be one of {list(JOB_STATUSES)}")
    limit = _int_arg("limit", default=50, low=1, high=500)
    after = decode_cursor(request.args["cursor"]) if request.args.get("cursor") else None
    with services().sessions() as session:
        jobs = crud.list_jobs(session, job_type=job_type, status=status, limit=limit, after=after)
        next_cursor = encode_cursor(jobs[-1]) if len(jobs) == limit else None
        return jsonify({"jobs": [job_json(j) for j in jobs], "next_cursor": next_cursor})


def _int_arg(name: str, *, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise APIError(400, "invalid_parameter", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), uuid.UUID(job_id)
    except ValueError:
        raise APIError(400, "invalid_cursor", "cursor is not one this API returned") from None


@blueprint.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    with services().sessions() as session:
        job = existing_job(session, job_id)
        outcome = crud.request_cancel(session, job_id=job.id)
        session.commit()
        session.refresh(job)
        if outcome is None:
            raise APIError(409, "job_finished", f"job {job_id} already ended {job.status}")
        return jsonify(job_json(job)), 202 if outcome == "running" else 200


@blueprint.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    with services().sessions() as session:
        events = crud.list_events(session, job_id=existing_job(session, job_id).id)
        return jsonify({"events": [{"at": _iso(e.at), "kind": e.kind, "data": e.data} for e in events]})


@blueprint.get("/jobs/<job_id>/results")
def job_results(job_id: str):
    limit = _int_arg("limit", default=100, low=1, high=1000)
    after = _int_arg("cursor", default=0, low=0, high=2**62) or None
    with services().sessions() as session:
        rows = crud.list_predictions(session, job_id=existing_job(session, job_id).id, limit=limit, after_id=after)
        results = [
            {
                "path": r.path,
                "label": r.label,
                "class_id": r.class_id,
                "confidence": r.confidence,
                "top5": r.top5,
                "error": {"code": r.error_code, "message": r.error_message} if r.error_code else None,
            }
            for r in rows
        ]
        next_cursor = str(rows[-1].id) if len(rows) == limit else None
        return jsonify({"results": results, "next_cursor": next_cursor})
