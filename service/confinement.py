"""What a job may read: its input roots, never another job's uploads. Torch-free; the API checks
at submit and at every preview, the workers again before they open a file.

The rules, in one place:
- the service's roots are GROCERY_INPUT_ROOTS (default: the data directory); a token created with
  ``--roots`` narrows them to its own folders (each inside a service root);
- the upload storage (GROCERY_UPLOAD_DIR, a folder or an object prefix) is never a root: each job may
  read its own upload folder (GROCERY_UPLOAD_DIR/<job id>) and nothing else under it, whatever the roots say;
- every check is on the real path (symlinks and '..' resolved);
- a root may be an object prefix (s3://bucket/prefix/): it admits the URLs under it, which may hold
  no '.', '..' or empty segments (storage.ObjectURL.parse).
"""

import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from grocery import storage
from grocery.config import WEIGHTS_NAMES
from service.settings import Settings
from service.specs import StoredInput, TrainParams

# Training jobs: the index files a run reads beside the class table (the API exposes no other split).
TRAINING_INDEXES = ("train.txt", "val.txt")
MAX_INDEX_BYTES = 64 * 2**20  # an index of a million lines is about 60 MiB


class PathRefused(ValueError):
    """A path a job may not read; ``field`` names the request field, the message says why (never
    whether the file exists outside the roots)."""

    def __init__(self, field: str, message: str, code: str = "path_not_allowed"):
        super().__init__(f"{field}: {message}")
        self.field, self.code = field, code


Root = Path | str  # a real folder, or an object prefix's URL ending in '/'


def _inside(location: Root, roots: Iterable[Root]) -> bool:
    if isinstance(location, str):
        return any(isinstance(root, str) and storage.within(location, root) for root in roots)
    return any(isinstance(root, Path) and location.is_relative_to(root) for root in roots)


def real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def real_root(root: str | Path) -> Root:
    """A folder's real path; an object prefix as a URL ending in '/'."""
    return storage.as_prefix(str(root)) if storage.is_url(root) else real(root)


def _under_uploads(location: Root, uploads: Root) -> bool:
    return _inside(location, (uploads,))


def upload_storage(settings: Settings) -> Root:
    """GROCERY_UPLOAD_DIR: its real folder, or its prefix ending in '/'."""
    return real_root(settings.upload_dir)


def upload_folder(settings: Settings, job_id: uuid.UUID | str) -> Root:
    """Where a job's uploaded files are stored, readable by that job alone: a folder, or a prefix ending in '/'."""
    uploads = upload_storage(settings)
    return (
        storage.as_prefix(str(storage.join(uploads, str(job_id)))) if storage.is_url(uploads) else uploads / str(job_id)
    )


def others_uploads(settings: Settings, *, job_id: uuid.UUID | str) -> Callable[[Root], bool]:
    """For a job's listing: whether a listed file (a real path or a URL) is another job's upload. A root
    may hold the upload storage; those are never listed, not even as refused rows, and a job's input
    inside another job's uploads (a row no API would write) lists nothing."""
    uploads, own = upload_storage(settings), upload_folder(settings, job_id)
    return lambda location: _under_uploads(location, uploads) and not _inside(location, (own,))


def service_roots(settings: Settings) -> tuple[Root, ...]:
    """GROCERY_INPUT_ROOTS, less any that lie inside the upload storage (a misconfiguration: logged
    at start, see configuration_problems)."""
    uploads = upload_storage(settings)
    return tuple(r for r in map(real_root, settings.input_roots) if not _under_uploads(r, uploads))


def roots_for(settings: Settings, token_roots: Iterable[str] | None) -> tuple[Root, ...]:
    """The roots of a token: its own (those still inside the service's), or the service's."""
    service = service_roots(settings)
    if not token_roots:
        return service
    return tuple(r for r in map(real_root, token_roots) if _inside(r, service))


def checked_token_roots(values: Iterable[str], settings: Settings) -> list[str]:
    """`grocery tokens create --roots`: real folders, each inside a service root and outside the uploads."""
    service, uploads = service_roots(settings), upload_storage(settings)
    checked = []
    for value in values:
        try:
            root = real_root(value)
        except ValueError as e:
            raise ValueError(f"root {value!r}: {e}") from None
        if _under_uploads(root, uploads) or not _inside(root, service):
            raise ValueError(
                f"root {value!r} is not inside the service's input roots "
                f"(GROCERY_INPUT_ROOTS: {':'.join(map(str, service))})"
            )
        if isinstance(root, Path) and not root.is_dir():
            raise ValueError(f"root {value!r} is not a directory")
        checked.append(str(root))
    if not checked:
        raise ValueError("give at least one root folder")
    return checked


