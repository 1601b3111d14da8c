"""POST /jobs, GET /jobs, GET /jobs/<id>, cancel and events."""

import base64
import hashlib
import json
import uuid
from datetime import datetime

from flask import Blueprint, jsonify, request
from pydantic import TypeAdapter

from api import auth, uploads
from api.deps import check_quota, existing_evaluation, existing_job, int_arg, iso, json_body
from api.errors import APIError
from api.resources import resources
from api.schemas import JobRequest
from grocery import storage
from grocery.config import TrainConfig
from service import confinement, contract, crud, lifecycle, registry, waiting, webhooks
from service.documents import MANIFEST_SHOWN, job_document, job_json, shown
from service.kinds import JOB_TYPES, KINDS, PREDICT, JobKind, NewJob
from service.specs import (
    EvaluateInput,
    EvaluateJobRequest,
    EvaluateSpec,
    LabelledSet,
    NextSteps,
    Notify,
    PredictInput,
    PredictSpec,
    PromoteJobRequest,
    PromoteSpec,
    TrainJobRequest,
    TrainParams,
)
from service.states import FINISHED_STATUSES, Lane, Priority, Status
from service.tables import Job, Model

blueprint = Blueprint("jobs", __name__)
job_request = TypeAdapter(JobRequest)


def with_waiting(session, job: Job, document: dict) -> dict:
    """The document with, while the job waits, where it stands and why (no key for one that does not)."""
    why = waiting.why_waiting(session, job=job, settings=resources().settings)
    return document if why is None else {**document, "waiting": why}


def waiting_job_json(session, job: Job) -> dict:
    """A job as a single job's answers show it (GET /jobs/<id>, a submission's): with, while it waits,
    where it stands and why (service/waiting.py). Lists leave that out: it costs a few queries a job."""
    return with_waiting(session, job, job_json(job))


