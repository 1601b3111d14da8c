"""Why a job waits (GET /jobs/<id>'s "waiting", service/waiting.py): its queue and place there, the
live workers that take that queue, the reason it is not running, an estimated start, its owner's quota."""

import dataclasses
import time
from datetime import datetime, timezone

import factories
import pytest
from conftest import start_worker, stop_worker

from api.ui import job_page
from service import shards, tokens


@pytest.fixture
def settings(settings):
    """The jobs here are written without their broker message (so that a live worker has nothing to
    take), which a worker's reconciler sends once a job is GROCERY_RECONCILE_SECONDS old: not here."""
    return dataclasses.replace(settings, reconcile_seconds=3600)


def waiting(client, job_id, **headers) -> dict | None:
    response = client.get(f"/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json().get("waiting")  # only a waiting job's answer has it


def page_line(client, job_id, **headers) -> str:
    """What the job's page says under its status while the job waits."""
    header = job_page.header(client.get(f"/jobs/{job_id}", headers=headers).get_json())
    return next(part.children for part in header if getattr(part, "id", None) == "job-waiting")


def queued_train_job(database_url, **fields):
    """A queued training job, in a transaction of its own (as each submission is): its own enqueue time."""
    with factories.store_session(database_url) as session:
        return factories.job(session, type="train", **fields).id


def test_with_workers_stopped_a_queued_job_says_so(client, settings, database_url):
    first, second = queued_train_job(database_url), queued_train_job(database_url)
    with factories.store_session(database_url) as session:
        predict = factories.job(session, type="predict").id  # another queue: ahead of neither
        for _ in range(3):  # training jobs started in the last five minutes: the queue's recent pace
            factories.job(session, type="train", status="succeeded").started_at = datetime.now(timezone.utc)

    alone = waiting(client, first)
    assert (alone["queue"], alone["position"], alone["workers"]) == ("train", 0, {"live": 0, "busy": 0})
    assert alone["reason"]["code"] == "no_worker" and alone["estimated_start_seconds"] is None
    assert "`grocery worker --queues train`" in alone["reason"]["message"]
    assert waiting(client, second)["position"] == 1

    trainer = start_worker("trainer", ["train"], settings)
    try:
        deadline = time.monotonic() + 30
        while waiting(client, first)["workers"]["live"] == 0:
            assert time.monotonic() < deadline, "the worker never said it was live"
            time.sleep(0.2)
        assert waiting(client, first)["reason"]["code"] == "starting"
        behind = waiting(client, second)
        assert behind["reason"]["code"] == "busy" and behind["ahead"] == {"jobs": 1}
        assert "1 job ahead of it on the 'train' queue" in behind["reason"]["message"]
        # 3 starts in 300 s: one every 100 s; the job ahead of it, then itself.
        assert behind["recent_starts"] == {"count": 3, "window_seconds": 300}
        assert behind["estimated_start_seconds"] == 200.0
        assert page_line(client, second) == f"Waiting: {behind['reason']['message']}; it should start in about 200 s"
        other = waiting(client, predict)  # a training worker does not take the predict queue
        assert other["reason"]["code"] == "no_worker" and "--queues predict" in other["reason"]["message"]
    finally:
        stop_worker(trainer)

    stopped = waiting(client, second)
    assert stopped["reason"]["code"] == "no_worker" and stopped["workers"]["live"] == 0
    assert stopped["estimated_start_seconds"] is None
    assert page_line(client, second) == f"Waiting: {stopped['reason']['message']}"


def test_with_a_token_at_its_quota_a_queued_job_says_that(make_app, database_url):
    with factories.store_session(database_url) as session:
        small = factories.token(session, name="small", max_active_jobs=2)
        roomy = factories.token(session, name="roomy")
        operator = factories.token(session, name="operator", scopes=["jobs:read", "ops"])
        small_id, roomy_id = (tokens.find_token(session, secret=s).id for s in (small, roomy))
    first = queued_train_job(database_url, owner_token_id=small_id)
    queued_train_job(database_url, owner_token_id=small_id)
    other = queued_train_job(database_url, owner_token_id=roomy_id)
    client = make_app(auth="required").test_client()

    full = waiting(client, first, Authorization=f"Bearer {small}")
    quota = full["quota"]
    assert quota["at_limit"] and (quota["jobs"], quota["jobs_limit"]) == (2, 2)
    assert "2 of its 2 jobs" in quota["message"] and "429" in quota["message"]
    assert full["reason"]["code"] == "no_worker"  # the quota was met when it was submitted: not why it waits
    assert quota["message"] in page_line(client, first, Authorization=f"Bearer {small}")
    # An operator looking at it sees its owner's quota, not the operator's own.
    assert waiting(client, first, Authorization=f"Bearer {operator}")["quota"] == quota
    room = waiting(client, other, Authorization=f"Bearer {roomy}")["quota"]
    assert not room["at_limit"] and room["message"] is None and (room["jobs"], room["jobs_limit"]) == (1, 100)


def take(session) -> int:
    """The shard the next free worker takes, claimed."""
    shard = shards.claim_shard(session, shard_id=None, worker="w@h", device="cpu")
    session.commit()
    return shard.id


def test_a_listed_job_whose_shards_all_wait_stands_in_the_fair_share_order(client, database_url):
    with factories.store_session(database_url) as session:
        alice, bob, carol = (tokens.create_token(session, name=n, scopes=["jobs:write"])[0].id for n in "abc")
        started, _ = factories.listed_job(session, owner_id=alice, shard_count=3)
        take(session)  # alice now runs a shard
        bobs, _ = factories.listed_job(session, owner_id=bob, shard_count=2)
        urgent, _ = factories.listed_job(session, owner_id=carol, shard_count=2, priority="high")
        mine, my_shards = factories.listed_job(session, owner_id=alice, shard_count=2)

    standing = waiting(client, mine)
    assert (standing["queue"], standing["reason"]["code"]) == ("shards", "no_worker")
    assert "`grocery worker --queues predict`" in standing["reason"]["message"]
    # Carol's two shards of higher priority; then bob's job, whose owner runs fewer shards than alice.
    assert standing["ahead"] == {"higher_priority_shards": 2, "fairer_share_jobs": 1} and standing["position"] == 3
    assert waiting(client, started) is None  # one of its shards runs: it does not wait
    with factories.store_session(database_url) as session:
        assert take(session) not in my_shards and take(session) not in my_shards and take(session) not in my_shards
        assert take(session) == my_shards[0]  # as many went first as it said
