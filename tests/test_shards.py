"""Shard bookkeeping at the data-function level: one claim per attempt, resumable shards, and a job
that ends exactly once however its shards finish."""

import threading
import time
from datetime import timedelta

import factories
import psycopg
import pytest
from sqlalchemy import create_engine, func, select, update

from service import attempts, crud, ops, predictions, recovery, shards
from service.attempts import Verdict
from service.db import make_session_factory
from service.retry import RetryPolicy
from service.tables import JobShard, Worker


@pytest.fixture
def sessions(database_url, empty_store):
    engine = create_engine(database_url, pool_size=8)
    yield make_session_factory(engine)
    engine.dispose()


def running_job(session, files: list[list[str]]) -> tuple:
    """A claimed prediction job listed into one shard per entry of ``files``, committed for the other sessions."""
    made = factories.running_job(session, files=files)
    session.commit()
    return made


def row(path: str, label: str | None = "Apple", error: str | None = None) -> dict:
    return factories.result_row(path, label=label, error=error)


def test_listing_twice_records_each_shard_once(sessions):
    with sessions() as session:
        job_id, ids = running_job(session, [["/a/1.jpg", "/a/2.jpg"]])
        assert shards.add_shard(session, job_id=job_id, number=0, paths=["/a/1.jpg", "/a/2.jpg"]) is None
        assert ids[0] is not None


def test_a_shard_is_claimed_once_and_a_stale_attempt_cannot_write(sessions):
    with sessions() as session:
        _, (shard_id,) = running_job(session, [["/a/1.jpg"]])
        first = shards.claim_shard(session, shard_id=shard_id, worker="w1@h", device="cpu")
        assert first.attempts == 1
        assert shards.claim_shard(session, shard_id=shard_id, worker="w2@h", device="cpu") is None  # a duplicate
        shards.requeue_shard(session, shard=first, attempt=1, error_message="boom")
        second = shards.claim_shard(session, shard_id=shard_id, worker="w2@h", device="cpu")
        assert second.attempts == 2
        assert (
            shards.report_shard(session, shard=first, attempt=1, done=1, failed=0, labels={}, runtime="onnx")
            is Verdict.LOST
        )
        assert not attempts.keep_alive(session, table=JobShard, key=first.id, attempt=1) and attempts.keep_alive(
            session, table=JobShard, key=second.id, attempt=2
        )
        assert not shards.finish_shard(session, shard=first, attempt=1, status="failed")
        assert shards.finish_shard(session, shard=second, attempt=2, status="succeeded")
        session.commit()
        assert session.get(JobShard, shard_id).worker == "w2@h"


def test_a_retried_shard_resumes_and_counts_from_its_rows(sessions):
    with sessions() as session:
        job_id, (shard_id,) = running_job(session, [["/a/1.jpg", "/a/2.jpg", "/a/3.jpg"]])
        shard = shards.claim_shard(session, shard_id=shard_id, worker="w1@h", device="cpu")
        predictions.add_predictions(session, job_id=job_id, rows=[row("/a/1.jpg"), row("/a/2.jpg", None, "truncated")])
        assert shards.done_paths(session, job_id=job_id, paths=shard.paths) == {"/a/1.jpg", "/a/2.jpg"}
        shards.fail_remaining(session, shard=shard, code="internal_error", message="gave up")
        assert shards.finish_shard(session, shard=shard, attempt=1, status="failed")
        session.commit()
        finished = session.get(JobShard, shard_id)
        assert (finished.done, finished.failed, finished.labels) == (3, 2, {"Apple": 1})
        rows = predictions.list_predictions(session, job_id=job_id, limit=10)
        assert [(r.path, r.error_code) for r in rows] == [
            ("/a/1.jpg", None),
            ("/a/2.jpg", "truncated"),
            ("/a/3.jpg", "internal_error"),
        ]


def test_the_job_ends_once_when_shards_finish_together(sessions):
    with sessions() as session:
        job_id, ids = running_job(session, [[f"/s{n}/{i}.jpg" for i in range(3)] for n in range(6)])
        claimed = [shards.claim_shard(session, shard_id=i, worker="w@h", device="cpu") for i in ids]
        for shard in claimed:
            predictions.add_predictions(session, job_id=job_id, rows=[row(p) for p in shard.paths])
        session.commit()
    barrier, outcomes = threading.Barrier(len(claimed)), []

    def finish(shard):
        with sessions() as session:
            shards.finish_shard(session, shard=shard, attempt=1, status="succeeded")
            session.commit()
            barrier.wait()
            outcomes.append(shards.finish_if_done(session, job_id=job_id, max_failed_fraction=0.1))
            session.commit()

    threads = [threading.Thread(target=finish, args=(s,)) for s in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes, key=str) == [None] * 5 + ["succeeded"]
    with sessions() as session:
        job = crud.get_job(session, job_id=job_id)
        assert (job.status, job.progress_done, job.result["labels"], job.result["shards"]) == (
            "succeeded",
            18,
            {"Apple": 18},
            6,
        )
        states = [e.data["status"] for e in crud.list_events(session, job_id=job_id) if e.kind == "state"]
        assert states == ["queued", "running", "succeeded"]


