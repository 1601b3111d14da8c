"""What routes share: request parsing, the job a request may see, the quota (their resources: api/resources.py)."""

import uuid

from flask import request
from sqlalchemy.orm import Session

from api import auth
from api.errors import APIError
from service import crud
from service.documents import iso  # noqa: F401 (the routes' one spelling of a moment)
from service.kinds import EVALUATE
from service.states import Status
from service.tables import Job


def json_body() -> object:
    body = request.get_json(silent=True)
    if body is None:
        raise APIError(400, "invalid_json", "the request body must be JSON (Content-Type: application/json)")
    return body


def int_arg(name: str, *, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise APIError(400, "invalid_parameter", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def parse_job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise APIError(404, "not_found", f"no job {text!r}: job ids are UUIDs") from None


def existing_job(session: Session, job_id: str) -> Job:
    """The job, if this request's token may see it: another token's job is as good as absent."""
    job = crud.get_job(session, job_id=parse_job_id(job_id))
    if job is None or not (auth.sees_every_job() or job.owner_token_id == auth.owner_id()):
        raise APIError(404, "not_found", f"no job {job_id}")
    return job


def existing_evaluation(session: Session, job_id: str) -> Job:
    """A succeeded evaluation job this token sees, as a gate names it (404 for one it does not see,
    409 for another kind of job or one that did not succeed)."""
    evaluation = existing_job(session, job_id)
    if evaluation.type != EVALUATE.name or evaluation.status != Status.SUCCEEDED:
        raise APIError(409, "not_an_evaluation", f"job {evaluation.id} is not a succeeded evaluation job")
    return evaluation


QUOTA_RETRY_SECONDS = 30


def check_quota(session: Session, *, files: int) -> None:
    """The owner's queued plus running jobs, and their files, stay within its quota (429 beyond).
    Holds the owner's lock until the caller commits, so concurrent submissions count each other."""
    jobs_limit, files_limit = auth.quotas()
    if files > files_limit:  # never, however long one waits: not a 429
        raise APIError(
            413, "too_many_files", f"{files} files: at most {files_limit} in flight (GROCERY_TOKEN_MAX_ACTIVE_FILES)"
        )
    owner = auth.owner_id()
    crud.lock_owner(session, owner=owner)
    jobs, in_flight = crud.active_work(session, owner=owner)
    retry = {"Retry-After": str(QUOTA_RETRY_SECONDS)}
    if jobs + 1 > jobs_limit:
        raise APIError(
            429,
            "too_many_jobs",
            f"{jobs} of your jobs are queued or running: at most {jobs_limit} (GROCERY_TOKEN_MAX_ACTIVE_JOBS); "
            "retry when some have ended",
            {"active_jobs": jobs, "limit": jobs_limit},
            headers=retry,
        )
    if in_flight + files > files_limit:
        raise APIError(
            429,
            "too_many_files_in_flight",
            f"your queued and running jobs hold {in_flight} files, this one {files}: at most {files_limit} "
            "(GROCERY_TOKEN_MAX_ACTIVE_FILES); retry when some have ended",
            {"files_in_flight": in_flight, "limit": files_limit},
            headers=retry,
        )
