"""The models a worker process serves with: each loaded once, by model id, its artifact copied to this
machine first where it lies in a bucket; and the serving model preloaded as the worker starts."""

import contextlib
import functools
import logging
import os
import signal
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from celery.signals import worker_ready

from grocery.storage import StorageError
from service import artifacts, registry
from service.contract import serving_model
from service.settings import Settings
from worker.process import sessions, worker_settings

if TYPE_CHECKING:  # imported where used: torch loads with them
    from grocery.artifact import Artifact
    from grocery.runtimes import Choice

log = logging.getLogger(__name__)


@worker_ready.connect
def preload_serving_model(sender=None, **_) -> None:
    """Load the model POST /predict serves (the production alias, else the latest) before the first
    request needs it. Only in a process that runs tasks itself (the solo or threads pool): a parent
    that forks children must not hold ONNX Runtime's threads."""
    pool = getattr(getattr(sender, "controller", None), "pool_cls", None)
    if pool is None or pool.__module__.endswith("prefork"):
        return
    with stopped_by_shutdown_signals():
        try:
            with sessions()() as session:
                model = serving_model(session)
            if model is not None:
                log.info("loading the serving model %s (its first load on a machine times its runtimes)", model.id)
                cached_predictor(str(model.id), model.artifact_path)
                log.info("preloaded model %s (version %s)", model.id, model.version)
        except Exception:  # a missing artifact or database fails the first job clearly; the worker still starts
            log.warning("could not preload the serving model", exc_info=True)


class ShutdownDuringStart(BaseException):
    """SIGTERM or SIGINT arrived while the worker was still starting (not an Exception: nothing on
    the way out may swallow it)."""


@contextlib.contextmanager
def stopped_by_shutdown_signals():
    """Celery's own handlers only flag a shutdown for its event loop, which starts after this
    signal's handlers return: a model's first load, which measures its runtimes (a minute on two
    cores), would hold a stopping worker that long. Here the signal abandons the load at once (the
    next start measures again), then goes to Celery's handler, which shuts the worker down."""
    received = []

    def abandon(signum, _frame):
        received.append(signum)
        raise ShutdownDuringStart

    previous = {signum: signal.signal(signum, abandon) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except ShutdownDuringStart:
        log.info("stopping before the serving model was loaded")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received[:1]:
            signal.raise_signal(signum)


def local_artifact(settings: Settings, model_id: str, artifact_path: str) -> Path:
    """The model's artifact folder here: for one in a bucket, this machine's copy (what serving reads),
    downloaded once; the runtime choice is kept in that copy, per machine as it is measured."""
    from grocery.artifact import ArtifactError, serving_file

    try:
        return artifacts.local_folder(settings, model_id=model_id, artifact_path=artifact_path, matches=serving_file)
    except StorageError as e:
        if e.code != "not_found":
            raise
        raise ArtifactError(f"{artifact_path} is not a model artifact ({e})") from None


@functools.lru_cache(maxsize=2)
def cached_predictor(model_id: str, artifact_path: str):
    """Each worker process loads a model once and keeps it, by model id, for the next shards. It serves
    on the runtime this machine chose for the model (machine_choice), or on the one the settings name."""
    from grocery.artifact import read_artifact
    from grocery.predict import Predictor

    settings = worker_settings()
    threads = settings.worker_threads or len(os.sched_getaffinity(0))
    artifact = read_artifact(local_artifact(settings, model_id, artifact_path))
    choice = machine_choice(artifact, uuid.UUID(model_id), threads) if settings.runtime == "auto" else None
    predictor = Predictor(artifact, threads=threads, decode_threads=threads, runtime=settings.runtime, choice=choice)
    if choice is not None:
        log.info("model %s serves on %s here (%s)", model_id, predictor.runtime, choice.record["machine"])
    return predictor


def machine_choice(artifact: "Artifact", model_id: uuid.UUID, threads: int) -> "Choice":
    """The runtime every worker of this machine serves the model on: the first choice recorded with the
    model for the machine (registry.record_runtime_choice). Where none is, the runtimes are measured;
    the machine's workers share the artifact's folder and measure one at a time there
    (runtimes.choose_cached), so the others wait and read the first one's choice. Recording only where
    none is recorded settles the rest (a worker whose copy of the artifact lost its runtimes.json)."""
    from grocery import runtimes

    machine = runtimes.machine_key(threads)
    with sessions()() as session:
        recorded = registry.runtime_choice(session, model_id=model_id, machine=machine)
    if recorded is not None and runtimes.is_current(artifact, recorded):
        return runtimes.Choice(recorded["runtime"], recorded)
    measured = runtimes.choose_cached(artifact, threads=threads)
    with sessions()() as session:
        kept = registry.record_runtime_choice(
            session, model_id=model_id, machine=machine, choice=measured.record, replacing=recorded
        )
        session.commit()
    if measured.measured:
        log.info("measured the runtimes of model %s here (%s): %s is fastest", model_id, machine, measured.runtime)
    return runtimes.Choice(kept["runtime"], kept)
