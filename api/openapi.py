"""GET /openapi.json, generated from the pydantic schemas that validate requests, and GET /docs."""

import importlib.util
from pathlib import Path

from flask import Blueprint, Response, jsonify, send_file
from pydantic.json_schema import models_json_schema

from api.errors import APIError
from api.results import FILE_TYPES
from api.schemas import AliasRequest, PredictJobRequest, TrainJobRequest
from api.uploads import UploadForm

blueprint = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
IMAGE = {"description": "a JPEG image", "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
JOB = {"description": "the job", "content": {"application/json": {"schema": {"type": "object"}}}}


def _op(summary: str, responses: dict, body: str | None = None, params: list | None = None) -> dict:
    op = {"summary": summary, "responses": {**responses, "4XX": ERROR}}
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=body)}}},
        }
    if params:
        op["parameters"] = [
            {"name": n, "in": where, "required": where == "path", "schema": {"type": t}} for n, where, t in params
        ]
    return op


def document() -> dict:
    _, schemas = models_json_schema(
        [(m, "validation") for m in (TrainJobRequest, PredictJobRequest, AliasRequest, UploadForm)], ref_template=REF
    )
    components = schemas.get("$defs", {})
    components["JobRequest"] = {
        "oneOf": [{"$ref": REF.format(model="TrainJobRequest")}, {"$ref": REF.format(model="PredictJobRequest")}],
        "discriminator": {"propertyName": "type"},
    }
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
            }
        },
    }
    components["UploadRequest"] = {
        "allOf": [{"$ref": REF.format(model="UploadForm")}],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "archive": {"type": "string", "format": "binary", "description": "one zip archive of images"},
        },
    }
    job_id = [("id", "path", "string")]
    submit = _op(
        "Submit a training or prediction job (Idempotency-Key header supported); multipart: a prediction job on "
        "uploaded images ('files') or one zip archive ('archive')",
        {"202": JOB, "200": JOB},
        body="JobRequest",
    )
    submit["requestBody"]["content"]["multipart/form-data"] = {"schema": {"$ref": REF.format(model="UploadRequest")}}
    paths = {
        "/jobs": {
            "post": submit,
            "get": _op(
                "List jobs, newest first",
                {"200": JOB},
                params=[
                    ("type", "query", "string"),
                    ("status", "query", "string"),
                    ("limit", "query", "integer"),
                    ("cursor", "query", "string"),
                ],
            ),
        },
        "/jobs/{id}": {
            "get": _op("A job's status, progress and result", {"200": JOB}, params=job_id),
            "delete": _op(
                "Delete a finished job with its results, events, shards and uploaded files (409 while it runs)",
                {"204": {"description": "deleted"}},
                params=job_id,
            ),
        },
        "/jobs/{id}/cancel": {"post": _op("Cancel a job", {"200": JOB, "202": JOB}, params=job_id)},
        "/jobs/{id}/events": {
            "get": _op(
                "State transitions and per-epoch metrics, oldest first, a page at a time",
                {"200": JOB},
                params=[*job_id, ("limit", "query", "integer"), ("cursor", "query", "string")],
            )
        },
        "/jobs/{id}/results": {
            "get": _op(
                "Per-file prediction results: JSON pages, the whole set streamed with format=csv|jsonl, "
                "or as a Parquet file with format=parquet",
                {"200": JOB},
                params=[
                    *job_id,
                    ("format", "query", "string"),
                    ("limit", "query", "integer"),
                    ("cursor", "query", "string"),
                    ("label", "query", "string"),
                    ("min_confidence", "query", "number"),
                    ("max_confidence", "query", "number"),
                    ("errors_only", "query", "boolean"),
                ],
            )
        },
        "/jobs/{id}/results/file": {
            "get": _op(
                "A finished job's whole result set as a file (Content-Length, Range: a download resumes), "
                "X-Row-Count header",
                {"200": {"description": "the results", "content": {t: {} for t in FILE_TYPES.values()}}},
                params=[*job_id, ("format", "query", "string")],
            )
        },
        "/jobs/{id}/shards": {
            "get": _op(
                "A prediction job's shards: files, status, attempts and worker of each",
                {"200": JOB},
                params=[*job_id, ("limit", "query", "integer"), ("cursor", "query", "string")],
            )
        },
        "/models": {"get": _op("Registered models, newest first", {"200": JOB})},
        "/models/{id}": {
            "get": _op("A model by id, 'latest' or alias", {"200": JOB}, params=job_id),
            "delete": _op(
                "Delete a model no alias names and no queued or running job uses, with its artifact (409 else)",
                {"204": {"description": "deleted"}},
                params=job_id,
            ),
        },
        "/models/aliases/{name}": {
            "put": _op(
                "Point an alias at a model", {"200": JOB}, body="AliasRequest", params=[("name", "path", "string")]
            )
        },
        "/class-names": {"get": _op("Class names of the serving model", {"200": JOB})},
        "/random-image": {
            "get": _op(
                "A random validation image (JPEG); headers X-Image-Path, X-Label-Coarse, X-Label-Fine",
                {"200": IMAGE},
            )
        },
        "/classes/{name}": {
            "get": _op(
                "A class of the dataset: its label level, product description and iconic image's URL",
                {"200": JOB},
                params=[("name", "path", "string")],
            )
        },
        "/classes/{name}/iconic": {
            "get": _op("The class's iconic image (JPEG)", {"200": IMAGE}, params=[("name", "path", "string")])
        },
        "/jobs/{id}/image": {
            "get": _op(
                "A JPEG preview of one classified file of a prediction job (path as in its results)",
                {"200": IMAGE},
                params=[*job_id, ("path", "query", "string"), ("size", "query", "integer")],
            )
        },
        "/predict": {
            "post": {
                "summary": "Classify one uploaded image (multipart field 'file')",
                "requestBody": {
                    "content": {
                        "multipart/form-data": {
                            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                        }
                    }
                },
                "responses": {"200": JOB, "4XX": ERROR, "5XX": ERROR},
            }
        },
        "/workers": {
            "get": _op("Live workers (all=true: departed ones too)", {"200": JOB}, params=[("all", "query", "boolean")])
        },
        "/queues": {"get": _op("Broker depth and oldest queued age per queue", {"200": JOB, "503": ERROR})},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "text/plain", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "4XX": ERROR,
                },
            }
        },
        "/healthz": {"get": _op("The process answers", {"200": JOB})},
        "/readyz": {"get": _op("Database, Redis and schema usable", {"200": JOB, "503": ERROR})},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "grocery-jobs", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }


