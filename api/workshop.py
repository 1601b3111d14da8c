"""The workshop's endpoints, kept: GET /class-names, GET /random-image, POST /predict.

POST /predict runs as a one-file prediction job on the predict queue (the API never
loads torch), on the `production` alias or else the latest model; workers keep the
model loaded, so a moved alias is picked up by the next request.
"""

import random
import time
import uuid
from urllib.parse import quote

from flask import Blueprint, jsonify, request, send_file, url_for
from werkzeug.utils import secure_filename

from api import auth
from api.deps import check_quota
from api.errors import APIError
from api.resources import resources
from api.uploads import looks_like_image, storage_error
from grocery import storage
from service import contract, crud, predictions
from service.broker import JOB_END_WAIT_SECONDS, await_job_finished
from service.kinds import PREDICT, NewJob
from service.specs import PREDICT_SOURCE, PredictSpec, StoredInput
from service.states import FINISHED_STATUSES, Lane

blueprint = Blueprint("workshop", __name__)
PREDICT_TIMEOUT_SECONDS = 30.0
RECHECK_SECONDS, BROKER_DOWN_RECHECK_SECONDS = JOB_END_WAIT_SECONDS, 0.25


def serving_model(session):
    model = contract.serving_model(session)
    if model is None:
        raise APIError(503, "no_model", "no model is trained yet: submit a train job first (POST /jobs)")
    return model


@blueprint.get("/class-names")
def class_names():
    with resources().sessions() as session:
        model = contract.serving_model(session)
        if model is not None:
            return jsonify({"classes": model.class_names, "model_id": str(model.id)})
    from grocery.index import DatasetError, read_classes  # torch-free

    try:
        classes = read_classes(resources().settings.data_dir, "coarse")
    except DatasetError as e:
        raise APIError(503, "no_classes", f"no model yet and the dataset is unreadable: {e}") from None
    return jsonify({"classes": [c.name for c in classes], "model_id": None})


@blueprint.get("/random-image")
def random_image():
    """A validation image; its headers name it and its true classes (X-Image-Path, X-Label-Coarse, X-Label-Fine)."""
    data_dir = resources().settings.data_dir
    index = data_dir / "val.txt"
    try:
        lines = [line.split(",") for line in index.read_text().splitlines() if line.strip()]
    except OSError:
        raise APIError(503, "no_images", f"validation index {index} is unreadable") from None
    if not lines:
        raise APIError(503, "no_images", f"validation index {index} lists no images")
    relative, *labels = (part.strip() for part in random.choice(lines))
    if not (data_dir / relative).is_file():
        raise APIError(503, "no_images", f"{relative}, listed in {index}, is not in the dataset")
    response = send_file(data_dir / relative, mimetype="image/jpeg")
    response.headers["X-Image-Path"] = quote(relative)  # percent-encoded: headers carry ASCII only
    response.headers.update(_true_labels(data_dir, labels))
    return response


def _true_labels(data_dir, labels: list[str]) -> dict[str, str]:
    """X-Label-Fine / X-Label-Coarse from the index line's class ids, where the class table names them."""
    from grocery.index import DatasetError, read_classes  # torch-free

    headers = {}
    for level, class_id in zip(("fine", "coarse"), labels, strict=False):
        try:
            names = [c.name for c in read_classes(data_dir, level)]
            headers[f"X-Label-{level.title()}"] = quote(names[int(class_id)])
        except (DatasetError, ValueError, IndexError):
            continue
    return headers


def find_class(name: str):
    """A class of the dataset by name (coarse first, then fine) and its label level."""
    from grocery.index import DatasetError, read_classes  # torch-free

    for level in ("coarse", "fine"):
        try:
            classes = read_classes(resources().settings.data_dir, level)
        except DatasetError as e:
            raise APIError(503, "no_classes", f"the dataset's class table is unreadable: {e}") from None
        for info in classes:
            if info.name == name:
                return info, level
    raise APIError(404, "class_not_found", f"no class {name!r} in the dataset's class table")