def test_a_job_waits_for_its_listing_and_fails_above_the_threshold(sessions):
    with sessions() as session:
        job = factories.job(session)
        attempt = crud.claim_job(session, job_id=job.id, worker="lister@h", device="cpu")
        shard_id = shards.add_shard(session, job_id=job.id, number=0, paths=["/a/1.jpg", "/a/2.jpg"])
        crud.report_job(session, job_id=job.id, attempt=attempt, progress_total=2)
        shard = shards.claim_shard(session, shard_id=shard_id, worker="w@h", device="cpu")
        predictions.add_predictions(session, job_id=job.id, rows=[row("/a/1.jpg"), row("/a/2.jpg", None, "corrupt")])
        shards.finish_shard(session, shard=shard, attempt=1, status="succeeded")
        assert shards.finish_if_done(session, job_id=job.id, max_failed_fraction=0.5) is None  # still listing
        crud.report_job(session, job_id=job.id, attempt=attempt, progress_total=2, shards_total=1)
        assert shards.finish_if_done(session, job_id=job.id, max_failed_fraction=0.4) == "failed"
        session.commit()
        ended = crud.get_job(session, job_id=job.id)
        assert ended.error_code == "too_many_failures" and "1 of 2 files failed (50.0%)" in ended.error_message


def test_a_cancelled_job_drops_its_queued_shards(sessions):
    with sessions() as session:
        job_id, ids = running_job(session, [["/a/1.jpg"], ["/a/2.jpg"]])
        assert crud.request_cancel(session, job_id=job_id) == "running"
        assert shards.claim_shard(session, shard_id=ids[0], worker="w@h", device="cpu") is None
        assert shards.drop_shard_of_stopped_job(session, shard_id=ids[0]) == job_id
        assert shards.finish_if_done(session, job_id=job_id, max_failed_fraction=0.1) is None  # one still queued
        assert shards.drop_shard_of_stopped_job(session, shard_id=ids[1]) == job_id
        assert shards.finish_if_done(session, job_id=job_id, max_failed_fraction=0.1) == "cancelled"
        session.commit()


def test_a_job_queued_again_to_be_listed_keeps_its_shards(sessions):
    """Its lister lost, a job goes back on the queue to be listed again: its shards, queued or running,
    are still its work, neither dropped nor stopped, and they run once the job does."""
    with sessions() as session:
        job_id, (running, queued) = running_job(session, [["/a/1.jpg"], ["/a/2.jpg"]])
        under_way = shards.claim_shard(session, shard_id=running, worker="w1@h", device="cpu")
        assert crud.requeue_job(session, job_id=job_id, attempt=1, reason="no heartbeat for 4s")
        assert shards.drop_shard_of_stopped_job(session, shard_id=queued) is None
        assert shards.claim_shard(session, shard_id=queued, worker="w2@h", device="cpu") is None  # not while queued
        verdict = shards.report_shard(session, shard=under_way, attempt=1, done=1, failed=0, labels={}, runtime="onnx")
        assert verdict is Verdict.GO_ON
        assert crud.claim_job(session, job_id=job_id, worker="lister@h", device="cpu") == 2
        assert shards.claim_shard(session, shard_id=queued, worker="w2@h", device="cpu").attempts == 1
        session.commit()


def test_a_lost_job_or_shard_whose_cancel_was_asked_ends_cancelled(sessions):
    """Put back on the queue, a job flagged for cancelling could never be claimed again (it stayed queued
    for ever), nor a shard of an ended job be sent again."""
    with sessions() as session:
        job_id, (lost, queued) = running_job(session, [["/a/1.jpg"], ["/a/2.jpg"]])
        shard = shards.claim_shard(session, shard_id=lost, worker="w@h", device="cpu")
        assert crud.request_cancel(session, job_id=job_id) == "running"
        policy = RetryPolicy(3)
        assert (
            recovery.recover_shard(session, shard=shard, code="worker_lost", reason="r", policy=policy) == "cancelled"
        )
        job = crud.get_job(session, job_id=job_id)
        assert recovery.recover_job(session, job=job, code="worker_lost", reason="r", policy=policy) == "cancelled"
        session.commit()
        assert crud.get_job(session, job_id=job_id).status == "cancelled"
        assert [session.get(JobShard, i).status for i in (lost, queued)] == ["cancelled", "cancelled"]


