"""Job chains: train -> evaluate -> promote, each step a job of its own (SageMaker Pipelines' train,
evaluate, condition, register). A training that carries next steps (specs.NextSteps) makes them as it
ends: the steps are written in the transaction that records the end, so a committed end always has
its next step, exactly once whoever finishes it (the attempt guard lets one finish win); their
messages are sent after the commit, and the reconciler sends any that were lost, as for any job.

A chain that names a reference to be not worse than (``gate.not_worse_than``) also evaluates the
reference on the same set, unless it already has an evaluation there; the promotion is made once
both evaluations have ended, by whichever ended last (the training's row is locked to decide)."""

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import crud, registry
from service.kinds import EVALUATE, PROMOTE, TRAIN, NewJob
from service.specs import EvaluateSpec, Gate, NextSteps, PromoteSpec
from service.states import FINISHED_STATUSES, Status
from service.tables import Job

log = logging.getLogger(__name__)


def advance(session: Session, *, job_id: uuid.UUID) -> None:
    """In the transaction that ends a job: the chain's next steps, as queued jobs. A step that cannot
    be made stops the chain with the reason, and never undoes the end of the job before it."""
    job = session.execute(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).scalar_one()
    if job.type == TRAIN.name and job.next_steps is not None and job.status == Status.SUCCEEDED:
        training = job
    elif job.type == EVALUATE.name and job.parent_id is not None:
        training = session.get(Job, job.parent_id, with_for_update=True)  # one of two evaluations decides
        if training is None or training.type != TRAIN.name or training.next_steps is None:
            return
    else:
        return
    steps = NextSteps.of_job(training.next_steps)
    try:
        with session.begin_nested():
            if training is job:
                start_evaluations(session, training=training, steps=steps)
            else:
                promote_when_evaluated(session, training=training, steps=steps)
    except Exception as e:
        log.exception("job %s: the next step of its chain could not be made", training.id)
        failed = steps.model_copy(update={"error": f"its next step could not be made ({type(e).__name__}: {e})"})
        training.next_steps = failed.stored()


def start_evaluations(session: Session, *, training: Job, steps: NextSteps) -> None:
    """The new model's evaluation, and the reference's where the gate compares with one that has none
    on this set."""
    step(session, parent=training, kind=EVALUATE, spec=evaluation_spec(steps, training.model_id))
    named = steps.gate.not_worse_than if steps.gate else None
    reference = registry.resolve_model(session, reference=named) if named else None
    if reference is None or reference.id == training.model_id:
        return
    known = crud.evaluation_of_set(
        session, labelled_set=evaluation_spec(steps, reference.id).labelled_set, model_id=reference.id
    )
    if known is None:
        step(session, parent=training, kind=EVALUATE, spec=evaluation_spec(steps, reference.id))


def promote_when_evaluated(session: Session, *, training: Job, steps: NextSteps) -> None:
    """Once every evaluation the training made has ended: its model's promotion, judged on its
    model's evaluation (the chain stops where that evaluation did not succeed)."""
    made = list(session.scalars(select(Job).where(Job.parent_id == training.id, Job.type == EVALUATE.name)))
    if any(job.status not in FINISHED_STATUSES for job in made):
        return
    own = next((job for job in made if job.model_id == training.model_id), None)
    if steps.promote is None or own is None or own.status != Status.SUCCEEDED or promotion_of(session, own):
        return
    gate = Gate(evaluation=str(own.id), **steps.gate.model_dump()) if steps.gate else None
    spec = PromoteSpec(model=str(training.model_id), alias=steps.promote, gate=gate)
    step(session, parent=own, kind=PROMOTE, spec=spec)


def evaluation_spec(steps: NextSteps, model_id: uuid.UUID) -> EvaluateSpec:
    # From the stored form, so its params are those an evaluation submitted by hand of this set has.
    return EvaluateSpec.model_validate({**steps.evaluate.stored(), "model": str(model_id)})


def promotion_of(session: Session, evaluation: Job) -> Job | None:
    return session.scalar(select(Job).where(Job.parent_id == evaluation.id, Job.type == PROMOTE.name))


def step(session: Session, *, parent: Job, kind, spec) -> Job:
    """A chain's step: a job of the parent's owner, on the model its spec names."""
    new = NewJob(
        kind=kind,
        params=spec.stored(),
        owner_token_id=parent.owner_token_id,
        model_id=uuid.UUID(spec.model),
        parent_id=parent.id,
    )
    return crud.create_job(session, new=new)


def queued_steps(session: Session, *, job_id: uuid.UUID) -> list[Job]:
    """The chain's steps that wait for their first message once ``job_id`` has ended: its own, and a
    promotion its sibling evaluation made (its parent's grandchildren)."""
    job = session.get(Job, job_id)
    parents = [job_id]
    if job is not None and job.type == EVALUATE.name and job.parent_id is not None:
        siblings = select(Job.id).where(Job.parent_id == job.parent_id, Job.type == EVALUATE.name)
        parents += list(session.scalars(siblings))
    query = select(Job).where(Job.parent_id.in_(parents), Job.status == Status.QUEUED, Job.attempts == 0)
    return list(session.scalars(query))


def chain_of(session: Session, *, job: Job) -> dict | None:
    """A training's chain as its document shows it: the steps it made (and theirs), and where and why
    it stopped, if it did."""
    if job.next_steps is None:
        return None
    evaluations = list(session.scalars(select(Job).where(Job.parent_id == job.id).order_by(Job.created_at)))
    promotions = [found for evaluation in evaluations if (found := promotion_of(session, evaluation)) is not None]
    steps = [step_json(found) for found in (*evaluations, *promotions)]
    return {
        "then": then_json(NextSteps.of_job(job.next_steps)),
        "steps": steps,
        "stopped": stopped(job, evaluations, promotions),
    }


def then_json(steps: NextSteps) -> dict:
    """What the training asked to follow, as its request named it: the set by its name, not its files."""
    return {
        "evaluate": steps.evaluate.named,
        "label_level": steps.evaluate.label_level,
        "promote": steps.promote,
        "gate": steps.gate.model_dump() if steps.gate else None,
    }


def step_json(job: Job) -> dict:
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    model_id = str(job.model_id) if job.model_id else None
    return {"id": str(job.id), "type": job.type, "status": job.status, "model_id": model_id, "error": error}


def stopped(training: Job, evaluations: list[Job], promotions: list[Job]) -> str | None:
    """Why the chain ended short of its last step; None while it goes on, or when it went through."""
    if training.status in FINISHED_STATUSES and training.status != Status.SUCCEEDED:
        return f"the training {training.status}: nothing was evaluated"
    if (error := NextSteps.of_job(training.next_steps).error) is not None:
        return error
    own = next((job for job in evaluations if job.model_id == training.model_id), None)
    if own is not None and own.status in FINISHED_STATUSES and own.status != Status.SUCCEEDED:
        return f"the evaluation {own.status}: {own.error_message or 'no reason recorded'}"
    for promotion in promotions:
        if promotion.status in FINISHED_STATUSES and promotion.status != Status.SUCCEEDED:
            return f"the promotion {promotion.status}: {promotion.error_message or 'no reason recorded'}"
    return None
