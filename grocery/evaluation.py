"""Metrics from predictions: top-1, top-5, per-class accuracy, confusion matrix files."""

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def ranked_metrics(true_labels: np.ndarray, ranked_ids: np.ndarray, num_classes: int) -> dict:
    """top-1, top-5 and the confusion matrix (rows: true class, columns: predicted) from each sample's
    class ids, best first (N, k); a row starting with -1 is a sample that failed to load: a miss."""
    true_labels, ranked_ids = np.asarray(true_labels, dtype=np.int64), np.asarray(ranked_ids, dtype=np.int64)
    loaded = ranked_ids[:, 0] >= 0 if len(ranked_ids) else np.zeros(0, dtype=bool)
    cells = true_labels[loaded] * num_classes + ranked_ids[loaded, 0]
    confusion = np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    count = len(true_labels)
    hits5 = int((ranked_ids == true_labels[:, None]).any(1).sum()) if count else 0
    return {
        "top1": int(np.trace(confusion)) / max(1, count),
        "top5": hits5 / max(1, count),
        "count": count,
        "errors": int((~loaded).sum()),
        "confusion": confusion,
    }


def classification_metrics(
    true_labels: Sequence[int], top5_ids: Sequence[Sequence[int] | None], class_names: Sequence[str]
) -> dict:
    """Metrics over every sample, with accuracy per class; a sample that failed to load (top5 None) is a miss."""
    n = len(class_names)
    width = min(5, n)
    ranked = np.full((len(top5_ids), width), -1, dtype=np.int64)
    for row, ids in enumerate(top5_ids):
        if ids is not None:
            best = list(ids)[:width]
            ranked[row, : len(best)] = best
    metrics = ranked_metrics(np.asarray(true_labels, dtype=np.int64), ranked, n)
    confusion = metrics["confusion"]
    support = np.bincount(np.asarray(true_labels, dtype=np.int64), minlength=n)
    per_class = {
        name: {"accuracy": (float(confusion[i, i] / support[i]) if support[i] else None), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return {**metrics, "per_class": per_class, "confusion": confusion.tolist()}


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


def labelled_report(
    true_labels: Sequence[str | None],
    ranked_labels: Sequence[Sequence[str] | None],
    confidences: Sequence[float | None],
    class_names: Sequence[str],
    *,
    bins: int = 15,
) -> dict:
    """An evaluation over files whose labels are names: each file's true label (None: unlabelled), its
    predicted labels best first (None: it could not be read, a miss) and the top one's confidence.
    Files without a label, or with one the model does not know, are counted apart and not scored."""
    ids = {name: i for i, name in enumerate(class_names)}
    scored = [i for i, truth in enumerate(true_labels) if truth in ids]
    unknown = Counter(truth for truth in true_labels if truth is not None and truth not in ids)
    top5 = [[ids[name] for name in ranked_labels[i] if name in ids] if ranked_labels[i] else None for i in scored]
    metrics = classification_metrics([ids[true_labels[i]] for i in scored], top5, class_names)
    confusion = np.asarray(metrics["confusion"])
    predicted = confusion.sum(0)
    for i, name in enumerate(class_names):
        stats = metrics["per_class"][name]
        stats["recall"] = stats.pop("accuracy")
        stats["precision"] = float(confusion[i, i] / predicted[i]) if predicted[i] else None
    hits = [bool(top5[k]) and top5[k][0] == ids[true_labels[i]] for k, i in enumerate(scored)]
    return {
        **metrics,
        "ece": expected_calibration_error([confidences[i] for i in scored], hits, bins=bins),
        "unlabelled": sum(truth is None for truth in true_labels),
        "unknown_labels": dict(sorted(unknown.items())),
        "classes": list(class_names),
    }


def expected_calibration_error(confidences: Sequence[float | None], hits: Sequence[bool], *, bins: int = 15) -> float:
    """How far confidence is from accuracy, averaged over equal-width confidence bins weighted by their
    files (Guo et al. 2017); files that could not be read (no confidence) are left out."""
    pairs = [(c, h) for c, h in zip(confidences, hits, strict=True) if c is not None]
    if not pairs:
        return 0.0
    conf = np.array([c for c, _ in pairs], dtype=np.float64)
    hit = np.array([h for _, h in pairs], dtype=np.float64)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.sum() * abs(hit[inside].mean() - conf[inside].mean())
    return float(gap / len(pairs))