def idempotency_key() -> str | None:
    """The Idempotency-Key header: 1 to 255 printable ASCII characters, a key of this owner's only."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(" " <= c <= "~" for c in key):
        raise APIError(400, "invalid_idempotency_key", "Idempotency-Key: give 1 to 255 printable ASCII characters")
    return key


@blueprint.post("/jobs")
def submit_job():
    key = idempotency_key()
    if request.mimetype == "multipart/form-data":
        return submit_upload(key)
    body = json_body()
    asked = job_request.validate_python(body)
    body_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    notify = checked_notify(asked.notify)  # its name resolved before a database session is held
    with resources().sessions() as session:
        if key and (existing := crud.get_job_by_idempotency_key(session, key=key, owner=auth.owner_id())) is not None:
            return replay(session, existing, body_hash)
        model = resolved_model(session, asked.model) if asked.model is not None else None
        spec = checked_spec(session, asked, model)
        new = NewJob(
            kind=KINDS[asked.type],
            params=spec.stored(),
            owner_token_id=auth.owner_id(),
            files_named=spec.files_named,
            model_id=model.id if model else None,
            idempotency_key=key,
            request_hash=body_hash,
            lane=lane_of(KINDS[asked.type], spec.files_named),
            priority=asked.priority,
            notify=notify,
            next_steps=checked_next_steps(asked, spec),
        )
        job, created = record_job(session, new)
        return accepted(session, job) if created else replay(session, job, body_hash)


def submit_upload(key: str | None):
    """A prediction job on uploaded images: the files are stored first, then the row, then the queue."""
    form = uploads.upload_form(request.form)
    check_shard_size(form.shard_size, files=None)  # before anything is stored
    output_url = checked_output_url(form.output_url) if form.output_url is not None else None
    notify = checked_notify(form.notify())
    body_hash = uploads.upload_digest(request.form, request.files)
    settings = resources().settings
    with resources().sessions() as session:
        if key and (existing := crud.get_job_by_idempotency_key(session, key=key, owner=auth.owner_id())) is not None:
            return replay(session, existing, body_hash)
        model_id = resolved_model(session, form.model).id
        job_id = uuid.uuid4()
        job_uploads = storage.join(settings.upload_dir, str(job_id))
        try:
            source = uploads.keep_upload(
                request.files,
                job_uploads,
                max_files=min(settings.max_upload_files, settings.max_job_files),
                max_bytes=settings.max_job_bytes,
            )
            check_shard_size(form.shard_size, files=source["upload"]["files"])
            output = {"url": output_url} if output_url is not None else None
            options = form.model_dump(include={"model", "shard_size", "max_failed_fraction"})
            spec = PredictSpec.model_validate({**options, "input": source, "output": output})
            new = NewJob(
                kind=PREDICT,
                params=spec.stored(),
                owner_token_id=auth.owner_id(),
                files_named=spec.files_named,
                model_id=model_id,
                id=job_id,
                idempotency_key=key,
                request_hash=body_hash,
                lane=lane_of(PREDICT, spec.files_named),
                priority=form.priority,
                notify=notify,
            )
            job, created = record_job(session, new)
        except BaseException:
            lifecycle.remove_files([job_uploads])
            raise
        if not created:
            lifecycle.remove_files([job_uploads])
            return replay(session, job, body_hash)
        return accepted(session, job)


def record_job(session, new: NewJob) -> tuple[Job, bool]:
    """Submit the job (priority, quota, row, commit, queue). Returns (job, False) when a concurrent
    request with the same Idempotency-Key committed first."""
    check_priority(new.priority)
    check_quota(session, files=new.files_named)
    job = contract.submit(session, resources().celery, new)
    if job is None:
        return crud.get_job_by_idempotency_key(session, key=new.idempotency_key, owner=new.owner_token_id), False
    return job, True


def lane_of(kind: JobKind, files: int) -> Lane:
    """Jobs of a few files named up front (a manifest, uploads), of a kind with that lane, are interactive."""
    small = 0 < files <= resources().settings.interactive_max_files
    return Lane.INTERACTIVE if kind.interactive and small else Lane.BULK


def check_priority(priority: Priority) -> None:
    if priority == Priority.HIGH and not auth.sees_every_job():
        raise APIError(403, "forbidden", "priority 'high' is for tokens with the 'ops' scope", {"field": "priority"})


def accepted(session, job: Job):
    return jsonify(waiting_job_json(session, shown(session, job))), 202, {"Location": f"/jobs/{job.id}"}


def replay(session, existing: Job, body_hash: str):
    """The answer to a retried submission: the same job, or 409 when the key came with another body."""
    if existing.request_hash != body_hash:
        raise APIError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different request body")
    return jsonify(waiting_job_json(session, shown(session, existing))), 200, {"Location": f"/jobs/{existing.id}"}


def checked_spec(session, asked: JobRequest, model: Model | None) -> TrainParams | PredictSpec | EvaluateSpec:
    """The job's spec with every path resolved and confined to this token's roots."""
    settings = resources().settings
    scope = confinement.request_scope(settings, auth.token_roots())
    try:
        if isinstance(asked, TrainJobRequest):
            return confinement.training_files(asked.params, settings, auth.token_roots())
        if isinstance(asked, PromoteJobRequest):
            return checked_promotion(session, asked, model)
        if isinstance(asked, EvaluateJobRequest):
            labelled = checked_labelled_set(asked.input, model.label_level, scope, shard_size=asked.shard_size)
            spec = EvaluateSpec(model=asked.model, **dict(labelled))
        else:
            spec = asked.spec(checked_source(asked.input, scope))
    except confinement.PathRefused as e:
        raise APIError(400, e.code, str(e), {"field": e.field}) from None
    check_shard_size(asked.shard_size, files=len(spec.input.paths) if spec.input.paths is not None else None)
    if spec.output is not None:
        spec.output.url = checked_output_url(spec.output.url)
    return spec


def checked_labelled_set(
    labelled: EvaluateInput, default_level: str, scope: confinement.ReadScope, *, shard_size: int | None
) -> LabelledSet:
    """An evaluation's labelled set, confined: a split's files and labels from its index, a manifest's,
    or a folder or prefix whose subfolders name the classes (labels read by the workers)."""
    level = (labelled.index.label_level if labelled.index else None) or default_level
    named = labelled.model_dump(exclude_none=True, exclude={"manifest"})
    labels = None
    if labelled.index is not None:
        index = labelled.index
        settings, roots = resources().settings, auth.token_roots()
        paths, labels = confinement.labelled_index(index.data_dir, index.split, level, settings, roots)
        source = {"paths": paths}
    elif labelled.manifest is not None:
        check_manifest_size(len(labelled.manifest), "input.manifest")
        source = {"paths": [str(scope.real_path(f.path, "input.manifest")) for f in labelled.manifest]}
        labels, named = [f.label for f in labelled.manifest], {"manifest": {"files": len(labelled.manifest)}}
    else:
        folder = PredictInput(folder=labelled.folder, url=labelled.url, pattern=labelled.pattern)
        source = checked_source(folder, scope)
    values = {"input": source, "labels": labels, "label_level": level, "named": named, "shard_size": shard_size}
    return LabelledSet.model_validate(values)


def checked_promotion(session, asked: PromoteJobRequest, model: Model) -> PromoteSpec:
    """A promotion moves an alias, as PUT /models/aliases does: an ops token's work, on a gate's
    evaluation this token sees."""
    check_may_move_aliases("alias")
    if asked.gate is not None:
        existing_evaluation(session, asked.gate.evaluation)
    return PromoteSpec(model=str(model.id), alias=asked.alias, gate=asked.gate)


def checked_next_steps(asked: JobRequest, spec: TrainParams) -> dict | None:
    """A training's chain (its "then"), its labelled set confined now: a typo is a 400 at submission,
    not a failed step after an hour of training."""
    then = getattr(asked, "then", None)
    if then is None:
        return None
    if then.promote is not None:
        check_may_move_aliases("then.promote")
    scope = confinement.request_scope(resources().settings, auth.token_roots())
    level = spec.label_level or TrainConfig.label_level
    try:
        labelled = checked_labelled_set(then.evaluate, level, scope, shard_size=None)
    except confinement.PathRefused as e:
        raise APIError(400, e.code, f"then.evaluate: {e}", {"field": f"then.evaluate.{e.field}"}) from None
    return NextSteps(evaluate=labelled, promote=then.promote, gate=then.gate).stored()


def check_may_move_aliases(field: str) -> None:
    if not auth.sees_every_job():
        raise APIError(
            403, "forbidden", f"{field}: moving an alias takes a token with the 'ops' scope", {"field": field}
        )


def check_manifest_size(files: int, field: str) -> None:
    limit = resources().settings.max_job_files
    if files > limit:
        raise APIError(413, "too_many_files", f"{field}: more than {limit} files (GROCERY_MAX_JOB_FILES)")


def checked_source(asked: PredictInput, scope: confinement.ReadScope) -> dict:
    """A prediction job's input, confined: real paths, an object prefix that holds something."""
    source = asked.model_dump(exclude_none=True)
    if asked.folder is not None:
        folder = scope.real_path(asked.folder, "input.folder")
        if not folder.is_dir():
            raise confinement.PathRefused("input.folder", f"{asked.folder!r} is not a directory", "path_not_found")
        source["folder"] = str(folder)
    elif asked.url is not None:
        source["url"] = checked_prefix(scope.real_prefix(asked.url, "input.url"))
    else:
        check_manifest_size(len(asked.paths), "input.paths")
        source["paths"] = [str(scope.real_path(p, "input.paths")) for p in asked.paths]
    return source


