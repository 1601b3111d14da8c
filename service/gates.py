"""Promotion gates: whether a model may take an alias, judged on the evaluations of one labelled set
(SageMaker Pipelines' condition step, MLflow's metric thresholds). Keyword-only data functions;
the caller owns the transaction."""

import uuid
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import crud, registry
from service.kinds import EVALUATE
from service.specs import Gate
from service.states import Status
from service.tables import Job


@dataclass
class Judgement:
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.passed = False
        self.reasons.append(reason)

    def json(self) -> dict:
        return {"reasons": self.reasons, "figures": self.figures}

    def message(self, alias: str) -> str:
        return f"{alias} stays where it is: " + "; ".join(self.reasons)


def promote(session: Session, *, model_id: uuid.UUID, alias: str, gate: Gate | None) -> Judgement:
    """Move the alias to the model if it passes the gate (none: it moves). Promotions of one alias are
    judged one after another (a lock on its name until the caller's transaction ends), so two new
    models cannot both pass against the same old one."""
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"alias {alias}"))))
    judgement = Judgement()
    if gate is not None:
        evaluation = evaluation_named(session, gate.evaluation)
        if evaluation is None:
            judgement.fail(f"job {gate.evaluation} is not a succeeded evaluation job")
        else:
            judgement = judge(session, gate=gate, evaluation=evaluation, model_id=model_id)
    if judgement.passed:
        registry.set_alias(session, name=alias, model_id=model_id)
    return judgement


def evaluation_named(session: Session, job_id: str) -> Job | None:
    """The succeeded evaluation job a gate names; None for any other id."""
    try:
        job = session.get(Job, uuid.UUID(job_id))
    except ValueError:
        return None
    return job if job is not None and job.type == EVALUATE.name and job.status == Status.SUCCEEDED else None


def judge(session: Session, *, gate: Gate, evaluation: Job, model_id: uuid.UUID) -> Judgement:
    """The model's top-1 on ``evaluation``'s set against the gate's floor and the model it must not be
    worse than; every figure used is in the judgement, whether it passed or not."""
    judgement = Judgement(figures={"set": str(evaluation.id)})
    top1 = top1_on_the_set(session, evaluation=evaluation, model_id=model_id, judgement=judgement, side="model")
    if top1 is None:
        return judgement
    if gate.min_top1 is not None:
        judgement.figures["min_top1"] = gate.min_top1
        if top1 < gate.min_top1:
            judgement.fail(f"top-1 {top1:.4f} is below the gate's {gate.min_top1:.4f}")
    if gate.not_worse_than is not None:
        compare_with(session, gate=gate, evaluation=evaluation, top1=top1, judgement=judgement)
    return judgement


def compare_with(session: Session, *, gate: Gate, evaluation: Job, top1: float, judgement: Judgement) -> None:
    reference = registry.resolve_model(session, reference=gate.not_worse_than)
    if reference is None:  # the first model to take the alias has nothing to be worse than
        judgement.figures["not_worse_than"] = {"reference": gate.not_worse_than, "model_id": None}
        return
    theirs = top1_on_the_set(
        session, evaluation=evaluation, model_id=reference.id, judgement=judgement, side="reference"
    )
    if theirs is None:
        return
    judgement.figures["not_worse_than"] |= {"reference": gate.not_worse_than, "margin": gate.margin}
    if top1 < theirs - gate.margin:
        judgement.fail(f"top-1 {top1:.4f} is below {gate.not_worse_than}'s {theirs:.4f} less the margin {gate.margin}")


def top1_on_the_set(
    session: Session, *, evaluation: Job, model_id: uuid.UUID, judgement: Judgement, side: str
) -> float | None:
    """The model's top-1 from its newest evaluation of the set, noted in the judgement (``side``)."""
    found = crud.evaluation_on_the_same_set(session, evaluation=evaluation, model_id=model_id)
    key = "model" if side == "model" else "not_worse_than"
    if found is None:
        judgement.fail(f"model {model_id} has no succeeded evaluation of the set of job {evaluation.id}")
        judgement.figures[key] = {"model_id": str(model_id), "evaluation": None}
        return None
    top1 = found.result["evaluation"]["top1"]
    judgement.figures[key] = {"model_id": str(model_id), "evaluation": str(found.id), "top1": top1}
    return top1
