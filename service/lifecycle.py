"""Deleting what the service keeps: a finished job with its rows and files, a model nothing uses, and
finished jobs past their retention. Rows go in the caller's transaction, files once it has committed
(a rolled-back delete leaves its files), so what is deleted is gone from disk and database alike."""

import logging
import shutil
import uuid
from pathlib import Path

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from grocery import storage
from service.artifacts import cache_folder
from service.settings import Settings
from service.specs import PREDICT_SOURCE
from service.states import FINISHED_STATUSES, LIVE_STATUSES
from service.tables import Job, Model, ModelAlias

log = logging.getLogger(__name__)


def job_files(settings: Settings, job_id: uuid.UUID, *, kept: set[str] = frozenset()) -> list[Path | str]:
    """A job's own files: its uploads (a folder or a prefix), its result files, and a training's attempt
    folders in the model storage (the checkpoints of attempts superseded, cancelled or failed) but those
    in ``kept``: a model's artifact is the registry's (the model outlives the job) and goes with DELETE
    /models/<id>."""
    own = [storage.join(settings.upload_dir, str(job_id)), settings.export_dir / str(job_id)]
    return own + [folder for folder in attempt_folders(settings, job_id) if _location(folder) not in kept]


def attempt_folders(settings: Settings, job_id: uuid.UUID) -> list[Path | str]:
    """The folders, or prefixes, of a training job's attempts in the model storage (none for other jobs).
    A bucket that does not answer lists none (logged): the job's rows go all the same."""
    job_folder = storage.join(settings.model_dir, str(job_id))
    if not storage.is_url(job_folder):
        return sorted(Path(job_folder).glob("attempt-*"))
    prefix = storage.as_prefix(str(job_folder))
    try:
        names = {url[len(prefix) :].split("/", 1)[0] for url in storage.list_objects(prefix)}
    except storage.StorageError as e:
        log.warning("could not list the attempts of job %s: %s", job_id, e)
        return []
    return [storage.join(job_folder, name) for name in sorted(names) if name.startswith("attempt-")]


def _location(folder: Path | str) -> str:
    """A folder or prefix as a model's artifact_path names it."""
    return str(folder).rstrip("/")


def delete_jobs(session: Session, *, job_ids: list[uuid.UUID], settings: Settings) -> list[Path | str]:
    """The jobs' rows; their results, shards and events go with them (ON DELETE CASCADE), and the
    models they trained stay, without their producing job (ON DELETE SET NULL). Returns the jobs' files
    (job_files), for the caller to remove once it has committed."""
    if not job_ids:
        return []
    artifacts = session.scalars(select(Model.artifact_path).where(Model.job_id.in_(job_ids)))
    kept = {_location(path) for path in artifacts}
    files = [file for job_id in job_ids for file in job_files(settings, job_id, kept=kept)]
    session.execute(delete(Job).where(Job.id.in_(job_ids)))
    return files


def remove_files(locations: list[Path | str]) -> None:
    """Folders and object prefixes. Like a folder that cannot be removed, a bucket that does not answer
    leaves its objects (logged): the rows are gone already, and the request or sweep carries on."""
    for location in locations:
        if not storage.is_url(location):
            shutil.rmtree(location, ignore_errors=True)
            continue
        try:
            storage.delete_prefix(str(location))
        except storage.StorageError as e:
            log.warning("could not delete %s: %s", location, e)


def expired_jobs(
    session: Session, *, retention_seconds: float | None, predict_retention_seconds: float | None, limit: int = 100
) -> list[uuid.UUID]:
    """Finished jobs older than their retention (None: kept), oldest first, a batch at a time."""
    expired = []
    if retention_seconds is not None:
        expired.append(Job.finished_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, retention_seconds))
    if predict_retention_seconds is not None:
        older = Job.finished_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, predict_retention_seconds)
        # POST /predict marks its one-file jobs (specs.PredictSpec.source) so they may be kept for less time.
        expired.append(older & (Job.params["source"].astext == PREDICT_SOURCE))
    if not expired:
        return []
    query = select(Job.id).where(Job.status.in_(FINISHED_STATUSES), or_(*expired))
    return list(session.scalars(query.order_by(Job.finished_at).limit(limit)))


def model_in_use(session: Session, *, model_id: uuid.UUID) -> str | None:
    """Why the model cannot be deleted now (an alias names it, a live job uses it), or None."""
    alias = session.scalar(select(ModelAlias.name).where(ModelAlias.model_id == model_id).limit(1))
    if alias is not None:
        return f"the alias {alias!r} names it: move the alias first"
    user = session.scalar(select(Job.id).where(Job.model_id == model_id, Job.status.in_(LIVE_STATUSES)).limit(1))
    if user is not None:
        return f"job {user} is queued or running with it"
    return None


def delete_model(session: Session, *, model: Model, settings: Settings) -> list[Path | str]:
    """The model's row; finished jobs that used it keep its id in their params. Returns the files to
    remove: its artifact's folder or prefix, when that lies in the service's model storage (never one
    elsewhere), and this machine's copy of it (other machines' copies are never read again: by model id)."""
    session.execute(update(Job).where(Job.model_id == model.id).values(model_id=None))
    session.execute(delete(Model).where(Model.id == model.id))
    return [*_in_model_storage(model.artifact_path, settings.model_dir), cache_folder(settings, model_id=model.id)]


def _in_model_storage(artifact_path: str, model_dir: Path | str) -> list[Path | str]:
    """The artifact's folder or prefix when it lies inside the model storage (and is not all of it)."""
    if storage.is_url(artifact_path) or storage.is_url(model_dir):
        if not (storage.is_url(artifact_path) and storage.is_url(model_dir)):
            return []  # kept in one kind of storage, the storage of the other kind: not the service's
        prefix, root = storage.as_prefix(artifact_path), storage.as_prefix(str(model_dir))
        return [prefix] if prefix.startswith(root) and prefix != root else []
    artifact, folder = Path(artifact_path).resolve(), Path(model_dir).resolve()
    return [artifact] if artifact.is_relative_to(folder) and artifact != folder else []
