"""Prediction jobs' tasks. A job's listing task lists its input into shards (worker/listing.py) that
fan out as shard tasks (worker/shard_runs.py); interactive jobs are classified together
(worker/interactive.py); the last of a job's work finishes it (worker/finishing.py)."""

import uuid

from service import crud
from service.kinds import PREDICT
from service.states import Lane, Status
from worker import interactive
from worker.celery_app import app
from worker.listing import list_job
from worker.process import sessions
from worker.shard_runs import run_shard


@app.task(name=PREDICT.start.name, bind=True)
def run_predict_job(self, job_id: str) -> None:
    with sessions()() as session:
        job = crud.get_job(session, job_id=uuid.UUID(job_id))
    if job is not None and job.lane == Lane.INTERACTIVE:
        interactive.run_interactive(self, [job_id, *interactive.companions(job_id)])
        return
    # A job of one shard runs it right here: a single image does not pay for a second trip through the queue.
    single = list_job(self, job_id)
    if single is not None:
        run_shard(self, single, pause=interactive.serve_waiting)


@app.task(name=PREDICT.shard.name, bind=True)
def run_predict_shard(self, shard_id: int) -> Status | None:
    """A message per queued shard: its shard is dropped if its job stopped; else this worker runs the
    fairest queued shard (shards.next_shard), this one or another job's, so jobs share the workers."""
    return run_shard(self, shard_id, fair=True, pause=interactive.serve_waiting)
