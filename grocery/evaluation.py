"""Metrics from predictions: top-1, top-5, per-class accuracy, confusion matrix files."""

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def classification_metrics(
    true_labels: Sequence[int], top5_ids: Sequence[Sequence[int] | None], class_names: Sequence[str]
) -> dict:
    """Metrics over every sample; a sample that failed to load (top5 None) counts as a miss."""
    n = len(class_names)
    confusion = np.zeros((n, n), dtype=np.int64)
    top1 = top5 = errors = 0
    for label, ids in zip(true_labels, top5_ids, strict=True):
        if ids is None:
            errors += 1
            continue
        confusion[label, ids[0]] += 1
        top1 += ids[0] == label
        top5 += label in ids
    count = len(true_labels)
    support = np.bincount(np.asarray(true_labels, dtype=np.int64), minlength=n)
    per_class = {
        name: {"accuracy": (float(confusion[i, i] / support[i]) if support[i] else None), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "top1": top1 / max(1, count),
        "top5": top5 / max(1, count),
        "count": count,
        "errors": errors,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def write_confusion_csv(path: Path, confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, confusion, strict=True):
            writer.writerow([name, *row])


def write_confusion_png(path: Path, confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion, dtype=np.float64)
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(6, len(class_names) * 0.28)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
