"""Training and evaluation loops, checkpoints and resume.

``grocery`` knows nothing of databases or queues: callers observe training
through a callback that receives progress events and may return True to stop.
"""

import copy
import dataclasses
import json
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from grocery import index
from grocery.allocator import memory_kept
from grocery.artifact import CHECKPOINT_NAME, save_artifact
from grocery.config import COMPILE_MIN_BUDGET, COMPILE_MIN_IMAGES, COMPILE_MODES, TrainConfig, check_progressive
from grocery.datasets import GroceryDataset
from grocery.evaluation import ranked_metrics
from grocery.folds import split_fold, stratified_folds
from grocery.networks import (
    FineToCoarse,
    backbone_stages,
    coarse_log_probs,
    coarse_mask,
    create_model,
    freeze_stages,
    get_arch,
    layerwise_param_groups,
)
from grocery.transforms import Preprocessing, normalize, train_augmentation

Callback = Callable[[dict], bool | None]
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str  # "completed" or "stopped"
    epochs_done: int
    metrics: dict
    history: list[dict] = field(default_factory=list)
    artifact_dir: Path | None = None
    model: nn.Module | None = None
    config: TrainConfig | None = None  # what the model trained with: a time budget's planned epochs in it


class TrainingSetup:
    """Model, data and optimiser for one config, built once per run."""

    def __init__(self, config: TrainConfig):
        check_progressive(config.min_input_size, config.input_size)
        self.config = config
        arch = get_arch(config.arch)
        self.pre: Preprocessing = arch.preprocessing(config.input_size)
        self.classes = index.read_classes(config.data_dir, config.label_level)
        # The head's level: fine when coarse classes are read from fine ones.
        self.head_level = "fine" if config.coarse_from_fine and config.label_level == "coarse" else config.label_level
        self.fine_to_coarse = index.fine_to_coarse(config.data_dir) if self.head_level != config.label_level else None
        self.num_head_classes = len(index.read_classes(config.data_dir, self.head_level))
        train, val = training_samples(config, self.head_level)
        augment = train_augmentation(config.input_size, config.white_balance)
        threads = resolve_threads(config.threads)
        if config.decode_cache:
            self.train_set = GroceryDataset.cached(train, config.train_decode_size, augment, threads=threads)
            self.val_set = GroceryDataset.cached(val, config.input_size, threads=threads)
        else:
            self.train_set = GroceryDataset(train, config.train_decode_size, augment)
            self.val_set = GroceryDataset(val, config.input_size)
        self.device = resolve_device(config.device)
        self.autocast_dtype = resolve_precision(config.precision, self.device)
        self.model = create_model(self.num_head_classes, config.arch, config.weights)
        freeze_stages(self.model, config.arch, config.freeze)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = self.model.to(self.device, memory_format=memory_format)
        groups = layerwise_param_groups(self.model, config.arch, config.learning_rate, config.layer_decay)
        self.optimizer = torch.optim.Adam(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.drop_last = len(self.train_set) > config.batch_size  # no 1-image batch to upset batch norm
        self.steps_per_epoch = len(self.train_set) // config.batch_size if self.drop_last else 1
        self.scheduler = self.schedule()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.mixer = batch_mixer(self.num_head_classes) if config.mix > 0 else None
        # The steps "auto" timed when it had two to choose from ({} when it had one): the plan records them.
        self.step_seconds: dict[str, float] = {}
        if self.chooses_step():
            self.autocast_dtype, compiled = self.faster_step()
        else:
            compiled = (
                resolve_compile(config, self.device, self.autocast_dtype, self.steps_per_epoch) and self.check_compile()
            )
        # The record says what ran, as it says the epochs a time budget planned: a run given its record
        # (or resumed from its checkpoint) trains the same steps, not a new measurement's choice.
        precision = "fp32" if self.autocast_dtype is None else "bf16"
        self.config = dataclasses.replace(config, precision=precision, compile="on" if compiled else "off")
        # What a training step calls: the model, or its compiled form (which shares its weights).
        self.forward = torch.compile(self.model, dynamic=False) if self.compiled else self.model

    @property
    def compiled(self) -> bool:
        """Whether training steps run through torch.compile."""
        return self.config.compile == "on"

    def chooses_step(self) -> bool:
        """Whether "auto" has two steps to choose from: bf16 autocast (native on this CPU) and, the run
        being long enough to compile, fp32 compiled. Which is faster depends on the CPU: fp32 compiled was
        1.15-1.32x bf16 on the AMX Xeon and fp32 about 1.1x on a Zen 4 EPYC, where on Zen 5 bf16 was 1.36x
        fp32 eager (docs/figures.md)."""
        config = self.config
        return (
            config.precision == config.compile == "auto"  # a run told to compile compiles what auto picks
            and self.autocast_dtype is not None
            and resolve_compile(config, self.device, None, self.steps_per_epoch)
        )

    def faster_step(self, steps: int = 8, warmup: int = 3) -> tuple[torch.dtype | None, bool]:
        """bf16 autocast or fp32 compiled, whichever step timed faster here (autocast dtype, compiled).

        The two take turns, step for step, each timed by its median, so that a drift in the machine's speed
        falls on both: timed one after the other, a first run on an idle Zen 4 EPYC picked bf16, which
        trained about 10% slower there."""
        size, timers = self.config.input_size, {}
        with torch.random.fork_rng(devices=[]):  # a CPU choice: timing draws nothing from the run's generators
            timers["bf16"] = step_timer(self, size, precision="bf16", compiled=False)
            if self.check_compile(precision="fp32"):
                timers["fp32 compiled"] = step_timer(self, size, precision="fp32", compiled=True)
            for step, _ in timers.values():
                for _ in range(warmup):
                    step()
            times = {name: [] for name in timers}
            for _ in range(steps):
                for name, (step, _) in timers.items():
                    times[name].append(step())
        self.step_seconds = {name: statistics.median(times[name]) / timers[name][1] for name in timers}
        fastest = min(self.step_seconds, key=self.step_seconds.get)
        log.info("training steps: %s (seconds an image: %s)", fastest, self.step_seconds)
        return (None, True) if fastest == "fp32 compiled" else (torch.bfloat16, False)

    def check_compile(self, precision: str | None = None) -> bool:
        """Whether a training step compiles here (torch.compile needs a C++ compiler), tried on a copy.

        The copy's compilation is cached for the model's own: a second compile of one graph took 1 s
        against 56 s for the first. The trial draws no numbers from the run's generators.
        """
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                size = self.config.epoch_input_size(1)
                seconds_per_image(self, size, steps=1, compiled=True, warmup=0, precision=precision)
            return True
        except Exception as error:
            log.warning("torch.compile failed here, training uncompiled: %s", str(error).strip().splitlines()[0][:300])
            return False

    def schedule(self):
        """The learning-rate schedule of config.epochs, from the first step."""
        warmup = int(self.config.warmup_epochs * self.steps_per_epoch)
        return warmup_cosine(self.optimizer, warmup, self.config.epochs * self.steps_per_epoch)

    def replan(self, epochs: int) -> None:
        """Train ``epochs`` instead (before the first step): the config recorded and the schedule follow."""
        self.config = dataclasses.replace(self.config, epochs=epochs)
        self.scheduler = self.schedule()

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the moving average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def artifact_model(self) -> nn.Module:
        """What the artifact holds: a plain classifier at the config's label level."""
        if self.fine_to_coarse is None:
            return self.eval_model
        return FineToCoarse(self.eval_model, self.fine_to_coarse)

    def train_loader(self, epoch: int) -> DataLoader:
        # A generator seeded per epoch: a resumed run shuffles exactly as an uninterrupted one.
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=self.drop_last,
            # Off by default: augmenting from the cache costs ~2 ms an image against ~35 ms of
            # training step, and daemonic job-worker processes may not fork loader processes.
            num_workers=self.config.loader_workers,
        )

    def val_loader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=max(64, self.config.batch_size))

    def set_train_mode(self, model: nn.Module | None = None) -> None:
        """Train mode for the model (or a copy of it), its frozen stages' batch norms kept in eval mode."""
        model = self.model if model is None else model
        model.train()
        for stage in backbone_stages(model, self.config.arch)[: self.config.freeze]:
            stage.eval()


