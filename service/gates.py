"""Promotion gates: whether a model may take an alias, judged on the evaluations of one labelled set
(SageMaker Pipelines' condition step, MLflow's metric thresholds). Keyword-only data functions;
the caller owns the transaction and moves the alias only on a pass."""

import uuid
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from service import crud, registry
from service.specs import Gate
from service.tables import Job


@dataclass
class Judgement:
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.passed = False
        self.reasons.append(reason)


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
