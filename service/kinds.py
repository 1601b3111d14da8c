"""The registry of job kinds: each kind declares its name, its request and spec (service/specs.py),
the tasks that run it and their queues, its progress unit and how the reconciler watches it. Job
types, the task table, the worker's queues, the OpenAPI request bodies, the CLI's and the UI's job
type choices are derived from KINDS. Torch-free.

A new kind of job is an entry here, its spec, and its worker module."""

import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel

from service import specs
from service.states import Lane, Priority


@dataclass(frozen=True)
class Task:
    name: str
    queue: str


@dataclass(frozen=True)
class JobKind:
    name: str  # a job's "type"
    help: str
    request: type[BaseModel]  # the body of POST /jobs for this kind (its "type" is the name)
    spec: type[specs.Strict]  # what its params hold once accepted
    start: Task  # the task that starts a job; in the interactive lane it runs from that lane's queue
    progress_unit: str
    module: str  # the worker module that defines its tasks
    # A sharded job is listed into shards that workers claim one by one: once listed, the job lives
    # in its shards (the reconciler watches them, not the job), and the last shard finishes it.
    shard: Task | None = None
    # Jobs of a few files named up front run in the interactive lane, ahead of bulk work.
    interactive: bool = False

    @property
    def tasks(self) -> tuple[Task, ...]:
        """What a worker that serves this kind runs."""
        lanes = (Task(self.start.name, INTERACTIVE_QUEUE),) if self.interactive else ()
        return (*lanes, self.start, *((self.shard,) if self.shard else ()))

    def task(self, lane: str) -> Task:
        """The task, and so the queue, that starts a job of this kind in this lane."""
        return Task(self.start.name, INTERACTIVE_QUEUE) if lane == Lane.INTERACTIVE else self.start


INTERACTIVE_QUEUE = "interactive"

TRAIN = JobKind(
    name="train",
    help="a training job (unset options: the default recipe)",
    request=specs.TrainJobRequest,
    spec=specs.TrainParams,
    start=Task("worker.training.run_train_job", queue="train"),
    progress_unit="epochs",
    module="worker.training",
)
PREDICT = JobKind(
    name="predict",
    help="classify a folder on the server, or upload files (or a .zip)",
    request=specs.PredictJobRequest,
    spec=specs.PredictSpec,
    start=Task("worker.prediction.run_predict_job", queue="predict"),
    progress_unit="files",
    module="worker.prediction",
    shard=Task("worker.prediction.run_predict_shard", queue="shards"),
    interactive=True,
)
EVALUATE = JobKind(
    name="evaluate",
    help="a model's accuracy on labelled photos: a split's index, class-named folders or a labelled manifest",
    request=specs.EvaluateJobRequest,
    spec=specs.EvaluateSpec,
    start=Task("worker.evaluation.run_evaluate_job", queue="predict"),
    progress_unit="files",
    module="worker.evaluation",
    shard=PREDICT.shard,  # its shards are classified as a prediction's, with their true labels kept
)
PROMOTE = JobKind(
    name="promote",
    help="move an alias to a model if it passes a gate on an evaluated set (a chain's last step)",
    request=specs.PromoteJobRequest,
    spec=specs.PromoteSpec,
    start=Task("worker.promotion.run_promote_job", queue="predict"),
    progress_unit="steps",
    module="worker.promotion",
)
KINDS = {kind.name: kind for kind in (TRAIN, PREDICT, EVALUATE, PROMOTE)}
JOB_TYPES = tuple(KINDS)
# Kinds whose jobs, once listed, live in their shards (the reconciler watches the shards), and their tasks.
SHARDED_TYPES = tuple(name for name, kind in KINDS.items() if kind.shard)
SHARD_TASKS = tuple(dict.fromkeys(KINDS[name].shard for name in SHARDED_TYPES))
TASKS = tuple(dict.fromkeys(task for kind in KINDS.values() for task in kind.tasks))
# The order a worker takes work in (Redis is asked in this order): interactive work first; then the
# listings that start sharded jobs (quick, and they make the work), so that a job submitted behind a
# million queued shards is listed at once and its shards share the workers (service.shards.next_shard);
# then the start of other jobs (a training); then shards.
QUEUES = tuple(
    dict.fromkeys(
        (
            INTERACTIVE_QUEUE,
            *(kind.start.queue for kind in KINDS.values() if kind.shard),
            *(kind.start.queue for kind in KINDS.values()),
            *(kind.shard.queue for kind in KINDS.values() if kind.shard),
        )
    )
)


def kind_of(job_type: str) -> JobKind:
    return KINDS[job_type]


def worker_queues(job_types: list[str]) -> list[str]:
    """The queues a worker serving these job types takes work from, in QUEUES' order: a worker that
    serves a sharded kind serves the interactive lane too."""
    wanted = {task.queue for job_type in job_types for task in KINDS[job_type].tasks}
    return [queue for queue in QUEUES if queue in wanted]


@dataclass(frozen=True)
class NewJob:
    """A job as the API accepted it, before it is written: the one record that submission passes on."""

    kind: JobKind
    params: dict  # its spec, as stored (specs.Strict.stored)
    owner_token_id: uuid.UUID | None
    files_named: int = 0  # its spec's files_named
    model_id: uuid.UUID | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    idempotency_key: str | None = None
    request_hash: str | None = None
    lane: Lane = Lane.BULK
    priority: Priority = Priority.NORMAL
    notify: dict | None = None  # its webhook, as stored (specs.Notify)
    next_steps: dict | None = None  # what it makes when it ends, as stored (specs.NextSteps)
    parent_id: uuid.UUID | None = None  # the job whose end made it (a chain's step)
