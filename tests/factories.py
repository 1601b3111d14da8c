"""Rows a test needs in the store, made the way the service makes them (through service.crud,
service.shards and service.tokens), with defaults so that a test spells out only what it is about.

Every factory is keyword-only and takes the session to write in; it flushes, the caller commits
(``store_session`` commits on leaving)."""

import contextlib
import io
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from conftest import TINY_CLASSES
from PIL import Image

from grocery.evaluation import labelled_report
from service import crud, predictions, registry, shards, tokens
from service.db import make_engine, make_session_factory
from service.kinds import KINDS, NewJob

# The tiny dataset's coarse classes, in their ids' order: what a model trained on it predicts.
TINY_COARSE = list(dict.fromkeys(coarse for _, coarse, _, _ in TINY_CLASSES))
READ_WRITE = ["jobs:read", "jobs:write"]


@contextlib.contextmanager
def store_session(database_url: str) -> Iterator:
    """A session on the test database that commits what was made in it, then closes with its engine."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            yield session
            session.commit()
    finally:
        engine.dispose()


def job(session, *, type: str = "predict", status: str = "queued", params: dict | None = None, **fields):
    """A job as POST /jobs stores it (its "queued" event included), then moved to ``status`` as a
    worker would leave it; ``fields``: NewJob's other fields (owner_token_id, model_id, priority...)."""
    made = crud.create_job(
        session, new=NewJob(kind=KINDS[type], params=params or {}, **{"owner_token_id": None, **fields})
    )
    made.status = status
    session.flush()
    return made


def jpeg(colour=(200, 30, 30), size=(40, 30)) -> bytes:
    """A small real JPEG: what an upload of a photo carries (the API refuses uploads with no image)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def model(session, *, artifact: Path, arch: str = "efficientnet_lite0", classes: list[str] | None = None, **fields):
    """A registered model of the tiny dataset's coarse classes (the artifact need not exist)."""
    return registry.register_model(
        session,
        arch=arch,
        label_level="coarse",
        class_names=TINY_COARSE if classes is None else classes,
        metrics={},
        artifact_path=str(artifact),
        job_id=None,
        **fields,
    )


def evaluation(session, *, model, truths: list[str | None], answers: list[str | None], **fields):
    """A succeeded evaluation job of ``model`` on a manifest of files /photos/<i>.jpg whose true labels
    are ``truths`` (None: unlabelled) and which the model answered ``answers`` (None: unreadable), with
    the rows and the result its worker leaves (worker/evaluation.py); ``fields``: the job's others."""
    paths = [f"/photos/{i}.jpg" for i in range(len(truths))]
    named = {"manifest": {"files": len(paths)}}
    params = {
        "model": str(model.id),
        "input": {"paths": paths},
        "labels": truths,
        "label_level": "coarse",
        "named": named,
    }
    made = job(session, type="evaluate", status="succeeded", params=params, model_id=model.id, **fields)
    rows = [
        result_row(path, label=answer, error=None if answer else "unreadable_image", top5=[], true_label=truth)
        for path, answer, truth in zip(paths, answers, truths, strict=True)
    ]
    predictions.add_predictions(session, job_id=made.id, rows=rows)
    report = labelled_report(
        truths, [[a] if a else None for a in answers], [0.9 if a else None for a in answers], model.class_names
    )
    failed = sum(answer is None for answer in answers)
    counts = {"total": len(paths), "done": len(paths), "succeeded": len(paths) - failed, "failed": failed}
    made.result = {
        **counts,
        "labels": dict(Counter(answer for answer in answers if answer)),
        "evaluation": {**report, "set": named, "label_level": "coarse", "model_id": str(model.id)},
    }
    made.finished_at = datetime.now(timezone.utc)
    session.flush()
    return made


def seed_model(database_url: str, *, artifact: Path):
    """One model of the tiny dataset's classes in the test database, committed."""
    with store_session(database_url) as session:
        return model(session, artifact=artifact).id


def token(session, *, name: str, scopes: list[str] = READ_WRITE, **limits) -> str:
    """A new API token's secret; ``limits``: roots, max_active_jobs, max_active_files."""
    return tokens.create_token(session, name=name, scopes=scopes, **limits)[1]


def result_row(path: str, *, label: str | None = "Apple", error: str | None = None, **fields) -> dict:
    """One file's outcome as a worker writes it: a label, or with ``error`` none and the error."""
    return {
        "path": path,
        "label": label,
        "class_id": 0 if label else None,
        "confidence": 0.9 if label else None,
        "top5": None,
        "error_code": error,
        "error_message": error,
        "true_label": None,
        **fields,
    }


def running_job(session, *, files: list[list[str]]) -> tuple[uuid.UUID, list[int]]:
    """A claimed prediction job listed into one shard per entry of ``files``: its id and its shards' ids."""
    manifest = {"input": {"paths": [path for paths in files for path in paths]}}
    made = crud.create_job(session, new=NewJob(kind=KINDS["predict"], params=manifest, owner_token_id=None))
    attempt = crud.claim_job(session, job_id=made.id, worker="lister@h", device="cpu")
    ids = [shards.add_shard(session, job_id=made.id, number=n, paths=paths) for n, paths in enumerate(files)]
    listed = sum(map(len, files))
    crud.report_job(session, job_id=made.id, attempt=attempt, progress_total=listed, shards_total=len(files))
    return made.id, ids


def listed_job(session, *, owner_id, shard_count: int, priority: str = "normal") -> tuple:
    """A running prediction job listed into ``shard_count`` queued shards, committed: its id and its shards' ids."""
    made = job(session, owner_token_id=owner_id, priority=priority)
    attempt = crud.claim_job(session, job_id=made.id, worker="lister@h", device="cpu")
    ids = [
        shards.add_shard(session, job_id=made.id, number=n, paths=[f"{made.id}/{n}.jpg"]) for n in range(shard_count)
    ]
    crud.report_job(session, job_id=made.id, attempt=attempt, progress_total=shard_count, shards_total=shard_count)
    session.commit()
    return made.id, ids
