"""Access: API tokens with scopes, stored hashed; a token sees only its own jobs; the CLI manages them."""

import os
import subprocess
import sys

import factories
import pytest
from conftest import ROOT
from sqlalchemy import text

from service import tokens
from service.db import make_engine, make_session_factory


@pytest.fixture
def secured(make_app, settings, tmp_path):
    """The API with tokens required, and one token per kind of user."""
    with factories.store_session(settings.database_url) as session:
        made = {
            name: factories.token(session, name=name, scopes=scopes)
            for name, scopes in {
                "alice": ["jobs:read", "jobs:write"],
                "bob": ["jobs:read", "jobs:write"],
                "reader": ["jobs:read"],
                "operator": ["ops", "jobs:read"],
            }.items()
        }
    (tmp_path / "data").mkdir()
    return make_app(auth="required", data_dir=tmp_path / "data").test_client(), made


def as_(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


TRAIN = {"type": "train", "params": {"epochs": 1}}


def test_a_token_is_needed_and_must_be_live(secured, database_url):
    client, made = secured
    missing = client.get("/jobs")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.get_json()["error"]["code"] == "unauthorized"
    for header in (
        {"Authorization": "Bearer gj_made-up"},
        {"Authorization": made["alice"]},
        {"Authorization": "Basic x"},
    ):
        response = client.get("/jobs", headers=header)
        assert response.status_code == 401, header
    assert client.get("/jobs", headers=as_(made["alice"])).status_code == 200
    for public in ("/healthz", "/openapi.json", "/docs"):
        assert client.get(public).status_code == 200, public

    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        stored = session.execute(text("SELECT token_hash, name FROM api_tokens")).all()
        alice = next(t for t in tokens.list_tokens(session) if t.name == "alice")
        assert tokens.revoke_token(session, token_id=alice.id)
        session.commit()
    engine.dispose()
    assert all(made[name] not in digest and len(digest) == 64 for digest, name in stored)  # only hashes kept
    assert client.get("/jobs", headers=as_(made["alice"])).get_json()["error"]["code"] == "invalid_token"


def test_each_route_needs_its_scope(secured):
    client, made = secured
    denied = client.post("/jobs", json=TRAIN, headers=as_(made["reader"]))
    assert denied.status_code == 403 and "'jobs:write'" in denied.get_json()["error"]["message"]
    for path in ("/workers", "/queues", "/metrics"):
        assert client.get(path, headers=as_(made["alice"])).status_code == 403, path
        assert client.get(path, headers=as_(made["operator"])).status_code in (200, 503), path
    alias = client.put("/models/aliases/production", json={"model_id": "x"}, headers=as_(made["alice"]))
    assert alias.status_code == 403
    assert client.post("/jobs", json=TRAIN, headers=as_(made["alice"])).status_code == 202


def test_a_token_sees_only_its_own_jobs(secured):
    client, made = secured
    job_id = client.post("/jobs", json=TRAIN, headers=as_(made["alice"])).get_json()["id"]
    own = client.post("/jobs", json=TRAIN, headers=as_(made["bob"])).get_json()["id"]
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/events", f"/jobs/{job_id}/results", f"/jobs/{job_id}/shards"):
        response = client.get(path, headers=as_(made["bob"]))
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found", path
        mine = client.get(path, headers=as_(made["alice"]))
        if path.endswith("/results"):  # a training job has none: its owner is told so, another learns nothing
            assert mine.status_code == 409 and mine.get_json()["error"]["code"] == "no_results", path
        else:
            assert mine.status_code == 200, path
    assert client.post(f"/jobs/{job_id}/cancel", headers=as_(made["bob"])).status_code == 404
    assert [j["id"] for j in client.get("/jobs", headers=as_(made["bob"])).get_json()["jobs"]] == [own]
    seen_by_ops = {j["id"] for j in client.get("/jobs", headers=as_(made["operator"])).get_json()["jobs"]}
    assert seen_by_ops == {job_id, own}


def test_the_cli_creates_lists_and_revokes_tokens(secured, database_url):
    client, _ = secured
    env = {**os.environ, "DATABASE_URL": database_url}

    def grocery(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli", "tokens", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )

    created = grocery("create", "--name", "team-produce", "--scopes", "jobs:read,jobs:write")
    assert created.returncode == 0, created.stderr
    token_id, secret = created.stdout.split()[2], created.stdout.splitlines()[-1]
    assert secret.startswith("gj_") and client.get("/jobs", headers=as_(secret)).status_code == 200
    assert "team-produce" in grocery("list").stdout and secret not in grocery("list").stdout
    assert grocery("create", "--name", "x", "--scopes", "admin").returncode == 2
    assert grocery("revoke", token_id).returncode == 0
    assert client.get("/jobs", headers=as_(secret)).status_code == 401
    assert grocery("revoke", token_id).returncode == 1