@dataclass(frozen=True)
class ReadScope:
    """The folders one job (or one request) may read, and the upload storage it may not."""

    roots: tuple[Root, ...]
    uploads: Root
    own_upload: Root | None = None  # the job's own upload folder, the one place under uploads it may read
    named: str = "GROCERY_INPUT_ROOTS"  # where the roots come from, for messages

    def real_path(self, path: str | Path, field: str) -> Root:
        """The real path (an object's URL as given), if this scope may read it; else PathRefused."""
        if "\x00" in str(path):
            raise PathRefused(field, "a path cannot hold a NUL character")
        if storage.is_url(path):
            return self._url(str(path), field)
        return self._checked(real(path), str(path), field)

    def real_prefix(self, url: str, field: str) -> str:
        """An object prefix (s3://bucket/photos, as s3://bucket/photos/), if this scope may read under it."""
        try:
            prefix = storage.as_prefix(url)
        except ValueError as e:
            raise PathRefused(field, str(e), "invalid_url") from None
        return self._url(prefix, field)

    def _url(self, url: str, field: str) -> str:
        try:
            storage.ObjectURL.parse(url)
        except ValueError as e:
            raise PathRefused(field, str(e), "invalid_url") from None
        return self._checked(url, url, field)

    def _checked(self, location: Root, given: str, field: str) -> Root:
        """``location`` (a real path or a URL), if it is the job's own upload or inside a root and
        outside the upload storage; else PathRefused naming ``given``, as the request spelled it."""
        if self.own_upload is not None and _inside(location, (self.own_upload,)):
            return location
        if _under_uploads(location, self.uploads) or not _inside(location, self.roots):
            shown = ":".join(map(str, self.roots)) or "none"
            raise PathRefused(field, f"{given!r} is outside the allowed input roots ({self.named}: {shown})")
        return location

    def allows(self, path: str | Path) -> bool:
        try:
            self.real_path(path, "path")
        except PathRefused:
            return False
        return True


def request_scope(settings: Settings, token_roots: Iterable[str] | None) -> ReadScope:
    """What a new folder or manifest job of this token may name."""
    named = "this token's roots" if token_roots else "GROCERY_INPUT_ROOTS"
    return ReadScope(roots_for(settings, token_roots), upload_storage(settings), named=named)


def job_scope(settings: Settings, *, job_id: uuid.UUID | str, source: StoredInput | None, token_roots) -> ReadScope:
    """What a prediction job's workers and previews may read: a folder job its folder (if still
    inside its token's roots), a manifest job its token's roots; every job its own upload folder."""
    own, uploads = upload_folder(settings, job_id), upload_storage(settings)
    if source is not None and (source.url is not None or source.folder is not None):
        start = storage.as_prefix(source.url) if source.url is not None else real(source.folder)
        allowed = _inside(start, (own,)) or (
            not _under_uploads(start, uploads) and _inside(start, roots_for(settings, token_roots))
        )
        return ReadScope((start,) if allowed else (), uploads, own)
    return ReadScope(roots_for(settings, token_roots), uploads, own)


def training_files(spec: TrainParams, settings: Settings, token_roots) -> TrainParams:
    """A training job's file parameters, confined: ``data_dir`` and ``weights`` (a file) resolved
    inside the roots, and every line of the dataset's index files and class table inside them too.
    Returns the spec with real paths; raises PathRefused naming the field. The service's own
    dataset (GROCERY_DATA_DIR, used when no data_dir is given) is always allowed."""
    scope = request_scope(settings, token_roots)
    for name in ("data_dir", "weights"):
        if storage.is_url(getattr(spec, name) or ""):
            message = "training reads its files from the worker's disk; object URLs are prediction inputs"
            raise PathRefused(f"params.{name}", message, "unsupported_url")
    data_dir, dataset_scope = confined_dataset(spec.data_dir, scope, settings, "params.data_dir")
    checked = {"data_dir": str(data_dir)} if spec.data_dir is not None else {}
    weights = spec.weights
    if weights is not None and weights not in WEIGHTS_NAMES:
        resolved = scope.real_path(weights, "params.weights")
        if not resolved.is_file():
            raise PathRefused("params.weights", f"{weights!r} is not a file", "path_not_found")
        checked["weights"] = str(resolved)
    for name in TRAINING_INDEXES:
        confine_index(data_dir, name, dataset_scope, "params.data_dir")
    for line_no, relative in _class_table_paths(data_dir / "classes.csv"):
        _dataset_member(data_dir, relative, dataset_scope, f"params.data_dir: classes.csv:{line_no}")
    return spec.model_copy(update=checked)


