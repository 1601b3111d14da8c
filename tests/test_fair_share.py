"""Which queued shard a free worker takes (service.shards.next_shard): round-robin across owners,
then across an owner's jobs, higher priorities first; at the data-function level."""

import factories
import pytest
from sqlalchemy import create_engine

from service import shards, tokens
from service.db import make_session_factory


@pytest.fixture
def sessions(database_url, empty_store):
    engine = create_engine(database_url, pool_size=4)
    yield make_session_factory(engine)
    engine.dispose()


def owner(session, name: str):
    token, _ = tokens.create_token(session, name=name, scopes=["jobs:write"])
    return token.id


def take(session) -> int:
    """What the next free worker claims."""
    shard = shards.claim_shard(session, shard_id=None, worker="w@h", device="cpu")
    session.commit()
    return shard.id


def test_a_later_owner_is_served_before_the_earlier_owners_next_shard(sessions):
    with sessions() as session:
        alice, bob = owner(session, "alice"), owner(session, "bob")
        big = factories.listed_job(session, owner_id=alice, shard_count=50)[1]
        small = factories.listed_job(session, owner_id=bob, shard_count=2)[1]
        # Two free workers: each owner gets one, not both the first job's.
        assert [take(session), take(session)] == [big[0], small[0]]
        assert [take(session), take(session)] == [big[1], small[1]]
        assert take(session) == big[2]  # bob has nothing left: alice's job takes the fleet


def test_an_owners_jobs_take_turns(sessions):
    with sessions() as session:
        alice = owner(session, "alice")
        first = factories.listed_job(session, owner_id=alice, shard_count=10)[1]
        second = factories.listed_job(session, owner_id=alice, shard_count=10)[1]
        assert [take(session) for _ in range(4)] == [first[0], second[0], first[1], second[1]]


def test_a_higher_priority_goes_first_and_a_lower_one_waits(sessions):
    with sessions() as session:
        alice, ops = owner(session, "alice"), owner(session, "ops")
        normal = factories.listed_job(session, owner_id=alice, shard_count=5)[1]
        low = factories.listed_job(session, owner_id=alice, shard_count=5, priority="low")[1]
        high = factories.listed_job(session, owner_id=ops, shard_count=2, priority="high")[1]
        taken = [take(session) for _ in range(5)]
        assert taken == [high[0], high[1], normal[0], normal[1], normal[2]]
        assert not set(taken) & set(low)


def test_a_named_shard_is_claimed_as_named_and_only_once(sessions):
    with sessions() as session:
        ids = factories.listed_job(session, owner_id=None, shard_count=3)[1]
        named = shards.claim_shard(session, shard_id=ids[2], worker="w@h", device="cpu")
        session.commit()
        assert named.id == ids[2]
        assert shards.claim_shard(session, shard_id=ids[2], worker="w@h", device="cpu") is None
        assert take(session) == ids[0]