def test_a_job_with_an_output_object_ends_only_with_the_object_written(sessions):
    """So that a client who sees the job ended finds its results object in place."""
    with sessions() as session:
        job_id, (shard_id,) = running_job(session, [["/a/1.jpg"]])
        job = crud.get_job(session, job_id=job_id)
        job.params = {"output": {"url": "s3://b/r.parquet"}}
        shard = shards.claim_shard(session, shard_id=shard_id, worker="w@h", device="cpu")
        predictions.add_predictions(session, job_id=job_id, rows=[row("/a/1.jpg")])
        shards.finish_shard(session, shard=shard, attempt=1, status="succeeded")
        assert shards.outcome(session, job_id=job_id, max_failed_fraction=0.1).status == "succeeded"
        assert shards.finish_if_done(session, job_id=job_id, max_failed_fraction=0.1) is None  # no object yet
        output = {"url": "s3://b/r.parquet", "bytes": 1234, "rows": 1}
        assert shards.finish_if_done(session, job_id=job_id, max_failed_fraction=0.1, output=output) == "succeeded"
        assert crud.get_job(session, job_id=job_id).result["output"] == output
        assert shards.outcome(session, job_id=job_id, max_failed_fraction=0.1) is None  # ended once
        session.commit()


def test_a_silence_counts_from_the_database_start(sessions):
    """No worker can report while the database is down: a heartbeat written before it (re)started is
    silent only a lease after the start, so a restart longer than the lease takes no live worker's work."""
    with sessions() as session:
        _, (shard_id,) = running_job(session, [["/a/1.jpg"]])
        shards.claim_shard(session, shard_id=shard_id, worker="w1@h", device="cpu")
        before_start = func.pg_postmaster_start_time() - timedelta(hours=1)
        session.execute(update(JobShard).values(heartbeat_at=before_start, progress_at=before_start))
        up = session.scalar(select(func.extract("epoch", func.now() - func.pg_postmaster_start_time())))
        session.commit()
        since_start = float(up)
        assert recovery.silent_shards(session, lease_seconds=since_start + 60, stall_seconds=since_start + 60) == []
        (silent, stalled), *_ = recovery.silent_shards(
            session, lease_seconds=max(0.0, since_start - 1), stall_seconds=since_start + 60
        )
        assert silent.id == shard_id and not stalled
        session.rollback()


def test_a_worker_frozen_inside_a_pipeline_is_fenced_so_its_shard_can_be_taken_back(sessions, database_url):
    """Frozen mid-pipeline (psycopg's executemany), a worker's session is not idle to PostgreSQL, so
    the idle-in-transaction timeout never ends it and its row lock hides the shard from the takeover.
    The reconciler ends the sessions of a worker silent past the lease, by their application_name."""
    with sessions() as session:
        _, (shard_id,) = running_job(session, [["/a/1.jpg"]])
        shards.claim_shard(session, shard_id=shard_id, worker="w1@h", device="cpu")
        presence = dict(device="cpu", queues=["shards"], status="online", job_id=None, shard_id=shard_id)
        ops.report_worker(session, name="w1@h", hostname="h", pid=4242, **presence)
        session.commit()
    frozen = psycopg.connect(
        database_url.replace("+psycopg", ""),
        application_name=recovery.worker_session_name("h", 4242),
        options="-c idle_in_transaction_session_timeout=300",
    )
    # The statement runs and locks the shard's row; no Sync follows, as when the process stops mid-pipeline.
    frozen.pgconn.enter_pipeline_mode()
    frozen.pgconn.send_query_params(b"UPDATE job_shards SET done = 0 WHERE id = $1", [str(shard_id).encode()])
    frozen.pgconn.flush()
    time.sleep(1)  # thrice the idle timeout: not applied inside a pipeline

    def silent() -> list:
        with sessions() as session:
            return recovery.silent_shards(session, lease_seconds=0, stall_seconds=3600)

    assert silent() == []  # locked by the frozen session: skipped
    with sessions() as session:
        session.execute(update(Worker).values(heartbeat_at=func.now() - timedelta(minutes=1)))
        assert recovery.fence_lost_workers(session, lease_seconds=30, exclude=recovery.worker_session_name("h", 1))
        assert (
            recovery.fence_lost_workers(session, lease_seconds=30, exclude=recovery.worker_session_name("h", 4242)) == 0
        )
        session.commit()
    deadline = time.monotonic() + 10
    while not (taken := silent()):
        assert time.monotonic() < deadline, "the fenced session still holds the shard's row"
        time.sleep(0.1)
    assert [shard.id for shard, _ in taken] == [shard_id]
    frozen.close()
