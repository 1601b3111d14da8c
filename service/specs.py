"""Job specs: what a job of each kind accepts (its request body) and what its params hold once
accepted (its spec). Torch-free pydantic, read by the API, which parses a request once and stores the
spec's JSON, and by the workers, which parse that JSON back into the same spec.

A spec is the only reader of a job's params: code outside this module takes a spec's attributes,
never ``params[...]``."""

import functools
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from grocery.config import SERVICE_PARAMS, TRAIN_PARAMS, Param, check_progressive
from grocery.index import LABEL_LEVELS
from service.states import FINISHED_STATUSES, Priority

# A request names a priority by its word (strict validation takes no enum member from JSON).
PriorityName = Literal[tuple(str(priority) for priority in Priority)]
PRIORITY_HELP = "its share of the workers beside other jobs: low, normal or high (high: ops tokens only)"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    def stored(self) -> dict:
        """The spec as a job's params hold it: options not given left out, so a job shows what was given."""
        return self.model_dump(mode="json", exclude_unset=True, exclude_none=True)

    @property
    def files_named(self) -> int:
        """The files the job names up front (a manifest's, an upload's): its quota and lane count them."""
        return 0

    @classmethod
    def of_job(cls, params: dict):
        """The spec of a stored job (the API checked it; JSON has no strict types to keep)."""
        return cls.model_validate(params, strict=False)


# The ends of a job a webhook may be told of.
EventName = Literal[tuple(str(status) for status in FINISHED_STATUSES)]


class Notify(Strict):
    """A webhook told of the job's end: a signed POST of the job's JSON, after the end is committed."""

    url: Annotated[str, Field(min_length=1, max_length=2048)] = Field(
        description="an http or https URL on a host of GROCERY_WEBHOOK_ALLOWED_HOSTS"
    )
    events: Annotated[list[EventName], Field(min_length=1, max_length=len(FINISHED_STATUSES))] = Field(
        default_factory=lambda: [str(status) for status in FINISHED_STATUSES],
        description="the ends to be told of (default all: succeeded, failed, cancelled)",
    )

    @model_validator(mode="after")
    def each_event_once(self):
        if len(set(self.events)) != len(self.events):
            raise ValueError("name each event once")
        return self

    @classmethod
    def of_job(cls, notify: dict | None) -> "Notify | None":
        """A stored job's (its own column, jobs.notify)."""
        return None if notify is None else cls.model_validate(notify, strict=False)


class Notifiable(Strict):
    """What every kind's request may carry besides its own fields."""

    notify: Notify | None = Field(None, description="a webhook told when the job ends")


def request_field(p: Param) -> tuple:
    """A TrainParams field: unset (None) takes the recipe's default; bounds and choices as declared."""
    kind = Literal[p.choices] if p.choices else p.kind
    if p.bounds:
        kind = Annotated[kind, Field(**p.bounds)]
    return kind | None, Field(None, description=p.service_help)


def progressive_below_input(params):
    check_progressive(params.min_input_size, params.input_size or TRAIN_PARAMS["input_size"].default)
    return params


# A training job's spec: the training CLI's options a job may set (grocery.config declares them).
TrainParams = create_model(
    "TrainParams",
    __base__=Strict,
    __doc__="The training CLI's options; unset ones take the default recipe.",
    __module__=__name__,
    __validators__={"progressive_below_input": model_validator(mode="after")(progressive_below_input)},
    **{p.name: request_field(p) for p in SERVICE_PARAMS},
)


class PredictInput(Strict):
    folder: str | None = Field(None, description="a folder inside the allowed input roots")
    url: Annotated[str, Field(pattern=r"^s3://", max_length=2048)] | None = Field(
        None, description="an object prefix inside the allowed input roots, e.g. s3://bucket/photos/"
    )
    paths: Annotated[list[str], Field(min_length=1, max_length=100_000)] | None = Field(
        None, description="a manifest: files or object URLs (s3://...) inside the allowed input roots"
    )
    recursive: bool = Field(True, description="folder or url: include subfolders (keys below further '/')")
    pattern: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="folder or url: a glob on file names, e.g. '*.jpg' (default: the image extensions)"
    )

    @model_validator(mode="after")
    def exactly_one_source(self):
        if sum(source is not None for source in (self.folder, self.url, self.paths)) != 1:
            raise ValueError("give exactly one of 'folder', 'url' or 'paths'")
        return self

    @property
    def files_named(self) -> int:
        """The files named up front (a manifest's); 0 where they are found by listing."""
        return len(self.paths) if self.paths is not None else 0


class StoredInput(PredictInput):
    """A prediction job's input as stored: a request's, confined (real paths), or its uploaded files'
    folder or prefix with what was uploaded."""

    upload: dict | None = None

    @property
    def files_named(self) -> int:
        return self.upload["files"] if self.upload is not None else super().files_named