def checked_output_url(url: str) -> str:
    """An object to write a job's Parquet file to: s3://bucket/key, the key ending in .parquet."""
    try:
        parsed = storage.ObjectURL.parse(url)
    except ValueError as e:
        parsed, problem = None, str(e)
    else:
        problem = None if parsed.key.endswith(".parquet") else f"{url!r} does not name an object ending in .parquet"
    if problem:
        raise APIError(
            400, "invalid_parameter", f"output.url: {problem} (give s3://bucket/key.parquet)", {"field": "output.url"}
        )
    return str(parsed)


def checked_notify(notify: Notify | None) -> dict | None:
    """A job's webhook as stored: its URL allowed (service/webhooks.py), and a secret to sign with."""
    if notify is None:
        return None
    settings = resources().settings
    if auth.owner_id() is None and not settings.webhook_secret:
        message = (
            "notify: a job without an API token has its webhooks signed with GROCERY_WEBHOOK_SECRET, which is unset"
        )
        raise APIError(400, "webhooks_unsigned", message, {"field": "notify"})
    try:
        webhooks.checked_target(notify.url, settings)
    except webhooks.Refused as e:
        raise APIError(400, e.code, f"notify.url: {e}", {"field": "notify.url"}) from None
    except OSError as e:
        raise APIError(
            400, "url_not_allowed", f"notify.url: the host does not resolve ({e})", {"field": "notify.url"}
        ) from None
    return notify.model_dump(mode="json")


