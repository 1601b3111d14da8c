"""The store's guarantees, at the data-function level: one claim per attempt, stale writes are no-ops."""

import factories
import pytest
from sqlalchemy import create_engine, text

from service import crud, predictions
from service.db import make_session_factory


@pytest.fixture
def sessions(database_url, empty_store):
    engine = create_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def new_job(session):
    job = factories.job(session)
    session.commit()
    return job.id


def test_a_duplicate_delivery_is_a_no_op(sessions):
    with sessions() as session:
        job_id = new_job(session)
        assert crud.claim_job(session, job_id=job_id, worker="a@h", device="cpu") == 1
        assert crud.claim_job(session, job_id=job_id, worker="b@h", device="cpu") is None  # already running
        assert crud.finish_job(session, job_id=job_id, attempt=1, status="succeeded", result={"n": 1})
        assert not crud.finish_job(session, job_id=job_id, attempt=1, status="failed", error_code="x")
        session.commit()
        job = crud.get_job(session, job_id=job_id)
        assert (job.status, job.attempts, job.worker, job.result) == ("succeeded", 1, "a@h", {"n": 1})


def test_a_superseded_attempt_cannot_write(sessions):
    with sessions() as session:
        job_id = new_job(session)
        crud.claim_job(session, job_id=job_id, worker="a@h", device="cpu")
        # The job is handed to a second attempt (as recovery of a lost worker would do).
        session.execute(text("UPDATE jobs SET status = 'queued' WHERE id = :id"), {"id": job_id})
        assert crud.claim_job(session, job_id=job_id, worker="b@h", device="cpu") == 2
        epoch = ("epoch", {"epoch": 1})
        assert crud.report_job(session, job_id=job_id, attempt=1, progress_done=5, event=epoch) is True  # told to stop
        assert not crud.finish_job(session, job_id=job_id, attempt=1, status="failed", error_code="stale")
        assert crud.finish_job(session, job_id=job_id, attempt=2, status="succeeded")
        session.commit()
        job = crud.get_job(session, job_id=job_id)
        assert (job.status, job.worker, job.progress_done, job.error_code) == ("succeeded", "b@h", 0, None)
        assert "epoch" not in [event.kind for event in crud.list_events(session, job_id=job_id)]  # its event too


def test_predictions_are_unique_per_job_and_path(sessions):
    with sessions() as session:
        job_id = new_job(session)
        rows = [factories.result_row(f"/p/{i}.jpg") for i in range(3)]
        predictions.add_predictions(session, job_id=job_id, rows=rows)
        predictions.add_predictions(session, job_id=job_id, rows=rows[1:])  # a re-run batch
        session.commit()
        assert [p.path for p in predictions.list_predictions(session, job_id=job_id, limit=10)] == [
            r["path"] for r in rows
        ]


def test_cancelled_queued_job_cannot_be_claimed(sessions):
    with sessions() as session:
        job_id = new_job(session)
        assert crud.request_cancel(session, job_id=job_id) == "cancelled"
        assert crud.claim_job(session, job_id=job_id, worker="a@h", device="cpu") is None
        assert crud.request_cancel(session, job_id=job_id) is None
