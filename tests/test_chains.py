"""Chains (service/chains.py): a training's ``then`` runs train -> evaluate -> promote as linked jobs,
with real PostgreSQL and Redis and a real worker; the promotion moves the alias only where its gate
holds, and a chain that stops says where and why."""

import time

import factories
import pytest
from conftest import FINISHED, clean_store, stack_settings, start_worker, stop_worker, wait_for

# A quick training of the tiny dataset: an untrained network, one epoch, at chance or near it.
QUICK = {"arch": "mobilenet_v3_small", "weights": "none", "epochs": 1, "input_size": 64, "batch_size": 8}
VAL = {"index": {"split": "val"}}


@pytest.fixture(scope="module")
def settings(database_url, redis_url, tiny_dataset, tmp_path_factory):
    return stack_settings(database_url, redis_url, tiny_dataset, tmp_path_factory.mktemp("chains"))


@pytest.fixture(scope="module")
def worker(settings):
    clean_store(settings.database_url, settings.redis_url)
    started = start_worker("chains@%h", ["train", "predict"], settings)
    yield started
    stop_worker(started)
    print("".join(list(started.log_tail)[-80:]))  # shown when a test fails


@pytest.fixture
def production(worker, settings, tiny_model, client):
    """A new copy of the tiny model (pretrained, well above chance, evaluated nowhere) in production.
    The store is emptied once, for the module: emptying it under a live worker could deadlock."""
    model_id = str(factories.seed_model(settings.database_url, artifact=tiny_model))
    assert client.put("/models/aliases/production", json={"model_id": model_id}).status_code == 200
    return model_id


def chain_of(client, training_id: str, timeout: float = 120) -> dict:
    """The training's document once its chain has gone as far as it goes: its promotion ended, or the
    chain stopped short of it."""
    training = wait_for(client, training_id, FINISHED)
    assert training["status"] == "succeeded", training["error"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chain = client.get(f"/jobs/{training_id}").get_json()["chain"]
        ended = all(step["status"] in FINISHED for step in chain["steps"])
        if ended and (chain["stopped"] or any(step["type"] == "promote" for step in chain["steps"])):
            return client.get(f"/jobs/{training_id}").get_json()
        time.sleep(0.2)
    raise TimeoutError(f"the chain of job {training_id} did not end: {chain}")


def alias_target(client, name: str) -> str | None:
    return next((m["id"] for m in client.get("/models").get_json()["models"] if name in m["aliases"]), None)


def test_a_chain_whose_gate_holds_trains_evaluates_and_promotes(production, client):
    then = {"evaluate": VAL, "promote": "staging", "gate": {"min_top1": 0.0}}
    submitted = client.post("/jobs", json={"type": "train", "params": QUICK, "then": then})
    assert submitted.status_code == 202, submitted.get_json()
    training = chain_of(client, submitted.get_json()["id"])

    evaluation, promotion = training["chain"]["steps"]
    assert (evaluation["type"], evaluation["status"]) == ("evaluate", "succeeded")
    assert (promotion["type"], promotion["status"]) == ("promote", "succeeded")
    assert evaluation["model_id"] == promotion["model_id"] == training["model_id"]
    assert training["chain"]["stopped"] is None
    # What it asked for as the request named it: the set by its name, not the files it holds.
    assert training["chain"]["then"] == {
        "evaluate": VAL,
        "label_level": "coarse",
        "promote": "staging",
        "gate": then["gate"] | {"not_worse_than": None, "margin": 0.0},
    }
    # Linked rows: each step names the job whose end made it.
    assert client.get(f"/jobs/{evaluation['id']}").get_json()["parent_id"] == training["id"]
    promoted = client.get(f"/jobs/{promotion['id']}").get_json()
    assert promoted["parent_id"] == evaluation["id"] and promoted["result"]["passed"] is True
    assert promoted["result"]["figures"]["set"] == evaluation["id"]
    assert alias_target(client, "staging") == training["model_id"]
    assert alias_target(client, "production") == production  # a chain moves only the alias it names


def test_a_chain_whose_gate_fails_stops_there_and_says_why(production, client):
    # Not worse than production, which has no evaluation of the set yet: the chain evaluates it too.
    then = {"evaluate": VAL, "promote": "production", "gate": {"min_top1": 1.0, "not_worse_than": "production"}}
    training = chain_of(
        client, client.post("/jobs", json={"type": "train", "params": QUICK, "then": then}).get_json()["id"]
    )

    steps = training["chain"]["steps"]
    evaluated = {step["model_id"]: step for step in steps if step["type"] == "evaluate"}
    assert set(evaluated) == {training["model_id"], production}
    assert all(step["status"] == "succeeded" for step in evaluated.values())
    (promotion,) = [step for step in steps if step["type"] == "promote"]
    assert promotion["status"] == "failed" and promotion["error"]["code"] == "gate_failed"
    assert training["chain"]["stopped"].startswith("the promotion failed: production stays where it is")
    assert alias_target(client, "production") == production

    figures = client.get(f"/jobs/{promotion['id']}").get_json()["result"]["figures"]
    own_top1 = client.get(f"/jobs/{evaluated[training['model_id']]['id']}").get_json()["result"]["evaluation"]["top1"]
    theirs = client.get(f"/jobs/{evaluated[production]['id']}").get_json()["result"]["evaluation"]["top1"]
    assert figures["model"]["top1"] == own_top1 and figures["not_worse_than"]["top1"] == theirs
    assert figures["min_top1"] == 1.0


def test_a_promotion_is_a_job_of_its_own_too(production, client):
    evaluation = client.post("/jobs", json={"type": "evaluate", "model": production, "input": VAL}).get_json()
    assert wait_for(client, evaluation["id"], FINISHED)["status"] == "succeeded"
    gate = {"evaluation": evaluation["id"], "min_top1": 0.0}
    promotion = client.post("/jobs", json={"type": "promote", "model": "production", "alias": "canary", "gate": gate})
    assert promotion.status_code == 202, promotion.get_json()
    done = wait_for(client, promotion.get_json()["id"], FINISHED)
    assert done["status"] == "succeeded" and done["model_id"] == production
    assert alias_target(client, "canary") == production


@pytest.mark.parametrize(
    ("then", "status", "field"),
    [
        ({"evaluate": {"index": {"split": "holdout"}}}, 400, "then.evaluate.input.index.split"),
        ({"evaluate": VAL, "gate": {"min_top1": 0.5}}, 422, None),  # a gate guards a promotion
        ({"evaluate": VAL, "promote": "latest"}, 422, None),
        ({"evaluate": {"folder": "../../etc"}}, 400, "then.evaluate.input.folder"),
    ],
)
def test_a_chain_that_could_not_run_is_refused_at_submission(production, client, then, status, field):
    before = client.get("/jobs?type=train").get_json()["jobs"]
    response = client.post("/jobs", json={"type": "train", "params": QUICK, "then": then})
    assert response.status_code == status, response.get_json()
    if field is not None:
        assert response.get_json()["error"]["details"]["field"] == field
    assert client.get("/jobs?type=train").get_json()["jobs"] == before
