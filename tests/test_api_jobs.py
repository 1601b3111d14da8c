"""The jobs API against real PostgreSQL and Redis (no worker: what the API itself promises)."""

import io
import json
import uuid

import pytest
from alembic.script import ScriptDirectory
from conftest import redis_client
from sqlalchemy import create_engine, text

from service.db import alembic_config


def queued_task_ids(redis_url: str, queue: str) -> list[str]:
    """Task ids waiting in a Celery queue (a Redis list of JSON messages)."""
    messages = redis_client(redis_url).lrange(queue, 0, -1)
    return [json.loads(m)["headers"]["id"] for m in messages]


def job_count(database_url: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    engine.dispose()
    return count


def test_submit_train_job_commits_then_enqueues(client, redis_url):
    response = client.post("/jobs", json={"type": "train", "params": {"epochs": 2, "arch": "mobilenet_v3_small"}})
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert uuid.UUID(job["id"]) and job["status"] == "queued" and job["type"] == "train"
    assert job["params"] == {"epochs": 2, "arch": "mobilenet_v3_small"}
    assert job["progress"] == {"done": 0, "total": None, "unit": "epochs"}
    assert job["attempts"] == 0 and job["error"] is None and job["created_at"]
    assert queued_task_ids(redis_url, "train") == [job["id"]]
    assert queued_task_ids(redis_url, "predict") == []
    assert client.get(f"/jobs/{job['id']}").get_json() == job


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"type": "train", "params": {"epochs": "2"}}, 422, "validation_error", "train.params.epochs"),
        ({"type": "train", "params": {"epochs": 0}}, 422, "validation_error", "train.params.epochs"),
        ({"type": "train", "params": {"epoch": 2}}, 422, "validation_error", "train.params.epoch"),
        ({"type": "train", "extra": 1}, 422, "validation_error", "train.extra"),
        ({"type": "sing"}, 422, "validation_error", ""),
        ({"type": "train", "params": {"seed": 10**30}}, 422, "validation_error", "train.params.seed"),
        (
            {"type": "train", "params": {"learning_rate": 1e308 * 10}},
            422,
            "validation_error",
            "train.params.learning_rate",
        ),
        ({"type": "train", "params": {"epochs": 10**100}}, 422, "validation_error", "train.params.epochs"),
        ({"type": "train", "params": {"batch_size": True}}, 422, "validation_error", "train.params.batch_size"),
        ({"type": "train", "params": {"min_input_size": 224}}, 422, "validation_error", "train.params"),
        (
            {"type": "train", "params": {"min_input_size": 160, "input_size": 128}},
            422,
            "validation_error",
            "train.params",
        ),
        ({"type": "train", "params": []}, 422, "validation_error", "train.params"),
        (["not", "an", "object"], 422, "validation_error", ""),
        ({"params": {}}, 422, "validation_error", ""),
        ({"type": "predict", "input": {"folder": "x", "paths": ["y"]}}, 422, "validation_error", "predict.input"),
        ({"type": "predict", "input": {"folder": "x"}}, 404, "model_not_found", None),
        ({"type": "predict", "model": "production", "input": {"folder": "x"}}, 404, "model_not_found", None),
    ],
)
def test_bad_submissions_are_refused_and_write_nothing(client, database_url, redis_url, body, status, code, field):
    response = client.post("/jobs", json=body)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    if field is not None:
        assert field in [d["field"] for d in error["details"]]
    assert job_count(database_url) == 0
    assert queued_task_ids(redis_url, "train") == queued_task_ids(redis_url, "predict") == []