@blueprint.get("/classes/<name>")
def class_details(name: str):
    """What the product is: its description and iconic image; a coarse class shows its first product's."""
    info, level = find_class(name)
    has_icon = any(path.is_file() for path in info.iconic_images)
    description = next((p for p in info.description_files if p.is_file()), None)
    return jsonify(
        {
            "name": info.name,
            "level": level,
            "product": _first_product(info) if level == "coarse" else info.name,
            "description": description.read_text(encoding="utf-8", errors="replace").strip() if description else None,
            "iconic_image": url_for("workshop.class_iconic", name=info.name) if has_icon else None,
        }
    )


def _first_product(coarse) -> str | None:
    """The fine class whose iconic image and description a coarse class shows."""
    from grocery.index import read_classes  # torch-free

    fine = read_classes(resources().settings.data_dir, "fine")
    return next((f.name for f in fine if f.iconic_images[:1] == coarse.iconic_images[:1]), None)


@blueprint.get("/classes/<name>/iconic")
def class_iconic(name: str):
    info, _ = find_class(name)
    path = next((p for p in info.iconic_images if p.is_file()), None)
    if path is None:
        raise APIError(404, "no_iconic_image", f"class {name!r} has no iconic image in the dataset")
    return send_file(path, mimetype="image/jpeg", max_age=3600)


@blueprint.post("/predict")
def predict():
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise APIError(400, "missing_file", "send the image as multipart/form-data field 'file'")
    settings = resources().settings
    with resources().sessions() as session:
        model = serving_model(session)
        check_quota(session, files=1)
        if not looks_like_image(upload.stream):
            raise APIError(422, "not_an_image", f"{upload.filename}: not an image (JPEG, PNG, WebP, BMP, GIF or TIFF)")
        job_id = uuid.uuid4()
        path = storage.join(settings.upload_dir, str(job_id), secure_filename(upload.filename) or "upload")
        if storage.is_url(path):
            try:
                storage.write_bytes(path, upload.read())
            except storage.StorageError as e:
                raise storage_error(e) from None
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            upload.save(path)
        spec = PredictSpec(model=str(model.id), input=StoredInput(paths=[str(path)]), source=PREDICT_SOURCE)
        new = NewJob(
            kind=PREDICT,
            params=spec.stored(),
            owner_token_id=auth.owner_id(),
            files_named=spec.files_named,
            model_id=model.id,
            id=job_id,
            lane=Lane.INTERACTIVE,
        )
        job = contract.submit(session, resources().celery, new)
    return _await_prediction(job.id, model.id, shown={str(path): upload.filename})


def _await_prediction(job_id: uuid.UUID, model_id: uuid.UUID, shown: dict[str, str]):
    """Wait on the worker's word that the job ended (service.broker), then read the row: no polling.
    The row is read again every few seconds regardless, and often while the broker does not answer."""
    deadline = time.monotonic() + PREDICT_TIMEOUT_SECONDS
    while True:
        with resources().sessions() as session:
            job = crud.get_job(session, job_id=job_id)
            if job.status in FINISHED_STATUSES:
                rows = predictions.list_predictions(session, job_id=job_id, limit=1)
                break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            await_job_finished(resources().celery, job_id, timeout=max(0.01, min(left, RECHECK_SECONDS)))
        except Exception:  # the broker is down: the worker may still end the job
            time.sleep(min(left, BROKER_DOWN_RECHECK_SECONDS))
    if job.status not in FINISHED_STATUSES:
        raise APIError(
            504,
            "prediction_timeout",
            f"no worker answered in {PREDICT_TIMEOUT_SECONDS:.0f}s; the job stays queued: GET /jobs/{job_id}",
            {"job_id": str(job_id)},
        )
    if not rows:
        raise APIError(
            500, "prediction_failed", job.error_message or "the prediction job failed", {"job_id": str(job_id)}
        )
    row = rows[0]
    if row.error_code == "outside_root":  # the workers' GROCERY_UPLOAD_DIR is not the API's
        raise APIError(
            500, "misconfigured", "the workers do not share the API's upload storage", {"job_id": str(job_id)}
        )
    if row.error_code:
        # The file as the client named it, never where the server keeps it.
        message = row.error_message
        for kept, given in shown.items():
            message = message.replace(kept, given)
        raise APIError(422, row.error_code, message, {"job_id": str(job_id)})
    return jsonify(
        {
            "prediction": row.label,
            "confidence": row.confidence,
            "top5": row.top5,
            "model_id": str(model_id),
            "job_id": str(job_id),
        }
    )
