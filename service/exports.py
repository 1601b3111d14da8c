"""A prediction job's results as files: the export dir's files (GET /jobs/<id>/results/file and
?format=parquet), and the Parquet file read from PostgreSQL a page at a time (also what a job's
output.url receives)."""

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.orm import Session

from grocery import parquet
from service.predictions import prediction_pages
from service.settings import Settings


def export_path(settings: Settings, *, job_id: uuid.UUID, output: str) -> Path:
    """Where a finished job's whole set is kept in ``output`` format (removed with the job)."""
    return settings.export_dir / str(job_id) / f"results.{output}"


def private_path(settings: Settings, *, job_id: uuid.UUID, purpose: str, output: str) -> Path:
    """A file of the job's export folder that nobody else writes (a one-off download, an upload's
    copy, a file being written); the folder is made, and removed with the job."""
    folder = settings.export_dir / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".{purpose}-{uuid.uuid4().hex}.{output}"


@contextlib.contextmanager
def written_atomically(settings: Settings, path: Path, *, job_id: uuid.UUID) -> Iterator[Path]:
    """A private name to write ``path`` under, renamed to it when the block succeeds: a concurrent
    first request writes its own copy, and nobody ever reads half a file."""
    partial = private_path(settings, job_id=job_id, purpose="partial", output=path.suffix.lstrip("."))
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_parquet(
    session: Session, *, job_id: uuid.UUID, path: Path, row_group_size: int = parquet.ROW_GROUP_SIZE, **filters
) -> int:
    """The job's (filtered) results as Parquet at ``path``, read a row group's worth at a time;
    returns the rows written."""
    pages = prediction_pages(session, job_id=job_id, page_size=row_group_size, **filters)
    return parquet.write_results(itertools.chain.from_iterable(pages), path, row_group_size=row_group_size)
