"""Training and evaluation loops, checkpoints and resume.

``grocery`` knows nothing of databases or queues: callers observe training
through a callback that receives progress events and may return True to stop.
"""

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from grocery import index
from grocery.artifact import save_artifact
from grocery.datasets import GroceryDataset
from grocery.models import DEFAULT_ARCH, create_model, freeze_stages, get_arch
from grocery.transforms import Preprocessing, normalize, train_augmentation

CHECKPOINT_NAME = "checkpoint.pt"
Callback = Callable[[dict], bool | None]


@dataclass
class TrainConfig:
    """Every knob of a training run; the defaults are the recipe that meets the accuracy target."""

    data_dir: str
    arch: str = DEFAULT_ARCH
    weights: str = "imagenet"
    label_level: str = "coarse"
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    mix: float = 0.5
    warmup_epochs: float = 0.5
    freeze: int = 6
    seed: int = 0
    input_size: int = 224
    train_split: str = "train"
    val_split: str = "val"
    train_limit: int | None = None
    val_limit: int | None = None
    decode_cache: bool = True
    loader_workers: int = 0
    channels_last: bool = True
    threads: int | None = None
    device: str = "auto"  # "auto": the GPU this process sees, else the CPU

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training parameters: {sorted(unknown)}")
        return cls(**d)


@dataclass
class TrainResult:
    status: str  # "completed" or "stopped"
    epochs_done: int
    metrics: dict
    history: list[dict] = field(default_factory=list)
    artifact_dir: Path | None = None
    model: nn.Module | None = None


class TrainingSetup:
    """Model, data and optimiser for one config, built once per run."""

    def __init__(self, config: TrainConfig):
        self.config = config
        arch = get_arch(config.arch)
        self.pre: Preprocessing = arch.preprocessing(config.input_size)
        self.classes = index.read_classes(config.data_dir, config.label_level)
        num_classes = len(self.classes)
        train = _subset(
            index.read_split(config.data_dir, config.train_split, config.label_level, num_classes),
            config.train_limit,
            config.seed,
        )
        val = _subset(
            index.read_split(config.data_dir, config.val_split, config.label_level, num_classes),
            config.val_limit,
            config.seed,
        )
        augment = train_augmentation(self.pre)
        threads = resolve_threads(config.threads)
        if config.decode_cache:
            self.train_set = GroceryDataset.cached(train, config.input_size, augment, threads=threads)
            self.val_set = GroceryDataset.cached(val, config.input_size, threads=threads)
        else:
            self.train_set = GroceryDataset(train, config.input_size, augment)
            self.val_set = GroceryDataset(val, config.input_size)
        self.device = resolve_device(config.device)
        self.model = create_model(num_classes, config.arch, config.weights)
        self.frozen = freeze_stages(self.model, config.arch, config.freeze)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = self.model.to(self.device, memory_format=memory_format)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.drop_last = len(self.train_set) > config.batch_size  # no 1-image batch to upset batch norm
        self.steps_per_epoch = len(self.train_set) // config.batch_size if self.drop_last else 1
        self.scheduler = warmup_cosine(
            self.optimizer, int(config.warmup_epochs * self.steps_per_epoch), config.epochs * self.steps_per_epoch
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.mixer = batch_mixer(num_classes) if config.mix > 0 else None

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

    def set_train_mode(self) -> None:
        self.model.train()
        for stage in self.frozen:
            stage.eval()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        logits = setup.model(inputs)
        loss = setup.criterion(logits, targets)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        setup.scheduler.step()
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
        "train_loss": total_loss / max(1, seen),
        "train_acc": correct / max(1, seen),
        "train_images_per_s": seen / seconds,
        "train_seconds": seconds,
        "stopped": stopped,
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, pre: Preprocessing, num_classes: int, channels_last: bool = True
) -> dict:
    """top-1, top-5, mean loss and the confusion matrix (rows: true class, columns: predicted)."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    device = next(model.parameters()).device
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.long, device=device)
    top5_hits, total_loss, seen = 0, 0.0, 0
    for images_u8, labels in loader:
        images_u8, labels = images_u8.to(device, non_blocking=True), labels.to(device)
        logits = model(normalize(images_u8, pre).contiguous(memory_format=memory_format))
        total_loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        top5 = logits.topk(min(5, num_classes), dim=1).indices
        top5_hits += int((top5 == labels[:, None]).any(1).sum())
        confusion += torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes * num_classes).view(
            num_classes, num_classes
        )
        seen += len(labels)
    return {
        "top1": confusion.diag().sum().item() / max(1, seen),
        "top5": top5_hits / max(1, seen),
        "loss": total_loss / max(1, seen),
        "count": seen,
        "confusion": confusion.cpu(),
    }


def fit(
    config: TrainConfig, output: str | Path, *, resume: str | Path | None = None, callback: Callback | None = None
) -> TrainResult:
    """Train, checkpoint every epoch, and write the model artifact to ``output``.

    ``resume``: a checkpoint file (or a directory holding one) to continue from.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(resolve_threads(config.threads))
    seed_everything(config.seed)
    setup = TrainingSetup(config)
    start_epoch, history = 1, []
    if resume is not None:
        start_epoch, history = load_checkpoint(setup, resume)
    val_metrics = history[-1] if history else {}
    for epoch in range(start_epoch, config.epochs + 1):
        epoch_metrics = train_one_epoch(setup, epoch, callback)
        if epoch_metrics.pop("stopped"):
            return TrainResult("stopped", epoch - 1, val_metrics, history)
        val = evaluate(setup.model, setup.val_loader(), setup.pre, len(setup.classes), config.channels_last)
        val_metrics = {
            "epoch": epoch,
            **epoch_metrics,
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "val_loss": val["loss"],
        }
        history.append(val_metrics)
        save_checkpoint(setup, output / CHECKPOINT_NAME, epoch, history)
        # The confusion matrix goes to the callback only (a dashboard's heatmap), not into the history.
        confusion = {"classes": [c.name for c in setup.classes], "matrix": val["confusion"].tolist()}
        if callback and callback({"kind": "epoch", "epochs": config.epochs, **val_metrics, "confusion": confusion}):
            return TrainResult("stopped", epoch, val_metrics, history)
    artifact_dir = save_artifact(
        output,
        setup.model,
        arch=config.arch,
        class_names=[c.name for c in setup.classes],
        label_level=config.label_level,
        preprocessing=setup.pre,
        training=asdict(config),
        metrics=val_metrics,
        history=history,
        data_fingerprint=index.fingerprint(config.data_dir, config.train_split),
    )
    return TrainResult("completed", config.epochs, val_metrics, history, artifact_dir, setup.model)


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
    return torch.load(path, map_location="cpu", weights_only=True)["config"]


def _subset(samples: list, limit: int | None, seed: int) -> list:
    if limit is None or limit >= len(samples):
        return samples
    chosen = random.Random(seed).sample(range(len(samples)), limit)
    return [samples[i] for i in sorted(chosen)]
