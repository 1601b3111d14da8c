"""schemathesis against /openapi.json: generated requests for every route and method, valid and
invalid; no 5xx, and responses match the document (status codes, content types, schemas)."""

import pytest
import schemathesis
from conftest import clean_store, seed_tiny_model
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import positive_data_acceptance

from api import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def api_schema(database_url, redis_url, tiny_dataset, tmp_path_factory):
    clean_store(database_url, redis_url)
    seed_tiny_model(database_url, tmp_path_factory.mktemp("no-model"))
    store = tmp_path_factory.mktemp("fuzz")
    settings = Settings(
        auth="off",
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tiny_dataset,
        model_dir=store / "models",
        upload_dir=store / "uploads",
        input_roots=(tiny_dataset,),
    )
    app = create_app(settings)
    # POST /predict waits for a worker to classify the upload (504 after 30 s without one):
    # it runs end to end in test_worker.py, not here.
    return schemathesis.openapi.from_wsgi("/openapi.json", app).exclude(path="/predict")


def test_generated_requests_get_documented_answers(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /jobs", "GET /jobs/{id}/results", "GET /metrics", "PUT /models/aliases/{name}"} <= labels
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_documented(case):
            # Schema-valid is not always acceptable here: cursors are opaque, folders must exist
            # inside the allowed roots, ids must name a job. So a 400/404 for those is right.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        answers_as_documented()


@pytest.fixture(scope="module")
def secured_schema(database_url, redis_url, tiny_dataset, tmp_path_factory):
    """The same API with tokens required (issue #14), and a token of each scope."""
    from sqlalchemy import text

    from service import tokens
    from service.db import make_engine, make_session_factory

    clean_store(database_url, redis_url)
    seed_tiny_model(database_url, tmp_path_factory.mktemp("no-model"))
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        session.execute(text("DELETE FROM api_tokens"))
        made = {
            scope: tokens.create_token(session, name=scope, scopes=[scope])[1]
            for scope in ("jobs:read", "jobs:write", "ops")
        }
        made["team"] = tokens.create_token(
            session, name="team", scopes=["jobs:read", "jobs:write"], roots=[str(tiny_dataset / "val")]
        )[1]
        session.commit()
    engine.dispose()
    store = tmp_path_factory.mktemp("fuzz-secured")
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tiny_dataset,
        model_dir=store / "models",
        upload_dir=store / "uploads",
        input_roots=(tiny_dataset,),
    )
    assert settings.auth == "required"
    schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(settings)).exclude(path="/predict")
    return schema, made


@pytest.mark.parametrize("who", ["anonymous", "jobs:read", "jobs:write", "ops", "team"])
def test_generated_requests_with_tokens_get_documented_answers(secured_schema, who):
    schema, made = secured_schema
    headers = {} if who == "anonymous" else {"Authorization": f"Bearer {made[who]}"}
    for operation in [result.ok() for result in schema.get_all_operations()]:
        answers_as_documented(operation, headers, refused=who == "anonymous" and operation.label not in PUBLIC)


PUBLIC = {"GET /healthz", "GET /readyz"}


def answers_as_documented(operation, headers: dict, *, refused: bool) -> None:
    @given(case=operation.as_strategy())
    @hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        case.headers = {**(case.headers or {}), **headers}
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        if refused:  # anonymous: refused at the door, whatever the request
            assert response.status_code == 401, (operation.label, response.status_code)

    check()
