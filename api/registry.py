"""The model registry: GET /models, GET /models/<id>, PUT /models/aliases/<name>."""

import uuid

from flask import Blueprint, jsonify

from api.deps import iso, json_body
from api.errors import APIError
from api.resources import resources
from api.schemas import AliasRequest
from service import lifecycle, registry
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
        registry.set_alias(session, name=name, model_id=model_id)
        session.commit()
        return jsonify(model_json(model, registry.aliases_of(session, model_id=model_id)))
