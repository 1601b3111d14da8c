"""A prediction job's results: JSON pages, whole-set CSV and JSONL streams, Parquet files, and its shards."""

import csv
import io
import json
from pathlib import Path

from flask import Blueprint, Response, jsonify, request, send_file, stream_with_context

from api.deps import existing_job, int_arg, iso
from api.errors import APIError
from api.resources import resources
from api.thumbnails import ThumbnailError, thumbnail_jpeg
from grocery import parquet
from grocery.results import RESULT_COLUMNS, Prediction, csv_values
from service import exports, predictions, shards, tokens
from service.confinement import PathRefused, job_scope
from service.contract import ROW_COUNT_HEADER
from service.kinds import KINDS
from service.specs import PredictSpec
from service.states import FINISHED_STATUSES
from service.tables import Job, JobShard, PredictionRow

blueprint = Blueprint("results", __name__)
FORMATS = ("json", "csv", "jsonl", "parquet")
# The formats of a whole set as a file, and what each is sent as.
FILE_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson", "parquet": parquet.MEDIA_TYPE}


def result_json(row: PredictionRow) -> dict:
    return Prediction.from_row(row).to_dict()


def job_with_results(session, job_id: str) -> Job:
    """A job whose kind writes per-file results (a sharded kind's); another kind's is a 409 that says so."""
    job = existing_job(session, job_id)
    if KINDS[job.type].shard is None:
        model = f" (its model: /models/{job.model_id})" if job.model_id else ""
        raise APIError(409, "no_results", f"job {job_id} is a {job.type} job: it has no per-file results{model}")
    return job


@blueprint.get("/jobs/<job_id>/results")
def job_results(job_id: str):
    output = request.args.get("format", "json")
    if output not in FORMATS:
        raise APIError(400, "invalid_parameter", f"format must be one of {list(FORMATS)}")
    filters = result_filters()
    with resources().sessions() as session:
        job = job_with_results(session, job_id)
        if output == "parquet":
            return parquet_download(session, job, filters)
        if output != "json":
            return export(job.id, output, filters)
        limit = int_arg("limit", default=100, low=1, high=1000)
        after = int_arg("cursor", default=0, low=0, high=2**62) or None
        rows = predictions.list_predictions(session, job_id=job.id, limit=limit, after_id=after, **filters)
        next_cursor = str(rows[-1].id) if len(rows) == limit else None
        return jsonify({"results": [result_json(r) for r in rows], "next_cursor": next_cursor})


def result_filters() -> dict:
    filters = {
        "label": request.args.get("label") or None,
        "min_confidence": _fraction_arg("min_confidence"),
        "max_confidence": _fraction_arg("max_confidence"),
        "errors_only": _bool_arg("errors_only"),
    }
    return {name: value for name, value in filters.items() if value is not None}


def _fraction_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise APIError(400, "invalid_parameter", f"{name} must be a number from 0 to 1")
    return value


