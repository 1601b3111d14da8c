"""Training parameters, declared once.

``TrainConfig`` is every knob of a training run. Each field's metadata (a ``Param``, given through
``param()``) says what its callers need besides its type and default: help text, bounds, choices,
whether ``grocery train`` has a flag for it and whether the job service offers it. The flags
(grocery/cli.py), the job request's schema (service/specs.py), the client's options (cli/client.py) and
the web form (api/ui/jobs.py) are built from ``TRAIN_PARAMS``. Torch-free: the API and
``grocery --help`` read it without loading torch.
"""

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, get_args

from grocery.index import LABEL_LEVELS

# grocery.networks has a builder for each (it refuses to import otherwise); the first is the default.
ARCH_NAMES = ("efficientnet_lite0", "mobilenet_v3_small", "efficientnet_lite1", "efficientnet_lite2")
DEFAULT_ARCH = ARCH_NAMES[0]
# Weights with a meaning of their own; any other value names a state-dict file (grocery.networks.create_model).
WEIGHTS_NAMES = ("imagenet", "none")
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("auto", "on", "off")
# Compiling a training step costs about a minute on 2 cores; at about 1.2x the speed (AVX2 fp32) it
# repays that once the steps take six minutes: 7,500 images at 224 px on the slowest CPUs, 16,000 on
# the fastest fp32 ones. "auto" compiles runs of at least this many images at 224 px (or as many
# pixels), with a time budget budgets of at least COMPILE_MIN_BUDGET minutes, and no progressive
# resizing (each crop size compiles anew, some 35 s).
COMPILE_MIN_IMAGES = 16_000
COMPILE_MIN_BUDGET = 10
# The default recipe plans its epochs to fit this many minutes (TrainConfig.time_budget), so that the
# slowest machine class (2 cores, AVX2 only, fp32) trains it within 30 minutes, export and checks
# included; machines that fit every epoch sooner train them all (issue 30).
DEFAULT_TIME_BUDGET = 28.0
# Param.cli for a bool that is on by default and has one flag, --no-NAME, to turn it off.
OFF_SWITCH = "off-switch"