def confined_dataset(given: str | None, scope: ReadScope, settings: Settings, field: str) -> tuple[Path, ReadScope]:
    """A dataset folder (``given``, else the service's own, always allowed) and what its index lines
    may point into."""
    default_data = real(settings.data_dir)
    if given is None:
        return default_data, ReadScope((*scope.roots, default_data), scope.uploads, named=scope.named)
    data_dir = scope.real_path(given, field)
    if not data_dir.is_dir():
        raise PathRefused(field, f"{given!r} is not a directory", "path_not_found")
    roots = (*scope.roots, default_data) if data_dir == default_data else scope.roots
    return data_dir, ReadScope(roots, scope.uploads, named=scope.named)


def confine_index(data_dir: Path, name: str, scope: ReadScope, field: str) -> None:
    """Every line of the dataset's index file ``name`` names a file inside ``scope``."""
    for line_no, relative in _index_paths(data_dir / name):
        _dataset_member(data_dir, relative, scope, f"{field}: {name}:{line_no}")


def labelled_index(
    data_dir: str | None, split: str, label_level: str, settings: Settings, token_roots
) -> tuple[list[str], list[str]]:
    """An evaluation's split, confined like a training's dataset: its files' real paths and labels."""
    from grocery.index import DatasetError, read_classes, read_split

    scope = request_scope(settings, token_roots)
    folder, dataset_scope = confined_dataset(data_dir, scope, settings, "input.index.data_dir")
    if not (folder / f"{split}.txt").is_file():
        raise PathRefused("input.index.split", f"the dataset has no {split}.txt", "path_not_found")
    confine_index(folder, f"{split}.txt", dataset_scope, "input.index")
    try:
        names = [c.name for c in read_classes(folder, label_level)]
        samples = read_split(folder, split, label_level, len(names))
    except DatasetError as e:
        raise PathRefused("input.index", str(e), "invalid_dataset") from None
    return [str(sample.path) for sample in samples], [names[sample.label] for sample in samples]


def _dataset_member(data_dir: Path, relative: str, scope: ReadScope, field: str) -> None:
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts:
        raise PathRefused(field, f"{relative!r} is an absolute or '..' path: index paths stay inside the dataset")
    try:
        scope.real_path(data_dir / relative, field)
    except PathRefused:
        raise PathRefused(field, f"{relative!r} resolves outside the allowed input roots") from None


def _index_paths(index: Path):
    """(line number, path) of a split index's lines ("path, fine, coarse"); a missing index is the
    library's to report (its message names only files inside the dataset)."""
    if not index.is_file():
        return
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise PathRefused("params.data_dir", f"{index.name} is larger than {MAX_INDEX_BYTES} bytes")
    with index.open(encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, line.split(",")[0].strip()


def _class_table_paths(table: Path):
    import csv

    if not table.is_file():
        return
    if table.stat().st_size > MAX_INDEX_BYTES:
        raise PathRefused("params.data_dir", f"classes.csv is larger than {MAX_INDEX_BYTES} bytes")
    with table.open(newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        next(rows, None)
        for line_no, row in enumerate(rows, start=2):
            # The table writes "/iconic-images-...": relative to the dataset (grocery.index reads it so).
            for column in row[4:6]:
                if column.strip():
                    yield line_no, column.strip().lstrip("/")


def configuration_problems(settings: Settings) -> list[str]:
    """What the service can tell is wrong with its settings before any request: each a sentence for
    the log; /readyz is not ready while there is one."""
    problems = []
    uploads = upload_storage(settings)
    for root in map(real_root, settings.input_roots):
        if _under_uploads(root, uploads):
            problems.append(
                f"GROCERY_INPUT_ROOTS: {root} lies inside GROCERY_UPLOAD_DIR ({uploads}); uploads are readable "
                "only by the job they were uploaded for, so this root grants nothing: remove it"
            )
    if storage.is_url(uploads):
        return problems  # a bucket's permissions show at the first upload (503 storage_unavailable, 403 ...)
    try:
        uploads.mkdir(parents=True, exist_ok=True)
        if not os.access(uploads, os.W_OK | os.X_OK):
            problems.append(f"GROCERY_UPLOAD_DIR: {uploads} is not writable by the API")
    except OSError as e:
        problems.append(f"GROCERY_UPLOAD_DIR: {uploads} cannot be created: {e.strerror}")
    return problems