def test_non_json_body(client):
    response = client.post("/jobs", data="epochs=2", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_json"


def test_malformed_and_unknown_ids(client):
    assert client.get("/jobs/not-a-uuid").status_code == 404
    assert client.get(f"/jobs/{uuid.uuid4()}").get_json()["error"]["code"] == "not_found"
    assert client.post(f"/jobs/{uuid.uuid4()}/cancel").status_code == 404
    assert client.get("/nowhere").get_json()["error"]["code"] == "not_found"


def test_idempotency_key(client, redis_url):
    body = {"type": "train", "params": {"epochs": 1}}
    first = client.post("/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert queued_task_ids(redis_url, "train") == [first.get_json()["id"]]
    other = client.post("/jobs", json={"type": "train", "params": {"epochs": 2}}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_key_reused"


def test_cancel_a_queued_job_and_then_again(client):
    job_id = client.post("/jobs", json={"type": "train"}).get_json()["id"]
    cancelled = client.post(f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert cancelled.get_json()["finished_at"]
    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already ended cancelled" in again.get_json()["error"]["message"]
    kinds = [(e["kind"], e["data"].get("status")) for e in client.get(f"/jobs/{job_id}/events").get_json()["events"]]
    assert kinds == [("state", "queued"), ("state", "cancelled")]


def test_listing_is_newest_first_with_keyset_pages(client):
    ids = [client.post("/jobs", json={"type": "train", "params": {"seed": i}}).get_json()["id"] for i in range(5)]
    client.post(f"/jobs/{ids[1]}/cancel")
    seen, cursor = [], None
    while True:
        page = client.get("/jobs", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})}).get_json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    cancelled = client.get("/jobs", query_string={"status": "cancelled"}).get_json()["jobs"]
    assert [j["id"] for j in cancelled] == [ids[1]]
    assert client.get("/jobs?status=done").status_code == 400
    assert client.get("/jobs?limit=0").status_code == 400
    assert client.get("/jobs?cursor=garbage").get_json()["error"]["code"] == "invalid_cursor"


def test_paths_must_stay_inside_the_allowed_roots(client, tmp_path, database_url):
    (tmp_path / "data").mkdir()
    (tmp_path / "escape").symlink_to("/etc")
    cases = [
        ({"data_dir": "/etc"}, "path_not_allowed"),
        ({"data_dir": f"{tmp_path}/data/../../.."}, "path_not_allowed"),
        ({"data_dir": str(tmp_path / "escape")}, "path_not_allowed"),
        ({"data_dir": str(tmp_path / "missing")}, "path_not_found"),
    ]
    for params, code in cases:
        response = client.post("/jobs", json={"type": "train", "params": params})
        assert response.status_code == 400, params
        error = response.get_json()["error"]
        assert error["code"] == code and "params.data_dir" in error["message"]
    assert (
        "GROCERY_INPUT_ROOTS"
        in client.post("/jobs", json={"type": "train", "params": {"data_dir": "/"}}).get_json()["error"]["message"]
    )
    assert job_count(database_url) == 0
    accepted = client.post("/jobs", json={"type": "train", "params": {"data_dir": f"{tmp_path}/data/."}})
    assert accepted.status_code == 202 and accepted.get_json()["params"]["data_dir"] == str(tmp_path / "data")


def test_registry_without_models(client, tmp_path):
    assert client.get("/models").get_json() == {"models": []}
    assert client.get("/models/latest").status_code == 404
    moved = client.put("/models/aliases/production", json={"model_id": str(uuid.uuid4())})
    assert moved.status_code == 404 and moved.get_json()["error"]["code"] == "model_not_found"
    assert client.put("/models/aliases/production", json={"model_id": "x"}).status_code == 422
    assert client.put("/models/aliases/production", json={"model": "x"}).status_code == 422
    assert client.put("/models/aliases/latest", json={"model_id": str(uuid.uuid4())}).status_code == 400
    no_model = client.post("/predict", data={"file": (io.BytesIO(b"x"), "x.jpg")})
    assert no_model.status_code == 503 and no_model.get_json()["error"]["code"] == "no_model"


def test_health(client, app):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"database": "ok", "redis": "ok"}


def test_not_ready_without_schema_or_redis(make_app, empty_database):
    response = make_app(database_url=empty_database, redis_url="redis://127.0.0.1:1/0").test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    head = ScriptDirectory.from_config(alembic_config(empty_database)).get_heads()
    assert f"schema at [], migrations' head is {head}" in checks["database"]
    assert checks["redis"].startswith("error: ")


def test_openapi_document_is_valid_and_comes_from_the_schemas(client):
    from openapi_spec_validator import validate

    from service.specs import TrainParams

    document = client.get("/openapi.json").get_json()
    validate(document)
    assert set(document["components"]["schemas"]["TrainParams"]["properties"]) == set(TrainParams.model_fields)
    assert {
        "/jobs",
        "/jobs/{id}",
        "/jobs/{id}/cancel",
        "/jobs/{id}/shards",
        "/models/aliases/{name}",
        "/predict",
    } <= set(document["paths"])
    assert b"/openapi.json" in client.get("/docs").data


def test_upload_over_the_limit_is_413(make_app):
    client = make_app(max_upload_bytes=1000).test_client()
    response = client.post("/predict", data={"file": (io.BytesIO(b"x" * 5000), "a.jpg")})
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "request_entity_too_large"


def test_concurrent_retries_with_one_key_make_one_job(app, redis_url, database_url):
    from concurrent.futures import ThreadPoolExecutor

    body = {"type": "train", "params": {"seed": 5}}

    def submit(_):
        response = app.test_client().post("/jobs", json=body, headers={"Idempotency-Key": "race"})
        return response.status_code, response.get_json()["id"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(submit, range(16)))
    assert len({job_id for _, job_id in answers}) == 1
    assert sorted(status for status, _ in answers) == [200] * 15 + [202]
    assert job_count(database_url) == 1 and len(queued_task_ids(redis_url, "train")) == 1