@dataclass(frozen=True)
class Param:
    """One training parameter as its callers see it.

    Bounds are what the job service accepts (and the form's min and max); ``grocery train`` hands any
    value to the engine, as it always has. ``help`` is the flag's help; ``service_help`` the request
    schema's description, worded for the service, which confines paths to its roots."""

    help: str | None = None
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None
    choices: tuple | None = None  # the only values allowed
    named: tuple | None = None  # values with a meaning of their own where others are allowed too
    cli: bool | str = True  # a `grocery train` flag: --NAME (bools: --NAME/--no-NAME), or OFF_SWITCH
    service: bool = False  # a job request's params may set it
    service_help: str | None = None
    # Filled in from the TrainConfig field by declared_params():
    name: str = ""
    kind: type = object  # int, float, str or bool: the type of a given value (None stripped)
    default: Any = None
    required: bool = False

    @property
    def bounds(self) -> dict[str, float]:
        """The bounds that are set, as pydantic's Field keywords."""
        given = {"ge": self.ge, "le": self.le, "gt": self.gt, "lt": self.lt}
        return {k: v for k, v in given.items() if v is not None}

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def param(default: Any = dataclasses.MISSING, **about) -> Any:
    """A TrainConfig field: its default (none: required) and ``about`` it, Param's keywords."""
    return dataclasses.field(default=default, metadata={"param": Param(**about)})


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the default recipe (benchmarks/bench_accuracy.py scores it)."""

    data_dir: str = param(
        help="dataset root holding classes.csv and <split>.txt",
        service=True,
        service_help="a dataset inside the allowed input roots",
    )
    arch: str = param(DEFAULT_ARCH, choices=ARCH_NAMES, service=True, help="the network")
    weights: str = param(
        "imagenet",
        named=WEIGHTS_NAMES,
        help="none | imagenet | PATH to a state-dict file",
        service=True,
        service_help="none | imagenet | a weights file inside the allowed roots",
    )
    label_level: str = param(
        "coarse", choices=LABEL_LEVELS, service=True, help="the labels it predicts: 43 coarse or 81 fine classes"
    )
    # 16 epochs, not 12: better fine labels on each of five grouped folds (+1.3 ± 0.6 points), coarse
    # +0.4 ± 0.6, and still inside the 30-minute budget on 2 cores (docs/figures.md).
    epochs: int = param(16, ge=1, le=1000, service=True, help="passes over the training set")
    batch_size: int = param(32, ge=1, le=1024, service=True, help="images per training step")
    learning_rate: float = param(1e-3, gt=0, lt=1, service=True, help="the peak learning rate")
    weight_decay: float = param(1e-5, cli=False)
    label_smoothing: float = param(0.1, ge=0, lt=1, service=True, help="label smoothing (0 to 1)")
    mix: float = param(0.5, ge=0, le=1, help="share of batches given CutMix or MixUp (0 to 1)", service=True)
    warmup_epochs: float = param(0.5, cli=False)
    freeze: int = param(4, ge=0, le=20, help="backbone stages (stem first) kept frozen", service=True)
    seed: int = param(0, ge=0, le=2**32 - 1, service=True, help="the random seed: the same seed, the same run")
    input_size: int = param(224, ge=32, le=512, help="pixels of the square model input", service=True)
    # Progressive resizing (as FFCV and fast.ai schedules): early epochs see smaller crops, which cost
    # about the square of their side, growing to input_size by the last quarter of the epochs.
    min_input_size: int | None = param(
        None,
        ge=32,
        le=512,
        service=True,
        help="progressive resizing: the first epoch's input size, growing to --input-size for the last quarter",
    )
    # Minutes of training to plan the epochs from (grocery.engine.plan_epochs): steps timed on a
    # copy of the model before the run; the planned epochs replace `epochs` (then their upper bound)
    # in the recorded config, so a run is reproduced with --epochs and --time-budget 0.
    time_budget: float = param(
        DEFAULT_TIME_BUDGET,
        ge=0,
        le=24 * 60,
        service=True,
        help="minutes of training: plan the epochs (at most --epochs) from throughput timed before the run; "
        "0: no budget, train every epoch",
    )
    # Random crops are cut from photos decoded larger than the input: a crop of a quarter of a photo
    # decoded at 224 px is 112 px blown up to 224, of one decoded at 320 px 160 px, nearer the detail a
    # whole photo has when served. Cross-validated over five grouped folds: +0.5 ± 1.3 points coarse,
    # +0.7 ± 1.3 fine, paired fold by fold (docs/figures.md): inside the folds' noise, and it costs no time.
    train_decode_scale: float = param(
        1.43, ge=1, le=4, help="decode training photos at this multiple of input_size before cropping (1.43: 320 px)"
    )
    # Photos from other stores and days differ in the tint of their light more than ColorJitter's
    # brightness, contrast and saturation cover (issue 30).
    white_balance: float = param(
        0.0, ge=0, lt=1, service=True, help="random per-channel colour gains of up to this fraction (0.2: 0.8 to 1.2)"
    )
    # Which photos train and validate. "train+val" pools index files. With folds > 1 the pool of
    # train_split is cut into class-stratified folds (fold_seed): the run trains on all but
    # `fold` and validates on it, val_split unused (cross-validation, benchmarks/bench_accuracy.py).
    # The default trains the final model on val as well: its val_top1 is then no held-out figure.
    train_split: str = param("train+val", help="index files to train on, '+'-joined (e.g. train+val)")
    val_split: str = param("val", help="index file to validate on (unused with --folds)")
    folds: int = param(0, help="cross-validation: cut TRAIN_SPLIT into this many stratified folds")
    fold: int = param(0, help="the fold held out for validation (0-based)")
    fold_seed: int = param(0, cli=False)
    # A JSON file {photo path under data_dir: group}: a group shares a fold.
    fold_groups: str | None = param(None, cli=False)
    # Each class's iconic product image, this many times, as training samples.
    iconic_copies: int = param(0, help="add each class's iconic image this many times")
    # With label_level "coarse": train a fine-class head and read each coarse class as the sum of
    # its fine classes' probabilities (networks.FineToCoarse); the artifact is a coarse classifier.
    coarse_from_fine: bool = param(
        True, help="coarse labels: train a fine-class head and sum its probabilities per coarse class"
    )
    layer_decay: float = param(0.7, help="learning rate factor per backbone stage below the head")
    # > 0: evaluate and save an exponential moving average of the weights.
    ema_decay: float = param(0.995, help="> 0: keep and save a moving average of the weights")
    # Training matmuls: "bf16" autocast, "fp32", "auto": bf16 where native, unless the run is long enough to
    # compile and fp32 compiled times faster (grocery.engine.TrainingSetup.faster_step).
    precision: str = param(
        "auto", choices=PRECISIONS, help="training autocast (auto: bf16 where native, or fp32 compiled if faster)"
    )
    # torch.compile fuses the training step's elementwise work (batch norms, activations and their
    # gradients), which eager fp32 runs op by op: 1.24x an image with AVX2 kernels, 1.26x with AVX-512,
    # 1.04x in bf16 (docs/figures.md). "auto": long CPU fp32 runs at one size (COMPILE_MIN_IMAGES).
    compile: str = param(
        "auto",
        choices=COMPILE_MODES,
        help="torch.compile training steps (auto: CPU fp32 runs of about 6 epochs or more)",
    )
    # Validate after every n-th epoch and the last (cross-validation needs only the last).
    eval_every: int = param(1, cli=False)
    train_limit: int | None = param(
        None, ge=1, help="train on a seeded random subset of this many images", service=True
    )
    val_limit: int | None = param(None, ge=1, service=True, help="validate on a seeded random subset of this many")
    decode_cache: bool = param(True, cli=OFF_SWITCH, help="decode every image every epoch instead of once per run")
    loader_workers: int = param(0, help="processes that augment batches (default 0: in-line)")
    channels_last: bool = param(True, cli=False)
    threads: int | None = param(None, help="torch threads (default: the cores this process may use)")
    device: str = param("auto", help="auto (default: the GPU if one is visible, else the CPU), cpu, cuda:N")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training parameters: {sorted(unknown)}")
        return cls(**d)

    def epoch_input_size(self, epoch: int) -> int:
        """The input side of training crops in ``epoch`` (1-based): min_input_size growing linearly,
        in steps of 16 px, to input_size, which the last quarter of the epochs train at."""
        if self.min_input_size is None:  # below input_size where set (check_progressive)
            return self.input_size
        ramp = max(1, math.ceil(self.epochs * 0.75))  # epochs 1..ramp grow; the rest are at full size
        if epoch > ramp:
            return self.input_size
        grown = self.min_input_size + (self.input_size - self.min_input_size) * (epoch - 1) / ramp
        return max(self.min_input_size, int(grown) // 16 * 16)

    @property
    def train_decode_size(self) -> int:
        """The side training photos are decoded at (and cached), random crops cut from them."""
        return round(self.input_size * self.train_decode_scale)


def check_progressive(min_input_size: int | None, input_size: int) -> None:
    """Crops grow from min_input_size to input_size: from at or above it they would not grow at all."""
    if min_input_size is not None and min_input_size >= input_size:
        raise ValueError(f"min_input_size ({min_input_size}) must be below input_size ({input_size})")


def declared_params(config_class: type = TrainConfig) -> dict[str, Param]:
    """Each field's Param, completed with its name, type and default, in field order."""
    declared = {}
    for f in fields(config_class):
        required = f.default is dataclasses.MISSING
        completed = dataclasses.replace(
            f.metadata["param"],
            name=f.name,
            kind=_given_type(f.type),
            default=None if required else f.default,
            required=required,
        )
        declared[f.name] = completed
    return declared


def _given_type(annotation) -> type:
    """``int`` for ``int | None``: the type of a value that is given."""
    members = [t for t in get_args(annotation) if t is not type(None)]
    return members[0] if members else annotation


TRAIN_PARAMS = declared_params()
# What a job request's params may set (service/specs.py TrainParams); the worker supplies data_dir if unset.
SERVICE_PARAMS = tuple(p for p in TRAIN_PARAMS.values() if p.service)