def _bool_arg(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw.lower() not in ("true", "false", "1", "0"):
        raise APIError(400, "invalid_parameter", f"{name} must be true or false")
    return raw.lower() in ("true", "1")


def export(job_id, output: str, filters: dict) -> Response:
    """Stream the whole (filtered) set: rows go out as the database cursor yields them. The row count
    goes first, in a header, from the same snapshot as the rows, so a client can tell a cut download."""
    session = resources().sessions()
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    count = predictions.count_predictions(session, job_id=job_id, **filters)
    encode = _csv_lines if output == "csv" else _jsonl_lines

    def generate():
        try:
            yield from encode(predictions.stream_predictions(session, job_id=job_id, **filters))
        finally:
            session.close()

    mimetype = "text/csv" if output == "csv" else "application/x-ndjson"
    filename = f"{job_id}-results.{output}"
    response = Response(
        stream_with_context(generate()),
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', ROW_COUNT_HEADER: str(count)},
    )
    response.call_on_close(session.close)  # also when the client leaves before the first row
    return response


@blueprint.get("/jobs/<job_id>/results/file")
def results_file(job_id: str):
    """A finished job's whole result set as a file: Content-Length, and Range for a download that
    resumes where it was cut (curl -C -). Written once, on the first request, then served as it is."""
    output = request.args.get("format", "csv")
    if output not in FILE_TYPES:
        raise APIError(400, "invalid_parameter", f"format must be one of {list(FILE_TYPES)}")
    with resources().sessions() as session:
        job = job_with_results(session, job_id)
        if job.status not in FINISHED_STATUSES:
            raise APIError(409, "job_not_finished", f"job {job_id} is {job.status}: stream its results instead")
        return finished_results_file(session, job, output)


def finished_results_file(session, job, output: str) -> Response:
    settings = resources().settings
    path = exports.export_path(settings, job_id=job.id, output=output)
    if not path.is_file():
        with exports.written_atomically(settings, path, job_id=job.id) as partial:
            write_export_file(session, job.id, output, partial)
    count = predictions.count_predictions(session, job_id=job.id)
    response = send_file(
        path,
        mimetype=FILE_TYPES[output],
        as_attachment=True,
        download_name=f"{job.id}-results.{output}",
        conditional=True,  # Range requests, If-Range and ETags
    )
    response.headers[ROW_COUNT_HEADER] = str(count)
    return response


def parquet_download(session, job, filters: dict) -> Response:
    """Parquet has its footer at the end, so it is never streamed: a finished job's whole set is its
    results file (written once, Range as above); a filtered set, or a running job's rows so far, go
    to a file of their own that is gone once sent."""
    if job.status in FINISHED_STATUSES and not filters:
        return finished_results_file(session, job, "parquet")
    path = exports.private_path(resources().settings, job_id=job.id, purpose="download", output="parquet")
    try:
        count = exports.write_parquet(session, job_id=job.id, path=path, **filters)
        # send_file opens the file before it returns: the open file outlives its name.
        response = send_file(
            path, mimetype=parquet.MEDIA_TYPE, as_attachment=True, download_name=f"{job.id}-results.parquet"
        )
    finally:
        path.unlink(missing_ok=True)
    response.headers[ROW_COUNT_HEADER] = str(count)
    return response


def write_export_file(session, job_id, output: str, path: Path) -> None:
    """The whole set in ``output`` format at ``path``."""
    if output == "parquet":
        exports.write_parquet(session, job_id=job_id, path=path)
        return
    encode = _csv_lines if output == "csv" else _jsonl_lines
    with path.open("w", encoding="utf-8", newline="") as f:
        for text in encode(predictions.stream_predictions(session, job_id=job_id)):
            f.write(text)


def _jsonl_lines(rows):
    for row in rows:
        yield json.dumps(result_json(row)) + "\n"


def _csv_lines(rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow(csv_values(row))
        if buffer.tell() > 64 * 1024:
            yield _drain(buffer)
    yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


@blueprint.get("/jobs/<job_id>/image")
def result_image(job_id: str):
    """A preview of one classified file of the job (the gallery): only a path the job has a result for."""
    path = request.args.get("path")
    if not path:
        raise APIError(400, "invalid_parameter", "path: give the file's path as it appears in the job's results")
    size = int_arg("size", default=256, low=16, high=1024)
    with resources().sessions() as session:
        job = existing_job(session, job_id)
        row = predictions.get_prediction(session, job_id=job.id, path=path)
        owner = tokens.get_token(session, token_id=job.owner_token_id)
        scope = job_scope(
            resources().settings,
            job_id=job.id,
            source=PredictSpec.input_of(job.params),
            token_roots=owner.roots if owner else None,
        )
    if row is None:
        raise APIError(404, "result_not_found", f"job {job_id} has no result for {path!r}")
    if row.error_code:
        raise APIError(422, row.error_code, f"{path} was not classified: {row.error_message}")
    try:
        # The real path, checked now: a file swapped for a symlink since it was classified is refused.
        real = scope.real_path(path, "path")
    except PathRefused:
        raise APIError(404, "result_not_found", f"{path} is no longer inside the job's input roots") from None
    try:
        data = thumbnail_jpeg(real, size)
    except ThumbnailError as e:
        raise APIError(422, "unreadable_image", f"{path}: {e}") from None
    # A result's file is not meant to change: browsers may keep the preview for an hour.
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def shard_json(shard: JobShard) -> dict:
    return {
        "number": shard.number,
        "status": shard.status,
        "total": shard.total,
        "done": shard.done,
        "failed": shard.failed,
        "attempts": shard.attempts,
        "worker": shard.worker,
        "device": shard.device,
        "runtime": shard.runtime,
        "error_message": shard.error_message,
        "started_at": iso(shard.started_at),
        "finished_at": iso(shard.finished_at),
    }


@blueprint.get("/jobs/<job_id>/shards")
def job_shards(job_id: str):
    limit = int_arg("limit", default=100, low=1, high=1000)
    after = int_arg("cursor", default=0, low=0, high=2**31) - 1 if request.args.get("cursor") else -1
    with resources().sessions() as session:
        rows = shards.list_shards(session, job_id=existing_job(session, job_id).id, limit=limit, after_number=after)
        next_cursor = str(rows[-1].number + 1) if len(rows) == limit else None
        return jsonify({"shards": [shard_json(s) for s in rows], "next_cursor": next_cursor})
