"""Runtime measurement in the background, so that no job waits for it.

A thread of each prediction worker (GROCERY_RUNTIME=auto) looks, every few seconds, for the models
this machine has no runtime choice for: the newest MEASURE_AHEAD models and every model an alias
names (a model is measured as soon as it is registered, before any job asks for it), and any model
this process serves provisionally (model_cache). It measures each with runtimes.choose_cached: under
the artifact's lock, taken without waiting, so that one worker of the machine measures a model while
the others go on to the next; its steps run in the machine's quiet windows (grocery.machine_lock: only
while no task of the machine's workers runs, and a task that arrives ends the window at the next
step, so the task waits for one step at most). The choice is recorded with the model
(registry.record_runtime_choice), where every worker of the machine finds it at its next shard.
"""

import logging
import threading
import uuid

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from grocery.machine_lock import MeasurementStopped
from service import registry
from service.kinds import PREDICT
from service.tables import Model
from worker.model_cache import local_artifact, predictors, runs_tasks_itself, serving_threads
from worker.process import heartbeat_interval, machine_lock, sessions, worker_settings

log = logging.getLogger(__name__)
MEASURE_AHEAD = 3  # the newest models measured before a job asks for them (with every aliased one)
STOP_SECONDS = 60  # a stopping worker waits this long for the step in progress (a few seconds)


class Measurer(threading.Thread):
    def __init__(self, threads: int):
        super().__init__(name="runtime-measurer", daemon=True)
        self.threads = threads
        self.stopping = threading.Event()
        self.given_up: set[uuid.UUID] = set()  # failed here (an artifact gone): not tried again until a restart

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.measure_pending()
            except MeasurementStopped:
                return
            except Exception:  # the database may be restarting: look again next round
                log.warning("looking for models to measure failed", exc_info=True)
            self.stopping.wait(heartbeat_interval())

    def measure_pending(self) -> None:
        from grocery import runtimes

        machine = runtimes.machine_key(self.threads)
        with sessions()() as session:
            models = registry.models_to_measure(
                session, machine=machine, newest=MEASURE_AHEAD, including=predictors.provisional()
            )
        for model in models:
            if model.id not in self.given_up and not self.stopping.is_set():
                self.measure(model, machine)

    def measure(self, model: Model, machine: str) -> None:
        """Measure one model here and record its choice, unless another worker measures or measured it."""
        from grocery import runtimes
        from grocery.artifact import read_artifact

        try:
            artifact = read_artifact(local_artifact(worker_settings(), str(model.id), model.artifact_path))
            with sessions()() as session:
                recorded = registry.runtime_choice(session, model_id=model.id, machine=machine)
            if recorded is not None and runtimes.is_current(artifact, recorded):
                return
            log.info("measuring the runtimes of model %s in the background, while the machine is quiet", model.id)
            windows = machine_lock().quiet_windows(stopping=self.stopping)
            try:
                choice = runtimes.choose_cached(artifact, threads=self.threads, steps=windows, wait=False)
            finally:
                windows.close()
        except MeasurementStopped:
            raise
        except Exception:
            log.warning("could not measure the runtimes of model %s: not trying again", model.id, exc_info=True)
            self.given_up.add(model.id)
            return
        if choice is None:
            return  # another worker of this machine measures it now
        with sessions()() as session:
            kept = registry.record_runtime_choice(
                session, model_id=model.id, machine=machine, choice=choice.record, replacing=recorded
            )
            session.commit()
        if choice.measured:
            quiet = choice.record["quiet"]
            log.info(
                "measured the runtimes of model %s here (%s): %s is fastest (%d quiet windows, largest spread %s); "
                "serving on %s",
                model.id,
                machine,
                choice.runtime,
                len(quiet["windows"]),
                quiet["max_spread"],
                kept["runtime"],
            )


measurer: Measurer | None = None


@worker_ready.connect
def start_measuring(sender=None, **_) -> None:
    """In a prediction worker that chooses its runtime by measurement and runs its tasks itself."""
    global measurer
    queues = {q.name for q in sender.task_consumer.queues} if getattr(sender, "task_consumer", None) else set()
    serves = queues & {task.queue for task in PREDICT.tasks}
    if serves and worker_settings().runtime == "auto" and runs_tasks_itself(sender):
        measurer = Measurer(serving_threads())
        measurer.start()


@worker_shutting_down.connect
def stop_measuring(**_) -> None:
    if measurer is not None:
        measurer.stopping.set()


@worker_shutdown.connect
def wait_for_measuring(**_) -> None:
    """Let the step in progress end: an engine torn down under a running thread may crash the exit."""
    if measurer is not None:
        measurer.stopping.set()
        measurer.join(STOP_SECONDS)