def training_samples(config: TrainConfig, level: str) -> tuple[list[index.Sample], list[index.Sample]]:
    """(training, validation) samples labelled at ``level``: the splits, or one fold of their pool."""
    if config.folds > 1:
        pool = index.read_splits(config.data_dir, config.train_split, level)
        # Stratified on fine classes whatever the level, so every recipe sees the same folds.
        fine = pool if level == "fine" else index.read_splits(config.data_dir, config.train_split, "fine")
        groups = read_fold_groups(config.fold_groups, config.data_dir, pool) if config.fold_groups else None
        fold_of = stratified_folds([s.label for s in fine], config.folds, config.fold_seed, groups)
        train, val = split_fold(pool, fold_of, config.fold)
    else:
        train = index.read_splits(config.data_dir, config.train_split, level)
        val = index.read_splits(config.data_dir, config.val_split, level)
    train = _subset(train, config.train_limit, config.seed)
    val = _subset(val, config.val_limit, config.seed)
    if config.iconic_copies > 0:
        train = train + index.read_iconic(config.data_dir, level) * config.iconic_copies
    return train, val


def read_fold_groups(path: str, data_dir: str, samples: list[index.Sample]) -> list:
    """Each sample's group from a JSON file of {path relative to data_dir: group}."""
    groups = json.loads(Path(path).read_text())
    missing = [str(s.path) for s in samples if s.path.relative_to(data_dir).as_posix() not in groups]
    if missing:
        raise ValueError(f"{path}: no group for {len(missing)} photos, e.g. {missing[:3]}")
    return [groups[s.path.relative_to(data_dir).as_posix()] for s in samples]


