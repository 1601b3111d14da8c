"""The models a worker process serves with: each loaded once, by model id, its artifact copied to this
machine first where it lies in a bucket, on the runtime the machine measured for it or, until it has,
on a provisional fp32 one (worker/measuring.py measures in the background); and the serving model
preloaded as the worker starts."""

import contextlib
import logging
import os
import signal
import threading
import uuid
from collections import OrderedDict
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
    from grocery.predict import Predictor
    from grocery.runtimes import Choice

log = logging.getLogger(__name__)


def runs_tasks_itself(sender) -> bool:
    """Whether this worker process runs its tasks (the solo or threads pool): a parent that forks
    children must not hold ONNX Runtime's threads."""
    pool = getattr(getattr(sender, "controller", None), "pool_cls", None)
    return pool is not None and not pool.__module__.endswith("prefork")


@worker_ready.connect
def preload_serving_model(sender=None, **_) -> None:
    """Load the model POST /predict serves (the production alias, else the latest) before the first
    request needs it (in a process that runs its tasks itself)."""
    if not runs_tasks_itself(sender):
        return
    with stopped_by_shutdown_signals():
        try:
            with sessions()() as session:
                model = serving_model(session)
            if model is not None:
                log.info("loading the serving model %s", model.id)
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
    signal's handlers return: a model's first load (its copy from a bucket) would hold a stopping
    worker that long. Here the signal abandons the load at once, then goes to Celery's handler, which
    shuts the worker down."""
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


class PredictorCache:
    """Each worker process loads a model once and keeps the last ``size`` it served, by model id. One
    served on a provisional runtime (the machine has not measured it yet) is looked up again at each
    use, and loaded anew once the machine's choice is recorded: the worker moves to the measured
    runtime at its next shard. The measuring thread reads which models serve provisionally."""

    def __init__(self, size: int = 2):
        self.size, self.entries, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, model_id: str, artifact_path: str) -> "Predictor":
        key = (model_id, artifact_path)
        with self.lock:
            predictor = self.entries.get(key)
        if predictor is None or (is_provisional(predictor) and measured_since(predictor, model_id)):
            predictor = load_predictor(model_id, artifact_path)
        with self.lock:
            self.entries[key] = predictor
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return predictor

    def provisional(self) -> dict[uuid.UUID, str]:
        """The models served here provisionally: model id -> artifact path."""
        with self.lock:
            return {uuid.UUID(m): path for (m, path), p in self.entries.items() if is_provisional(p)}


predictors = PredictorCache()


def cached_predictor(model_id: str, artifact_path: str) -> "Predictor":
    return predictors.get(model_id, artifact_path)


def serving_threads() -> int:
    """The threads a worker process gives prediction (decoding and inference)."""
    return worker_settings().worker_threads or len(os.sched_getaffinity(0))


def load_predictor(model_id: str, artifact_path: str) -> "Predictor":
    """The model on the runtime this machine chose for it (machine_choice), on a provisional one while
    the machine has not measured it (runtimes.provisional: nothing is measured here, worker/measuring.py
    does that in the background), or on the one the settings name."""
    from grocery import runtimes
    from grocery.artifact import read_artifact
    from grocery.predict import Predictor

    settings, threads = worker_settings(), serving_threads()
    artifact = read_artifact(local_artifact(settings, model_id, artifact_path))
    choice = None
    if settings.runtime == "auto":
        choice = machine_choice(artifact, uuid.UUID(model_id), threads) or runtimes.provisional(
            artifact, threads=threads
        )
    predictor = Predictor(artifact, threads=threads, decode_threads=threads, runtime=settings.runtime, choice=choice)
    if choice is not None and choice.provisional:
        log.info(
            "model %s serves on %s here provisionally: this machine has not measured it yet", model_id, choice.runtime
        )
    elif choice is not None:
        log.info("model %s serves on %s here (%s)", model_id, predictor.runtime, choice.record["machine"])
    return predictor


def is_provisional(predictor: "Predictor") -> bool:
    return predictor.choice is not None and predictor.choice.provisional


def measured_since(predictor: "Predictor", model_id: str) -> bool:
    return machine_choice(predictor.artifact, uuid.UUID(model_id), predictor.threads) is not None


def machine_choice(artifact: "Artifact", model_id: uuid.UUID, threads: int) -> "Choice | None":
    """The runtime every worker of this machine serves the model on: the first choice recorded with the
    model for the machine (registry.record_runtime_choice), where one is and this artifact can still
    run it (runtimes.is_current). None: not measured here yet."""
    from grocery import runtimes

    with sessions()() as session:
        recorded = registry.runtime_choice(session, model_id=model_id, machine=runtimes.machine_key(threads))
    if recorded is not None and runtimes.is_current(artifact, recorded):
        return runtimes.Choice(recorded["runtime"], recorded)
    return None