class PredictOutput(Strict):
    # Its form (s3://bucket/key.parquet) is checked by the API, which answers 400 naming the field.
    url: Annotated[str, Field(min_length=1, max_length=2048)] = Field(
        description="an object to write the results to as Parquet when the job ends, e.g. s3://bucket/run.parquet"
    )


class PredictOptions(Strict):
    """What a prediction job's request and its spec share."""

    model: str = Field("latest", description="a model id, 'latest' or an alias such as 'production'")
    output: PredictOutput | None = Field(None, description="where the job also writes its results when it ends")
    shard_size: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="files per shard task (default GROCERY_SHARD_SIZE)"
    )
    max_failed_fraction: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="the job fails when more of its files fail (default GROCERY_MAX_FAILED_FRACTION)"
    )


# What marks the one-image jobs of POST /predict (a retention of their own).
PREDICT_SOURCE = "predict"


class PredictSpec(PredictOptions):
    """A prediction job's params."""

    input: StoredInput
    source: Literal[PREDICT_SOURCE] | None = None  # POST /predict's jobs

    def true_label(self, path: str) -> None:
        """A prediction knows no true labels (an evaluation does: EvaluateSpec)."""
        return None

    @property
    def files_named(self) -> int:
        return self.input.files_named

    # One part of a stored job's params, whatever else they hold (the store's rows of older jobs, too).
    @staticmethod
    def output_of(params: dict) -> PredictOutput | None:
        """Its output object: what the store reads as the job finishes."""
        output = params.get("output")
        return None if output is None else PredictOutput.model_validate(output, strict=False)

    @staticmethod
    def input_of(params: dict) -> StoredInput | None:
        """Its input: what a preview of one of its files is confined by."""
        source = params.get("input")
        return None if source is None else StoredInput.model_validate(source, strict=False)


class TrainJobRequest(Notifiable):
    type: Literal["train"]
    params: TrainParams = TrainParams()
    then: "Then | None" = Field(None, description="what follows if it succeeds: evaluate, then promote")

    # A training job names no model to serve with and takes its place in the training queue.
    model: ClassVar[None] = None
    priority: ClassVar[Priority] = Priority.NORMAL


class PredictJobRequest(PredictOptions, Notifiable):
    type: Literal["predict"]
    input: PredictInput
    priority: PriorityName = Field(str(Priority.NORMAL), description=PRIORITY_HELP)

    def spec(self, source: dict) -> PredictSpec:
        """The job's spec, with its input as the API confined it."""
        options = self.model_dump(include={"model", "output", "shard_size", "max_failed_fraction"})
        return PredictSpec.model_validate({**options, "input": source})


LABEL = Annotated[str, Field(min_length=1, max_length=128)]


class LabelledIndex(Strict):
    """A split of a dataset laid out as the Grocery Store Dataset: DATA_DIR/<split>.txt, lines
    "path, fine id, coarse id", with DATA_DIR/classes.csv naming the ids."""

    data_dir: str | None = Field(None, description="a dataset inside the allowed input roots (default: the service's)")
    split: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")] = Field(
        description="the index file's name without .txt, e.g. test or val"
    )
    label_level: Literal[LABEL_LEVELS] | None = Field(None, description="coarse or fine (default: the model's)")


class LabelledFile(Strict):
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    label: LABEL | None = Field(description="its class name; null: unlabelled (counted, not scored)")


class EvaluateInput(Strict):
    """A labelled set: exactly one of an index, a folder or prefix whose subfolders are class names
    (the ImageFolder layout), or a manifest of labelled files."""

    index: LabelledIndex | None = None
    folder: str | None = Field(None, description="a folder inside the allowed input roots: <class name>/<photo>")
    url: Annotated[str, Field(pattern=r"^s3://", max_length=2048)] | None = Field(
        None, description="an object prefix inside the allowed input roots: <class name>/<photo>"
    )
    manifest: Annotated[list[LabelledFile], Field(min_length=1, max_length=100_000)] | None = None
    pattern: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="folder or url: a glob on file names (default: the image extensions)"
    )

    @model_validator(mode="after")
    def exactly_one_set(self):
        if sum(given is not None for given in (self.index, self.folder, self.url, self.manifest)) != 1:
            raise ValueError("give exactly one of 'index', 'folder', 'url' or 'manifest'")
        return self


class EvaluateJobRequest(Notifiable):
    type: Literal["evaluate"]
    model: str = Field("latest", description="a model id, 'latest' or an alias such as 'production'")
    input: EvaluateInput
    shard_size: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="files per shard task (default GROCERY_SHARD_SIZE)"
    )
    priority: PriorityName = Field(str(Priority.NORMAL), description=PRIORITY_HELP)