class WeightAverage:
    """An exponential moving average of a model's weights (and batch-norm statistics).

    The decay ramps up over the first updates, as in timm's ModelEmaV2 with warm-up, so the
    average does not remember the freshly initialised head for long.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in averaged.items() if v.is_floating_point()]
        torch._foreach_lerp_([averaged[k] for k in floats], [current[k].detach() for k in floats], 1 - decay)
        for k, v in averaged.items():
            if not v.is_floating_point():
                v.copy_(current[k])

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training steps, or None for plain fp32.

    bf16 autocast where the hardware runs it natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs).
    Evaluation and the artifact stay fp32. On this project's Zen 5 machines (CPU time of one
    thread, batch 32) a step cost 0.76x fp32's with --freeze 6, the same with --freeze 4 and
    1.06x with nothing frozen: depthwise convolutions gain little. Elsewhere bf16 is emulated
    and slower than fp32, so "auto" falls back. A CPU run long enough to compile then times bf16
    against fp32 compiled (TrainingSetup.faster_step).
    """
    if precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    if precision == "auto":
        return None
    raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")


def native_bf16(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_compile(
    config: TrainConfig, device: torch.device, autocast_dtype: torch.dtype | None, steps_per_epoch: int
) -> bool:
    """Whether a run compiles its training steps: "auto" where that measured faster and repays its minute."""
    if config.compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {config.compile!r}")
    if config.compile != "auto":
        return config.compile == "on"
    images = steps_per_epoch * config.batch_size * config.epochs * (config.input_size / 224) ** 2
    budgeted = not config.time_budget or config.time_budget >= COMPILE_MIN_BUDGET
    # Each crop size compiles anew (35 s), and a graph with dynamic sizes took over ten minutes to compile.
    one_size = config.min_input_size is None
    long_run = images >= COMPILE_MIN_IMAGES and budgeted and one_size
    return device.type == "cpu" and autocast_dtype is None and long_run


def resolve_threads(threads: int | None) -> int:
    return threads or len(os.sched_getaffinity(0))


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_mixer(num_classes: int):
    """CutMix or MixUp on a normalised batch, giving soft targets: a regulariser for a small training set."""
    return v2.RandomChoice([v2.CutMix(num_classes=num_classes), v2.MixUp(num_classes=num_classes)])


def train_one_epoch(setup: TrainingSetup, epoch: int, callback: Callback | None = None) -> dict:
    """One pass over the training set; returns loss, accuracy and throughput, or marks a stop."""
    size = setup.config.epoch_input_size(epoch)
    setup.train_set.transform = train_augmentation(size, setup.config.white_balance)
    setup.set_train_mode()
    memory_format = torch.channels_last if setup.config.channels_last else torch.contiguous_format
    total_loss, correct, seen, stopped = 0.0, 0, 0, False
    start = time.perf_counter()
    for step, (images_u8, labels) in enumerate(setup.train_loader(epoch), start=1):
        images_u8, labels = images_u8.to(setup.device, non_blocking=True), labels.to(setup.device)
        inputs = normalize(images_u8, setup.pre).contiguous(memory_format=memory_format)
        targets = labels
        if setup.mixer is not None and random.random() < setup.config.mix:
            inputs, targets = setup.mixer(inputs, labels)
        logits, loss = training_step(
            setup.forward, setup.optimizer, setup.criterion, inputs, targets, setup.autocast_dtype
        )
        setup.scheduler.step()
        if setup.ema is not None:
            setup.ema.update(setup.model)
        total_loss += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        event = {
            "kind": "step",
            "epoch": epoch,
            "step": step,
            "steps": setup.steps_per_epoch,
            "loss": loss.item(),
            "lr": setup.scheduler.get_last_lr()[0],
        }
        if callback and callback(event):
            stopped = True
            break
    seconds = time.perf_counter() - start
    return {
        "input_size": size,
        "train_loss": total_loss / max(1, seen),
        "train_acc": correct / max(1, seen),
        "train_images_per_s": seen / seconds,
        "train_seconds": seconds,
        "stopped": stopped,
    }


def training_step(model, optimizer, criterion, inputs, targets, autocast_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and an optimiser step on one batch; (logits, loss)."""
    with torch.autocast(inputs.device.type, autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(inputs)
        loss = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss


def plan_epochs(setup: TrainingSetup, deadline: float) -> dict:
    """The most epochs (at most config.epochs) whose schedule ends by ``deadline`` (time.perf_counter's).

    Training steps are timed on a copy of the model (the run's weights and optimiser untouched) at
    the smallest and largest crop sizes of the schedule, a step's cost taken as linear in its pixels
    between them; an evaluation of the validation set is timed too, for the epochs that evaluate.
    """
    config = setup.config
    smallest = config.min_input_size or config.input_size
    per_image = {size: seconds_per_image(setup, size) for size in sorted({smallest, config.input_size})}
    # An evaluation costs a few seconds of an epoch: one timed batch is close enough.
    evaluation = seconds_per_image(setup, config.input_size, train=False, steps=1, warmup=1) * len(setup.val_set)
    seconds = deadline - time.perf_counter()  # what is left once the timing is done

    def image_seconds(size: int) -> float:
        if len(per_image) == 1:
            return per_image[size]
        (a, ta), (b, tb) = sorted(per_image.items())
        return ta + (tb - ta) * (size * size - a * a) / (b * b - a * a)

    def cost(epochs: int) -> float:
        planned = dataclasses.replace(config, epochs=epochs)
        images = setup.steps_per_epoch * config.batch_size
        train = sum(images * image_seconds(planned.epoch_input_size(e)) for e in range(1, epochs + 1))
        evaluated = sum(1 for e in range(1, epochs + 1) if e % config.eval_every == 0 or e == epochs)
        return train + evaluated * evaluation

    epochs = 1
    while epochs < config.epochs and cost(epochs + 1) <= seconds:  # the cost grows with the epochs
        epochs += 1
    return {
        "epochs": epochs,
        "seconds": round(cost(epochs), 1),
        "seconds_left": round(seconds, 1),  # of the budget, once the decoding and timing were done
        "image_seconds": {str(k): round(v, 5) for k, v in per_image.items()},
        "evaluation_seconds": round(evaluation, 1),
        # What "auto" chose its training step from, in seconds an image at the input size.
        **({"steps_timed": {k: round(v, 5) for k, v in setup.step_seconds.items()}} if setup.step_seconds else {}),
        "step": setup.config.precision + (" compiled" if setup.compiled else ""),
    }


def seconds_per_image(
    setup: TrainingSetup,
    size: int,
    train: bool = True,
    steps: int = 8,
    compiled: bool | None = None,
    warmup: int = 3,
    precision: str | None = None,
) -> float:
    """Seconds a training image costs at ``size``, its augmentation included (or an evaluated one),
    timed on a copy of the model: the run's weights, optimiser and data order are untouched.
    ``compiled``: train through torch.compile; ``precision``: "bf16" or "fp32" (default: as the run does).

    The median of ``steps`` steps, after ``warmup`` untimed ones: on the idle AVX2 EPYC a compiled
    step's first few ran 1.0-1.1 s and later ones 0.81-0.97 s, and the mean of four steps after one
    gave 0.026 to 0.040 s an image from one call to the next, which planned 11 epochs where 16 fit."""
    step, batch = step_timer(setup, size, train=train, compiled=compiled, precision=precision)
    for _ in range(warmup):  # the first call pays one-off allocations, kernel choices and compilation
        step()
    seconds = statistics.median(step() for _ in range(steps))
    return seconds / batch + (augmentation_seconds(setup, size) if train else 0.0)


def step_timer(
    setup: TrainingSetup, size: int, *, train: bool = True, compiled: bool | None = None, precision: str | None = None
) -> tuple[Callable[[], float], int]:
    """A function that runs one training step (or evaluation batch) on a copy of the model and returns
    its seconds, and the batch's size. Defaults as the run does."""
    model = copy.deepcopy(setup.model)
    compiled = setup.compiled if compiled is None else compiled
    autocast_dtype = setup.autocast_dtype if precision is None else resolve_precision(precision, setup.device)
    forward = torch.compile(model, dynamic=False) if compiled and train else model
    memory_format = torch.channels_last if setup.config.channels_last else torch.contiguous_format
    batch = setup.config.batch_size if train else min(max(64, setup.config.batch_size), max(1, len(setup.val_set)))
    inputs = torch.randn(batch, 3, size, size, device=setup.device).contiguous(memory_format=memory_format)
    targets = torch.randint(setup.num_head_classes, (batch,), device=setup.device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def step() -> float:
        start = time.perf_counter()
        if train:
            setup.set_train_mode(model)
            training_step(forward, optimizer, setup.criterion, inputs, targets, autocast_dtype)
        else:
            with torch.inference_mode():
                model.eval()(inputs)
        return time.perf_counter() - start

    return step, batch


def augmentation_seconds(setup: TrainingSetup, size: int, images: int = 32) -> float:
    """Seconds the training set's augmentation at ``size`` costs an image (in-line, as the loader runs it)."""
    dataset, kept = setup.train_set, setup.train_set.transform
    dataset.transform = train_augmentation(size, setup.config.white_balance)
    try:
        start = time.perf_counter()
        for i in range(min(images, len(dataset))):
            dataset[i]
        return (time.perf_counter() - start) / min(images, len(dataset))
    finally:
        dataset.transform = kept


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    pre: Preprocessing,
    num_classes: int,
    channels_last: bool = True,
    *,
    fine_to_coarse: list[int] | None = None,
    flip: bool = False,
) -> dict:
    """top-1, top-5, mean loss and the confusion matrix (rows: true class, columns: predicted).

    ``fine_to_coarse``: model and labels are fine-class; the metrics are those of the coarse
    classes read from it (as FineToCoarse does), and ``fine_top1`` the fine classes' top-1.
    ``flip``: average each image's logits with its mirror's (test-time augmentation).
    """
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    device = next(model.parameters()).device
    all_logits, all_labels = [], []
    for images_u8, labels in loader:
        inputs = normalize(images_u8.to(device, non_blocking=True), pre).contiguous(memory_format=memory_format)
        logits = model(inputs)
        if flip:
            logits = (logits + model(inputs.flip(3))) / 2
        all_logits.append(logits.float())
        all_labels.append(labels.to(device))
    logits = torch.cat(all_logits) if all_logits else torch.zeros((0, num_classes), device=device)
    labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long, device=device)
    if fine_to_coarse is None:
        return classification_metrics(logits, labels, num_classes)
    fine_top1 = (logits.argmax(1) == labels).sum().item() / max(1, len(labels))
    mask = coarse_mask(fine_to_coarse).to(device)
    coarse_labels = torch.tensor(fine_to_coarse, device=device)[labels]
    return {**classification_metrics(coarse_log_probs(logits, mask), coarse_labels, len(mask)), "fine_top1": fine_top1}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """grocery.evaluation's metrics of these logits, and their mean cross-entropy."""
    seen = len(labels)
    ranked = logits.topk(min(5, num_classes), dim=1).indices
    metrics = ranked_metrics(labels.cpu().numpy(), ranked.cpu().numpy(), num_classes)
    loss = nn.functional.cross_entropy(logits, labels, reduction="sum").item() / seen if seen else 0.0
    return {**metrics, "loss": loss}


def fit(
    config: TrainConfig, output: str | Path, *, resume: str | Path | None = None, callback: Callback | None = None
) -> TrainResult:
    """Train, checkpoint every epoch, and write the model artifact to ``output``.

    ``resume``: a checkpoint file (or a directory holding one) to continue from.
    """
    with memory_kept():  # each step reuses the memory the last one freed (grocery.allocator)
        return _fit(config, Path(output), resume, callback)


def _fit(config: TrainConfig, output: Path, resume: str | Path | None, callback: Callback | None) -> TrainResult:
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(resolve_threads(config.threads))
    seed_everything(config.seed)
    setup = TrainingSetup(config)
    config = setup.config  # what the run resolved (whether it compiles), as recorded
    start_epoch, history = 1, []
    if resume is not None:
        # A resumed run keeps the epochs planned when it began (its checkpoint's config).
        start_epoch, history = load_checkpoint(setup, resume)
    elif config.time_budget:
        # Timing draws no numbers from the run's generators (the GPU's too, where it trains on one).
        with torch.random.fork_rng(devices=[setup.device] if setup.device.type == "cuda" else []):
            plan = plan_epochs(setup, started + config.time_budget * 60)
        setup.replan(plan["epochs"])
        config = setup.config
        if callback:
            callback({"kind": "plan", **plan})
    val_metrics = history[-1] if history else {}
    for epoch in range(start_epoch, config.epochs + 1):
        epoch_metrics = train_one_epoch(setup, epoch, callback)
        if epoch_metrics.pop("stopped"):
            return TrainResult("stopped", epoch - 1, val_metrics, history)
        val_metrics, confusion = {"epoch": epoch, **epoch_metrics}, None
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            val = evaluate(
                setup.eval_model,
                setup.val_loader(),
                setup.pre,
                setup.num_head_classes,
                config.channels_last,
                fine_to_coarse=setup.fine_to_coarse,
            )
            val_metrics.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
            if "fine_top1" in val:
                val_metrics["val_fine_top1"] = val["fine_top1"]
            # The confusion matrix goes to the callback only (a dashboard's heatmap), not into the history.
            confusion = {"classes": [c.name for c in setup.classes], "matrix": val["confusion"].tolist()}
        history.append(val_metrics)
        save_checkpoint(setup, output / CHECKPOINT_NAME, epoch, history)
        event = {"kind": "epoch", "epochs": config.epochs, **val_metrics}
        if callback and callback({**event, "confusion": confusion} if confusion else event):
            return TrainResult("stopped", epoch, val_metrics, history)
    model = setup.artifact_model()
    artifact_dir = save_artifact(
        output,
        model,
        arch=config.arch,
        class_names=[c.name for c in setup.classes],
        label_level=config.label_level,
        preprocessing=setup.pre,
        training=asdict(config),
        metrics=val_metrics,
        history=history,
        data_fingerprint=index.fingerprint(config.data_dir, config.train_split),
        fine_to_coarse=setup.fine_to_coarse,
    )
    return TrainResult("completed", config.epochs, val_metrics, history, artifact_dir, model, config)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(setup: TrainingSetup, path: Path, epoch: int, history: list[dict]) -> None:
    state = {
        "model": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": setup.scheduler.state_dict(),
        "epoch": epoch,
        "history": history,
        "config": asdict(setup.config),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    if setup.ema is not None:
        state["ema"] = setup.ema.state_dict()
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)  # a crash mid-write never leaves a torn checkpoint


def load_checkpoint(setup: TrainingSetup, path: str | Path) -> tuple[int, list[dict]]:
    """Restore a run's state; returns the next epoch to train and the history so far."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    setup.model.load_state_dict(state["model"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scheduler.load_state_dict(state["scheduler"])
    if setup.ema is not None:
        setup.ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(_as_python_rng_state(state["python_rng"]))
    return state["epoch"] + 1, list(state["history"])


def _as_python_rng_state(state) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def checkpoint_config(path: str | Path) -> dict:
    """The training config stored in a checkpoint, so ``--resume`` needs no other flags."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    config = torch.load(path, map_location="cpu", weights_only=True)["config"]
    # Checkpoints from before train_decode_scale cropped from photos decoded at the input size.
    config.setdefault("train_decode_scale", 1.0)
    # Checkpoints from before the default budget recorded no budget as None, or not at all.
    config["time_budget"] = config.get("time_budget") or 0.0
    return config


def resumed_config(checkpoint: str | Path | None, given: dict) -> TrainConfig:
    """The config of a run continuing from ``checkpoint`` (None: a fresh run): the settings the
    checkpoint was trained with, ``given`` on top. A default changed between two attempts (an
    upgrade) then cannot switch a run's schedule or augmentation partway; a time budget's epochs stay
    the ones planned as the run began, unless ``given`` asks for others."""
    recorded = checkpoint_config(checkpoint) if checkpoint is not None else {}
    return TrainConfig.from_dict({**recorded, **given})


def _subset(samples: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(samples):
        return samples
    chosen = random.Random(seed).sample(range(len(samples)), limit)
    return [samples[i] for i in sorted(chosen)]