@blueprint.get("/openapi.json")
def openapi_json():
    return jsonify(document())


# Swagger UI's files, from the swagger-ui-py package (its static folder only: nothing of it is imported).
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}
DOCS_INIT = 'SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});\n'
# Only this server's own files run on the page, beside the user's cookie.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def swagger_ui_folder() -> Path | None:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


@blueprint.get("/docs")
def docs():
    if swagger_ui_folder() is None:
        page = """<!doctype html><html><head><title>grocery-jobs API</title></head><body>
<p>Swagger UI is not installed here (the <code>swagger-ui-py</code> package); the API document is at
<a href="/openapi.json">/openapi.json</a>.</p></body></html>"""
    else:
        page = """<!doctype html><html><head><meta charset="utf-8"><title>grocery-jobs API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><noscript>The API document: <a href="/openapi.json">/openapi.json</a></noscript>
<div id="ui"></div><script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>"""
    return Response(page, mimetype="text/html", headers={"Content-Security-Policy": DOCS_POLICY})


@blueprint.get("/docs/<name>")
def docs_asset(name: str):
    if name == "init.js":
        return Response(DOCS_INIT, mimetype="text/javascript")
    folder = swagger_ui_folder()
    if name not in DOCS_ASSETS or folder is None:
        raise APIError(404, "not_found", f"no file /docs/{name}")
    return send_file(folder / name, mimetype=DOCS_ASSETS[name], max_age=86400)
