"""The model registry: GET /models, GET /models/<id>, GET /models/compare, PUT /models/aliases/<name>."""

import uuid

from flask import Blueprint, jsonify, request

from api.deps import existing_evaluation, existing_job, iso, json_body
from api.errors import APIError
from api.resources import resources
from api.schemas import AliasRequest
from service import crud, gates, lifecycle, predictions, registry
from service.kinds import EVALUATE
from service.specs import EvaluateSpec
from service.states import Status
from service.tables import Model

blueprint = Blueprint("models", __name__)


def model_json(model: Model, aliases: list[str]) -> dict:
    return {
        "id": str(model.id),
        "version": model.version,
        "arch": model.arch,
        "label_level": model.label_level,
        "classes": model.class_names,
        "metrics": model.metrics,
        "serving": model.serving,
        "artifact": model.artifact_path,
        "job_id": str(model.job_id) if model.job_id else None,
        "created_at": iso(model.created_at),
        "aliases": aliases,
    }


@blueprint.get("/models")
def list_models():
    with resources().sessions() as session:
        return jsonify(
            {
                "models": [
                    model_json(m, registry.aliases_of(session, model_id=m.id)) for m in registry.list_models(session)
                ]
            }
        )


@blueprint.get("/models/compare")
def compare_models():
    """Models a and b on the set an evaluation job evaluated: each model's newest evaluation of it,
    paired file by file (grocery.evaluation.paired_comparison)."""
    from grocery.evaluation import paired_comparison  # numpy only: no torch in the API

    references = {name: request.args.get(name) for name in ("a", "b", "evaluation")}
    if not all(references.values()):
        raise APIError(400, "invalid_parameter", "give a and b (model ids or aliases) and evaluation (a job id)")
    with resources().sessions() as session:
        evaluation = existing_job(session, references["evaluation"])
        if evaluation.type != EVALUATE.name or evaluation.status != Status.SUCCEEDED:
            raise APIError(409, "not_an_evaluation", f"job {evaluation.id} is not a succeeded evaluation job")
        jobs = {name: evaluation_of(session, evaluation, references[name]) for name in ("a", "b")}
        paired = predictions.paired_labels(session, job_a=jobs["a"].id, job_b=jobs["b"].id)
    truths, labels_a, labels_b = (list(column) for column in zip(*paired, strict=True)) if paired else ([], [], [])
    report = paired_comparison(truths, labels_a, labels_b)
    sides = {name: {"model_id": str(job.model_id), "evaluation": str(job.id)} for name, job in jobs.items()}
    return jsonify({**sides, **report})


def evaluation_of(session, evaluation, reference: str):
    model = registry.resolve_model(session, reference=reference)
    if model is None:
        raise APIError(404, "model_not_found", f"no model {reference!r} (a model id, 'latest' or an alias)")
    found = crud.evaluation_on_the_same_set(session, evaluation=evaluation, model_id=model.id)
    if found is None:
        raise APIError(
            409,
            "not_evaluated",
            f"model {model.id} has no succeeded evaluation on that set: submit one with its input "
            f"(POST /jobs with type evaluate, model {model.id})",
            {"model_id": str(model.id), "set": EvaluateSpec.of_job(evaluation.params).named},
        )
    return found


@blueprint.get("/models/<reference>")
def get_model(reference: str):
    with resources().sessions() as session:
        model = registry.resolve_model(session, reference=reference)
        if model is None:
            raise APIError(404, "model_not_found", f"no model {reference!r} (a model id, 'latest' or an alias)")
        return jsonify(model_json(model, registry.aliases_of(session, model_id=model.id)))


@blueprint.delete("/models/<model_id>")
def delete_model(model_id: str):
    """A model no alias names and no queued or running job uses, with its artifact."""
    try:
        model_uuid = uuid.UUID(model_id)
    except ValueError:
        raise APIError(404, "model_not_found", f"no model {model_id!r} (delete takes a model id)") from None
    with resources().sessions() as session:
        model = session.get(Model, model_uuid, with_for_update=True)
        if model is None:
            raise APIError(404, "model_not_found", f"no model {model_id}")
        reason = lifecycle.model_in_use(session, model_id=model.id)
        if reason is not None:
            raise APIError(409, "model_in_use", f"model {model_id} is in use: {reason}")
        files = lifecycle.delete_model(session, model=model, settings=resources().settings)
        session.commit()
    lifecycle.remove_files(files)
    return "", 204


@blueprint.put("/models/aliases/<name>")
def move_alias(name: str):
    request = AliasRequest.model_validate(json_body())
    if name == "latest" or len(name) > 64:
        raise APIError(400, "invalid_alias", "an alias is at most 64 characters and not 'latest'")
    try:
        model_id = uuid.UUID(request.model_id)
    except ValueError:
        raise APIError(422, "validation_error", f"model_id {request.model_id!r} is not a UUID") from None
    with resources().sessions() as session:
        model = session.get(Model, model_id)
        if model is None:
            raise APIError(404, "model_not_found", f"no model {request.model_id}")
        if request.gate is not None:
            existing_evaluation(session, request.gate.evaluation)
        judgement = gates.promote(session, model_id=model.id, alias=name, gate=request.gate)
        if not judgement.passed:  # a 409 with every figure it used; nothing moves
            raise APIError(409, "gate_failed", judgement.message(name), judgement.json())
        session.commit()
        return jsonify(model_json(model, registry.aliases_of(session, model_id=model_id)))
