"""Promotion jobs: an alias moved to a model if it passes its gate (service/gates.py), the last step
of a train -> evaluate -> promote chain, or a job of its own. The judgement, the alias's move and the
job's end are one transaction: a promotion moves the alias exactly when it succeeds."""

from service import crud, gates
from service.kinds import PROMOTE
from service.specs import PromoteSpec
from service.states import Status
from worker.celery_app import app
from worker.process import announce_finish, sessions, start


@app.task(name=PROMOTE.start.name, bind=True)
def run_promote_job(self, job_id: str) -> Status | None:
    started = start(self, job_id)
    if started is None:
        return None
    reporter, job = started
    spec = PromoteSpec.of_job(job.params)
    with sessions()() as session:
        judgement = gates.promote(session, model_id=job.model_id, alias=spec.alias, gate=spec.gate)
        status = Status.SUCCEEDED if judgement.passed else Status.FAILED
        result = {"alias": spec.alias, "model_id": str(job.model_id), "passed": judgement.passed, **judgement.json()}
        error = (
            {} if judgement.passed else {"error_code": "gate_failed", "error_message": judgement.message(spec.alias)}
        )
        if not crud.finish_job(session, job_id=job.id, attempt=reporter.attempt, status=status, result=result, **error):
            session.rollback()  # superseded: the alias stays where it was
            return None
        session.commit()
    announce_finish(job.id, status)
    return status
