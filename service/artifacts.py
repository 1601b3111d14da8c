"""Where a model's files are: a folder in the model storage, or the objects under a prefix of it when
GROCERY_MODEL_DIR is a bucket (s3://...), of which each machine keeps a local copy by model id."""

import uuid
from pathlib import Path

from grocery import storage
from service.settings import Settings


def attempt_location(settings: Settings, *, job_id: str | uuid.UUID, attempt: int) -> Path | str:
    """Where a training attempt's artifact is kept: each attempt its own, so that a frozen worker that
    wakes up after losing the job cannot overwrite the files of the attempt that took over."""
    return storage.join(settings.model_dir, str(job_id), f"attempt-{attempt}")


def training_folder(settings: Settings, *, job_id: str | uuid.UUID, attempt: int) -> Path:
    """The local folder a training attempt writes into before its files go to the bucket."""
    return settings.artifact_cache / "training" / str(job_id) / f"attempt-{attempt}"


def cache_folder(settings: Settings, *, model_id: str | uuid.UUID) -> Path:
    """This machine's copy of a model kept in a bucket."""
    return settings.artifact_cache / str(model_id)


def local_folder(settings: Settings, *, model_id: str | uuid.UUID, artifact_path: str, matches=None) -> Path:
    """A folder holding the model's artifact: its own, or for one in a bucket this machine's copy,
    downloaded the first time (the objects whose name ``matches``; storage.cached_tree)."""
    if not storage.is_url(artifact_path):
        return Path(artifact_path)
    return storage.cached_tree(artifact_path, cache_folder(settings, model_id=model_id), matches=matches)


def download_copy(settings: Settings, *, model_id: str | uuid.UUID, artifact_path: str, name: str) -> Path | None:
    """One file of a model's artifact as a local path to send: its own, or for one in a bucket this
    machine's copy of that one object; None when the artifact has no such file."""
    if not storage.is_url(artifact_path):
        path = Path(artifact_path) / name
        return path if path.is_file() else None
    try:
        return (
            storage.cached_tree(artifact_path, cache_folder(settings, model_id=model_id), matches=lambda n: n == name)
            / name
        )
    except storage.StorageError as e:
        if e.code == "not_found":
            return None
        raise
