"""Small keyword-only data functions over the model registry: models, their aliases and the runtime each
machine chose for them. Callers own the transaction."""

import uuid
from collections.abc import Collection

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from service.tables import Model, ModelAlias


def register_model(
    session: Session,
    *,
    arch: str,
    label_level: str,
    class_names: list[str],
    metrics: dict,
    artifact_path: str,
    job_id: uuid.UUID | None,
    serving: dict | None = None,
    lineage: dict | None = None,
) -> Model:
    model = Model(
        id=uuid.uuid4(),
        arch=arch,
        label_level=label_level,
        class_names=class_names,
        metrics=metrics,
        artifact_path=artifact_path,
        job_id=job_id,
        serving=serving or {},
        lineage=lineage or {},
    )
    session.add(model)
    session.flush()
    return model


def runtime_choice(session: Session, *, model_id: uuid.UUID, machine: str) -> dict | None:
    """The runtime choice recorded for the model on a machine (serving.runtimes[machine]), if any."""
    model = session.get(Model, model_id)
    return model.serving.get("runtimes", {}).get(machine) if model is not None else None


def record_runtime_choice(
    session: Session, *, model_id: uuid.UUID, machine: str, choice: dict, replacing: dict | None = None
) -> dict:
    """Keep a machine's runtime choice with the model (serving.runtimes[machine]), beside its exports,
    unless one is recorded for the machine already: the first recorded wins, and what is recorded is
    returned, for every worker of the machine to serve on. ``replacing``: a recorded choice the caller
    found stale (runtimes.is_current), which this one replaces unless another worker replaced it first."""
    # Two workers recording at once take turns on the row, and the second finds the first's choice.
    model = session.get(Model, model_id, with_for_update=True, populate_existing=True)
    if model is None:
        return choice
    recorded = model.serving.get("runtimes", {}).get(machine)
    if recorded is not None and recorded != replacing:
        return recorded
    model.serving = {**model.serving, "runtimes": {**model.serving.get("runtimes", {}), machine: choice}}
    return choice


def models_to_measure(
    session: Session, *, machine: str, newest: int, including: Collection[uuid.UUID] = ()
) -> list[Model]:
    """The models a machine measures before a job asks for them: the ``newest`` and every one an
    alias names, where none has a runtime choice recorded for the machine; and ``including`` (models
    a worker of the machine serves provisionally), whatever is recorded. Newest first."""
    recent = select(Model.id).order_by(Model.version.desc()).limit(newest).scalar_subquery()
    wanted = or_(Model.id.in_(recent), Model.id.in_(select(ModelAlias.model_id)), Model.id.in_(list(including)))
    models = session.scalars(select(Model).where(wanted).order_by(Model.version.desc()))
    return [m for m in models if m.id in including or machine not in m.serving.get("runtimes", {})]


def resolve_model(session: Session, *, reference: str) -> Model | None:
    """A model id, ``latest`` (the newest version) or an alias name."""
    if reference == "latest":
        return session.scalar(select(Model).order_by(Model.version.desc()).limit(1))
    try:
        return session.get(Model, uuid.UUID(reference))
    except ValueError:
        alias = session.get(ModelAlias, reference)
        return session.get(Model, alias.model_id) if alias else None


def set_alias(session: Session, *, name: str, model_id: uuid.UUID) -> ModelAlias:
    alias = session.get(ModelAlias, name)
    if alias is None:
        alias = ModelAlias(name=name, model_id=model_id)
        session.add(alias)
    else:
        alias.model_id = model_id
    session.flush()
    return alias


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.version.desc())))


def aliases_of(session: Session, *, model_id: uuid.UUID) -> list[str]:
    return list(session.scalars(select(ModelAlias.name).where(ModelAlias.model_id == model_id)))
