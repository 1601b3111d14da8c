"""GET /openapi.json, derived from the app's routes and the pydantic schemas that validate requests, and GET /docs.

Each route's path, path parameters and methods come from its Flask rule, request bodies' schemas from the pydantic
models; OPERATIONS holds only the human part. tests/test_openapi_routes.py fails on an API route without an entry.
"""

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, jsonify, send_file
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from api.errors import APIError
from api.results import FILE_TYPES
from api.schemas import AliasRequest
from api.uploads import UploadForm
from service.kinds import KINDS

blueprint = Blueprint("openapi", __name__)
REF = "#/components/schemas/{model}"
ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
IMAGE = {"description": "a JPEG image", "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
JOB = {"description": "the job", "content": {"application/json": {"schema": {"type": "object"}}}}
DELETED = {"204": {"description": "deleted"}}

# Not the JSON API, so not in its document: Flask's static files, the web UI (Dash's pages and its /ui/_dash-*
# internals, the sign-in form) and this module's own document, Swagger UI page and its files. A path is excluded
# when it is one of these or lies under one.
NOT_API = ("/static", "/ui", "/openapi.json", "/docs")
# Flask answers HEAD and OPTIONS itself for every route: they are not the view's methods.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
# A rule's variable: <name>, <converter:name> or <converter(arguments):name>.
VARIABLE = re.compile(r"<(?:(\w+)(?:\([^>]*\))?:)?(\w+)>")
CONVERTER_TYPES = {"int": "integer", "float": "number"}  # every other converter matches a string
# The document's name where the view's argument differs: a job's or a model's id has been {id} since the first
# document (clients build URLs from it), and GET and DELETE /models/{id} must name it alike to be one path.
PATH_NAMES = {"job_id": "id", "model_id": "id", "reference": "id"}


@dataclass(frozen=True)
class Op:
    """What a route's rule cannot say: its summary, query parameters, responses (4XX is added) and request body."""

    summary: str
    responses: dict
    query: tuple[tuple[str, str], ...] = ()  # (name, JSON type)
    # media type -> the pydantic model that validates it, a component's name, or an inline schema
    body: dict[str, type[BaseModel] | str | dict] | None = None


PAGE = (("limit", "integer"), ("cursor", "string"))

# Keyed by Flask endpoint (blueprint.view function).
OPERATIONS = {
    "jobs.submit_job": Op(
        "Submit a training or prediction job (Idempotency-Key header supported); multipart: a prediction job on "
        "uploaded images ('files') or one zip archive ('archive')",
        {"202": JOB, "200": JOB},
        body={"application/json": "JobRequest", "multipart/form-data": "UploadRequest"},
    ),
    "jobs.list_jobs": Op(
        "List jobs, newest first (lane=bulk leaves out one-file interactive jobs such as POST /predict's)",
        {"200": JOB},
        query=(("type", "string"), ("status", "string"), ("lane", "string"), *PAGE),
    ),
    "jobs.get_job": Op("A job's status, progress and result", {"200": JOB}),
    "jobs.delete_job": Op(
        "Delete a finished job with its results, events, shards and uploaded files (409 while it runs)", DELETED
    ),
    "jobs.cancel_job": Op(
        "Cancel a job: a queued one ends now (200); a running one is asked to stop (202, cancel_requested)",
        {"200": JOB, "202": JOB},
    ),
    "jobs.job_events": Op(
        "State transitions and per-epoch metrics, oldest first, a page at a time", {"200": JOB}, query=PAGE
    ),
    "deliveries.job_deliveries": Op(
        "The webhook deliveries of the job's end (its notify): the delivery id its receiver sees, status "
        "(pending, delivered, failed), attempts, the next one's time, and a log line per attempt",
        {"200": JOB},
    ),
    "results.job_results": Op(
        "Per-file prediction results: JSON pages, the whole set streamed with format=csv|jsonl, "
        "or as a Parquet file with format=parquet",
        {"200": JOB},
        query=(
            ("format", "string"),
            *PAGE,
            ("label", "string"),
            ("min_confidence", "number"),
            ("max_confidence", "number"),
            ("errors_only", "boolean"),
        ),
    ),
    "results.results_file": Op(
        "A finished job's whole result set as a file (Content-Length, Range: a download resumes), X-Row-Count header",
        {"200": {"description": "the results", "content": {t: {} for t in FILE_TYPES.values()}}},
        query=(("format", "string"),),
    ),
    "results.job_shards": Op(
        "A prediction job's shards: files, status, attempts and worker of each", {"200": JOB}, query=PAGE
    ),
    "results.result_image": Op(
        "A JPEG preview of one classified file of a prediction job (path as in its results)",
        {"200": IMAGE},
        query=(("path", "string"), ("size", "integer")),
    ),
    "models.list_models": Op("Registered models, newest first", {"200": JOB}),
    "models.get_model": Op("A model by id, 'latest' or alias", {"200": JOB}),
    "cards.model_card": Op(
        "A model's card: what it is, its lineage (photos and index digests, code version, settings, base "
        "weights, machine, minutes) and every evaluation; format=json (default) or markdown",
        {"200": JOB},
        query=(("format", "string"),),
    ),
    "cards.download_model": Op(
        "The model to take elsewhere: format=onnx (default; answers in its own labels, class names and "
        "preprocessing in the graph's metadata) or safetensors; Content-Length, ETag and Range",
        {"200": {"description": "the file", "content": {"application/octet-stream": {}}}},
        query=(("format", "string"),),
    ),
    "models.compare_models": Op(
        "Models a and b on the set of a succeeded evaluation job: both top-1, B minus A with a 95% paired "
        "bootstrap interval, McNemar's exact p-value and the classes that changed most (409: one of them "
        "has no evaluation of that set)",
        {"200": JOB},
        query=(("a", "string"), ("b", "string"), ("evaluation", "string")),
    ),
    "models.delete_model": Op(
        "Delete a model no alias names and no queued or running job uses, with its artifact (409 else)", DELETED
    ),
    "models.move_alias": Op("Point an alias at a model", {"200": JOB}, body={"application/json": AliasRequest}),
    "workshop.class_names": Op("Class names of the serving model", {"200": JOB}),
    "workshop.random_image": Op(
        "A random validation image (JPEG); headers X-Image-Path, X-Label-Coarse, X-Label-Fine", {"200": IMAGE}
    ),
    "workshop.class_details": Op(
        "A class of the dataset: its label level, product description and iconic image's URL", {"200": JOB}
    ),
    "workshop.class_iconic": Op("The class's iconic image (JPEG)", {"200": IMAGE}),
    "workshop.predict": Op(
        "Classify one uploaded image (multipart field 'file')",
        {"200": JOB, "5XX": ERROR},
        body={
            "multipart/form-data": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    ),
    "ops.workers": Op("Live workers (all=true: departed ones too)", {"200": JOB}, query=(("all", "boolean"),)),
    "ops.queues": Op("Broker depth and oldest queued age per queue", {"200": JOB, "503": ERROR}),
    "ops.metrics": Op(
        "Prometheus metrics",
        {"200": {"description": "text/plain", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    ),
    "health.healthz": Op("The process answers", {"200": JOB}),
    "health.readyz": Op("Database, Redis and schema usable", {"200": JOB, "503": ERROR}),
}
# A route without an entry is still listed (a client can see it exists), marked so; the tests fail on it.
UNDOCUMENTED = Op("Undocumented: no entry in api/openapi.py's OPERATIONS", {"default": {"description": "unknown"}})


def api_rules(app: Flask) -> list[Rule]:
    return [
        rule
        for rule in app.url_map.iter_rules()
        if not any(rule.rule == prefix or rule.rule.startswith(prefix + "/") for prefix in NOT_API)
    ]


def template(rule: Rule) -> tuple[str, list[tuple[str, str]]]:
    """The rule's OpenAPI path, /jobs/<job_id> -> /jobs/{id}, and its path parameters as (name, JSON type)."""
    parameters = [
        (PATH_NAMES.get(name, name), CONVERTER_TYPES.get(converter, "string"))
        for converter, name in VARIABLE.findall(rule.rule)
    ]
    return VARIABLE.sub(lambda m: "{" + PATH_NAMES.get(m[2], m[2]) + "}", rule.rule), parameters


def undocumented_routes(app: Flask) -> list[str]:
    """'METHOD /path' for each API route that OPERATIONS has no entry for."""
    return [
        f"{method} {template(rule)[0]}"
        for rule in api_rules(app)
        if rule.endpoint not in OPERATIONS
        for method in sorted(rule.methods - IMPLICIT_METHODS)
    ]


def _schema(body: type[BaseModel] | str | dict) -> dict:
    if isinstance(body, dict):
        return body
    return {"$ref": REF.format(model=body if isinstance(body, str) else body.__name__)}


def _operation(op: Op, path_parameters: list[tuple[str, str]]) -> dict:
    operation = {"summary": op.summary, "responses": {**op.responses, "4XX": ERROR}}
    if op.body:
        operation["requestBody"] = {
            "required": True,
            "content": {media: {"schema": _schema(schema)} for media, schema in op.body.items()},
        }
    parameters = [("path", name, kind) for name, kind in path_parameters] + [("query", *q) for q in op.query]
    if parameters:
        operation["parameters"] = [
            {"name": name, "in": where, "required": where == "path", "schema": {"type": kind}}
            for where, name, kind in parameters
        ]
    return operation


# POST /jobs takes the request of any registered kind of job.
REQUESTS = tuple(kind.request for kind in KINDS.values())


def _components() -> dict:
    _, schemas = models_json_schema(
        [(m, "validation") for m in (*REQUESTS, AliasRequest, UploadForm)], ref_template=REF
    )
    components = schemas.get("$defs", {})
    components["JobRequest"] = {
        "oneOf": [_schema(request) for request in REQUESTS],
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
    # The multipart form: UploadForm's fields, and the files themselves, which pydantic does not see.
    components["UploadRequest"] = {
        "allOf": [_schema(UploadForm)],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "archive": {"type": "string", "format": "binary", "description": "one zip archive of images"},
        },
    }
    return components


def document(app: Flask | None = None) -> dict:
    """The OpenAPI 3.1 document of app's API routes (the current app by default)."""
    paths: dict[str, dict] = {}
    for rule in api_rules(app or current_app):
        path, path_parameters = template(rule)
        operation = _operation(OPERATIONS.get(rule.endpoint, UNDOCUMENTED), path_parameters)
        for method in sorted(rule.methods - IMPLICIT_METHODS):
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "grocery-jobs", "version": "0.1.0"},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": _components()},
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
