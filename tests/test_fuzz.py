"""schemathesis against /openapi.json: generated requests for every route and method, valid and
invalid; no 5xx, and responses match the document (status codes, content types, schemas)."""

import pytest
import schemathesis
from conftest import clean_store, register_tiny_model
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from api import create_app
from service.db import make_engine, make_session_factory
from service.settings import Settings


@pytest.fixture(scope="module")
def api_schema(database_url, redis_url, tiny_dataset, tmp_path_factory):
    clean_store(database_url, redis_url)
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        register_tiny_model(session, tmp_path_factory.mktemp("no-model"))
        session.commit()
    engine.dispose()
    store = tmp_path_factory.mktemp("fuzz")
    settings = Settings(
        auth="off",
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tiny_dataset,
        model_dir=store / "models",
        upload_dir=store / "uploads",
        input_roots=(tiny_dataset, store / "uploads"),
    )
    app = create_app(settings)
    # POST /predict waits for a worker to classify the upload (504 after 30 s without one):
    # it runs end to end in test_worker.py, not here.
    return schemathesis.openapi.from_wsgi("/openapi.json", app).exclude(path="/predict")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers(case):
    case.call_and_validate()