def checked_prefix(url: str) -> str:
    """An object prefix that holds something: a typo in a bucket or prefix is a 400, not an empty job."""
    try:
        found = storage.has_objects(url)
    except storage.StorageError as e:
        status = 503 if e.code == "storage_unavailable" else 400
        raise APIError(status, e.code, f"input.url: {e}", {"field": "input.url"}) from None
    if not found:
        raise confinement.PathRefused("input.url", f"{url!r} holds no objects", "path_not_found")
    return url


def check_shard_size(shard_size: int | None, *, files: int | None) -> None:
    """A job's own shard size: at least GROCERY_MIN_SHARD_SIZE (a task and a few queries per shard),
    and (inputs of known size) no more than GROCERY_MAX_JOB_SHARDS shards."""
    if shard_size is None:
        return
    settings = resources().settings
    if shard_size < settings.min_shard_size:
        raise APIError(
            400,
            "invalid_parameter",
            f"shard_size: at least {settings.min_shard_size} files a shard (GROCERY_MIN_SHARD_SIZE)",
            {"field": "shard_size"},
        )
    if files is not None and -(-files // shard_size) > settings.max_job_shards:
        raise APIError(
            400,
            "invalid_parameter",
            f"shard_size: {files} files in shards of {shard_size} make more than {settings.max_job_shards} shards "
            "(GROCERY_MAX_JOB_SHARDS): give a larger shard_size",
            {"field": "shard_size"},
        )


def resolved_model(session, reference: str) -> Model:
    model = registry.resolve_model(session, reference=reference)
    if model is None:
        raise APIError(404, "model_not_found", f"no model {reference!r} (a model id, 'latest' or an alias)")
    return model


@blueprint.get("/jobs/<job_id>")
def get_job(job_id: str):
    with resources().sessions() as session:
        job = existing_job(session, job_id)
        return jsonify(with_waiting(session, job, job_document(session, job)))


@blueprint.get("/jobs")
def list_jobs():
    job_type, status = request.args.get("type"), request.args.get("status")
    if job_type and job_type not in JOB_TYPES:
        raise APIError(400, "invalid_parameter", f"type must be one of {list(JOB_TYPES)}")
    statuses, lanes, lane = [str(s) for s in Status], [str(lane) for lane in Lane], request.args.get("lane")
    if status and status not in statuses:
        raise APIError(400, "invalid_parameter", f"status must be one of {statuses}")
    if lane and lane not in lanes:
        raise APIError(400, "invalid_parameter", f"lane must be one of {lanes}")
    limit = int_arg("limit", default=50, low=1, high=500)
    after = decode_cursor(request.args["cursor"]) if request.args.get("cursor") else None
    with resources().sessions() as session:
        owner = None if auth.sees_every_job() else auth.owner_id()
        jobs = crud.list_jobs(
            session,
            job_type=job_type,
            status=status,
            lane=lane,
            limit=limit,
            after=after,
            owner=owner,
            manifest_shown=MANIFEST_SHOWN,
        )
        next_cursor = encode_cursor(jobs[-1]) if len(jobs) == limit else None
        return jsonify({"jobs": [job_json(j) for j in jobs], "next_cursor": next_cursor})


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
    with resources().sessions() as session:
        job = existing_job(session, job_id)
        outcome = crud.request_cancel(session, job_id=job.id)
        session.commit()
        job = shown(session, job)
        if outcome is None:
            raise APIError(409, "job_finished", f"job {job_id} already ended {job.status}")
        return jsonify(job_json(job)), 202 if outcome == Status.RUNNING else 200


@blueprint.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    """A finished job with its results, events, shards and uploaded files; a live one is cancelled first."""
    with resources().sessions() as session:
        job = existing_job(session, job_id)
        if job.status not in FINISHED_STATUSES:
            raise APIError(409, "job_not_finished", f"job {job_id} is {job.status}: cancel it, then delete it")
        files = lifecycle.delete_jobs(session, job_ids=[job.id], settings=resources().settings)
        session.commit()
    lifecycle.remove_files(files)
    return "", 204


@blueprint.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """Oldest first, a page at a time (a long training has an event per epoch): pass next_cursor back."""
    limit = int_arg("limit", default=1000, low=1, high=1000)
    after = int_arg("cursor", default=0, low=0, high=2**62)
    with resources().sessions() as session:
        events = crud.list_events(session, job_id=existing_job(session, job_id).id, limit=limit, after_id=after)
        next_cursor = str(events[-1].id) if len(events) == limit else None
        page = [{"at": iso(e.at), "kind": e.kind, "data": e.data} for e in events]
        return jsonify({"events": page, "next_cursor": next_cursor})