class LabelledSet(Strict):
    """A labelled set as an evaluation holds it, whichever model it evaluates: its files as a
    prediction job's input (confined), and how each file's true label is known: ``labels`` beside a
    manifest's paths (an index's or the request's), or else the first folder below the input folder
    or prefix."""

    input: StoredInput
    labels: list[str | None] | None = None
    label_level: Literal[LABEL_LEVELS]
    named: dict = Field(description="the labelled set as the request named it (for reports)")
    shard_size: int | None = None


def set_name(named: dict | None) -> str:
    """The labelled set as its request named it: "split val", "/photos/shelf", "a manifest of 20 files"."""
    named = named or {}
    if index := named.get("index"):
        of = f" of {index['data_dir']}" if index.get("data_dir") else ""
        return f"split {index['split']}{of}"
    if manifest := named.get("manifest"):
        return f"a manifest of {manifest['files']} files"
    if source := named.get("folder") or named.get("url"):
        return source + (f" ({named['pattern']})" if named.get("pattern") else "")
    return "a labelled set"


class EvaluateSpec(LabelledSet):
    """An evaluation job's params: a model on a labelled set."""

    model: str

    # An evaluation writes no output object, and counts an unreadable file as a miss: it fails only
    # when its input holds no image at all.
    output: ClassVar[None] = None
    max_failed_fraction: ClassVar[float] = 1.0

    @functools.cached_property
    def _labels_by_path(self) -> dict[str, str | None]:
        return dict(zip(self.input.paths or (), self.labels or (), strict=True))

    def true_label(self, path: str) -> str | None:
        if self.labels is not None:
            return self._labels_by_path.get(path)
        below = path.removeprefix(self.input.folder or self.input.url or "").strip("/").split("/")
        return below[0] if len(below) > 1 else None  # a file beside the class folders has none

    @property
    def labelled_set(self) -> dict:
        """What makes two evaluations' sets the same, as their params store it: files, labels, level."""
        stored = self.stored()
        return {key: stored.get(key) for key in ("input", "labels", "label_level")}


class GateRule(Strict):
    """What a model must show on an evaluated set before an alias moves to it (service/gates.py)."""

    min_top1: Annotated[float, Field(ge=0, le=1)] | None = Field(None, description="the least top-1 it needs there")
    not_worse_than: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None, description="an alias (e.g. production) or model id whose top-1 on that set it must reach"
    )
    margin: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="how far below not_worse_than it may be")


class Gate(GateRule):
    """A gate on one evaluated set."""

    evaluation: str = Field(description="a succeeded evaluation job: the model is judged on its set")


def not_latest(name: str) -> str:
    if name == "latest":
        raise ValueError("'latest' names the newest model: it is no alias to move")
    return name


AliasName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(not_latest)]
ALIAS_HELP = "an alias name (at most 64 characters, not 'latest')"


class Then(Strict):
    """What follows a training that succeeds (SageMaker Pipelines' train -> evaluate -> condition ->
    register): its model evaluated on a labelled set, then, where asked, an alias moved to it if the
    gate holds. Each step is a job of its own (service/chains.py)."""

    evaluate: EvaluateInput = Field(description="the labelled set the new model is evaluated on")
    promote: AliasName | None = Field(None, description=f"then move this alias to it ({ALIAS_HELP})")
    gate: GateRule | None = Field(None, description="what the evaluation must show before the alias moves")

    @model_validator(mode="after")
    def gate_needs_a_promotion(self):
        if self.gate is not None and self.promote is None:
            raise ValueError("a gate guards a promotion: name the alias to 'promote'")
        return self


class NextSteps(Strict):
    """A job's next steps as stored (jobs.next_steps): a training's evaluation (its set confined, its
    model known once trained), and the promotion that follows it."""

    evaluate: LabelledSet | None = None
    promote: str | None = None
    gate: GateRule | None = None
    error: str | None = None  # why the chain stopped where a step could not be made

    @classmethod
    def of_job(cls, next_steps: dict | None) -> "NextSteps | None":
        return None if next_steps is None else cls.model_validate(next_steps, strict=False)


class PromoteJobRequest(Notifiable):
    type: Literal["promote"]
    model: str = Field("latest", description="a model id, 'latest' or an alias")
    alias: AliasName = Field(description=ALIAS_HELP)
    gate: Gate | None = Field(None, description="what the model must show on an evaluated set first")

    priority: ClassVar[Priority] = Priority.NORMAL


class PromoteSpec(Strict):
    """A promotion job's params: the model (its id), the alias, the gate."""

    model: str
    alias: str
    gate: Gate | None = None


TrainJobRequest.model_rebuild()  # its "then" is declared below it
