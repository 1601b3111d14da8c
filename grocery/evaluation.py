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


def paired_comparison(
    true_labels: Sequence[str],
    labels_a: Sequence[str | None],
    labels_b: Sequence[str | None],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    changed: int = 5,
) -> dict:
    """Two models' answers on the same files: both accuracies, B's minus A's with a 95% interval from a
    paired bootstrap over the files, McNemar's exact test on the files they disagree on, and the classes
    whose accuracy changed most. A label of None (a file one could not read) is wrong."""
    right_a = np.array([a == t for a, t in zip(labels_a, true_labels, strict=True)], dtype=bool)
    right_b = np.array([b == t for b, t in zip(labels_b, true_labels, strict=True)], dtype=bool)
    count = len(true_labels)
    b_only, a_only = int((right_b & ~right_a).sum()), int((right_a & ~right_b).sum())
    return {
        "files": count,
        "a_top1": float(right_a.mean()) if count else None,
        "b_top1": float(right_b.mean()) if count else None,
        "difference": (b_only - a_only) / count if count else None,
        "ci95": paired_bootstrap(b_only, a_only, count, resamples=resamples, seed=seed),
        "mcnemar": {"a_only": a_only, "b_only": b_only, "p_value": mcnemar_exact(a_only, b_only)},
        "classes_changed": classes_changed(true_labels, right_a, right_b)[:changed],
    }


def paired_bootstrap(gains: int, losses: int, count: int, *, resamples: int, seed: int) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the accuracy difference over files drawn with replacement.
    A file contributes +1 (only B right), -1 (only A right) or 0, so a resample's difference is its
    multinomial counts of those three: the same distribution as drawing the files, in O(resamples)."""
    if count == 0:
        return None
    rng = np.random.default_rng(seed)
    shares = [gains / count, losses / count, (count - gains - losses) / count]
    drawn = rng.multinomial(count, shares, size=resamples)
    differences = (drawn[:, 0] - drawn[:, 1]) / count
    low, high = np.percentile(differences, [2.5, 97.5])
    return [float(low), float(high)]


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant files' split against a fair coin (binomial)."""
    from math import comb

    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**n)


def classes_changed(true_labels: Sequence[str], right_a: np.ndarray, right_b: np.ndarray) -> list[dict]:
    """Per true class, both accuracies and B's change, the largest changes first."""
    by_class: dict[str, list[int]] = {}
    for i, truth in enumerate(true_labels):
        by_class.setdefault(truth, []).append(i)
    rows = [
        {
            "class": name,
            "files": len(members),
            "a_top1": float(right_a[members].mean()),
            "b_top1": float(right_b[members].mean()),
            "change": float(right_b[members].mean() - right_a[members].mean()),
        }
        for name, members in by_class.items()
    ]
    return sorted(rows, key=lambda row: (-abs(row["change"]), row["class"]))
