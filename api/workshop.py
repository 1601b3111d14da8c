"""The workshop's endpoints, kept: GET /class-names, GET /random-image, POST /predict.

POST /predict runs as a one-file prediction job on the predict queue (the API never
loads torch), on the `production` alias or else the latest model; workers keep the
model loaded, so a moved alias is picked up by the next request.
"""

import random
import time
import uuid

from flask import Blueprint, jsonify, request, send_file
from werkzeug.utils import secure_filename

from api import auth, enqueue, services
from api.errors import APIError
from service import crud
from service.models import FINISHED_STATUSES

blueprint = Blueprint("workshop", __name__)
PREDICT_TIMEOUT_SECONDS = 30.0


def serving_model(session):
    model = crud.resolve_model(session, reference="production") or crud.resolve_model(session, reference="latest")
    if model is None:
        raise APIError(503, "no_model", "no model is trained yet: submit a train job first (POST /jobs)")
    return model


@blueprint.get("/class-names")
def class_names():
    with services().sessions() as session:
        model = crud.resolve_model(session, reference="production") or crud.resolve_model(session, reference="latest")
        if model is not None:
            return jsonify({"classes": model.class_names, "model_id": str(model.id)})
    from grocery.index import DatasetError, read_classes  # torch-free

    try:
        classes = read_classes(services().settings.data_dir, "coarse")
    except DatasetError as e:
        raise APIError(503, "no_classes", f"no model yet and the dataset is unreadable: {e}") from None
    return jsonify({"classes": [c.name for c in classes], "model_id": None})


@blueprint.get("/random-image")
def random_image():
    index = services().settings.data_dir / "val.txt"
    try:
        lines = [line.split(",")[0].strip() for line in index.read_text().splitlines() if line.strip()]
    except OSError:
        raise APIError(503, "no_images", f"validation index {index} is unreadable") from None
    path = services().settings.data_dir / random.choice(lines)
    return send_file(path, mimetype="image/jpeg")


@blueprint.post("/predict")
def predict():
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise APIError(400, "missing_file", "send the image as multipart/form-data field 'file'")
    settings = services().settings
    with services().sessions() as session:
        model = serving_model(session)
        job_id = uuid.uuid4()
        folder = settings.upload_dir / str(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (secure_filename(upload.filename) or "upload")
        upload.save(path)
        job = crud.create_job(
            session,
            job_type="predict",
            job_id=job_id,
            model_id=model.id,
            progress_unit="files",
            params={"model": str(model.id), "input": {"paths": [str(path)]}},
            owner_token_id=auth.owner_id(),
        )
        session.commit()
    enqueue("predict", str(job.id))
    return _await_prediction(job.id, model.id)


def _await_prediction(job_id: uuid.UUID, model_id: uuid.UUID):
    deadline = time.monotonic() + PREDICT_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        with services().sessions() as session:
            job = crud.get_job(session, job_id=job_id)
            if job.status in FINISHED_STATUSES:
                rows = crud.list_predictions(session, job_id=job_id, limit=1)
                break
        time.sleep(0.02)
    else:
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
    if row.error_code == "outside_root":  # the workers' GROCERY_INPUT_ROOTS leave out GROCERY_UPLOAD_DIR
        raise APIError(500, "misconfigured", "the workers may not read the upload directory", {"job_id": str(job_id)})
    if row.error_code:
        raise APIError(422, row.error_code, row.error_message, {"job_id": str(job_id)})
    return jsonify(
        {
            "prediction": row.label,
            "confidence": row.confidence,
            "top5": row.top5,
            "model_id": str(model_id),
            "job_id": str(job_id),
        }
    )
