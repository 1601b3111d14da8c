"""GET /models/<id>/card: a model's card (SageMaker model cards, MLflow's lineage), as JSON or Markdown:
what it is, where it comes from (data, code, settings, machine, minutes: recorded as it was trained),
how it scored in training and on every evaluation since. GET /models/<id>/download: the model itself,
to take elsewhere."""

from flask import Blueprint, Response, jsonify, request, send_file

from api.deps import iso
from api.errors import APIError
from api.resources import resources
from service import artifacts, crud, registry
from service.kinds import EVALUATE
from service.specs import set_name
from service.tables import Job, Model

blueprint = Blueprint("cards", __name__)
FORMATS = ("json", "markdown")


@blueprint.get("/models/<reference>/card")
def model_card(reference: str):
    output = request.args.get("format", "json")
    if output not in FORMATS:
        raise APIError(400, "invalid_parameter", f"format must be one of {list(FORMATS)}")
    with resources().sessions() as session:
        model = registry.resolve_model(session, reference=reference)
        if model is None:
            raise APIError(404, "model_not_found", f"no model {reference!r} (a model id, 'latest' or an alias)")
        evaluations = crud.evaluations_of(session, model_id=model.id, kind=EVALUATE.name)
        card = card_of(model, registry.aliases_of(session, model_id=model.id), evaluations)
    if output == "markdown":
        return Response(markdown(card), mimetype="text/markdown")
    return jsonify(card)


def card_of(model: Model, aliases: list[str], evaluations: list[Job]) -> dict:
    return {
        "model_id": str(model.id),
        "version": model.version,
        "arch": model.arch,
        "label_level": model.label_level,
        "classes": model.class_names,
        "aliases": aliases,
        "created_at": iso(model.created_at),
        "training_job": str(model.job_id) if model.job_id else None,
        "training_metrics": model.metrics,
        "lineage": model.lineage or None,  # models registered before cards have none
        "evaluations": [evaluation_entry(job) for job in evaluations],
    }


def evaluation_entry(job: Job) -> dict:
    report = (job.result or {}).get("evaluation", {})
    figures = ("top1", "top5", "ece", "count", "errors", "unlabelled")
    return {
        "job_id": str(job.id),
        "finished_at": iso(job.finished_at),
        "set": report.get("set"),
        "label_level": report.get("label_level"),
        **{name: report.get(name) for name in figures},
        "unknown_labels": sum((report.get("unknown_labels") or {}).values()),
    }


def markdown(card: dict) -> str:
    lineage = card["lineage"] or {}
    data, code, machine = lineage.get("data", {}), lineage.get("code", {}), lineage.get("machine", {})
    metrics = card["training_metrics"]
    lines = [
        f"# Model card: {card['arch']} v{card['version']}",
        "",
        f"- **Id**: `{card['model_id']}`" + (f" (aliases: {', '.join(card['aliases'])})" if card["aliases"] else ""),
        f"- **Classes**: {len(card['classes'])} {card['label_level']} classes",
        f"- **Created**: {card['created_at']} by training job `{card['training_job']}`",
        "",
        "## Where it comes from",
        "",
    ]
    if not lineage:
        lines.append("Registered before models recorded their lineage.")
    else:
        photos = data.get("photos", {})
        lines += [
            f"- **Data**: splits `{data.get('splits')}` of {data.get('data_dir') or 'the service dataset'}: "
            f"{photos.get('files')} photos, {photos.get('bytes')} bytes (photos digest `{photos.get('digest')}`, "
            f"index digest `{data.get('index_fingerprint')}`)",
            f"- **Code**: {code.get('package')} {code.get('version')}, commit `{code.get('git_commit')}`",
            f"- **Base weights**: {lineage.get('base_weights')}",
            f"- **Machine**: {machine.get('cpu')}, {machine.get('cores')} cores, device {machine.get('device')}; "
            f"{lineage.get('training_seconds', 0) / 60:.1f} minutes of training",
            "- **Settings**: " + ", ".join(f"{k}={v}" for k, v in sorted((lineage.get("settings") or {}).items())),
        ]
    lines += ["", "## Training", ""]
    lines += [f"- {name}: {value}" for name, value in sorted(metrics.items())] or ["- no metrics recorded"]
    lines += ["", "## Evaluations", ""]
    if not card["evaluations"]:
        lines.append("None yet: submit an evaluation job (POST /jobs with type evaluate).")
    for entry in card["evaluations"]:
        lines.append(
            f"- `{entry['job_id']}` on {set_name(entry['set'])} ({entry['label_level']} labels): "
            f"top-1 {entry['top1']:.4f}, top-5 {entry['top5']:.4f}, ECE {entry['ece']:.4f} "
            f"over {entry['count']} photos ({entry['errors']} unreadable, {entry['unlabelled']} unlabelled, "
            f"{entry['unknown_labels']} unknown labels)"
        )
    return "\n".join(lines) + "\n"


# What a user may take away: the ONNX graph that answers in the model's own labels (class names in its
# metadata: grocery.export.export_for_download), or the weights as safetensors.
DOWNLOADS = {
    "onnx": ("model.download.onnx", "application/octet-stream"),
    "safetensors": ("model.safetensors", "application/octet-stream"),
}


@blueprint.get("/models/<reference>/download")
def download_model(reference: str):
    """The file, streamed with Content-Length, ETag and Range (a cut download resumes)."""
    output = request.args.get("format", "onnx")
    if output not in DOWNLOADS:
        raise APIError(400, "invalid_parameter", f"format must be one of {list(DOWNLOADS)}")
    name, mimetype = DOWNLOADS[output]
    with resources().sessions() as session:
        model = registry.resolve_model(session, reference=reference)
        if model is None:
            raise APIError(404, "model_not_found", f"no model {reference!r} (a model id, 'latest' or an alias)")
    path = artifacts.download_copy(
        resources().settings, model_id=str(model.id), artifact_path=model.artifact_path, name=name
    )
    if path is None:
        raise APIError(
            404,
            "not_exported",
            f"model {model.id} has no {output} file to download (trained before downloads were exported)",
        )
    filename = f"grocery-{model.arch}-v{model.version}.{output}"
    return send_file(
        path,
        mimetype=mimetype or "application/octet-stream",
        as_attachment=True,
        download_name=filename,
        conditional=True,
        etag=True,
    )
