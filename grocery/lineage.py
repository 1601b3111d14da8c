"""Where a model comes from, for its model card: the photos it was trained on (names and sizes, not
only the index files), the code that trained it, and the machine. Torch-free; no network."""

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from grocery import index

PACKAGE = "grocery-jobs"


def photos_fingerprint(data_dir: str | Path, splits: str) -> dict:
    """The training photos as a digest of each one's path (relative to the dataset) and size: a photo
    replaced, added or removed changes it, where the index files' digest would not see it."""
    data_dir = Path(data_dir)
    digest, count, total = hashlib.sha256(), 0, 0
    for sample in index.read_splits(data_dir, splits):
        size = sample.path.stat().st_size
        digest.update(f"{sample.path.relative_to(data_dir).as_posix()}:{size}\n".encode())
        count, total = count + 1, total + size
    return {"files": count, "bytes": total, "digest": digest.hexdigest()[:16]}


def code_version() -> dict:
    """The package's version and, where the code runs from a git checkout, its commit."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"package": PACKAGE, "version": version, "git_commit": git_commit(Path(__file__).resolve().parents[1])}


def git_commit(folder: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def machine() -> dict:
    return {"host": platform.node(), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
