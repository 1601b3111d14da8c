"""Evaluation jobs: a model on a labelled set. Its files are listed into shards and classified as a
prediction job's are (worker/listing.py, worker/shard_runs.py: the same shards, the serving runtime
the model serves with), each row keeping the file's true label; as the job finishes, its metrics are
computed from those rows (grocery.evaluation) and kept in its result."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from grocery.evaluation import labelled_report
from service.kinds import EVALUATE
from service.specs import EvaluateSpec
from service.states import Status
from service.tables import Job, Model, PredictionRow
from worker import finishing
from worker.celery_app import app
from worker.listing import list_job
from worker.shard_runs import run_shard


@app.task(name=EVALUATE.start.name, bind=True)
def run_evaluate_job(self, job_id: str) -> Status | None:
    single = list_job(self, job_id)
    return run_shard(self, single) if single is not None else None


@finishing.summary_of(EVALUATE.name)
def evaluation_summary(session: Session, job: Job) -> dict:
    """The metrics of the job's complete rows against the model's classes, and what was evaluated."""
    model = session.get(Model, job.model_id)
    rows = select(PredictionRow.true_label, PredictionRow.top5, PredictionRow.confidence).where(
        PredictionRow.job_id == job.id
    )
    truths, ranked, confidences = [], [], []
    for truth, top5, confidence in session.execute(rows.execution_options(yield_per=10_000)):
        truths.append(truth)
        ranked.append([entry["label"] for entry in top5] if top5 else None)
        confidences.append(confidence)
    spec = EvaluateSpec.of_job(job.params)
    report = labelled_report(truths, ranked, confidences, model.class_names)
    return {"evaluation": {**report, "set": spec.named, "label_level": spec.label_level, "model_id": str(model.id)}}
