"""Reading the dataset's class table and split index files.

Torch-free on purpose: the API uses it for class names and sample images.
"""

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

LABEL_LEVELS = ("coarse", "fine")


class DatasetError(ValueError):
    """The dataset's files are missing or malformed; the message names file and line."""


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    iconic_images: tuple[Path, ...]
    description_files: tuple[Path, ...]

    def description(self) -> str:
        return "\n\n".join(
            p.read_text(encoding="utf-8", errors="replace").strip() for p in self.description_files if p.is_file()
        )


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def _dataset_path(data_dir: Path, relative: str) -> Path:
    # classes.csv writes paths as "/iconic-images-...": relative to the dataset, not the filesystem root.
    return data_dir / relative.strip().lstrip("/")


def read_classes(data_dir: str | Path, label_level: str = "coarse") -> list[ClassInfo]:
    """The classes of one label level, in id order."""
    if label_level not in LABEL_LEVELS:
        raise DatasetError(f"label level must be one of {LABEL_LEVELS}, not {label_level!r}")
    data_dir = Path(data_dir)
    table = data_dir / "classes.csv"
    if not table.is_file():
        raise DatasetError(f"{table}: class table not found")
    id_col, name_col = (3, 2) if label_level == "coarse" else (1, 0)
    by_id: dict[int, dict] = {}
    with table.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows, None)  # header
        for line_no, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < 6:
                raise DatasetError(f"{table}:{line_no}: expected 6 columns, got {len(row)}")
            try:
                class_id = int(row[id_col])
            except ValueError:
                raise DatasetError(f"{table}:{line_no}: class id {row[id_col]!r} is not an integer") from None
            entry = by_id.setdefault(class_id, {"name": row[name_col].strip(), "icons": [], "texts": []})
            entry["icons"].append(_dataset_path(data_dir, row[4]))
            entry["texts"].append(_dataset_path(data_dir, row[5]))
    if sorted(by_id) != list(range(len(by_id))):
        raise DatasetError(f"{table}: {label_level} class ids are not contiguous from 0")
    return [ClassInfo(i, e["name"], tuple(e["icons"]), tuple(e["texts"])) for i, e in sorted(by_id.items())]


def read_split(
    data_dir: str | Path, split: str, label_level: str = "coarse", num_classes: int | None = None
) -> list[Sample]:
    """Samples of ``<data_dir>/<split>.txt`` (lines ``path, fine_label, coarse_label``)."""
    data_dir = Path(data_dir)
    index = data_dir / f"{split}.txt"
    if not index.is_file():
        raise DatasetError(f"{index}: split index not found")
    if num_classes is None:
        num_classes = len(read_classes(data_dir, label_level))
    column = 2 if label_level == "coarse" else 1
    samples = []
    with index.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = [x.strip() for x in line.split(",")]
            if len(fields) != 3:
                raise DatasetError(
                    f"{index}:{line_no}: expected 'path, fine_label, coarse_label', got {line.strip()!r}"
                )
            try:
                label = int(fields[column])
            except ValueError:
                raise DatasetError(f"{index}:{line_no}: label {fields[column]!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise DatasetError(f"{index}:{line_no}: {label_level} label {label} is outside 0..{num_classes - 1}")
            path = data_dir / fields[0]
            if not path.is_file():
                raise DatasetError(f"{index}:{line_no}: image {path} not found")
            samples.append(Sample(path, label))
    if not samples:
        raise DatasetError(f"{index}: no samples")
    return samples


def split_names(splits: str) -> list[str]:
    """``"train+val"`` names two index files pooled; ``"train"`` one."""
    names = [name.strip() for name in splits.split("+")]
    if not all(names):
        raise DatasetError(f"split {splits!r}: expected names joined by '+', such as 'train+val'")
    return names


def read_splits(
    data_dir: str | Path, splits: str, label_level: str = "coarse", num_classes: int | None = None
) -> list[Sample]:
    """The samples of one or more split index files (``"train+val"``), in file order."""
    return [s for name in split_names(splits) for s in read_split(data_dir, name, label_level, num_classes)]


def fine_to_coarse(data_dir: str | Path) -> list[int]:
    """The coarse class id of each fine class, indexed by fine id (from classes.csv)."""
    table = Path(data_dir) / "classes.csv"
    read_classes(data_dir, "fine")  # the table's checks, with their messages
    coarse_of: dict[int, int] = {}
    with table.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows, None)
        for line_no, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                coarse_of[int(row[1])] = int(row[3])
            except ValueError:
                raise DatasetError(f"{table}:{line_no}: coarse class id {row[3]!r} is not an integer") from None
    return [coarse_of[i] for i in range(len(coarse_of))]


def read_iconic(data_dir: str | Path, label_level: str = "coarse") -> list[Sample]:
    """One sample per fine class: its iconic product image, labelled at ``label_level``."""
    fine = read_classes(data_dir, "fine")
    labels = fine_to_coarse(data_dir) if label_level == "coarse" else [c.id for c in fine]
    samples = []
    for c in fine:
        path = c.iconic_images[0]
        if not path.is_file():
            raise DatasetError(f"{path}: iconic image of {c.name} not found")
        samples.append(Sample(path, labels[c.id]))
    return samples


def fingerprint(data_dir: str | Path, split: str) -> str:
    """A short digest of the class table and the split index files: which data a model saw."""
    data_dir = Path(data_dir)
    digest = hashlib.sha256()
    for name in ("classes.csv", *(f"{s}.txt" for s in split_names(split))):
        digest.update((data_dir / name).read_bytes())
    return digest.hexdigest()[:16]
