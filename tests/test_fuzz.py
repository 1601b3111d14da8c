"""schemathesis against /openapi.json: generated requests for every route and method, valid and
invalid; no 5xx, and responses match the document (status codes, content types, schemas)."""

import factories
import pytest
import schemathesis
from conftest import clean_store
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import positive_data_acceptance

from service.settings import Settings


@pytest.fixture(scope="module")
def api_schema(app_for, database_url, redis_url, tiny_dataset, tmp_path_factory):
    clean_store(database_url, redis_url)
    factories.seed_model(database_url, artifact=tmp_path_factory.mktemp("no-model"))
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
    app = app_for(settings)
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
def secured_schema(app_for, database_url, redis_url, tiny_dataset, tmp_path_factory):
    """The same API with tokens required (issue #14), and a token of each scope."""
    clean_store(database_url, redis_url)
    factories.seed_model(database_url, artifact=tmp_path_factory.mktemp("no-model"))
    with factories.store_session(database_url) as session:
        made = {
            scope: factories.token(session, name=scope, scopes=[scope]) for scope in ("jobs:read", "jobs:write", "ops")
        }
        made["team"] = factories.token(session, name="team", roots=[str(tiny_dataset / "val")])
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
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app_for(settings)).exclude(path="/predict")
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
